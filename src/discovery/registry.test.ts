import { describe, expect, test } from 'vitest';
import { ValidationError } from '../kernel/errors.js';
import { Registry, type ServiceEndpoint } from './registry.js';

function clock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms) };
}

const wh = (n: number, extra: object = {}) => ({ id: `warehouse-${n}`, service: 'warehouse', version: '1.0.0', address: `10.0.0.${n}:7001`, ...extra });

describe('Registry', () => {
  test('serves registered, ready instances sorted by id, with version and metadata', () => {
    const r = new Registry({ sweepIntervalMs: 0 });
    r.register(wh(2, { metadata: { zone: 'b' } }));
    r.register(wh(1));
    expect(r.endpoints('warehouse')).toEqual([
      { service: 'warehouse', id: 'warehouse-1', address: '10.0.0.1:7001', version: '1.0.0' },
      { service: 'warehouse', id: 'warehouse-2', address: '10.0.0.2:7001', version: '1.0.0', metadata: { zone: 'b' } },
    ]);
    expect(r.endpoints('orders')).toEqual([]);
  });

  test('a registered instance that is not ready is known but not handed to clients', () => {
    const r = new Registry({ sweepIntervalMs: 0 });
    r.register(wh(1, { ready: false }));
    expect(r.endpoints('warehouse')).toEqual([]);
    expect(r.status()).toMatchObject([{ id: 'warehouse-1', ready: false, health: 'passing' }]);
    expect(r.setReady('warehouse-1', true)).toBe(true);
    expect(r.endpoints('warehouse').map((e) => e.id)).toEqual(['warehouse-1']);
    r.setReady('warehouse-1', false);
    expect(r.endpoints('warehouse')).toEqual([]);
    expect(r.setReady('nobody', true)).toBe(false);
  });

  test('an instance whose heartbeats stop expires after its TTL; heartbeats keep it alive', () => {
    const c = clock();
    const r = new Registry({ sweepIntervalMs: 0, now: c.now, defaultTtlMs: 1_000 });
    r.register(wh(1));
    r.register(wh(2, { ttlMs: 10_000 }));
    for (let i = 0; i < 5; i++) {
      c.advance(800);
      expect(r.heartbeat('warehouse-1')).toBe(true);
      r.sweep();
    }
    expect(r.endpoints('warehouse')).toHaveLength(2);
    c.advance(1_001);
    r.sweep();
    expect(r.endpoints('warehouse').map((e) => e.id)).toEqual(['warehouse-2']);
    expect(r.instance('warehouse-1')).toMatchObject({ health: 'expired', expiredAt: c.now() });
    // An expired instance must register again: its heartbeat is refused.
    expect(r.heartbeat('warehouse-1')).toBe(false);
    r.register(wh(1));
    expect(r.endpoints('warehouse')).toHaveLength(2);
    expect(r.instance('warehouse-1')).toMatchObject({ health: 'passing' });
  });

  test('a registry that was itself paused does not expire the instances it could not hear from', () => {
    const c = clock();
    const r = new Registry({ sweepIntervalMs: 0, now: c.now, defaultTtlMs: 1_000 });
    r.register(wh(1));
    r.register(wh(2));
    // The registry process was stopped for 5 s; its sweep runs 5 s late, before the queued heartbeats.
    c.advance(5_000);
    r.sweep(5_000);
    expect(r.endpoints('warehouse')).toHaveLength(2);
    // The pause is forgiven once: an instance that then stays silent for its TTL still expires.
    c.advance(1_001);
    r.sweep();
    expect(r.endpoints('warehouse')).toHaveLength(0);
  });

  test('expired instances are reaped from status after reapAfterMs', () => {
    const c = clock();
    const r = new Registry({ sweepIntervalMs: 0, now: c.now, defaultTtlMs: 100, reapAfterMs: 1_000 });
    r.register(wh(1));
    c.advance(101);
    r.sweep();
    expect(r.status()).toHaveLength(1);
    c.advance(1_001);
    r.sweep();
    expect(r.status()).toHaveLength(0);
  });

  test('the change feed gets the new list on every change, and nothing when clients would see no difference', () => {
    const c = clock();
    const r = new Registry({ sweepIntervalMs: 0, now: c.now, defaultTtlMs: 1_000 });
    const seen: string[][] = [];
    const indexes: number[] = [];
    const stop = r.watch('warehouse', (list) => seen.push(list.map((e) => e.id)));
    r.onChange((l) => indexes.push(l.index));
    r.register(wh(1));
    r.register(wh(2, { ready: false }));
    r.heartbeat('warehouse-1');
    r.register(wh(1)); // same data again: no change
    r.setReady('warehouse-2', true);
    r.register(wh(1, { address: '10.0.0.9:7001' })); // moved: a change
    r.deregister('warehouse-1');
    c.advance(1_001);
    r.sweep(); // warehouse-2 expires
    r.register({ id: 'orders-1', service: 'orders', version: '1', address: 'localhost:7002' });
    expect(seen).toEqual([['warehouse-1'], ['warehouse-1', 'warehouse-2'], ['warehouse-1', 'warehouse-2'], ['warehouse-2'], []]);
    expect(indexes).toEqual([1, 2, 3, 4, 5, 1]);
    stop();
    r.register(wh(3));
    expect(seen).toHaveLength(5);
  });

  test('re-registration keeps registeredAt and renews the heartbeat', () => {
    const c = clock();
    const r = new Registry({ sweepIntervalMs: 0, now: c.now });
    const first = r.register(wh(1));
    c.advance(500);
    const again = r.register(wh(1));
    expect(again.registeredAt).toBe(first.registeredAt);
    expect(again.lastHeartbeat).toBe(first.lastHeartbeat + 500);
  });

  test('moving an instance to another service updates both lists', () => {
    const r = new Registry({ sweepIntervalMs: 0 });
    r.register(wh(1));
    r.register({ ...wh(1), service: 'orders' });
    expect(r.endpoints('warehouse')).toEqual([]);
    expect(r.endpoints('orders').map((e) => e.id)).toEqual(['warehouse-1']);
  });

  test('refuses registrations it could not serve, naming every problem', () => {
    const r = new Registry({ sweepIntervalMs: 0 });
    let err: unknown;
    try {
      r.register({ id: 'a b', service: 'Warehouse', version: '', address: 'nohost', ttlMs: -1 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as ValidationError).issues.map((i) => i.path).sort()).toEqual(['address', 'id', 'service', 'ttlMs', 'version']);
    expect(() => r.register(wh(1, { address: '10.0.0.1:70000' }))).toThrow(/outside 1..65535/);
    expect(() => r.register(wh(1, { address: '[::1]:7001' }))).not.toThrow();
  });

  test('endpoint objects are frozen so no client can corrupt the shared list', () => {
    const r = new Registry({ sweepIntervalMs: 0 });
    r.register(wh(1));
    const list = r.endpoints('warehouse') as ServiceEndpoint[];
    expect(Object.isFrozen(list)).toBe(true);
    expect(Object.isFrozen(list[0])).toBe(true);
  });
});
