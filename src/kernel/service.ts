import type { Kysely, Transaction } from 'kysely';
import type { Logger } from 'pino';
import type {
  AnyContract,
  EventDef,
  EventInput,
  EventPayload,
  HandlerInput,
  HandlerOutput,
  MethodDef,
  MethodInput,
  MethodOutput,
} from '../contract/define.js';
import type { Identity } from './plugins.js';
import type { TraceContext } from './trace.js';

/** A typed client: one async function per method of the contract. */
export type Client<C extends AnyContract> = {
  readonly [K in keyof C['methods']]: (input: MethodInput<C['methods'][K]>, options?: CallOptions) => Promise<MethodOutput<C['methods'][K]>>;
};

export interface CallOptions {
  /** Shorter deadline for this call; a parent call's deadline is never extended. */
  timeoutMs?: number;
}

export interface EmitOptions {
  /** Ordering key: events with the same key reach a subscriber in order. */
  key?: string;
  /** Idempotency key; emitting twice with the same id stores one event. Defaults to a random UUID. */
  id?: string;
}

/** What both a handler and a transaction can do to publish events. */
export interface EventSink {
  /** Publishes an event after the surrounding transaction commits (transactional outbox). */
  emit<E extends EventDef>(event: E, payload: EventInput<E>, options?: EmitOptions): Promise<void>;
  /** Durable timer: the event is delivered at `at`, even if the process was down in between. */
  schedule<E extends EventDef>(event: E, payload: EventInput<E>, at: Date | number, options?: EmitOptions): Promise<void>;
}

export interface TransactionContext<DB> extends EventSink {
  readonly db: Transaction<DB>;
}

/** Everything a handler gets besides its input. It never learns where callers or callees run. */
export interface ServiceContext<DB> extends EventSink {
  readonly service: string;
  readonly db: Kysely<DB>;
  readonly log: Logger;
  readonly config: Readonly<Record<string, unknown>>;
  /** Who is calling; undefined for anonymous callers. */
  readonly caller: Identity | undefined;
  readonly trace: TraceContext;
  /** Absolute deadline of the current call (epoch ms). */
  readonly deadline: number;
  /** Aborted when the deadline passes or the call is abandoned. */
  readonly signal: AbortSignal;
  client<C extends AnyContract>(contract: C): Client<C>;
  /** Runs `fn` in one database transaction; events emitted through `tx` commit with it. */
  transaction<T>(fn: (tx: TransactionContext<DB>) => Promise<T>): Promise<T>;
}

export interface EventContext<DB> extends ServiceContext<DB> {
  readonly event: { readonly id: string; readonly topic: string; readonly source: string; readonly publishedAt: number };
}

export type Migration = (db: Kysely<any>) => Promise<void>;

/** A service's database: its migrations, applied in name order on start, and its row types. */
export interface DatabaseSpec<DB> {
  readonly kind: 'database';
  readonly migrations: Readonly<Record<string, Migration>>;
  /** Type carrier only. */
  readonly __db?: DB;
}

export function database<DB>(spec: { migrations: Record<string, Migration> }): DatabaseSpec<DB> {
  const names = Object.keys(spec.migrations);
  if (names.length === 0) throw new TypeError('a database needs at least one migration');
  return { kind: 'database', migrations: spec.migrations };
}

export type Handler<M extends MethodDef, DB> = (input: HandlerInput<M>, ctx: ServiceContext<DB>) => Promise<HandlerOutput<M>>;

export type Handlers<C extends AnyContract, DB> = { readonly [K in keyof C['methods']]: Handler<C['methods'][K], DB> };

export interface Subscription {
  readonly event: EventDef;
  readonly handler: (payload: unknown, ctx: EventContext<any>) => Promise<void>;
}

export interface ServiceDefinition<C extends AnyContract = AnyContract, DB = any> {
  readonly kind: 'service';
  readonly contract: C;
  readonly database?: DatabaseSpec<DB>;
  /** Contracts this service calls; they start first and stop last. */
  readonly dependsOn: readonly AnyContract[];
  readonly handlers: Handlers<C, DB>;
  readonly subscriptions: readonly Subscription[];
  /** Runs once the service and its dependencies are up (seeding demo data, warming caches). */
  readonly onStart?: (ctx: ServiceContext<DB>) => Promise<void>;
  readonly onStop?: (ctx: ServiceContext<DB>) => Promise<void>;
}

export interface ServiceBuilder<C extends AnyContract, DB> extends ServiceDefinition<C, DB> {
  /** Subscribes this service to an event; each event reaches one instance of this service, at least once. */
  on<E extends EventDef>(event: E, handler: (payload: EventPayload<E>, ctx: EventContext<DB>) => Promise<void>): ServiceBuilder<C, DB>;
}

/** Binds handlers to a contract. The type checker insists on a handler for every method. */
export function implement<C extends AnyContract, DB = Record<string, never>>(
  contract: C,
  spec: {
    database?: DatabaseSpec<DB>;
    dependsOn?: readonly AnyContract[];
    handlers: Handlers<C, DB>;
    onStart?: (ctx: ServiceContext<DB>) => Promise<void>;
    onStop?: (ctx: ServiceContext<DB>) => Promise<void>;
  },
): ServiceBuilder<C, DB> {
  for (const name of Object.keys(contract.methods)) {
    if (typeof (spec.handlers as Record<string, unknown>)[name] !== 'function') {
      throw new TypeError(`service ${contract.name} has no handler for method ${name}`);
    }
  }
  for (const name of Object.keys(spec.handlers)) {
    if (!(name in contract.methods)) throw new TypeError(`service ${contract.name} has a handler for unknown method ${name}`);
  }
  const make = (subscriptions: readonly Subscription[]): ServiceBuilder<C, DB> => ({
    kind: 'service',
    contract,
    database: spec.database,
    dependsOn: spec.dependsOn ?? [],
    handlers: spec.handlers,
    subscriptions,
    onStart: spec.onStart,
    onStop: spec.onStop,
    on(event, handler) {
      return make([...subscriptions, { event, handler: handler as Subscription['handler'] }]);
    },
  });
  return make([]);
}
