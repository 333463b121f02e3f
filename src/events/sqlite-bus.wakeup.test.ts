/**
 * How subscribers of the SQLite bus learn of new events: the doorbell wakes them across
 * processes at once, the poll still finds everything when the doorbell cannot ring, and a
 * writer in another process never stalls this one's event loop; and events a consumer held
 * when its process died go to another member of its group within seconds, not at the end of a
 * long lease.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, test } from 'vitest';
import type { EventEnvelope } from '../kernel/plugins.js';
import { envelope, eventually, sleep, spawnBusChild, type ChildConfig } from './bus-contract.test-helpers.js';
import { SqliteEventBus, type SqliteEventBusOptions } from './sqlite-bus.js';

const BASE: SqliteEventBusOptions = { leaseMs: 1_000, retry: { initialMs: 30, maxMs: 300 }, closeTimeoutMs: 2_000, synchronous: 'normal' };
/** Far longer than any latency asserted here: whatever arrives sooner was not found by polling. */
const SLOW_POLL_MS = 5_000;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

describe('SqliteEventBus wake-ups', () => {
  const cleanups: (() => unknown)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  function file(): string {
    const dir = mkdtempSync(join(tmpdir(), 'evolith-bus-wake-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    return join(dir, 'events.sqlite');
  }
  function open(f: string, options: SqliteEventBusOptions): SqliteEventBus {
    const bus = new SqliteEventBus(f, options);
    cleanups.push(() => bus.close());
    return bus;
  }

  test('an event published in another process is handled within milliseconds, not at the next poll', async () => {
    const f = file();
    const config: ChildConfig = { bus: { kind: 'sqlite', file: f, options: { ...BASE, pollIntervalMs: SLOW_POLL_MS } }, topic: 'orders.placed', group: 'billing', delayMs: 0, hangAfter: 1e9 };
    const seen = new Map<string, number>();
    let ready = false;
    const subscriber = spawnBusChild(config, (what, id) => {
      if (what === 'ready') ready = true;
      if (what === 'got') seen.set(id!, performance.now());
    });
    const child = subscriber.process;
    cleanups.push(() => child.kill('SIGKILL'));
    await eventually(() => {
      if (child.exitCode !== null) throw new Error(`subscriber exited (${child.exitCode}): ${subscriber.stderr()}`);
      expect(ready).toBe(true);
    }, 30_000);

    const publisher = open(f, { ...BASE, pollIntervalMs: SLOW_POLL_MS });
    const latencies: number[] = [];
    for (let i = 0; i < 15; i++) {
      const e = envelope('orders.placed', { i }, `k${i % 3}`);
      const t0 = performance.now();
      await publisher.publish(e);
      await eventually(() => expect(seen.has(e.id)).toBe(true), 2_000, 1);
      latencies.push(seen.get(e.id)! - t0);
      await sleep(20);
    }
    console.info(`[sqlite] publish → handler in another process: median ${median(latencies).toFixed(1)} ms, max ${Math.max(...latencies).toFixed(1)} ms`);
    // The old default poll alone (100 ms) would give a median near 50 ms; this one (5 s) near 2.5 s.
    expect(median(latencies)).toBeLessThan(50);
  });

  test('a subscriber finds the events by polling when the doorbell cannot ring', async () => {
    const f = file();
    // A plain file where the doorbell's directory belongs: no bell can be made or watched.
    writeFileSync(`${f}-bells`, 'not a directory');
    const publisher = open(f, { ...BASE, pollIntervalMs: 20 });
    const subscriber = open(f, { ...BASE, pollIntervalMs: 20 });
    const got: string[] = [];
    subscriber.subscribe('orders.placed', 'billing', async (e) => {
      got.push(e.id);
    });
    const events = Array.from({ length: 5 }, (_, i) => envelope('orders.placed', { i }, 'k'));
    for (const e of events) await publisher.publish(e);
    await eventually(() => expect(got).toEqual(events.map((e) => e.id)));
  });

  test('a bus in the same process is woken by the doorbell too, with polling all but off', async () => {
    const f = file();
    const publisher = open(f, { ...BASE, pollIntervalMs: SLOW_POLL_MS });
    const subscriber = open(f, { ...BASE, pollIntervalMs: SLOW_POLL_MS });
    const at = new Map<string, number>();
    subscriber.subscribe('orders.placed', 'billing', async (e: EventEnvelope) => {
      at.set(e.id, performance.now());
    });
    const latencies: number[] = [];
    for (let i = 0; i < 9; i++) {
      const e = envelope('orders.placed', { i });
      const t0 = performance.now();
      await publisher.publish(e);
      await eventually(() => expect(at.has(e.id)).toBe(true), 2_000, 1);
      latencies.push(at.get(e.id)! - t0);
    }
    expect(median(latencies)).toBeLessThan(50);
  });

  test('publishing waits for another writer without stalling the event loop', async () => {
    const f = file();
    const bus = open(f, { ...BASE, pollIntervalMs: 20 });
    const got: string[] = [];
    bus.subscribe('orders.placed', 'billing', async (e) => {
      got.push(e.id);
    });
    const other = new Database(f);
    cleanups.push(() => other.close());
    other.exec('BEGIN IMMEDIATE');
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    cleanups.push(() => clearInterval(timer));
    const e = envelope('orders.placed', {});
    let settled = false;
    const published = bus.publish(e).finally(() => (settled = true));
    await sleep(400);
    expect(settled).toBe(false);
    // SQLite's own busy wait would have blocked this thread the whole time.
    expect(ticks).toBeGreaterThanOrEqual(10);
    other.exec('COMMIT');
    await published;
    await eventually(() => expect(got).toEqual([e.id]));
  });

  test('with the default lease, events held by a consumer process that is killed reach another within 2.5 s, and not while it lives', async () => {
    const f = file();
    // Defaults, but for what the test needs to finish quickly once the events come back.
    const defaults: SqliteEventBusOptions = { synchronous: 'normal', closeTimeoutMs: 500 };
    const publisher = open(f, defaults);
    const events = Array.from({ length: 8 }, (_, i) => envelope('orders.placed', { i }, `k${i}`));
    for (const e of events) await publisher.publish(e);
    // Its handlers never return: whatever it takes, it holds until it dies.
    const config: ChildConfig = { bus: { kind: 'sqlite', file: f, options: defaults }, topic: 'orders.placed', group: 'billing', delayMs: 0, hangAfter: 0 };
    const held = new Set<string>();
    const consumer = spawnBusChild(config, (what, id) => {
      if (what === 'got') held.add(id!);
    });
    const child = consumer.process;
    cleanups.push(() => child.kill('SIGKILL'));
    await eventually(() => {
      if (child.exitCode !== null) throw new Error(`consumer exited early (${child.exitCode}): ${consumer.stderr()}`);
      expect(held.size).toBe(events.length);
    }, 30_000);

    const survivor = open(f, defaults);
    const seen = new Map<string, number>();
    survivor.subscribe('orders.placed', 'billing', async (e) => {
      if (!seen.has(e.id)) seen.set(e.id, performance.now());
    });
    // Alive (renewing its leases) past a lease: its events stay with it.
    await sleep(3_000);
    expect([...held].filter((id) => seen.has(id))).toEqual([]);

    child.kill('SIGKILL');
    const killedAt = performance.now();
    await eventually(() => expect([...held].filter((id) => !seen.has(id))).toEqual([]), 40_000, 20);
    const took = Math.max(...[...held].map((id) => seen.get(id)! - killedAt));
    console.info(`[sqlite bus] ${held.size} events held by the killed consumer handled by another ${took.toFixed(0)} ms after the kill`);
    expect(took).toBeLessThan(2_500);
  }, 90_000);
});
