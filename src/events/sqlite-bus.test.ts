import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, test } from 'vitest';
import { describeBusContract, envelope, eventually, sleep, type BusFixture } from './bus-contract.test-helpers.js';
import { SqliteEventBus, type SqliteEventBusOptions } from './sqlite-bus.js';

const TUNING: SqliteEventBusOptions = { pollIntervalMs: 20, leaseMs: 1_000, retry: { initialMs: 30, maxMs: 300 }, closeTimeoutMs: 2_000, synchronous: 'normal' };

function fixture(options: SqliteEventBusOptions = TUNING): BusFixture & { file: string } {
  const dir = mkdtempSync(join(tmpdir(), 'evolith-bus-'));
  const file = join(dir, 'events.sqlite');
  return {
    file,
    redeliveryMs: options.leaseMs ?? 30_000,
    open: async () => new SqliteEventBus(file, options),
    child: () => ({ kind: 'sqlite', file, options }),
    dispose: async () => rmSync(dir, { recursive: true, force: true }),
  };
}

describeBusContract('sqlite', async () => fixture());
// Every guarantee again with the poll all but off: buses learn of each other's events from the doorbell alone.
describeBusContract('sqlite, woken by the doorbell', async () => fixture({ ...TUNING, pollIntervalMs: 2_000 }));

