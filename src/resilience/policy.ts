/**
 * The client library's call policy for architectures where calls leave the process, built on
 * cockatiel. Around every call, outermost first:
 *
 *   deadline (the caller's, never extended)
 *   → bulkhead per callee service (max concurrent + queue; overflow is an UnavailableError)
 *   → retry (idempotent methods, retryable failures, exponential backoff with jitter, budget)
 *   → pick an endpoint (discovery → skip ejected endpoints and open circuits → balancer)
 *   → circuit breaker of that endpoint → endpoint statistics → the transport's attempt
 *
 * Every attempt gets the caller's own `meta` (so the remaining time, never more), and the
 * endpoint chosen for it: the transport sends to that endpoint and nowhere else.
 */
import {
  BulkheadPolicy,
  bulkhead as makeBulkhead,
  ExponentialBackoff,
  handleType,
  isBrokenCircuitError,
  isBulkheadRejectedError,
  retry as makeRetry,
  type IBackoff,
  type IBackoffFactory,
  type IRetryBackoffContext,
  type RetryPolicy,
} from 'cockatiel';
import pino, { type Logger } from 'pino';
import type { MethodDef } from '../contract/define.js';
import { ConsistentHashBalancer, createBalancer, keyOfPath, type Affinity } from '../discovery/balancers.js';
import { EndpointStats, endpointKey } from '../discovery/endpoint-stats.js';
import { withDeadline } from '../kernel/deadline.js';
import { ConfigError, EvolithError, TimeoutError, UnavailableError } from '../kernel/errors.js';
import { DEFAULT_TIMEOUT_MS } from '../kernel/local-plugins.js';
import type { Balancer, CallMeta, CallPolicy, Discovery, Endpoint } from '../kernel/plugins.js';
import { EndpointGuard, type CircuitOptions, type CircuitStateName, type EjectionOptions } from './endpoint-guard.js';
import { describeFailure, isEndpointFailure, normalizeTransportError, wasNotSent } from './failures.js';
import { checkOverrides, ignoredBulkheadKeys, resolveBulkhead, resolveRetries, resolveTimeout, type BulkheadSize, type PolicyOverrides } from './overrides.js';
import { RetryBudget, type RetryBudgetOptions } from './retry-budget.js';

/** One attempt of a call, sent to the endpoint the policy chose. */
export type Attempt<T> = (meta: CallMeta, endpoint: Endpoint) => Promise<T>;

export interface RetryOptions {
  /** Attempts after the first, for idempotent methods, unless the topology says otherwise. Default 2. */
  retries: number;
  /** Backoff before the first retry (exponential with decorrelated jitter from there). Default 25 ms. */
  initialDelayMs: number;
  /** Default 1 s. */
  maxDelayMs: number;
  /** Do not start an attempt with less time than this left. Default 10 ms. */
  minTimeLeftMs: number;
}

/** Per callee service: calls in flight (default 256) and calls waiting for a slot (default 512). */
export type BulkheadOptions = BulkheadSize;

export interface ResilientPolicyOptions {
  discovery: Discovery;
  /** Shared with the balancer, so its choices see the calls this policy makes. */
  stats?: EndpointStats;
  /** Default: power of two choices over `stats`, with `affinity` on top. */
  balancer?: Balancer;
  /** Consistent-hash affinity by method (`'warehouse.getProduct': 'id'`), for the default balancer. */
  affinity?: Affinity;
  /** From the topology: `service.method`, `service` or `*` (see overrides.ts). */
  overrides?: PolicyOverrides;
  retry?: Partial<RetryOptions>;
  budget?: RetryBudgetOptions;
  circuit?: Partial<CircuitOptions>;
  ejection?: Partial<EjectionOptions>;
  bulkhead?: Partial<BulkheadOptions>;
  /**
   * Let a call whose request provably never left (connection refused, circuit open at the
   * moment of sending) go to another endpoint even when the method is not idempotent: it
   * cannot run twice. Default true.
   */
  failoverUnsent?: boolean;
  defaultTimeoutMs?: number;
  log?: Logger;
}

export interface EndpointHealth {
  service: string;
  id: string;
  address: string;
  circuit: CircuitStateName;
  ejectedUntil?: number;
  outstanding: number;
  ewmaLatencyMs: number;
  errorRate: number;
  successes: number;
  failures: number;
  consecutiveFailures: number;
}

/** Details attached to the error a caller sees when endpoints failed. */
export interface CallFailureDetails {
  method: string;
  attempts: Array<{ endpoint: string; code: string; message: string }>;
  skipped: Array<{ endpoint: string; reason: string }>;
  /** Why the policy stopped trying. */
  stopped?: string;
}

