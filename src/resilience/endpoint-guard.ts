/**
 * Per-endpoint protection: a circuit breaker (cockatiel) that fails fast once an endpoint keeps
 * failing and lets one probe call through after a pause, and outlier ejection that takes an
 * endpoint out of the balancing set for a period that grows each time it is ejected again.
 */
import { circuitBreaker, CircuitState, ConsecutiveBreaker, handleWhen, type CircuitBreakerPolicy } from 'cockatiel';
import type { Endpoint } from '../kernel/plugins.js';
import { isEndpointFailure } from './failures.js';

export interface CircuitOptions {
  /** Consecutive endpoint failures that open the circuit. Default 5. */
  consecutiveFailures: number;
  /** How long an open circuit refuses calls before it lets one probe through. Default 5 s. */
  halfOpenAfterMs: number;
}

export interface EjectionOptions {
  /** Consecutive endpoint failures that eject it. Default 5. */
  consecutiveFailures: number;
  /** First ejection lasts this long; the n-th lasts n times as long. Default 10 s. */
  baseMs: number;
  /** Default 5 min. */
  maxMs: number;
  /** Never eject more than this share of a service's endpoints (and never its only one). Default 50. */
  maxPercent: number;
}

export type CircuitStateName = 'closed' | 'open' | 'half-open' | 'isolated';

const STATE_NAMES: Record<CircuitState, CircuitStateName> = {
  [CircuitState.Closed]: 'closed',
  [CircuitState.Open]: 'open',
  [CircuitState.HalfOpen]: 'half-open',
  [CircuitState.Isolated]: 'isolated',
};

export class EndpointGuard {
  readonly breaker: CircuitBreakerPolicy;
  /** Epoch ms until which the endpoint is ejected (0: not ejected). */
  ejectedUntil = 0;
  /** Ejections since the endpoint last answered well; scales the next ejection. */
  ejections = 0;
  private openedAt = 0;

  constructor(
    readonly endpoint: Endpoint,
    private readonly circuit: CircuitOptions,
    onStateChange?: (guard: EndpointGuard, state: CircuitStateName) => void,
  ) {
    this.breaker = circuitBreaker(
      handleWhen((err) => isEndpointFailure(err, endpoint.service)),
      { halfOpenAfter: circuit.halfOpenAfterMs, breaker: new ConsecutiveBreaker(circuit.consecutiveFailures) },
    );
    this.breaker.onBreak(() => {
      this.openedAt = Date.now();
    });
    if (onStateChange) this.breaker.onStateChange((s) => onStateChange(this, STATE_NAMES[s]));
  }

  get circuitState(): CircuitStateName {
    return STATE_NAMES[this.breaker.state];
  }

  /** Why the endpoint may not take a call now; undefined when it may (an open circuit past its pause takes one probe). */
  unavailable(now: number): string | undefined {
    const address = this.endpoint.address;
    if (now < this.ejectedUntil) return `${address} ejected for another ${this.ejectedUntil - now} ms after repeated failures`;
    switch (this.breaker.state) {
      case CircuitState.Closed:
        return undefined;
      case CircuitState.Open:
        return now - this.openedAt >= this.circuit.halfOpenAfterMs ? undefined : `circuit open on ${address}`;
      case CircuitState.HalfOpen:
        return `circuit half-open on ${address} (a probe call is in flight)`;
      default:
        return `circuit held open on ${address}`;
    }
  }

  /** Ejects the endpoint for its next backoff period; returns the duration. */
  eject(now: number, options: EjectionOptions): number {
    this.ejections++;
    const ms = Math.min(options.maxMs, options.baseMs * this.ejections);
    this.ejectedUntil = now + ms;
    return ms;
  }

  succeeded(): void {
    this.ejections = 0;
  }
}
