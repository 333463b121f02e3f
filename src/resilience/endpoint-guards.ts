/**
 * The guards (circuit breaker + outlier ejection) of every endpoint a process has called, and
 * the per-endpoint statistics beside them: one per process, shared by every callee's chain, so
 * what one call learns about an endpoint the next call to it knows.
 */
import type { Logger } from 'pino';
import { EndpointStats, endpointKey } from '../discovery/endpoint-stats.js';
import type { Endpoint } from '../kernel/plugins.js';
import { EndpointGuard, type CircuitOptions, type CircuitStateName, type EjectionOptions } from './endpoint-guard.js';

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

export class EndpointGuards {
  private readonly guards = new Map<string, EndpointGuard>();
  private readonly lastLists = new Map<string, readonly Endpoint[]>();

  constructor(
    readonly stats: EndpointStats,
    readonly circuit: CircuitOptions,
    readonly ejection: EjectionOptions,
    private readonly log: Logger,
  ) {}

  /** The guard of an endpoint, created on first use. */
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

  peek(key: string): EndpointGuard | undefined {
    return this.guards.get(key);
  }

  /** Drops circuit and statistics of endpoints that left the service's list (lists are new objects on every change). */
  observe(service: string, current: readonly Endpoint[]): void {
    if (this.lastLists.get(service) === current) return;
    this.lastLists.set(service, current);
    const keep = new Set(current.map(endpointKey));
    for (const [key, g] of this.guards) if (g.endpoint.service === service && !keep.has(key)) this.guards.delete(key);
    this.stats.retain(service, current);
  }

  /** Ejects an endpoint that keeps failing, never more than `maxPercent` of its service's endpoints. */
  maybeEject(guard: EndpointGuard, endpoints: readonly Endpoint[]): void {
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
    this.log.warn({ service: guard.endpoint.service, endpoint: guard.endpoint.address, ms, consecutiveFailures: stat.consecutiveFailures }, 'endpoint ejected');
  }

  /**
   * Why none of `endpoints` may take a call now (each ejected or its circuit open), or
   * undefined when one may. An endpoint not called yet may.
   */
  noneAvailable(endpoints: readonly Endpoint[]): string | undefined {
    if (endpoints.length === 0) return 'no instance registered';
    const now = Date.now();
    const reasons: string[] = [];
    for (const e of endpoints) {
      const why = this.guards.get(endpointKey(e))?.unavailable(now);
      if (why === undefined) return undefined;
      reasons.push(why);
    }
    return reasons.join('; ');
  }

  /** Circuit, ejection and statistics of every endpoint called so far. */
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
}