// cockatiel 3.2's own isIsolatedCircuitError/isTaskCancelledError test the bulkhead's marker, so check the markers here.
const isIsolatedCircuitError = (e: unknown): boolean => e instanceof Error && 'isIsolatedCircuitError' in e;
const isTaskCancelledError = (e: unknown): boolean => e instanceof Error && 'isTaskCancelledError' in e;

/** Carries a failure the retry policy should retry, after `delayMs`. */
class RetrySignal extends Error {
  constructor(
    readonly failure: unknown,
    readonly delayMs: number,
  ) {
    super('retry');
  }
}

/** Cockatiel's retry loop sleeps for whatever delay the policy decided with the failure. */
class DecidedBackoff implements IBackoffFactory<IRetryBackoffContext<unknown>> {
  next(context: IRetryBackoffContext<unknown>): IBackoff<IRetryBackoffContext<unknown>> {
    const e = 'error' in context.result ? context.result.error : undefined;
    return { duration: e instanceof RetrySignal ? e.delayMs : 0, next: (c) => this.next(c) };
  }
}

interface Failure {
  endpoint: Endpoint;
  error: unknown;
}

/** What one call went through: for retry decisions and for the message the caller sees. */
class CallState {
  attempts = 0;
  retries = 0;
  unsentFailovers = 0;
  timedOut = false;
  readonly startedAt = Date.now();
  stopped: string | undefined;
  backoff: IBackoff<unknown> | undefined;
  endpoints: readonly Endpoint[] = [];
  readonly failures = new Map<string, Failure>();
  readonly order: Failure[] = [];
  readonly skipped = new Map<string, { endpoint: Endpoint; reason: string }>();
  constructor(
    readonly method: MethodDef,
    readonly meta: CallMeta,
    readonly input: unknown,
    /** Retries allowed after the first attempt (0 for methods that are not idempotent). */
    readonly maxRetries: number,
  ) {}
}

/** Marks the end of a call that must not be retried, with the failure the caller will see. */
class Terminal extends Error {
  constructor(readonly failure: unknown) {
    super('terminal');
  }
}

export class ResilientPolicy implements CallPolicy {
  readonly stats: EndpointStats;
  readonly balancer: Balancer;
  private readonly discovery: Discovery;
  private readonly log: Logger;
  private readonly retryOptions: RetryOptions;
  private readonly circuit: CircuitOptions;
  private readonly ejection: EjectionOptions;
  private readonly bulkheadDefaults: BulkheadOptions;
  private readonly budgetOptions: RetryBudgetOptions;
  private readonly failoverUnsent: boolean;
  private readonly defaultTimeoutMs: number;
  private overrides: PolicyOverrides;
  private readonly timeouts = new Map<MethodDef, number>();
  private readonly guards = new Map<string, EndpointGuard>();
  private readonly bulkheads = new Map<string, { policy: BulkheadPolicy; maxConcurrent: number; maxQueue: number }>();
  private readonly budgets = new Map<string, RetryBudget>();
  private readonly lastLists = new Map<string, readonly Endpoint[]>();
  private readonly retry: RetryPolicy;
  private readonly backoffFactory: IBackoffFactory<unknown>;

  constructor(options: ResilientPolicyOptions) {
    this.discovery = options.discovery;
    this.stats = options.stats ?? new EndpointStats();
    this.balancer = options.balancer ?? createBalancer({ stats: this.stats, affinity: options.affinity });
    this.log = options.log ?? pino({ level: 'silent' });
    this.retryOptions = { retries: 2, initialDelayMs: 25, maxDelayMs: 1_000, minTimeLeftMs: 10, ...options.retry };
    this.circuit = { consecutiveFailures: 5, halfOpenAfterMs: 5_000, ...options.circuit };
    this.ejection = { consecutiveFailures: 5, baseMs: 10_000, maxMs: 300_000, maxPercent: 50, ...options.ejection };
    this.bulkheadDefaults = { maxConcurrent: 256, maxQueue: 512, ...options.bulkhead };
    this.budgetOptions = options.budget ?? {};
    this.failoverUnsent = options.failoverUnsent ?? true;
    this.defaultTimeoutMs = options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.overrides = {};
    this.setOverrides(options.overrides ?? {});
    // Limits are the policy's own decisions (see decide()); cockatiel's cap is only a backstop.
    this.retry = makeRetry(handleType(RetrySignal), { maxAttempts: 64, backoff: new DecidedBackoff() });
    this.backoffFactory = new ExponentialBackoff({ initialDelay: this.retryOptions.initialDelayMs, maxDelay: this.retryOptions.maxDelayMs });
  }

