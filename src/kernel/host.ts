import type { Kysely, Transaction } from 'kysely';
import type { Logger } from 'pino';
import type { AnyContract, EventDef, MethodDef } from '../contract/define.js';
import { DeadlineEntry, unwatch, watch, withDeadline } from './deadline.js';
import { EvolithError, ForbiddenError, InternalError, TimeoutError, UnavailableError, ValidationError } from './errors.js';
import type { CallMeta, EventBus, EventEnvelope, Identity, Migrator, OutboxDispatch, OutboxEntry, OutboxStore, ServiceStore, Telemetry } from './plugins.js';
import type { Client, EmitOptions, EventContext, ServiceContext, ServiceDefinition, Subscription, TransactionContext } from './service.js';
import { childTrace, formatTraceparent, newTrace, parseTraceparent, type TraceContext } from './trace.js';
import { zodIssues } from './validate.js';

/** What a host needs from the process it lives in. */
export interface HostEnvironment {
  /** A client for calls made by service `from` inside the call described by `parent`. */
  client<C extends AnyContract>(contract: C, parent: CallMeta, from: string): Client<C>;
  readonly bus: EventBus;
  readonly outbox: OutboxStore;
  readonly migrator: Migrator;
  /** Undefined: nobody observes calls, and the hot path reads no clock. */
  readonly telemetry: Telemetry | undefined;
  readonly log: Logger;
  config(service: string): Readonly<Record<string, unknown>>;
  readonly eventTimeoutMs: number;
}

class DuplicateDelivery extends Error {}

/** Runs one service: its store, its handlers behind the server half of the call pipeline, its outbox. */
export class ServiceHost {
  readonly name: string;
  readonly log: Logger;
  store: ServiceStore | undefined;
  private outbox: OutboxDispatch | undefined;
  private inflight = 0;
  private idleWaiters: (() => void)[] = [];
  private unsubscribe: (() => void)[] = [];
  private state: 'new' | 'ready' | 'running' | 'stopping' | 'stopped' = 'new';

  constructor(
    readonly definition: ServiceDefinition,
    private readonly env: HostEnvironment,
  ) {
    this.name = definition.contract.name;
    this.log = env.log.child({ service: this.name });
  }

  get db(): Kysely<any> {
    if (!this.store) throw new UnavailableError(`service ${this.name} has no database (declare one with database())`);
    return this.store.db;
  }

  get running(): boolean {
    return this.state === 'running';
  }

  /** Opens the store and applies migrations. */
  async init(open: (service: string) => Promise<ServiceStore>): Promise<void> {
    this.store = await open(this.name);
    await this.env.outbox.prepare(this.store.db);
    if (this.definition.database) {
      const applied = await this.env.migrator.migrate(this.store.db, this.name, this.definition.database.migrations, this.store.schema);
      if (applied.length) this.log.info({ migrations: applied }, 'migrations applied');
    }
    this.state = 'ready';
  }

  async start(): Promise<void> {
    this.state = 'running';
    for (const sub of this.definition.subscriptions) {
      this.unsubscribe.push(this.env.bus.subscribe(sub.event.topic, this.name, (e) => this.deliver(sub, e)));
    }
    if (this.definition.onStart) {
      const meta: CallMeta = { deadline: Date.now() + 60_000, trace: newTrace(), caller: this.systemIdentity() };
      await this.definition.onStart(new HandlerContext(this, this.env, meta, undefined));
    }
    this.outbox = this.env.outbox.dispatcher(this.db, this.name, this.env.bus, this.log);
    this.outbox.start();
  }

  /** Stops event delivery, waits for in-flight calls (up to `drainMs`), then closes the store. */
  async stop(drainMs: number): Promise<void> {
    if (this.state === 'stopped') return;
    const started = this.state === 'running';
    this.state = 'stopping';
    for (const u of this.unsubscribe) u();
    this.unsubscribe = [];
    await this.outbox?.stop();
    await this.drain(drainMs);
    if (started && this.definition.onStop) {
      const meta: CallMeta = { deadline: Date.now() + 10_000, trace: newTrace(), caller: this.systemIdentity() };
      await this.definition.onStop(new HandlerContext(this, this.env, meta, undefined)).catch((err) => this.log.error({ err }, 'onStop failed'));
    }
    await this.store?.close();
    this.state = 'stopped';
  }

