/**
 * What a client knows about each endpoint from its own calls: requests in flight, latency
 * (EWMA), recent successes and failures. Balancers read it; the policy (or a transport used
 * without one) feeds it through `start()` at the beginning of each call and the returned
 * `finish` at its end.
 */
import type { Endpoint } from '../kernel/plugins.js';

export interface EndpointStat {
  readonly key: string;
  readonly service: string;
  readonly id: string;
  readonly address: string;
  /** Calls started and not yet finished. */
  outstanding: number;
  /** Exponentially weighted moving average of call latency, ms; 0 until the first call ends. */
  ewmaLatencyMs: number;
  /** Consecutive endpoint failures since the last success. */
  consecutiveFailures: number;
  total: number;
  lastFailureAt: number | undefined;
  /** Counts over the sliding window (see `windowMs`). */
  readonly recent: { successes: number; failures: number };
  /** failures / (successes + failures) over the sliding window; 0 without calls. */
  readonly errorRate: number;
}

/** Ends a call: `failed` when the endpoint failed (unreachable, timed out), not when the callee refused the call on business grounds. */
export type FinishCall = (failed: boolean) => void;

export interface EndpointStatsOptions {
  /** Sliding window for recent counts and error rate. Default 10 s. */
  windowMs?: number;
  /** EWMA weight of the newest sample. Default 0.3. */
  alpha?: number;
  now?: () => number;
}

const BUCKETS = 10;

class Stat implements EndpointStat {
  outstanding = 0;
  ewmaLatencyMs = 0;
  consecutiveFailures = 0;
  total = 0;
  lastFailureAt: number | undefined = undefined;
  readonly ok = new Uint32Array(BUCKETS);
  readonly bad = new Uint32Array(BUCKETS);
  /** The bucket sequence number each slot currently holds. */
  readonly slot = new Float64Array(BUCKETS).fill(-1);

  constructor(
    readonly key: string,
    readonly service: string,
    readonly id: string,
    readonly address: string,
    private readonly owner: EndpointStats,
  ) {}

  get recent(): { successes: number; failures: number } {
    return this.owner.counts(this);
  }

  get errorRate(): number {
    const r = this.recent;
    const n = r.successes + r.failures;
    return n === 0 ? 0 : r.failures / n;
  }
}

/** Stable identity of an endpoint across endpoint-list updates (lists are rebuilt on every change). */
export function endpointKey(e: Endpoint): string {
  return `${e.service}/${e.id}@${e.address}`;
}

export class EndpointStats {
  private readonly stats = new Map<string, Stat>();
  private readonly bucketMs: number;
  private readonly alpha: number;
  private readonly now: () => number;

  constructor(options: EndpointStatsOptions = {}) {
    this.bucketMs = (options.windowMs ?? 10_000) / BUCKETS;
    this.alpha = options.alpha ?? 0.3;
    this.now = options.now ?? Date.now;
  }

  /** The endpoint's statistics, created on first use. */
  get(e: Endpoint): EndpointStat {
    return this.stat(e);
  }

  /** Statistics if the endpoint was ever used. */
  peek(e: Endpoint): EndpointStat | undefined {
    return this.stats.get(endpointKey(e));
  }

  outstanding(e: Endpoint): number {
    return this.stats.get(endpointKey(e))?.outstanding ?? 0;
  }

  /** Hook at the start of a call; call the returned function exactly once when it ends. */
  start(e: Endpoint): FinishCall {
    const s = this.stat(e);
    s.outstanding++;
    const t0 = performance.now();
    let done = false;
    return (failed: boolean) => {
      if (done) return;
      done = true;
      s.outstanding--;
      s.total++;
      const ms = performance.now() - t0;
      s.ewmaLatencyMs = s.ewmaLatencyMs === 0 ? ms : s.ewmaLatencyMs + this.alpha * (ms - s.ewmaLatencyMs);
      const i = this.bucket(s);
      if (failed) {
        s.bad[i]!++;
        s.consecutiveFailures++;
        s.lastFailureAt = this.now();
      } else {
        s.ok[i]!++;
        s.consecutiveFailures = 0;
      }
    };
  }

  /** Forgets endpoints of `service` that are not in `current` (and have no call in flight). */
  retain(service: string, current: readonly Endpoint[]): void {
    const keep = new Set(current.map(endpointKey));
    for (const [k, s] of this.stats) if (s.service === service && !keep.has(k) && s.outstanding === 0) this.stats.delete(k);
  }

  /** A plain-data view for status pages and tests. */
  snapshot(): Array<Omit<EndpointStat, 'recent'> & { successes: number; failures: number }> {
    return [...this.stats.values()].map((s) => {
      const r = this.counts(s);
      return {
        key: s.key,
        service: s.service,
        id: s.id,
        address: s.address,
        outstanding: s.outstanding,
        ewmaLatencyMs: s.ewmaLatencyMs,
        consecutiveFailures: s.consecutiveFailures,
        total: s.total,
        lastFailureAt: s.lastFailureAt,
        errorRate: s.errorRate,
        successes: r.successes,
        failures: r.failures,
      };
    });
  }

  /** @internal */
  counts(s: Stat): { successes: number; failures: number } {
    const seq = Math.floor(this.now() / this.bucketMs);
    let successes = 0;
    let failures = 0;
    for (let i = 0; i < BUCKETS; i++) {
      if (s.slot[i]! > seq - BUCKETS) {
        successes += s.ok[i]!;
        failures += s.bad[i]!;
      }
    }
    return { successes, failures };
  }

  private stat(e: Endpoint): Stat {
    const key = endpointKey(e);
    let s = this.stats.get(key);
    if (!s) this.stats.set(key, (s = new Stat(key, e.service, e.id, e.address, this)));
    return s;
  }

  private bucket(s: Stat): number {
    const seq = Math.floor(this.now() / this.bucketMs);
    const i = seq % BUCKETS;
    if (s.slot[i] !== seq) {
      s.slot[i] = seq;
      s.ok[i] = 0;
      s.bad[i] = 0;
    }
    return i;
  }
}