  /**
   * Replaces the topology's overrides: calls started from now on use them (a configuration
   * push applies live). Bulkheads whose size changed are rebuilt; calls already inside the
   * old one finish there.
   */
  setOverrides(overrides: PolicyOverrides): void {
    checkOverrides(overrides);
    const ignored = ignoredBulkheadKeys(overrides);
    if (ignored.length > 0) this.log.warn({ keys: ignored }, 'maxConcurrent/maxQueue apply per service; set them on the service or "*"');
    this.overrides = overrides;
    this.timeouts.clear();
    for (const [service, b] of this.bulkheads) {
      const want = resolveBulkhead(overrides, service, this.bulkheadDefaults);
      if (want.maxConcurrent !== b.maxConcurrent || want.maxQueue !== b.maxQueue) this.bulkheads.delete(service);
    }
  }

  /**
   * Applies a configuration push from the topology (`policies`, `affinity`): all of it or, if
   * any part is invalid, none of it.
   */
  configure(update: { policies?: PolicyOverrides; affinity?: Affinity }): void {
    if (update.policies) checkOverrides(update.policies);
    if (update.affinity) {
      if (!(this.balancer instanceof ConsistentHashBalancer)) throw new ConfigError('affinity needs the default (consistent-hash capable) balancer');
      for (const k of Object.values(update.affinity)) if (typeof k === 'string') keyOfPath(k);
    }
    if (update.policies) this.setOverrides(update.policies);
    if (update.affinity) (this.balancer as ConsistentHashBalancer).setAffinity(update.affinity);
  }

  timeoutFor(method: MethodDef): number {
    let t = this.timeouts.get(method);
    if (t === undefined) {
      t = resolveTimeout(this.overrides, method, this.defaultTimeoutMs);
      this.timeouts.set(method, t);
    }
    return t;
  }

  /**
   * Runs a call: `attempt` is invoked once per try with the caller's metadata and the endpoint
   * to send to. `input` feeds affinity (consistent hashing); without it affinity is skipped.
   */
  async execute<T>(method: MethodDef, attempt: Attempt<T>, meta: CallMeta, input?: unknown): Promise<T> {
    if (meta.deadline <= Date.now()) throw new TimeoutError(`no time left to call ${method.fullName}: the caller's deadline has passed`);
    const call = new CallState(method, meta, input, method.idempotent ? resolveRetries(this.overrides, method, this.retryOptions.retries) : 0);
    this.budget(method.service).request();
    const controller = new AbortController();
    const bulkhead = this.bulkhead(method.service);
    const work = bulkhead.policy.execute(
      ({ signal }) => this.retry.execute(() => this.once(call, attempt), signal),
      controller.signal,
    );
    try {
      return await withDeadline(work, meta.deadline, method.fullName, () => {
        call.timedOut = true;
        controller.abort();
      });
    } catch (err) {
      throw this.finalError(call, err, bulkhead);
    }
  }

  /** Circuit, ejection and statistics of every endpoint the policy has called. */
  health(): EndpointHealth[] {
    const now = Date.now();
    return [...this.guards.values()].map((g) => {
      const s = this.stats.get(g.endpoint);
      const r = s.recent;
      return {
        service: g.endpoint.service,
        id: g.endpoint.id,
        address: g.endpoint.address,
        circuit: g.circuitState,
        ...(g.ejectedUntil > now ? { ejectedUntil: g.ejectedUntil } : {}),
        outstanding: s.outstanding,
        ewmaLatencyMs: s.ewmaLatencyMs,
        errorRate: s.errorRate,
        successes: r.successes,
        failures: r.failures,
        consecutiveFailures: s.consecutiveFailures,
      };
    });
  }

  /** The guard of an endpoint (circuit breaker, ejection), created on first use. */
  guard(endpoint: Endpoint): EndpointGuard {
    const key = endpointKey(endpoint);
    let g = this.guards.get(key);
    if (!g) {
      g = new EndpointGuard(endpoint, this.circuit, (guard, state) =>
        this.log[state === 'closed' ? 'info' : 'warn']({ service: guard.endpoint.service, endpoint: guard.endpoint.address, circuit: state }, `circuit ${state}`),
      );
      this.guards.set(key, g);
    }
    return g;
  }

