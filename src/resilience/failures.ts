/**
 * Which failures say something about an endpoint, and which may be retried.
 *
 * Conventions for transports (so the policy can tell what happened):
 * - A failure the transport raises itself (connection refused or reset, no answer before the
 *   deadline) is an UnavailableError or TimeoutError without `origin`. Errors rebuilt from the
 *   callee's answer carry the `origin` the callee's kernel stamped on them.
 * - `details.maybeExecuted === false` on an UnavailableError (the RPC transports' convention)
 *   means the request provably never reached the callee's handler (connection refused, server
 *   shutting down, circuit open): another endpoint may take it even when the method is not
 *   idempotent, since it cannot run twice.
 * - `details.reason`, if a string, is a short phrase for messages ("refused connection").
 */
import { ErrorCodes, EvolithError, UnavailableError } from '../kernel/errors.js';
import type { Endpoint } from '../kernel/plugins.js';

const NETWORK: Record<string, { reason: string; notSent: boolean }> = {
  ECONNREFUSED: { reason: 'refused connection', notSent: true },
  ENOTFOUND: { reason: 'host not found', notSent: true },
  EHOSTUNREACH: { reason: 'host unreachable', notSent: true },
  ENETUNREACH: { reason: 'network unreachable', notSent: true },
  EAI_AGAIN: { reason: 'host name lookup failed', notSent: true },
  ECONNRESET: { reason: 'reset the connection', notSent: false },
  EPIPE: { reason: 'closed the connection', notSent: false },
  ECONNABORTED: { reason: 'aborted the connection', notSent: false },
  ETIMEDOUT: { reason: 'connection timed out', notSent: false },
};

/** Turns raw socket errors into UnavailableErrors that say which endpoint did what. */
export function normalizeTransportError(err: unknown, endpoint: Endpoint): unknown {
  if (err instanceof EvolithError || !(err instanceof Error)) return err;
  const code = (err as NodeJS.ErrnoException).code;
  const known = code === undefined ? undefined : NETWORK[code];
  if (!known) return err;
  return new UnavailableError(`${endpoint.service} at ${endpoint.address} ${known.reason}`, {
    reason: known.reason,
    endpoint: endpoint.address,
    maybeExecuted: !known.notSent,
  });
}

/**
 * True when the failure is the endpoint's (it is down, unreachable or too slow) rather than the
 * call's (invalid input, a business refusal) or a service further down the chain (whose own
 * caller already had the chance to retry it: retrying at every hop multiplies load).
 */
export function isEndpointFailure(err: unknown, service: string): boolean {
  if (!(err instanceof EvolithError)) return err !== undefined;
  if (err.code !== ErrorCodes.UNAVAILABLE && err.code !== ErrorCodes.TIMEOUT) return false;
  return err.origin === undefined || err.origin.startsWith(`${service}.`);
}

/** The request never reached the callee, so trying another endpoint cannot run it twice. */
export function wasNotSent(err: unknown): boolean {
  return err instanceof UnavailableError && (err.details as { maybeExecuted?: unknown } | undefined)?.maybeExecuted === false;
}

/** A short description for messages: "10.0.0.2:7001 refused connection". */
export function describeFailure(err: unknown, endpoint: Endpoint): string {
  if (err instanceof EvolithError) {
    const reason = (err.details as { reason?: unknown } | undefined)?.reason;
    if (typeof reason === 'string') return `${endpoint.address} ${reason}`;
    if (err.code === ErrorCodes.TIMEOUT) return `${endpoint.address} timed out`;
    return err.message.includes(endpoint.address) ? err.message : `${endpoint.address}: ${err.message}`;
  }
  return `${endpoint.address}: ${err instanceof Error ? err.message : String(err)}`;
}
