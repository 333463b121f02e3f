/**
 * Policy overrides from the topology (`policies:` in evolith.yaml), keyed `service.method`,
 * `service` or `*`; the most specific key wins. For timeouts the contract's own `timeoutMs`
 * sits between `service` and `*` (as in the kernel's LocalPolicy): a method's author knows
 * better than a blanket default, and an operator naming the service or method knows better
 * than the author. Bulkheads are per callee service, so they read `service` then `*` only.
 */
import type { MethodDef } from '../contract/define.js';
import { ConfigError } from '../kernel/errors.js';

/** The same fields as the topology's `policies` entries, plus the bulkhead's queue. */
export interface CallOverrides {
  timeoutMs?: number;
  /** Attempts after the first, for idempotent methods only. */
  retries?: number;
  /** Calls in flight into the callee before further calls queue (bulkhead). */
  maxConcurrent?: number;
  /** Calls waiting for a bulkhead slot before further calls are refused. */
  maxQueue?: number;
}

export type PolicyOverrides = Readonly<Record<string, CallOverrides>>;

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

/** Keys that set a bulkhead on a single method, which has no effect: bulkheads are per service. */
export function ignoredBulkheadKeys(overrides: PolicyOverrides): string[] {
  return Object.entries(overrides)
    .filter(([key, o]) => key.includes('.') && (o.maxConcurrent !== undefined || o.maxQueue !== undefined))
    .map(([key]) => key);
}

export function resolveTimeout(overrides: PolicyOverrides, method: MethodDef, fallback: number): number {
  return (
    overrides[method.fullName]?.timeoutMs ?? overrides[method.service]?.timeoutMs ?? method.timeoutMs ?? overrides['*']?.timeoutMs ?? fallback
  );
}

export function resolveRetries(overrides: PolicyOverrides, method: MethodDef, fallback: number): number {
  return overrides[method.fullName]?.retries ?? overrides[method.service]?.retries ?? overrides['*']?.retries ?? fallback;
}

export interface BulkheadSize {
  maxConcurrent: number;
  maxQueue: number;
}

export function resolveBulkhead(overrides: PolicyOverrides, service: string, fallback: BulkheadSize): BulkheadSize {
  const s = overrides[service];
  const all = overrides['*'];
  return {
    maxConcurrent: s?.maxConcurrent ?? all?.maxConcurrent ?? fallback.maxConcurrent,
    maxQueue: s?.maxQueue ?? all?.maxQueue ?? fallback.maxQueue,
  };
}
