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
    expect(peek(f.file, 'SELECT seq FROM evolith_bus_deliveries')).toHaveLength(1);
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

  test('publish after close is refused with a typed error', async () => {
    const f = setup();
    const bus = open(f);
    await bus.close();
    await expect(bus.publish(envelope('orders.placed', {}))).rejects.toMatchObject({ code: 'EVOLITH_UNAVAILABLE' });
  });
});
