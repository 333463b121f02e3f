/**
 * The kernel's plugin slots. Each architecture fills them differently; the kernel only knows
 * these interfaces, and the worker runtime (src/worker) hands it the implementations. How a
 * call reaches a service hosted elsewhere is not a slot but a chain: see placement.ts.
 */
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { EventDef, MethodDef } from '../contract/define.js';
import type { Migration } from './service.js';
import type { TraceContext } from './trace.js';

/** Who is calling: propagated on every call, from the edge through every hop. */
export interface Identity {
  /** The principal's name (for the bookstore, the username). */
  readonly subject: string;
  readonly roles: readonly string[];
  readonly claims?: Readonly<Record<string, unknown>>;
  /** Set when a service acts on its own behalf (events, timers, start-up): the service's name. */
  readonly service?: string;
  /**
   * A signed form of this identity that a callee in another process can verify (made by the
   * edge of a deployment whose calls cross processes). Without it, a user identity cannot
   * leave its process.
   */
  readonly assertion?: string;
}

/** Metadata that travels with every call. */
export interface CallMeta {
  /** Absolute deadline, epoch milliseconds. */
  readonly deadline: number;
  readonly trace: TraceContext;
  readonly caller?: Identity;
  /** The service making the call; undefined when the call comes from outside (edge, scripts). */
  readonly from?: string;
}

export interface Endpoint {
  readonly service: string;
  readonly id: string;
  readonly address: string;
  readonly metadata?: Readonly<Record<string, string>>;
}

/** discovery: where instances of a service are (used by links that choose an endpoint). */
export interface Discovery {
  endpoints(service: string): readonly Endpoint[];
  watch?(service: string, onChange: (endpoints: readonly Endpoint[]) => void): () => void;
}

/** balancer: picks one endpoint for a call. */
export interface Balancer {
  pick(endpoints: readonly Endpoint[], method: MethodDef, input: unknown): Endpoint | undefined;
}

/** An event as it travels: `id` is the idempotency key subscribers deduplicate on. */
export interface EventEnvelope {
  readonly id: string;
  readonly topic: string;
  readonly source: string;
  readonly payload: unknown;
  /** Ordering key: events with the same key are delivered in order. */
  readonly key?: string;
  readonly publishedAt: number;
  readonly traceparent?: string;
}

/** event bus: delivers each event once per subscribing service (consumer group), at least once. */
export interface EventBus {
  readonly name: string;
  subscribe(topic: string, group: string, handler: (event: EventEnvelope) => Promise<void>): () => void;
  /** Resolves once the event is durably accepted (in-process: handled by every group). */
  publish(event: EventEnvelope): Promise<void>;
  /** Rejects, saying why, when the bus cannot take events now (absent: it always can, as in process). */
  check?(): Promise<void>;
  close(): Promise<void>;
}

export type Dialect = 'sqlite' | 'postgres';

/** A service's own database; no other service can reach it. */
export interface ServiceStore {
  readonly db: Kysely<any>;
  readonly dialect: Dialect;
  /** Human-readable location (file path or schema), printed at start. */
  readonly location: string;
  /** The PostgreSQL schema that holds the service's tables (undefined for SQLite). */
  readonly schema?: string;
  close(): Promise<void>;
}

/** storage: opens the database a service owns. */
export interface StorageProvider {
  readonly name: string;
  open(service: string): Promise<ServiceStore>;
}

/** auth: turns a presented credential into an identity (or refuses it). */
export interface Authenticator {
  authenticate(authorization: string | undefined): Promise<Identity | undefined>;
}

/** An event waiting in a service's outbox. */
export interface OutboxEntry {
  event: EventDef;
  payload: unknown;
  key?: string;
  id?: string;
  deliverAt?: number;
  traceparent?: string;
}

/** Hands a service's committed outbox rows to the bus. */
export interface OutboxDispatch {
  start(): void;
  /** A commit wrote an event due at `dueAt` (epoch ms). */
  notify(dueAt: number): void;
  stop(): Promise<void>;
}

/**
 * outbox: the transactional outbox and the inbox, kept in each service's own database, so an
 * event commits with the change that caused it and a redelivered event is applied once.
 */
export interface OutboxStore {
  /** Creates the outbox and inbox tables in a service's database (idempotent). */
  prepare(db: Kysely<any>): Promise<void>;
  /** Writes validated events through `db` (the handler's transaction, if any). */
  write(db: Kysely<any>, entries: readonly OutboxEntry[]): Promise<void>;
  /** Records a delivery as applied; false when it already was. */
  claimDelivery(db: Kysely<any>, id: string, topic: string): Promise<boolean>;
  alreadyDelivered(db: Kysely<any>, id: string): Promise<boolean>;
  dispatcher(db: Kysely<any>, service: string, bus: EventBus, log: Logger): OutboxDispatch;
}

/** migrator: applies a service's migrations once each, in name order; returns the names applied. */
export interface Migrator {
  migrate(db: Kysely<any>, service: string, migrations: Readonly<Record<string, Migration>>, schema?: string): Promise<string[]>;
}

/** telemetry: observes every call. */
export interface Telemetry {
  /** False lets the hot path skip clocks and calls entirely. */
  readonly enabled: boolean;
  callStarted(method: MethodDef): void;
  callEnded(method: MethodDef, seconds: number, errorCode: string | undefined): void;
}
