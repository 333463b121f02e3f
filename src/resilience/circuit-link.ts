/**
 * The circuit breaker of the endpoint chosen for this attempt (cockatiel, per endpoint): it
 * fails fast while the endpoint keeps failing and lets one probe through after a pause. Around
 * the attempt it keeps the endpoint's statistics (calls in flight, latency, failures) that the
 * balancer reads, ejects an endpoint that keeps failing, turns raw socket errors into typed
 * ones that name the endpoint, and records the failure in the call's attempt log.
 */
import { isBrokenCircuitError } from 'cockatiel';
import { UnavailableError } from '../kernel/errors.js';
import type { Call, Link, Next } from '../kernel/placement.js';
import { attemptsOf } from './attempts.js';
import type { EndpointGuards } from './endpoint-guards.js';
import { isEndpointFailure, normalizeTransportError } from './failures.js';

// cockatiel 3.2's own isIsolatedCircuitError tests the bulkhead's marker, so check the marker here.
const isIsolatedCircuitError = (e: unknown): boolean => e instanceof Error && 'isIsolatedCircuitError' in e;

export class CircuitLink implements Link {
  readonly name = 'circuit';

  constructor(
    private readonly service: string,
    private readonly guards: EndpointGuards,
  ) {}

  wrap(next: Next): Next {
    return (call) => this.attempt(call, next);
  }

  private async attempt(call: Call, next: Next): Promise<unknown> {
    const endpoint = call.endpoint;
    if (!endpoint) throw new Error(`the chain to ${this.service} has a circuit link but no link before it chooses an endpoint`);
    const guard = this.guards.guard(endpoint);
    const stats = this.guards.stats;
    try {
      const out = await guard.breaker.execute(async () => {
        const finish = stats.start(endpoint);
        try {
          const value = await next(call);
          finish(false);
          return value;
        } catch (raw) {
          const err = normalizeTransportError(raw, endpoint);
          finish(isEndpointFailure(err, this.service));
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
      if (isEndpointFailure(err, this.service)) {
        const log = attemptsOf(call);
        this.guards.maybeEject(guard, log.endpoints);
        log.failed(endpoint, err);
      }
      throw err;
    }
  }
}