  private async once<T>(call: CallState, attempt: Attempt<T>): Promise<T> {
    // A backoff may end after the deadline fired: the caller has its answer, send nothing more.
    if (call.timedOut || call.meta.deadline <= Date.now()) throw new Terminal(new TimeoutError(`${call.method.fullName}: deadline passed`));
    const endpoint = this.choose(call);
    const guard = this.guard(endpoint);
    const service = call.method.service;
    call.attempts++;
    try {
      const out = await guard.breaker.execute(async () => {
        const finish = this.stats.start(endpoint);
        try {
          const value = await attempt(call.meta, endpoint);
          finish(false);
          return value;
        } catch (raw) {
          const err = normalizeTransportError(raw, endpoint);
          finish(isEndpointFailure(err, service));
          throw err;
        }
      });
      guard.succeeded();
      return out;
    } catch (raw) {
      const err =
        isBrokenCircuitError(raw) || isIsolatedCircuitError(raw)
          ? new UnavailableError(`circuit open on ${endpoint.address}`, { endpoint: endpoint.address, maybeExecuted: false })
          : raw;
      if (isEndpointFailure(err, service)) {
        this.maybeEject(guard, call.endpoints);
        const key = endpointKey(endpoint);
        const f = { endpoint, error: err };
        call.failures.set(key, f);
        call.order.push(f);
      }
      throw this.decide(call, err);
    }
  }

  /** Candidates: the service's endpoints minus ejected ones and open circuits, untried ones first. */
  private choose(call: CallState): Endpoint {
    const { method } = call;
    const all = this.discovery.endpoints(method.service);
    call.endpoints = all;
    if (this.lastLists.get(method.service) !== all) this.forgetGone(method.service, all);
    if (all.length === 0) {
      throw new Terminal(new UnavailableError(`${method.fullName}: no instance of ${method.service} is registered`, { method: method.fullName }));
    }
    const now = Date.now();
    const available: Endpoint[] = [];
    for (const e of all) {
      const why = this.guards.get(endpointKey(e))?.unavailable(now);
      if (why === undefined) available.push(e);
      else call.skipped.set(endpointKey(e), { endpoint: e, reason: why });
    }
    const untried = call.failures.size === 0 ? available : available.filter((e) => !call.failures.has(endpointKey(e)));
    const pool = untried.length > 0 ? untried : available;
    if (pool.length === 0) throw new Terminal(undefined);
    // Hand the balancer the discovery list itself when nothing was filtered: it caches per list.
    const candidates = pool.length === all.length ? all : pool;
    return this.balancer.pick(candidates, method, call.input) ?? candidates[0]!;
  }

  /** Decides after a failed attempt: retry (a RetrySignal with its delay) or stop (a Terminal). */
  private decide(call: CallState, err: unknown): Error {
    const { method, meta } = call;
    const stop = (why: string | undefined): Terminal => {
      call.stopped = why;
      return new Terminal(err);
    };
    if (!isEndpointFailure(err, method.service)) return stop(undefined);
    if (!(err instanceof EvolithError)) return stop(undefined);
    const left = meta.deadline - Date.now();
    if (left <= this.retryOptions.minTimeLeftMs) return stop('no time left before the deadline');
    if (wasNotSent(err) && (method.idempotent || this.failoverUnsent) && this.hasUntried(call)) {
      // It never reached the callee: try another endpoint at once, outside the budget.
      call.unsentFailovers++;
      return new RetrySignal(err, 0);
    }
    if (!method.idempotent) {
      // Not sent and nowhere else to send it: "all endpoints unavailable" says it all.
      return stop(wasNotSent(err) ? undefined : `not retried: ${method.fullName} is not idempotent`);
    }
    if (call.retries >= call.maxRetries) return stop(`gave up after ${call.retries + 1} attempts`);
    if (!this.budget(method.service).tryRetry()) return stop(`retry budget for ${method.service} exhausted`);
    call.backoff = call.backoff ? call.backoff.next(undefined) : this.backoffFactory.next(undefined);
    const delay = Math.min(call.backoff.duration, left - this.retryOptions.minTimeLeftMs);
    if (delay < 0) return stop('no time left before the deadline');
    call.retries++;
    return new RetrySignal(err, delay);
  }

  private hasUntried(call: CallState): boolean {
    const now = Date.now();
    return call.endpoints.some((e) => {
      const key = endpointKey(e);
      return !call.failures.has(key) && this.guards.get(key)?.unavailable(now) === undefined;
    });
  }

  private maybeEject(guard: EndpointGuard, endpoints: readonly Endpoint[]): void {
    const now = Date.now();
    if (now < guard.ejectedUntil) return;
    const stat = this.stats.peek(guard.endpoint);
    if (!stat || stat.consecutiveFailures < this.ejection.consecutiveFailures) return;
    const n = endpoints.length;
    const max = n <= 1 ? 0 : Math.max(1, Math.floor((n * this.ejection.maxPercent) / 100));
    let ejected = 0;
    for (const e of endpoints) if ((this.guards.get(endpointKey(e))?.ejectedUntil ?? 0) > now) ejected++;
    if (ejected >= max) return;
    const ms = guard.eject(now, this.ejection);
    this.log.warn(
      { service: guard.endpoint.service, endpoint: guard.endpoint.address, ms, consecutiveFailures: stat.consecutiveFailures },
      'endpoint ejected',
    );
  }

