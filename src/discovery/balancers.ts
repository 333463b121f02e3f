/**
 * Load balancers: each picks one endpoint for a call from the candidates the policy hands it
 * (already stripped of open circuits and ejected endpoints).
 */
import type { MethodDef } from '../contract/define.js';
import { ConfigError } from '../kernel/errors.js';
import type { Balancer, Endpoint } from '../kernel/plugins.js';
import { EndpointStats, endpointKey } from './endpoint-stats.js';
import { HashRing } from './hash-ring.js';

/** Takes turns, per service: with a steady list every endpoint gets the same share. */
export class RoundRobinBalancer implements Balancer {
  private readonly next = new Map<string, number>();

  pick(endpoints: readonly Endpoint[], method: MethodDef): Endpoint | undefined {
    const n = endpoints.length;
    if (n <= 1) return endpoints[0];
    const i = this.next.get(method.service) ?? 0;
    this.next.set(method.service, (i + 1) % 1_000_000_007);
    return endpoints[i % n];
  }
}

/**
 * Power of two choices: sample two endpoints at random and take the one with fewer calls in
 * flight (then the lower latency). Nearly as good as least-loaded, without herding every
 * client onto the same "least loaded" endpoint at once.
 */
export class PowerOfTwoChoicesBalancer implements Balancer {
  constructor(
    readonly stats: EndpointStats,
    private readonly random: () => number = Math.random,
  ) {}

  pick(endpoints: readonly Endpoint[], _method?: MethodDef, _input?: unknown): Endpoint | undefined {
    const n = endpoints.length;
    if (n <= 1) return endpoints[0];
    const i = Math.floor(this.random() * n);
    let j = Math.floor(this.random() * (n - 1));
    if (j >= i) j++;
    const a = endpoints[i]!;
    const b = endpoints[j]!;
    const sa = this.stats.peek(a);
    const sb = this.stats.peek(b);
    const oa = sa?.outstanding ?? 0;
    const ob = sb?.outstanding ?? 0;
    if (oa !== ob) return oa < ob ? a : b;
    return (sb?.ewmaLatencyMs ?? 0) < (sa?.ewmaLatencyMs ?? 0) ? b : a;
  }
}

/** Extracts the affinity key from a method's input; undefined means "no affinity for this call". */
export type KeyOf = (input: unknown) => string | undefined;

/**
 * Affinity by method, as in the topology: `{ 'warehouse.getProduct': 'id' }` hashes on
 * `input.id` (dotted paths reach into objects); a function may compute the key instead.
 */
export type Affinity = Readonly<Record<string, string | KeyOf>>;

export function keyOfPath(path: string): KeyOf {
  const parts = path.split('.');
  if (parts.some((p) => p === '')) throw new ConfigError(`affinity key "${path}" must be a dotted path such as "id" or "customer.id"`);
  return (input) => {
    let v: unknown = input;
    for (const p of parts) {
      if (v === null || typeof v !== 'object') return undefined;
      v = (v as Record<string, unknown>)[p];
    }
    if (v === undefined || v === null) return undefined;
    return typeof v === 'object' ? JSON.stringify(v) : String(v);
  };
}

export interface ConsistentHashOptions {
  /** Which methods hash on which part of their input. */
  affinity: Affinity;
  /** Used for methods without affinity (or calls without a key). Default: power of two choices. */
  fallback?: Balancer;
  /** Points per endpoint on the ring. Default 160. */
  virtualNodes?: number;
  stats?: EndpointStats;
}

/**
 * Consistent hashing on a key from the call's input, so calls about the same entity land on
 * the same instance (warm caches, fewer conflicts). When an endpoint leaves (or its circuit
 * opens) only its keys move, to the next endpoints on the ring.
 */
export class ConsistentHashBalancer implements Balancer {
  private readonly keys = new Map<string, KeyOf | undefined>();
  /** Picks for calls without a key. */
  readonly fallback: Balancer;
  private readonly virtualNodes: number;
  private readonly byList = new WeakMap<readonly Endpoint[], HashRing>();
  private readonly bySignature = new Map<string, HashRing>();

  constructor(private affinity: Affinity, options: Omit<ConsistentHashOptions, 'affinity'> = {}) {
    this.fallback = options.fallback ?? new PowerOfTwoChoicesBalancer(options.stats ?? new EndpointStats());
    this.virtualNodes = options.virtualNodes ?? 160;
    this.setAffinity(affinity);
  }

  /** Replaces the affinity table (a configuration push). */
  setAffinity(affinity: Affinity): void {
    for (const k of Object.values(affinity)) if (typeof k === 'string') keyOfPath(k);
    this.affinity = affinity;
    this.keys.clear();
  }

  /** The key a call would hash on, or undefined. */
  keyFor(method: MethodDef, input: unknown): string | undefined {
    let k = this.keys.get(method.fullName);
    if (!this.keys.has(method.fullName)) {
      const spec = this.affinity[method.fullName];
      k = spec === undefined ? undefined : typeof spec === 'string' ? keyOfPath(spec) : spec;
      this.keys.set(method.fullName, k);
    }
    return k?.(input);
  }

  pick(endpoints: readonly Endpoint[], method: MethodDef, input: unknown): Endpoint | undefined {
    if (endpoints.length <= 1) return endpoints[0];
    const key = this.keyFor(method, input);
    if (key === undefined) return this.fallback.pick(endpoints, method, input);
    return this.ring(endpoints).lookup(`${method.service}:${key}`);
  }

  private ring(endpoints: readonly Endpoint[]): HashRing {
    let ring = this.byList.get(endpoints);
    if (ring) return ring;
    const signature = endpoints.map(endpointKey).sort().join('\n');
    ring = this.bySignature.get(signature);
    if (ring) {
      // Refresh its place in the LRU order.
      this.bySignature.delete(signature);
    } else {
      ring = new HashRing(endpoints, this.virtualNodes);
    }
    this.bySignature.set(signature, ring);
    if (this.bySignature.size > 64) this.bySignature.delete(this.bySignature.keys().next().value!);
    this.byList.set(endpoints, ring);
    return ring;
  }
}

export type BalancerKind = 'round-robin' | 'p2c';

export interface BalancerOptions {
  /** How calls without affinity are spread. Default `p2c` (power of two choices). */
  kind?: BalancerKind;
  stats: EndpointStats;
  /** Methods with affinity hash on their key; `setAffinity` on the result replaces it live. */
  affinity?: Affinity;
  random?: () => number;
}

/**
 * The balancer a topology asks for: affinity (consistent hashing) for the methods that name a
 * key, `kind` for every other call. Always a ConsistentHashBalancer, so that a configuration
 * push can add affinity to a running client.
 */
export function createBalancer(options: BalancerOptions): ConsistentHashBalancer {
  const base: Balancer =
    options.kind === 'round-robin' ? new RoundRobinBalancer() : new PowerOfTwoChoicesBalancer(options.stats, options.random);
  return new ConsistentHashBalancer(options.affinity ?? {}, { fallback: base, stats: options.stats });
}
