/**
 * The kernel's plugin slots. Each architecture fills them differently; the kernel only
 * knows these interfaces. Monolith mode uses the in-process implementation of each.
 */
import type { Kysely } from 'kysely';
import type { MethodDef } from '../contract/define.js';
import type { TraceContext } from './trace.js';

/** Who is calling: propagated on every call, from the edge through every hop. */
export interface Identity {
  /** The principal's name (for the bookstore, the username). */
  readonly subject: string;
  readonly roles: readonly string[];
  readonly claims?: Readonly<Record<string, unknown>>;
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

/** transport: carries a validated call to an instance of the callee and brings back its answer. */
export interface Transport {
  readonly name: string;
  invoke(method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown>;
  close?(): Promise<void>;
}

/** codec: turns messages into bytes and back (identity in-process). */
export interface Codec {
  readonly name: string;
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

export interface Endpoint {
  readonly service: string;
  readonly id: string;
  readonly address: string;
  readonly metadata?: Readonly<Record<string, string>>;
}

/** discovery: where instances of a service are. */
export interface Discovery {
  endpoints(service: string): readonly Endpoint[];
  watch?(service: string, onChange: (endpoints: readonly Endpoint[]) => void): () => void;
}

/** balancer: picks one endpoint for a call. */
export interface Balancer {
  pick(endpoints: readonly Endpoint[], method: MethodDef, input: unknown): Endpoint | undefined;
}

/** policy: timeouts (and, beyond one process, retries, circuits, bulkheads) around a call. */
export interface CallPolicy {
  timeoutFor(method: MethodDef): number;
  execute<T>(method: MethodDef, attempt: (meta: CallMeta) => Promise<T>, meta: CallMeta): Promise<T>;
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

/** telemetry: observes every call. */
export interface Telemetry {
  /** False lets the hot path skip clocks and calls entirely. */
  readonly enabled: boolean;
  callStarted(method: MethodDef): void;
  callEnded(method: MethodDef, seconds: number, errorCode: string | undefined): void;
}
