/**
 * What one call went through on its way down a resilient chain: the endpoints it was offered,
 * the ones skipped and why, each failed attempt. The links share it (retry decides from it,
 * choose-endpoint avoids endpoints that failed, the circuit records failures) and the caller
 * reads it in the error message when every attempt failed.
 */
import type { IBackoff } from 'cockatiel';
import { endpointKey } from '../discovery/endpoint-stats.js';
import { EvolithError, TimeoutError, UnavailableError } from '../kernel/errors.js';
import type { Call } from '../kernel/placement.js';
import type { Endpoint } from '../kernel/plugins.js';
import { describeFailure } from './failures.js';

export interface Failure {
  readonly endpoint: Endpoint;
  readonly error: unknown;
}

export class AttemptLog {
  attempts = 0;
  retries = 0;
  unsentFailovers = 0;
  timedOut = false;
  readonly startedAt = Date.now();
  /** The backoff of the latest retry; the next one grows from it. */
  backoff: IBackoff<unknown> | undefined;
  /** Why the retry link stopped trying, for the message. */
  stopped: string | undefined;
  /** The service's endpoint list as the last choice saw it. */
  endpoints: readonly Endpoint[] = [];
  readonly failures = new Map<string, Failure>();
  readonly order: Failure[] = [];
  readonly skipped = new Map<string, { endpoint: Endpoint; reason: string }>();

  failed(endpoint: Endpoint, error: unknown): void {
    const f = { endpoint, error };
    this.failures.set(endpointKey(endpoint), f);
    this.order.push(f);
  }
}

/** The call's attempt log, made by the first link that asks. */
export function attemptsOf(call: Call): AttemptLog {
  return (call.scratch ??= new AttemptLog()) as AttemptLog;
}

/** Marks a failure no link should retry (the caller sees `failure`, or the summary when undefined). */
export class Terminal extends Error {
  constructor(readonly failure: unknown) {
    super('terminal');
  }
}

/** Details attached to the error a caller sees when endpoints failed. */
export interface CallFailureDetails {
  method: string;
  attempts: Array<{ endpoint: string; code: string; message: string }>;
  skipped: Array<{ endpoint: string; reason: string }>;
  /** Why the policy stopped trying. */
  stopped?: string;
}

export function failureDetails(call: Call, log: AttemptLog): CallFailureDetails {
  return {
    method: call.method.fullName,
    attempts: log.order.map((f) => ({
      endpoint: f.endpoint.address,
      code: f.error instanceof EvolithError ? f.error.code : 'ERROR',
      message: f.error instanceof Error ? f.error.message : String(f.error),
    })),
    skipped: [...log.skipped.values()].map((s) => ({ endpoint: s.endpoint.address, reason: s.reason })),
    ...(log.stopped ? { stopped: log.stopped } : {}),
  };
}

export function describeAttempts(log: AttemptLog): string {
  return log.order.map((f) => describeFailure(f.error, f.endpoint)).join('; ');
}

/** "warehouse.freeze: all 2 endpoints unavailable (circuit open on 10.0.0.1:7001; 10.0.0.2:7001 refused connection)". */
export function summarize(call: Call, log: AttemptLog, last: unknown): EvolithError {
  const { method } = call;
  const parts: string[] = [];
  let down = 0;
  const seen = new Set<string>();
  for (const e of log.endpoints) {
    const key = endpointKey(e);
    seen.add(key);
    const f = log.failures.get(key);
    const s = log.skipped.get(key);
    if (f) parts.push(describeFailure(f.error, e));
    else if (s) parts.push(s.reason);
    else continue;
    down++;
  }
  // Endpoints that failed and then left the list still explain the failure.
  for (const [key, f] of log.failures) if (!seen.has(key)) parts.push(describeFailure(f.error, f.endpoint));
  const Type = last instanceof TimeoutError ? TimeoutError : UnavailableError;
  const n = log.endpoints.length;
  const stopped = log.stopped ? `; ${log.stopped}` : '';
  if (n > 0 && down === n) {
    return new Type(`${method.fullName}: all ${n} endpoint${n === 1 ? '' : 's'} unavailable (${parts.join('; ')})${stopped}`, failureDetails(call, log));
  }
  return new Type(`${method.fullName}: ${describeAttempts(log)}${stopped}`, failureDetails(call, log));
}