  private drain(ms: number): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.log.warn({ inflight: this.inflight }, 'drain timed out');
        resolve();
      }, ms);
      this.idleWaiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  private done(): void {
    if (--this.inflight === 0 && this.idleWaiters.length) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }

  /** A commit wrote events, the earliest due at `dueAt`. */
  notify(dueAt: number): void {
    this.outbox?.notify(dueAt);
  }

  /** The service acting on its own behalf: in event handlers, timers, start-up and stop. */
  systemIdentity(): Identity {
    return (this.self ??= Object.freeze({ subject: `service:${this.name}`, roles: Object.freeze(['ROLE_SERVICE']), service: this.name }));
  }
  private self: Identity | undefined;

  /**
   * Server half of the pipeline: authorise → validate → handler → validate output.
   * Written without async/await: an in-process call pays for one promise, not a chain of them.
   * `fromWire` marks a call that arrived over a transport: `input` is the caller's original
   * input, which this side parses with the same schema (its defaults and transforms apply here,
   * once), and which a client this process does not control may have sent unchecked.
   */
  handle(method: MethodDef, input: unknown, meta: CallMeta, fromWire = false): Promise<unknown> {
    if (this.state !== 'running' && this.state !== 'stopping') {
      return refuse(new UnavailableError(`service ${this.name} is not running (${this.state})`), method);
    }
    const handler = (this.definition.handlers as Record<string, (i: unknown, c: ServiceContext<any>) => Promise<unknown>>)[method.name];
    if (!handler) return refuse(new UnavailableError(`service ${this.name} has no method ${method.name}`), method);
    let value = input;
    try {
      if (method.internal && meta.from === undefined) {
        throw new ForbiddenError(`${method.fullName} is internal: only other services may call it`);
      }
      if (method.roles && method.roles.length > 0) authorise(method, meta.caller);
      if (fromWire) {
        const r = method.input.safeParse(input);
        if (!r.success) {
          const issues = zodIssues(r.error);
          throw new ValidationError(`invalid input for ${method.fullName}: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
        }
        value = r.data;
      }
    } catch (err) {
      return refuse(err as EvolithError, method);
    }
    const ctx = new HandlerContext(this, this.env, meta, undefined);
    this.inflight++;
    const call = new PendingCall(this, method, ctx);
    const answer = new Promise<unknown>((resolve, reject) => {
      call.resolve = resolve;
      call.reject = reject;
    });
    watch(call);
    void run(handler, value, ctx, call);
    return answer;
  }

  /** The handler's work settled: only now may a draining stop() close the store under it. */
  workSettled(): void {
    this.done();
  }

  /** Called by PendingCall when the caller gets its answer, however it ended. */
  finished(method: MethodDef, started: number, errorCode: string | undefined): void {
    const telemetry = this.env.telemetry;
    if (telemetry) telemetry.callEnded(method, (performance.now() - started) / 1000, errorCode);
  }

  startedCall(method: MethodDef): number {
    const telemetry = this.env.telemetry;
    if (!telemetry) return 0;
    telemetry.callStarted(method);
    return performance.now();
  }

  /** Delivers one event to one subscription, at most once per event id. */
  private async deliver(sub: Subscription, envelope: EventEnvelope): Promise<void> {
    if (this.state !== 'running') throw new UnavailableError(`service ${this.name} is not taking events`);
    if (await this.env.outbox.alreadyDelivered(this.db, envelope.id)) return;
    const parsed = sub.event.schema.safeParse(envelope.payload);
    if (!parsed.success) {
      // A payload that breaks the contract will never succeed: record it as handled so it
      // does not block its key forever, and say so loudly.
      this.log.error({ event: envelope.topic, id: envelope.id, issues: zodIssues(parsed.error) }, 'dropping event with invalid payload');
      await this.env.outbox.claimDelivery(this.db, envelope.id, envelope.topic);
      return;
    }
    const parent = parseTraceparent(envelope.traceparent) ?? newTrace();
    // A subscriber acts as itself (ctx.event.source names the emitter): that is an identity it
    // can prove when its handler calls a service in another process.
    const meta: CallMeta = { deadline: Date.now() + this.env.eventTimeoutMs, trace: childTrace(parent), caller: this.systemIdentity() };
    const ctx = new HandlerContext(this, this.env, meta, envelope);
    this.inflight++;
    try {
      await withDeadline(sub.handler(parsed.data, ctx as EventContext<any>), meta.deadline, `${this.name} handling ${envelope.topic}`, () => ctx.abort());
      if (!ctx.claimed) await this.env.outbox.claimDelivery(this.db, envelope.id, envelope.topic);
    } catch (err) {
      if (err instanceof DuplicateDelivery) return;
      throw err;
    } finally {
      this.done();
    }
  }

  addToOutbox(db: Kysely<any>, entries: OutboxEntry[]): Promise<void> {
    return this.env.outbox.write(db, entries);
  }

  claimDelivery(db: Kysely<any>, id: string, topic: string): Promise<boolean> {
    return this.env.outbox.claimDelivery(db, id, topic);
  }
}

/** One in-flight call: its deadline entry and its outcome, without per-call closures. */
/** Runs a handler and reports how it ended; no closure per call, unlike then(onOk, onError). */
async function run(handler: (i: unknown, c: ServiceContext<any>) => Promise<unknown>, value: unknown, ctx: HandlerContext, call: PendingCall): Promise<void> {
  let result: unknown;
  try {
    result = await handler(value, ctx);
  } catch (err) {
    call.fail(err);
    return;
  }
  call.succeed(result);
}

class PendingCall extends DeadlineEntry {
  private readonly started: number;
  resolve!: (v: unknown) => void;
  reject!: (e: unknown) => void;
  constructor(
    private readonly host: ServiceHost,
    private readonly method: MethodDef,
    private readonly ctx: HandlerContext,
  ) {
    super();
    this.deadline = ctx.deadline;
    this.started = host.startedCall(method);
  }

  succeed(result: unknown): void {
    this.host.workSettled();
    if (!unwatch(this)) return;
    const out = this.method.output.safeParse(result);
    if (!out.success) {
      this.settle(new InternalError(`${this.method.fullName} returned output that breaks its contract`, { issues: zodIssues(out.error) }));
      return;
    }
    this.host.finished(this.method, this.started, undefined);
    this.resolve(out.data);
  }

  fail(err: unknown): void {
    this.host.workSettled();
    if (unwatch(this)) this.settle(err);
  }

  expire(): void {
    this.ctx.abort();
    this.settle(new TimeoutError(`${this.method.fullName} did not answer before its deadline`, { deadline: new Date(this.deadline).toISOString() }));
  }

  private settle(err: unknown): void {
    const e = err instanceof EvolithError ? err : new InternalError(`${this.method.fullName} failed: ${(err as Error)?.message ?? err}`);
    if (e.origin === undefined) e.origin = this.method.fullName;
    if (!(err instanceof EvolithError)) this.host.log.error({ err, method: this.method.fullName }, 'handler failed');
    this.host.finished(this.method, this.started, e.code);
    this.reject(e);
  }
}

/** The callee turned the call away before its handler ran: the refusal is the callee's. */
function refuse(err: EvolithError, method: MethodDef): Promise<never> {
  err.origin ??= method.fullName;
  return Promise.reject(err);
}

function authorise(method: MethodDef, caller: Identity | undefined): void {
  if (!caller) throw new ForbiddenError(`${method.fullName} requires authentication (one of ${method.roles!.join(', ')})`);
  if (caller.roles.includes('ROLE_SERVICE')) return;
  for (const r of method.roles!) if (caller.roles.includes(r)) return;
  throw new ForbiddenError(`${method.fullName} requires one of ${method.roles!.join(', ')}`);
}

function entry(event: EventDef, payload: unknown, trace: TraceContext, options: EmitOptions | undefined, deliverAt?: number): OutboxEntry {
  return { event, payload, key: options?.key, id: options?.id, deliverAt, traceparent: formatTraceparent(trace) };
}

function toEpoch(at: Date | number): number {
  const t = typeof at === 'number' ? at : at.getTime();
  if (!Number.isFinite(t)) throw new TypeError('schedule() needs a valid time');
  return t;
}

/** The context object a handler receives; built per call, with everything costly made lazily. */
class HandlerContext implements EventContext<any> {
  private controller: AbortController | undefined;
  private clients: Map<AnyContract, unknown> | undefined;
  private logger: Logger | undefined;
  claimed = false;

  constructor(
    private readonly host: ServiceHost,
    private readonly env: HostEnvironment,
    private readonly meta: CallMeta,
    private readonly envelope: EventEnvelope | undefined,
  ) {}

  get service(): string {
    return this.host.name;
  }
  get db(): Kysely<any> {
    return this.host.db;
  }
  get caller(): Identity | undefined {
    return this.meta.caller;
  }
  get trace(): TraceContext {
    return this.meta.trace;
  }
  get deadline(): number {
    return this.meta.deadline;
  }
  get config(): Readonly<Record<string, unknown>> {
    return this.env.config(this.host.name);
  }
  get log(): Logger {
    return (this.logger ??= this.host.log.child({ traceId: this.meta.trace.traceId }));
  }
  get signal(): AbortSignal {
    return (this.controller ??= new AbortController()).signal;
  }
  get event(): EventContext<any>['event'] {
    if (!this.envelope) throw new TypeError('ctx.event is only available in event handlers');
    const e = this.envelope;
    return { id: e.id, topic: e.topic, source: e.source, publishedAt: e.publishedAt };
  }

  abort(): void {
    (this.controller ??= new AbortController()).abort(new Error('deadline exceeded'));
  }

  client<C extends AnyContract>(contract: C): Client<C> {
    this.clients ??= new Map();
    let c = this.clients.get(contract) as Client<C> | undefined;
    if (!c) this.clients.set(contract, (c = this.env.client(contract, this.meta, this.host.name)));
    return c;
  }

  async emit(event: EventDef, payload: unknown, options?: EmitOptions): Promise<void> {
    await this.host.addToOutbox(this.db, [entry(event, payload, this.meta.trace, options)]);
    this.host.notify(0);
  }

  async schedule(event: EventDef, payload: unknown, at: Date | number, options?: EmitOptions): Promise<void> {
    const due = toEpoch(at);
    await this.host.addToOutbox(this.db, [entry(event, payload, this.meta.trace, options, due)]);
    this.host.notify(due);
  }

  async transaction<T>(fn: (tx: TransactionContext<any>) => Promise<T>): Promise<T> {
    let earliest = Infinity;
    const claim = this.envelope && !this.claimed ? this.envelope : undefined;
    const result = await this.db.transaction().execute(async (trx: Transaction<any>) => {
      if (claim) {
        if (!(await this.host.claimDelivery(trx, claim.id, claim.topic))) throw new DuplicateDelivery();
      }
      const sink = this.host;
      const trace = this.meta.trace;
      return fn({
        db: trx,
        async emit(event, payload, options) {
          await sink.addToOutbox(trx, [entry(event, payload, trace, options)]);
          earliest = 0;
        },
        async schedule(event, payload, at, options) {
          const due = toEpoch(at);
          await sink.addToOutbox(trx, [entry(event, payload, trace, options, due)]);
          earliest = Math.min(earliest, due);
        },
      });
    });
    if (claim) this.claimed = true;
    if (earliest !== Infinity) this.host.notify(earliest);
    return result;
  }
}
