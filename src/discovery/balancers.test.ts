import { describe, expect, test } from 'vitest';
import { z } from 'zod';
import { defineContract } from '../contract/define.js';
import type { Endpoint } from '../kernel/plugins.js';
import { ConsistentHashBalancer, createBalancer, keyOfPath, PowerOfTwoChoicesBalancer, RoundRobinBalancer } from './balancers.js';
import { EndpointStats } from './endpoint-stats.js';
import { HashRing } from './hash-ring.js';

const warehouse = defineContract({
  name: 'warehouse',
  version: '1.0.0',
  methods: {
    getProduct: { input: z.object({ id: z.string() }), output: z.unknown(), idempotent: true },
    list: { input: z.object({}), output: z.unknown(), idempotent: true },
  },
});
const { getProduct, list } = warehouse.methods;

const endpoints = (n: number, from = 1): Endpoint[] =>
  Array.from({ length: n }, (_, i) => ({ service: 'warehouse', id: `w${i + from}`, address: `10.0.0.${i + from}:7001` }));

function counts(pick: () => Endpoint | undefined, n: number): Map<string, number> {
  const out = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const e = pick()!;
    out.set(e.id, (out.get(e.id) ?? 0) + 1);
  }
  return out;
}

/** A deterministic random source, so distributions do not depend on luck. */
function seeded(seed = 42): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe('RoundRobinBalancer', () => {
  test('spreads calls exactly evenly and in turn', () => {
    const b = new RoundRobinBalancer();
    const eps = endpoints(3);
    expect([1, 2, 3, 4].map(() => b.pick(eps, list)!.id)).toEqual(['w1', 'w2', 'w3', 'w1']);
    const fresh = new RoundRobinBalancer();
    const c = counts(() => fresh.pick(eps, list), 3_000);
    expect([...c.values()]).toEqual([1000, 1000, 1000]);
  });

  test('handles empty and single lists', () => {
    const b = new RoundRobinBalancer();
    expect(b.pick([], list)).toBeUndefined();
    expect(b.pick(endpoints(1), list)!.id).toBe('w1');
  });
});

describe('PowerOfTwoChoicesBalancer', () => {
  test('never picks the most loaded endpoint and favours the least loaded', () => {
    const stats = new EndpointStats();
    const eps = endpoints(3);
    for (let i = 0; i < 5; i++) stats.start(eps[1]!);
    for (let i = 0; i < 10; i++) stats.start(eps[2]!);
    const b = new PowerOfTwoChoicesBalancer(stats, seeded());
    const c = counts(() => b.pick(eps, list), 3_000);
    // Each pair holds two distinct endpoints: w1 wins 2 of 3 pairs, w2 1 of 3, w3 none.
    expect(c.get('w3')).toBeUndefined();
    expect(c.get('w1')! / 3_000).toBeCloseTo(2 / 3, 1);
    expect(c.get('w2')! / 3_000).toBeCloseTo(1 / 3, 1);
  });

  test('spreads evenly when loads are equal', () => {
    const b = new PowerOfTwoChoicesBalancer(new EndpointStats(), seeded(7));
    const c = counts(() => b.pick(endpoints(4), list), 4_000);
    for (const v of c.values()) expect(v).toBeGreaterThan(800);
  });

  test('breaks a tie in load by lower latency', async () => {
    const stats = new EndpointStats();
    const eps = endpoints(2);
    stats.start(eps[0]!)(false);
    const slow = stats.start(eps[1]!);
    await new Promise((r) => setTimeout(r, 20));
    slow(false);
    const b = new PowerOfTwoChoicesBalancer(stats, seeded());
    expect(counts(() => b.pick(eps, list), 100).get('w1')).toBe(100);
  });
});

