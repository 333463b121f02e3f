/**
 * Retries (cockatiel's retry loop, with the decisions made here): idempotent methods are tried
 * again after an endpoint failure, with exponential backoff and jitter, within the retry budget
 * of their service and the caller's deadline; any method may go to another endpoint at once
 * when its request provably never left (it cannot run twice). The link also enforces the
 * call's deadline over all attempts and backoffs, and turns a run of failures into one error
 * that names each of them.
 */
import {
  ExponentialBackoff,
  handleType,
  type IBackoff,
  retry as makeRetry,
  type IBackoffFactory,
  type IRetryBackoffContext,
  type RetryPolicy,
} from 'cockatiel';
import { endpointKey } from '../discovery/endpoint-stats.js';
import { withDeadline } from '../kernel/deadline.js';
import { EvolithError, TimeoutError } from '../kernel/errors.js';
import type { Call, Link, Next } from '../kernel/placement.js';
import type { PolicyTable } from '../kernel/policy-table.js';
import { attemptsOf, describeAttempts, failureDetails, summarize, Terminal, type AttemptLog } from './attempts.js';
import type { EndpointGuards } from './endpoint-guards.js';
import { isEndpointFailure, wasNotSent } from './failures.js';
import type { RetryBudget } from './retry-budget.js';

export interface RetryOptions {
  /** Attempts after the first, for idempotent methods, unless the topology says otherwise. Default 2. */
  retries: number;
  /** Backoff before the first retry (exponential with decorrelated jitter from there). Default 25 ms. */
  initialDelayMs: number;
  /** Default 1 s. */
  maxDelayMs: number;
  /** Do not start an attempt with less time than this left. Default 10 ms. */
  minTimeLeftMs: number;
  /**
   * Let a call whose request provably never left (connection refused, circuit open at the
   * moment of sending) go to another endpoint even when the method is not idempotent: it
   * cannot run twice. Default true.
   */
  failoverUnsent: boolean;
}

export const DEFAULT_RETRY: RetryOptions = { retries: 2, initialDelayMs: 25, maxDelayMs: 1_000, minTimeLeftMs: 10, failoverUnsent: true };

/** Carries a failure the retry loop should retry, after `delayMs`. */
class RetrySignal extends Error {
  constructor(
    readonly failure: unknown,
    readonly delayMs: number,
  ) {
    super('retry');
  }
}

/** Cockatiel's retry loop sleeps for whatever delay the link decided with the failure. */
class DecidedBackoff implements IBackoffFactory<IRetryBackoffContext<unknown>> {
  next(context: IRetryBackoffContext<unknown>): IBackoff<IRetryBackoffContext<unknown>> {
    const e = 'error' in context.result ? context.result.error : undefined;
    return { duration: e instanceof RetrySignal ? e.delayMs : 0, next: (c) => this.next(c) };
  }
}

// cockatiel 3.2's own isTaskCancelledError tests the bulkhead's marker, so check the marker here.
const isTaskCancelledError = (e: unknown): boolean => e instanceof Error && 'isTaskCancelledError' in e;

export class RetryLink implements Link {
  readonly name = 'retry';
  private readonly loop: RetryPolicy;
  private readonly backoffFactory: IBackoffFactory<unknown>;

  constructor(
    private readonly service: string,
    private readonly policies: PolicyTable,
    private readonly budget: RetryBudget,
    private readonly guards: EndpointGuards,
    private readonly options: RetryOptions,
  ) {
    // Limits are this link's own decisions (see decide()); cockatiel's cap is only a backstop.
    this.loop = makeRetry(handleType(RetrySignal), { maxAttempts: 64, backoff: new DecidedBackoff() });
    this.backoffFactory = new ExponentialBackoff({ initialDelay: options.initialDelayMs, maxDelay: options.maxDelayMs });
  }

  wrap(next: Next): Next {
    return (call) => this.run(call, next);
  }

