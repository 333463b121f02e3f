/**
 * Call policies from the topology (`policies:` in evolith.yaml), keyed `service.method`,
 * `service` or `*`; the most specific key wins. Every link that needs a setting (the deadline
 * the kernel computes, retries, bulkheads) reads it here, so a live edit of the file reaches
 * every call in the process, wherever its callee runs.
 *
 * For timeouts the contract's own `timeoutMs` sits between `service` and `*`: a method's
 * author knows better than a blanket default, and an operator naming the service or method
 * knows better than the author. Bulkheads are per callee service, so they read `service`
 * then `*` only.
 */
import type { MethodDef } from '../contract/define.js';
import { ConfigError } from './errors.js';

export const DEFAULT_TIMEOUT_MS = 10_000;

export interface MethodPolicy {
  timeoutMs?: number;
  /** Attempts after the first, for idempotent methods only. */
  retries?: number;
  /** Calls in flight into the callee before further calls queue (bulkhead, per service). */
  maxConcurrent?: number;
  /** Calls waiting for a bulkhead slot before further calls are refused. */
  maxQueue?: number;
}

export type PolicyOverrides = Readonly<Record<string, MethodPolicy>>;

export interface BulkheadSize {
  maxConcurrent: number;
  maxQueue: number;
}

/** Throws a ConfigError naming every bad value, so a bad configuration push is refused whole. */
export function checkOverrides(overrides: PolicyOverrides): void {
  const problems: string[] = [];
  const check = (key: string, field: string, v: unknown, min: number): void => {
    if (v !== undefined && !(Number.isInteger(v) && (v as number) >= min)) problems.push(`${key}.${field}: must be an integer ≥ ${min}`);
  };
  for (const [key, o] of Object.entries(overrides)) {
    if (o === null || typeof o !== 'object') {
      problems.push(`${key}: must be a mapping`);
      continue;
    }
    check(key, 'timeoutMs', o.timeoutMs, 1);
    check(key, 'retries', o.retries, 0);
    check(key, 'maxConcurrent', o.maxConcurrent, 1);
    check(key, 'maxQueue', o.maxQueue, 0);
  }
  if (problems.length > 0) throw new ConfigError(`invalid policy overrides:\n  ${problems.join('\n  ')}`);
}

/** The live policy settings of one process. */
export class PolicyTable {
  private overrides: PolicyOverrides = {};
  private readonly timeouts = new Map<MethodDef, number>();
  private readonly listeners = new Set<() => void>();
  /** Bumped on every `set`: links that cache derived state compare it. */
  version = 0;

  constructor(
    overrides: PolicyOverrides = {},
    private readonly defaultTimeoutMs = DEFAULT_TIMEOUT_MS,
  ) {
    this.set(overrides);
  }

  /** Replaces every override at once; calls started from now on use the new values. */
  set(overrides: PolicyOverrides): void {
    checkOverrides(overrides);
    this.overrides = overrides;
    this.timeouts.clear();
    this.version++;
    for (const l of this.listeners) l();
  }

  get current(): PolicyOverrides {
    return this.overrides;
  }

  /** Called after every `set` (bulkheads resize themselves from it). */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  timeoutFor(method: MethodDef): number {
    let t = this.timeouts.get(method);
    if (t === undefined) {
      const p = this.overrides;
      t = p[method.fullName]?.timeoutMs ?? p[method.service]?.timeoutMs ?? method.timeoutMs ?? p['*']?.timeoutMs ?? this.defaultTimeoutMs;
      this.timeouts.set(method, t);
    }
    return t;
  }

  retriesFor(method: MethodDef, fallback: number): number {
    const p = this.overrides;
    return p[method.fullName]?.retries ?? p[method.service]?.retries ?? p['*']?.retries ?? fallback;
  }

  bulkheadFor(service: string, fallback: BulkheadSize): BulkheadSize {
    const s = this.overrides[service];
    const all = this.overrides['*'];
    return {
      maxConcurrent: s?.maxConcurrent ?? all?.maxConcurrent ?? fallback.maxConcurrent,
      maxQueue: s?.maxQueue ?? all?.maxQueue ?? fallback.maxQueue,
    };
  }

  /** Keys that set a bulkhead on a single method, which has no effect: bulkheads are per service. */
  ignoredBulkheadKeys(): string[] {
    return Object.entries(this.overrides)
      .filter(([key, o]) => key.includes('.') && (o.maxConcurrent !== undefined || o.maxQueue !== undefined))
      .map(([key]) => key);
  }
}