describe('ConsistentHashBalancer', () => {
  const keys = Array.from({ length: 10_000 }, (_, i) => `product-${i}`);

  test('sends the same key to the same endpoint, and different keys across all endpoints evenly', () => {
    const b = new ConsistentHashBalancer({ 'warehouse.getProduct': 'id' });
    const eps = endpoints(5);
    const first = b.pick(eps, getProduct, { id: 'p-17' })!;
    for (let i = 0; i < 20; i++) expect(b.pick([...eps], getProduct, { id: 'p-17' })).toBe(first);
    const c = new Map<string, number>();
    for (const k of keys) {
      const e = b.pick(eps, getProduct, { id: k })!;
      c.set(e.id, (c.get(e.id) ?? 0) + 1);
    }
    expect(c.size).toBe(5);
    for (const v of c.values()) expect(Math.abs(v - 2_000)).toBeLessThan(2_000 * 0.3);
  });

  test('adding an endpoint moves about 1/n of the keys, all of them to the new endpoint', () => {
    const b = new ConsistentHashBalancer({ 'warehouse.getProduct': 'id' });
    const before = endpoints(9);
    const after = endpoints(10);
    let moved = 0;
    for (const k of keys) {
      const x = b.pick(before, getProduct, { id: k })!;
      const y = b.pick(after, getProduct, { id: k })!;
      if (x.id !== y.id) {
        moved++;
        expect(y.id).toBe('w10');
      }
    }
    expect(moved / keys.length).toBeGreaterThan(0.05);
    expect(moved / keys.length).toBeLessThan(0.15); // ideal: 1/10
  });

  test('removing an endpoint moves only the keys it owned', () => {
    const b = new ConsistentHashBalancer({ 'warehouse.getProduct': 'id' });
    const all = endpoints(10);
    const without = all.filter((e) => e.id !== 'w4');
    let moved = 0;
    for (const k of keys) {
      const x = b.pick(all, getProduct, { id: k })!;
      const y = b.pick(without, getProduct, { id: k })!;
      if (x.id === 'w4') moved++;
      else expect(y.id).toBe(x.id);
    }
    expect(moved / keys.length).toBeGreaterThan(0.05);
    expect(moved / keys.length).toBeLessThan(0.15);
  });

  test('the ring does not depend on the order of the list or on addresses', () => {
    const eps = endpoints(6);
    const moved = eps.map((e) => ({ ...e, address: e.address.replace('7001', '8001') })).reverse();
    const a = new HashRing(eps);
    const b = new HashRing(moved);
    for (const k of keys.slice(0, 500)) expect(a.lookup(k)!.id).toBe(b.lookup(k)!.id);
  });

  test('methods without affinity, and calls without a key, use the fallback', () => {
    const b = new ConsistentHashBalancer({ 'warehouse.getProduct': 'id' }, { fallback: new RoundRobinBalancer() });
    const eps = endpoints(3);
    expect([1, 2, 3].map(() => b.pick(eps, list, {})!.id)).toEqual(['w1', 'w2', 'w3']);
    expect(b.pick(eps, getProduct, {})!.id).toBe('w1');
    expect(b.keyFor(getProduct, { id: 'x' })).toBe('x');
  });

  test('keys may be dotted paths or functions; a bad path is a configuration error', () => {
    expect(keyOfPath('customer.id')({ customer: { id: 42 } })).toBe('42');
    expect(keyOfPath('customer.id')({ customer: null })).toBeUndefined();
    expect(keyOfPath('sku')({ sku: { a: 1 } })).toBe('{"a":1}');
    expect(() => keyOfPath('a..b')).toThrow(/dotted path/);
    const b = new ConsistentHashBalancer({ 'warehouse.getProduct': (input) => (input as { id: string }).id.toUpperCase() });
    expect(b.keyFor(getProduct, { id: 'abc' })).toBe('ABC');
  });
});

describe('createBalancer', () => {
  test('power of two choices unless told otherwise, with affinity layered on top and replaceable live', () => {
    const stats = new EndpointStats();
    expect(createBalancer({ stats }).fallback).toBeInstanceOf(PowerOfTwoChoicesBalancer);
    const b = createBalancer({ stats, kind: 'round-robin' });
    expect(b.fallback).toBeInstanceOf(RoundRobinBalancer);
    const eps = endpoints(3);
    expect([1, 2, 3].map(() => b.pick(eps, getProduct, { id: 'same' })!.id)).toEqual(['w1', 'w2', 'w3']);
    b.setAffinity({ 'warehouse.getProduct': 'id' });
    const home = b.pick(eps, getProduct, { id: 'same' })!.id;
    expect([1, 2, 3].map(() => b.pick(eps, getProduct, { id: 'same' })!.id)).toEqual([home, home, home]);
    expect([1, 2, 3].map(() => b.pick(eps, list, {})!.id)).toEqual(['w1', 'w2', 'w3']);
  });
});

describe('EndpointStats', () => {
  test('tracks outstanding calls, latency, consecutive failures and a windowed error rate', () => {
    let t = 0;
    const stats = new EndpointStats({ windowMs: 1_000, now: () => t });
    const [e] = endpoints(1);
    const a = stats.start(e!);
    const b = stats.start(e!);
    expect(stats.outstanding(e!)).toBe(2);
    a(true);
    a(true); // a second finish is ignored
    expect(stats.get(e!)).toMatchObject({ outstanding: 1, consecutiveFailures: 1, total: 1 });
    b(true);
    stats.start(e!)(false);
    const s = stats.get(e!);
    expect(s.consecutiveFailures).toBe(0);
    expect(s.recent).toEqual({ successes: 1, failures: 2 });
    expect(s.errorRate).toBeCloseTo(2 / 3);
    expect(s.ewmaLatencyMs).toBeGreaterThanOrEqual(0);
    t += 1_100; // the window slides past every sample
    expect(stats.get(e!).recent).toEqual({ successes: 0, failures: 0 });
    expect(stats.get(e!).errorRate).toBe(0);
  });

  test('retain forgets endpoints that left the list, unless calls are in flight', () => {
    const stats = new EndpointStats();
    const [a, b, c] = endpoints(3);
    stats.start(a!)(false);
    stats.start(b!)(false);
    stats.start(c!);
    stats.retain('warehouse', [a!]);
    expect(stats.peek(a!)).toBeDefined();
    expect(stats.peek(b!)).toBeUndefined();
    expect(stats.peek(c!)).toBeDefined();
  });
});