  private async run(call: Call, next: Next): Promise<unknown> {
    const { method } = call;
    if (call.deadline <= Date.now()) throw new TimeoutError(`no time left to call ${method.fullName}: the caller's deadline has passed`);
    const log = attemptsOf(call);
    const maxRetries = method.idempotent ? this.policies.retriesFor(method, this.options.retries) : 0;
    this.budget.request();
    const controller = new AbortController();
    const work = this.loop.execute(() => this.once(call, next, log, maxRetries), controller.signal);
    try {
      return await withDeadline(work, call.deadline, method.fullName, () => {
        log.timedOut = true;
        controller.abort();
      });
    } catch (err) {
      throw this.finalError(call, log, err);
    }
  }

  private async once(call: Call, next: Next, log: AttemptLog, maxRetries: number): Promise<unknown> {
    // A backoff may end after the deadline fired: the caller has its answer, send nothing more.
    if (log.timedOut || call.deadline <= Date.now()) throw new Terminal(new TimeoutError(`${call.method.fullName}: deadline passed`));
    log.attempts++;
    call.endpoint = undefined;
    try {
      return await next(call);
    } catch (err) {
      throw this.decide(call, log, err, maxRetries);
    }
  }

  /** Decides after a failed attempt: retry (a RetrySignal with its delay) or stop (a Terminal). */
  private decide(call: Call, log: AttemptLog, err: unknown, maxRetries: number): Error {
    if (err instanceof Terminal) return err;
    const { method } = call;
    const stop = (why: string | undefined): Terminal => {
      log.stopped = why;
      return new Terminal(err);
    };
    if (!isEndpointFailure(err, method.service)) return stop(undefined);
    if (!(err instanceof EvolithError)) return stop(undefined);
    const left = call.deadline - Date.now();
    if (left <= this.options.minTimeLeftMs) return stop('no time left before the deadline');
    if (wasNotSent(err) && (method.idempotent || this.options.failoverUnsent) && this.hasUntried(log)) {
      // It never reached the callee: try another endpoint at once, outside the budget.
      log.unsentFailovers++;
      return new RetrySignal(err, 0);
    }
    if (!method.idempotent) {
      // Not sent and nowhere else to send it: "all endpoints unavailable" says it all.
      return stop(wasNotSent(err) ? undefined : `not retried: ${method.fullName} is not idempotent`);
    }
    if (log.retries >= maxRetries) return stop(`gave up after ${log.retries + 1} attempts`);
    if (!this.budget.tryRetry()) return stop(`retry budget for ${this.service} exhausted`);
    log.backoff = log.backoff ? log.backoff.next(undefined) : this.backoffFactory.next(undefined);
    const delay = Math.min(log.backoff.duration, left - this.options.minTimeLeftMs);
    if (delay < 0) return stop('no time left before the deadline');
    log.retries++;
    return new RetrySignal(err, delay);
  }

  private hasUntried(log: AttemptLog): boolean {
    const now = Date.now();
    return log.endpoints.some((e) => {
      const key = endpointKey(e);
      return !log.failures.has(key) && this.guards.peek(key)?.unavailable(now) === undefined;
    });
  }

  private finalError(call: Call, log: AttemptLog, raw: unknown): unknown {
    const { method } = call;
    const err = raw instanceof RetrySignal ? raw.failure : raw instanceof Terminal ? raw.failure : raw;
    if (log.timedOut || isTaskCancelledError(err)) {
      const tried = log.order.length > 0 ? ` after ${log.attempts} attempt${log.attempts === 1 ? '' : 's'} (${describeAttempts(log)})` : '';
      return new TimeoutError(`${method.fullName}: no answer within the ${call.deadline - log.startedAt} ms the call had${tried}`, failureDetails(call, log));
    }
    if (err === undefined || (log.order.length > 0 && isEndpointFailure(err, method.service))) return summarize(call, log, err);
    return err;
  }
}