  private finalError(call: CallState, raw: unknown, bulkhead: { maxConcurrent: number; maxQueue: number }): unknown {
    const { method } = call;
    let err = raw instanceof RetrySignal ? raw.failure : raw instanceof Terminal ? raw.failure : raw;
    if (call.timedOut || isTaskCancelledError(err)) {
      const tried = call.order.length > 0 ? ` after ${call.attempts} attempt${call.attempts === 1 ? '' : 's'} (${this.describeAttempts(call)})` : '';
      return new TimeoutError(`${method.fullName}: no answer within the ${call.meta.deadline - call.startedAt} ms the call had${tried}`, this.details(call));
    }
    if (isBulkheadRejectedError(err)) {
      return new UnavailableError(
        `${method.fullName}: too many calls to ${method.service} (bulkhead full: ${bulkhead.maxConcurrent} in flight, ${bulkhead.maxQueue} queued); ` +
          `shed load or raise policies.${method.service}.bulkhead`,
        { method: method.fullName, reason: 'bulkhead full', ...bulkhead },
      );
    }
    if (err === undefined || (call.order.length > 0 && isEndpointFailure(err, method.service))) {
      return this.summary(call, err);
    }
    return err;
  }

  /** "warehouse.freeze: all 2 endpoints unavailable (circuit open on 10.0.0.1:7001; 10.0.0.2:7001 refused connection)". */
  private summary(call: CallState, last: unknown): EvolithError {
    const { method } = call;
    const parts: string[] = [];
    let down = 0;
    const seen = new Set<string>();
    for (const e of call.endpoints) {
      const key = endpointKey(e);
      seen.add(key);
      const f = call.failures.get(key);
      const s = call.skipped.get(key);
      if (f) parts.push(describeFailure(f.error, e));
      else if (s) parts.push(s.reason);
      else continue;
      down++;
    }
    // Endpoints that failed and then left the list still explain the failure.
    for (const [key, f] of call.failures) if (!seen.has(key)) parts.push(describeFailure(f.error, f.endpoint));
    const Type = last instanceof TimeoutError ? TimeoutError : UnavailableError;
    const n = call.endpoints.length;
    const stopped = call.stopped ? `; ${call.stopped}` : '';
    if (n > 0 && down === n) {
      return new Type(`${method.fullName}: all ${n} endpoint${n === 1 ? '' : 's'} unavailable (${parts.join('; ')})${stopped}`, this.details(call));
    }
    return new Type(`${method.fullName}: ${this.describeAttempts(call)}${stopped}`, this.details(call));
  }

  private describeAttempts(call: CallState): string {
    return call.order.map((f) => describeFailure(f.error, f.endpoint)).join('; ');
  }

  private details(call: CallState): CallFailureDetails {
    return {
      method: call.method.fullName,
      attempts: call.order.map((f) => ({
        endpoint: f.endpoint.address,
        code: f.error instanceof EvolithError ? f.error.code : 'ERROR',
        message: f.error instanceof Error ? f.error.message : String(f.error),
      })),
      skipped: [...call.skipped.values()].map((s) => ({ endpoint: s.endpoint.address, reason: s.reason })),
      ...(call.stopped ? { stopped: call.stopped } : {}),
    };
  }

  private bulkhead(service: string): { policy: BulkheadPolicy; maxConcurrent: number; maxQueue: number } {
    let b = this.bulkheads.get(service);
    if (!b) {
      const size = resolveBulkhead(this.overrides, service, this.bulkheadDefaults);
      b = { policy: makeBulkhead(size.maxConcurrent, size.maxQueue), ...size };
      this.bulkheads.set(service, b);
    }
    return b;
  }

  private budget(service: string): RetryBudget {
    let b = this.budgets.get(service);
    if (!b) this.budgets.set(service, (b = new RetryBudget(this.budgetOptions)));
    return b;
  }

  /** Drops circuit and statistics of endpoints that left the service's list. */
  private forgetGone(service: string, current: readonly Endpoint[]): void {
    this.lastLists.set(service, current);
    const keep = new Set(current.map(endpointKey));
    for (const [key, g] of this.guards) if (g.endpoint.service === service && !keep.has(key)) this.guards.delete(key);
    this.stats.retain(service, current);
  }
}