describe('SqliteEventBus', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  function open(f: ReturnType<typeof fixture>, options: SqliteEventBusOptions = TUNING): SqliteEventBus {
    const bus = new SqliteEventBus(f.file, options);
    cleanups.push(() => bus.close());
    return bus;
  }
  function setup(): ReturnType<typeof fixture> {
    const f = fixture();
    cleanups.push(() => f.dispose());
    return f;
  }
  function peek<T>(file: string, sql: string): T[] {
    const db = new Database(file, { readonly: true });
    try {
      return db.prepare(sql).all() as T[];
    } finally {
      db.close();
    }
  }

  test('retention deletes events every group acknowledged, and keeps the others', async () => {
    const f = setup();
    const bus = open(f, { ...TUNING, retentionMs: 60_000 });
    const handled: string[] = [];
    bus.subscribe('orders.placed', 'billing', async (e) => {
      if ((e.payload as { stuck?: boolean }).stuck) throw new Error('not yet');
      handled.push(e.id);
    });
    const done = envelope('orders.placed', {});
    const stuck = envelope('orders.placed', { stuck: true });
    const unheard = envelope('nobody.listens', {});
    for (const e of [done, stuck, unheard]) await bus.publish(e);
    await eventually(() => expect(handled).toEqual([done.id]));
    expect(bus.purge()).toBe(0); // nothing is old enough yet
    expect(bus.purge(Date.now() + 61_000)).toBe(2);
    const left = peek<{ id: string }>(f.file, 'SELECT id FROM evolith_bus_events');
    expect(left.map((r) => r.id)).toEqual([stuck.id]);
    expect(peek(f.file, 'SELECT seq FROM evolith_bus_unacked')).toHaveLength(1);
  });

  test('retention purges in bounded transactions and stops at the first event inside the window', async () => {
    const f = setup();
    const bus = open(f, { ...TUNING, retentionMs: 60_000 });
    let handled = 0;
    bus.subscribe('orders.placed', 'billing', async () => {
      handled++;
    });
    const old = Array.from({ length: 1_234 }, (_, i) => envelope('orders.placed', { i }, `k${i % 7}`));
    await Promise.all(old.map((e) => bus.publish(e)));
    await eventually(() => expect(handled).toBe(old.length));
    const db = new Database(f.file);
    // Pretend the first 1,200 were stored two minutes ago.
    db.prepare('UPDATE evolith_bus_events SET stored_at = stored_at - 120000 WHERE seq <= 1200').run();
    db.close();
    expect(bus.purge()).toBe(1_200);
    expect(peek<{ n: number }>(f.file, 'SELECT COUNT(*) AS n FROM evolith_bus_events')[0]!.n).toBe(34);
    expect(bus.purge()).toBe(0);
  });

  test('a group subscribing for the first time receives the retained events of its topic', async () => {
    const f = setup();
    const bus = open(f);
    const early = envelope('orders.placed', { n: 1 });
    await bus.publish(early);
    const got: string[] = [];
    bus.subscribe('orders.placed', 'latecomer', async (e) => {
      got.push(e.id);
    });
    await eventually(() => expect(got).toEqual([early.id]));
  });

  test('a slow handler keeps its lease: no second delivery while it runs', async () => {
    const f = setup();
    const options = { ...TUNING, leaseMs: 300 };
    const [a, b] = [open(f, options), open(f, options)];
    const calls: string[] = [];
    const slow = async (e: { id: string }) => {
      calls.push(e.id);
      await sleep(1_000);
    };
    a.subscribe('orders.placed', 'billing', slow);
    b.subscribe('orders.placed', 'billing', slow);
    const e = envelope('orders.placed', {});
    await a.publish(e);
    await sleep(1_300);
    expect(calls).toEqual([e.id]);
  });

  test('a consumer whose lease was taken over does not free its key by acknowledging late: the next event of the key waits for the new holder', async () => {
    const f = setup();
    // Renewals far apart: the test takes the lease away itself.
    const options = { ...TUNING, leaseMs: 30_000 };
    // A looks for run-out leases only once a minute: else it may take its own e1 back before B
    // does (any member may), and the case is not set up (seen on a loaded machine).
    const [a, b] = [open(f, { ...options, pollIntervalMs: 60_000 }), open(f, options)];
    const e1 = envelope('orders.placed', { n: 1 }, 'k');
    const e2 = envelope('orders.placed', { n: 2 }, 'k');
    await a.publish(e1);
    await a.publish(e2);
    const started: string[] = [];
    let releaseA!: () => void;
    const gateA = new Promise<void>((r) => (releaseA = r));
    let releaseB!: () => void;
    const gateB = new Promise<void>((r) => (releaseB = r));
    a.subscribe('orders.placed', 'billing', async (e) => {
      started.push(`a:${(e.payload as { n: number }).n}`);
      if (e.id === e1.id) await gateA;
    });
    await eventually(() => expect(started).toEqual(['a:1']));
    // A's lease runs out (as when its process stalls); B takes e1 over.
    const db = new Database(f.file);
    db.prepare('UPDATE evolith_bus_unacked SET lease_until = 0 WHERE claimed_by IS NOT NULL').run();
    db.close();
    b.subscribe('orders.placed', 'billing', async (e) => {
      started.push(`b:${(e.payload as { n: number }).n}`);
      if (e.id === e1.id) await gateB;
    });
    await eventually(() => expect(started).toEqual(['a:1', 'b:1']));
    // A finishes late and acknowledges: e1 still runs at B, so e2 must wait.
    releaseA();
    await sleep(400);
    expect(started).toEqual(['a:1', 'b:1']);
    releaseB();
    await eventually(() => expect(started.slice(2)).toEqual([expect.stringMatching(/^[ab]:2$/)]));
  });

  test('a re-published id is stored once also when both copies are in the same transaction', async () => {
    const f = setup();
    const bus = open(f);
    const e = envelope('orders.placed', { i: 1 }, 'k');
    await Promise.all([bus.publish(e), bus.publish({ ...e }), bus.publish(envelope('orders.placed', { i: 2 }, 'k'))]);
    expect(peek(f.file, 'SELECT seq FROM evolith_bus_events')).toHaveLength(2);
  });

  test('events claimed but not started go back at once when their consumer stops, not when their leases run out', async () => {
    const f = setup();
    const options = { ...TUNING, leaseMs: 30_000, maxInFlight: 1, prefetch: 8 };
    const a = open(f, options);
    const events = Array.from({ length: 8 }, (_, i) => envelope('orders.placed', { i }, `k${i}`));
    await Promise.all(events.map((e) => a.publish(e)));
    const byA: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    a.subscribe('orders.placed', 'billing', async (e) => {
      byA.push(e.id);
      await gate;
    });
    await eventually(() => expect(byA).toHaveLength(1));
    const closing = a.close();
    const b = open(f, options);
    const byB: string[] = [];
    b.subscribe('orders.placed', 'billing', async (e) => {
      byB.push(e.id);
    });
    await eventually(() => expect(byB).toHaveLength(7), 5_000);
    release();
    await closing;
    expect(new Set([...byA, ...byB])).toEqual(new Set(events.map((e) => e.id)));
  });

  test('replicas with slow handlers share the work: none claims ahead more than its handlers get through soon', async () => {
    const f = setup();
    const options = { ...TUNING, maxInFlight: 2, prefetch: 256 };
    const [a, b] = [open(f, options), open(f, options)];
    const per = { a: 0, b: 0 };
    const slow = (who: 'a' | 'b') => async () => {
      per[who]++;
      await sleep(20);
    };
    a.subscribe('orders.placed', 'billing', slow('a'));
    await Promise.all(Array.from({ length: 24 }, (_, i) => a.publish(envelope('orders.placed', { i }, `k${i}`))));
    b.subscribe('orders.placed', 'billing', slow('b'));
    await eventually(() => expect(per.a + per.b).toBe(24), 10_000);
    // Alone, either would take 12 rounds of 20 ms; sharing, each takes some of the 24.
    expect(Math.min(per.a, per.b)).toBeGreaterThanOrEqual(6);
  });

  test('a dead consumer\'s events are taken over while the survivor is kept busy by a stream of others', async () => {
    const f = setup();
    const options = { ...TUNING, leaseMs: 400, pollIntervalMs: 100, closeTimeoutMs: 50 };
    const dead = open(f, options);
    const stuck = envelope('orders.placed', { stuck: true }, 'stuck');
    let started = false;
    dead.subscribe('orders.placed', 'billing', async () => {
      started = true;
      await new Promise(() => undefined);
    });
    await dead.publish(stuck);
    await eventually(() => expect(started).toBe(true));
    // Closing gives up on the hung handler: its lease is no longer renewed, as if the process died.
    await dead.close();
    const survivor = open(f, options);
    const seen: string[] = [];
    survivor.subscribe('orders.placed', 'billing', async (e) => {
      seen.push(e.id);
    });
    // Wake-ups every 10 ms, ten times per poll interval, for up to 4 s.
    let streaming = true;
    const stream = (async () => {
      for (let i = 0; i < 400 && streaming; i++) {
        await survivor.publish(envelope('orders.placed', { i }, `other${i % 5}`));
        await sleep(10);
      }
    })();
    try {
      await eventually(() => expect(seen).toContain(stuck.id), 3_000);
    } finally {
      streaming = false;
      await stream;
    }
  });

  test('a stored event that cannot be read is redelivered with backoff like a failed handler, and blocks nothing else', async () => {
    const f = setup();
    const bus = open(f);
    const good = envelope('orders.placed', { good: true });
    await bus.publish(good);
    const db = new Database(f.file);
    db.prepare("INSERT INTO evolith_bus_events (id, id_hash, topic, key, envelope, stored_at) VALUES ('broken', 1, 'orders.placed', 'k', '{not json', 0)").run();
    db.close();
    const got: string[] = [];
    bus.subscribe('orders.placed', 'billing', async (e) => {
      got.push(e.id);
    });
    const after = envelope('orders.placed', { after: true });
    await bus.publish(after);
    await eventually(() => expect(got).toEqual([good.id, after.id]));
    await eventually(() => {
      const [row] = peek<{ attempts: number; last_error: string }>(f.file, 'SELECT attempts, last_error FROM evolith_bus_unacked');
      expect(row?.attempts).toBeGreaterThanOrEqual(2);
      expect(row?.last_error).toMatch(/JSON/);
    });
  });

  test('events read ahead of the write lock are not used once a competing consumer moved the cursor', async () => {
    const f = setup();
    const publisher = open(f);
    const events = Array.from({ length: 10 }, (_, i) => envelope('orders.placed', { i }, `k${i}`));
    await Promise.all(events.map((e) => publisher.publish(e)));
    const bus = open(f);
    // Another process can commit between the read ahead and the write transaction; this one
    // does so at exactly that moment: it takes and acknowledges the first five.
    const competitor = new Database(f.file);
    cleanups.push(async () => void competitor.close());
    const internals = bus as unknown as { readAhead: (...args: unknown[]) => unknown };
    const readAhead = internals.readAhead.bind(bus);
    let raced = false;
    internals.readAhead = (...args: unknown[]) => {
      const ahead = readAhead(...args);
      if (!raced) {
        raced = true;
        competitor.prepare("INSERT INTO evolith_bus_groups (topic, grp, created_at, cursor_seq) VALUES ('orders.placed', 'billing', 0, 5) ON CONFLICT DO UPDATE SET cursor_seq = 5").run();
      }
      return ahead;
    };
    const got: number[] = [];
    bus.subscribe('orders.placed', 'billing', async (e) => {
      got.push((e.payload as { i: number }).i);
    });
    await eventually(() => expect(got).toEqual([5, 6, 7, 8, 9]));
    expect(raced).toBe(true);
    await sleep(100);
    expect(got).toHaveLength(5);
  });

  test('publish after close is refused with a typed error', async () => {
    const f = setup();
    const bus = open(f);
    await bus.close();
    await expect(bus.publish(envelope('orders.placed', {}))).rejects.toMatchObject({ code: 'EVOLITH_UNAVAILABLE' });
  });

  test('check() reports the bus ready, not ready while another process holds the write lock too long, and closed', async () => {
    const f = setup();
    const bus = open(f, { ...TUNING, lockStuckMs: 200 });
    await expect(bus.check()).resolves.toBeUndefined();
    const holder = new Database(f.file);
    holder.exec('BEGIN IMMEDIATE');
    try {
      const published = bus.publish(envelope('orders.placed', {}));
      await sleep(400);
      await expect(bus.check()).rejects.toThrow(/waited \d+ s for the write lock/);
      holder.exec('COMMIT');
      await published;
      await expect(bus.check()).resolves.toBeUndefined();
    } finally {
      if (holder.inTransaction) holder.exec('ROLLBACK');
      holder.close();
    }
    await bus.close();
    await expect(bus.check()).rejects.toMatchObject({ code: 'EVOLITH_UNAVAILABLE' });
  });
});
