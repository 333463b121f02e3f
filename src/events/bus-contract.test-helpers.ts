/**
 * The contract every durable event bus keeps, written once and run against each backend
 * (`describeBusContract` from `sqlite-bus.test.ts` and `nats-bus.test.ts`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, test } from 'vitest';
import type { EventBus, EventEnvelope } from '../kernel/plugins.js';
import type { NatsEventBusOptions } from './nats-bus.js';
import type { SqliteEventBusOptions } from './sqlite-bus.js';

/** How a child process opens the same bus (JSON: it travels on the command line). */
export type ChildBusConfig = { kind: 'sqlite'; file: string; options: SqliteEventBusOptions } | { kind: 'nats'; options: NatsEventBusOptions };

export interface ChildConfig {
  bus: ChildBusConfig;
  topic: string;
  group: string;
  delayMs: number;
  /** Handlers started after this many finished never return. */
  hangAfter: number;
}

/** One isolated bus "installation" (a file, a stream) that several bus instances share. */
export interface BusFixture {
  /** Opens another bus on the same storage, as another process would. */
  open(): Promise<EventBus>;
  child(): ChildBusConfig;
  /** How long a dead consumer's events stay claimed (lease / ack wait), for test timeouts. */
  readonly redeliveryMs: number;
  dispose(): Promise<void>;
}

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const childScript = fileURLToPath(new URL('./bus-contract.child.ts', import.meta.url));

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function eventually<T>(check: () => T | Promise<T>, timeoutMs = 5_000, intervalMs = 10): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (err) {
      if (Date.now() >= end) throw err;
    }
    await sleep(intervalMs);
  }
}

let counter = 0;
/** A subscriber in a process of its own (bus-contract.child.ts), reporting each line it prints. */
export interface BusChild {
  readonly process: ChildProcess;
  /** What it wrote to stderr so far. */
  stderr(): string;
}

/** Starts a child subscriber; `onLine(what, id)` gets each `ready`, `got <id>` or `done <id>` line. */
export function spawnBusChild(config: ChildConfig, onLine: (what: string, id: string | undefined) => void): BusChild {
  const child = spawn(process.execPath, ['bin/run-ts.mjs', childScript, JSON.stringify(config)], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let buffer = '';
  child.stderr!.on('data', (d) => (stderr += String(d)));
  child.stdout!.on('data', (d) => {
    buffer += String(d);
    const lines = buffer.split('\n');
    buffer = lines.pop()!;
    for (const line of lines) {
      const [what, id] = line.split(' ');
      onLine(what!, id);
    }
  });
  return { process: child, stderr: () => stderr };
}

export function envelope(topic: string, payload: unknown, key?: string): EventEnvelope {
  return {
    id: randomUUID(),
    topic,
    source: 'orders',
    payload,
    key,
    publishedAt: Date.now(),
    traceparent: `00-${randomUUID().replace(/-/g, '')}-${(++counter).toString(16).padStart(16, '0')}-01`,
  };
}

/** Counts deliveries per event id. */
class Tally {
  readonly counts = new Map<string, number>();
  add(id: string): void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
  }
  has(id: string): boolean {
    return this.counts.has(id);
  }
  hasAll(ids: readonly string[]): void {
    const missing = ids.filter((id) => !this.counts.has(id));
    if (missing.length > 0) throw new Error(`${missing.length} of ${ids.length} events not delivered yet`);
  }
}

/** Runs the contract against one backend; `skip` (a reason) skips it loudly. */
export function describeBusContract(name: string, makeFixture: () => Promise<BusFixture>, skip?: string): void {
  if (skip) console.warn(`[${name}] skipping the event bus contract: ${skip}`);

  describe.skipIf(skip !== undefined)(`${name}: event bus contract`, () => {
    let fixture: BusFixture | undefined;
    const buses: EventBus[] = [];
    const children: ChildProcess[] = [];

    async function setup(): Promise<BusFixture> {
      fixture = await makeFixture();
      return fixture;
    }
    async function open(f: BusFixture): Promise<EventBus> {
      const bus = await f.open();
      buses.push(bus);
      return bus;
    }

    afterEach(async () => {
      for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      await Promise.all(buses.splice(0).map((b) => b.close().catch(() => undefined)));
      await fixture?.dispose();
      fixture = undefined;
    });

    test('delivers a published event, envelope intact, and resolves publish once stored', async () => {
      const f = await setup();
      const bus = await open(f);
      const got: EventEnvelope[] = [];
      bus.subscribe('orders.placed', 'billing', async (e) => {
        got.push(e);
      });
      const e = envelope('orders.placed', { id: 'o-1', lines: [{ sku: 'b-1', qty: 2 }] }, 'o-1');
      await bus.publish(e);
      await eventually(() => expect(got).toHaveLength(1));
      expect(got[0]).toEqual(e);
    });

    test('each event reaches one member of a group: two competing subscribers', async () => {
      const f = await setup();
      const [a, b] = [await open(f), await open(f)];
      const tally = new Tally();
      const per = { a: 0, b: 0 };
      const handler = (who: 'a' | 'b') => async (e: EventEnvelope) => {
        per[who]++;
        tally.add(e.id);
        await sleep(2);
      };
      a.subscribe('orders.placed', 'billing', handler('a'));
      b.subscribe('orders.placed', 'billing', handler('b'));
      const events = Array.from({ length: 40 }, (_, i) => envelope('orders.placed', { i }, i % 3 === 0 ? undefined : `k${i % 7}`));
      await Promise.all(events.map((e, i) => (i % 2 ? a : b).publish(e)));
      const ids = events.map((e) => e.id);
      await eventually(() => tally.hasAll(ids));
      await sleep(300); // room for a stray second delivery to show up
      expect([...tally.counts.values()].filter((n) => n !== 1)).toEqual([]);
      expect(per.a + per.b).toBe(40);
    });

    test('an event published on one bus reaches a subscriber on another promptly, not at some later poll', async () => {
      const f = await setup();
      const [publisher, subscriber] = [await open(f), await open(f)];
      const at = new Map<string, number>();
      subscriber.subscribe('orders.placed', 'billing', async (e) => {
        at.set(e.id, performance.now());
      });
      // The subscription is live once a first event made it through.
      const first = envelope('orders.placed', { first: true });
      await publisher.publish(first);
      await eventually(() => expect(at.has(first.id)).toBe(true), f.redeliveryMs + 10_000);
      const latencies: number[] = [];
      for (let i = 0; i < 9; i++) {
        const e = envelope('orders.placed', { i }, `k${i % 3}`);
        const t0 = performance.now();
        await publisher.publish(e);
        await eventually(() => expect(at.has(e.id)).toBe(true));
        latencies.push(at.get(e.id)! - t0);
        await sleep(10);
      }
      // The median of several: one slow sample on a busy machine is no failure.
      expect([...latencies].sort((a, b) => a - b)[4]).toBeLessThan(200);
    });

    test('every group receives every event', async () => {
      const f = await setup();
      const [a, b] = [await open(f), await open(f)];
      const billing = new Tally();
      const mailer = new Tally();
      a.subscribe('orders.placed', 'billing', async (e) => billing.add(e.id));
      b.subscribe('orders.placed', 'mailer', async (e) => mailer.add(e.id));
      const events = Array.from({ length: 20 }, (_, i) => envelope('orders.placed', { i }, `k${i % 4}`));
      for (const e of events) await a.publish(e);
      const ids = events.map((e) => e.id);
      await eventually(() => billing.hasAll(ids));
      await eventually(() => mailer.hasAll(ids));
    });

    test('an event whose handler threw is delivered again, after a backoff', async () => {
      const f = await setup();
      const bus = await open(f);
      const attempts = new Map<string, number[]>();
      const handled = new Tally();
      bus.subscribe('orders.placed', 'billing', async (e) => {
        const times = attempts.get(e.id) ?? [];
        times.push(Date.now());
        attempts.set(e.id, times);
        if (times.length < 3) throw new Error(`refusing attempt ${times.length}`);
        handled.add(e.id);
      });
      const events = [envelope('orders.placed', { n: 1 }, 'k1'), envelope('orders.placed', { n: 2 })];
      for (const e of events) await bus.publish(e);
      await eventually(() => handled.hasAll(events.map((e) => e.id)));
      for (const e of events) {
        const t = attempts.get(e.id)!;
        expect(t).toHaveLength(3);
        expect(t[2]! - t[1]!).toBeGreaterThanOrEqual(10);
      }
    });

    test('keeps per-key order within a group under concurrency, competition and failures', async () => {
      const f = await setup();
      const [a, b] = [await open(f), await open(f)];
      const keys = ['alpha', 'beta', 'gamma'];
      const N = 30;
      const completed = new Map<string, number[]>(keys.map((k) => [k, []]));
      const running = new Map<string, number>();
      const failedOnce = new Set<string>();
      let overlaps = 0;
      let maxParallelKeys = 0;
      const handler = async (e: EventEnvelope) => {
        const key = e.key!;
        const { i } = e.payload as { i: number };
        const now = (running.get(key) ?? 0) + 1;
        running.set(key, now);
        if (now > 1) overlaps++;
        maxParallelKeys = Math.max(maxParallelKeys, [...running.values()].filter((n) => n > 0).length);
        try {
          await sleep(Math.floor(Math.random() * 4));
          if (i % 11 === 5 && !failedOnce.has(e.id)) {
            failedOnce.add(e.id);
            throw new Error('transient failure');
          }
          completed.get(key)!.push(i);
        } finally {
          running.set(key, running.get(key)! - 1);
        }
      };
      a.subscribe('stock.moved', 'warehouse', handler);
      b.subscribe('stock.moved', 'warehouse', handler);
      // Each key publishes in order; the keys publish concurrently with each other.
      await Promise.all(
        keys.map(async (key, k) => {
          for (let i = 0; i < N; i++) await (k % 2 ? a : b).publish(envelope('stock.moved', { i }, key));
        }),
      );
      await eventually(() => {
        for (const k of keys) expect(new Set(completed.get(k)).size).toBe(N);
      }, 15_000);
      expect(overlaps).toBe(0);
      for (const k of keys) {
        const firsts = completed.get(k)!.filter((i, at, all) => all.indexOf(i) === at);
        expect(firsts).toEqual(Array.from({ length: N }, (_, i) => i));
      }
      expect(failedOnce.size).toBeGreaterThan(0);
    });

    test('members of a group in two other processes, claiming at the same time, handle each event exactly once', async () => {
      const f = await setup();
      // Leases long enough that none runs out on a busy machine: then a second delivery can only be a bug.
      const bus = f.child();
      const patient: ChildBusConfig = bus.kind === 'sqlite' ? { ...bus, options: { ...bus.options, leaseMs: 30_000 } } : { ...bus, options: { ...bus.options, ackWaitMs: 30_000 } };
      const config: ChildConfig = { bus: patient, topic: 'orders.placed', group: 'billing', delayMs: 0, hangAfter: Number.MAX_SAFE_INTEGER };
      const done = new Map<string, number>();
      const ready: boolean[] = [];
      const errors: string[] = [];
      const exits: string[] = [];
      for (let n = 0; n < 2; n++) {
        const child = spawn(process.execPath, ['bin/run-ts.mjs', childScript, JSON.stringify(config)], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
        children.push(child);
        let buffer = '';
        child.stderr!.on('data', (d) => (errors[n] = (errors[n] ?? '') + String(d)));
        child.on('exit', (code, signal) => (exits[n] = `exited (${signal ?? `code ${code}`})`));
        child.stdout!.on('data', (d) => {
          buffer += String(d);
          const lines = buffer.split('\n');
          buffer = lines.pop()!;
          for (const line of lines) {
            const [what, id] = line.split(' ');
            if (what === 'ready') ready[n] = true;
            if (what === 'done') done.set(id!, (done.get(id!) ?? 0) + 1);
          }
        });
      }
      // Each member loads TypeScript before it subscribes: slow on a loaded machine, so it gets
      // time; one that dies says why.
      await eventually(() => {
        for (let n = 0; n < 2; n++) if (exits[n] && !ready[n]) throw new Error(`member ${n} ${exits[n]} before it was ready: ${errors[n] ?? ''}`);
        expect(ready.filter(Boolean), `members ready (stderr: ${errors.join(' | ')})`).toHaveLength(2);
      }, 90_000);
      const publisher = await open(f);
      const events = Array.from({ length: 600 }, (_, i) => envelope('orders.placed', { i }, i % 4 === 0 ? undefined : `k${i % 50}`));
      // In bursts, so that both members find new events at the same moments.
      for (let i = 0; i < events.length; i += 50) await Promise.all(events.slice(i, i + 50).map((e) => publisher.publish(e)));
      await eventually(() => expect(done.size).toBe(events.length), 30_000);
      await sleep(300); // room for a stray second delivery to show up
      expect([...done.values()].filter((n) => n !== 1)).toEqual([]);
    }, 150_000);

    test('a consumer killed mid-stream loses no event: another member of its group gets the rest', async () => {
      const f = await setup();
      const publisher = await open(f);
      const events = Array.from({ length: 40 }, (_, i) => envelope('orders.placed', { i }, `k${i % 8}`));
      for (const e of events) await publisher.publish(e);
      const ids = events.map((e) => e.id);

      const config: ChildConfig = { bus: f.child(), topic: 'orders.placed', group: 'billing', delayMs: 100, hangAfter: 10 };
      const started = new Set<string>();
      const finished = new Set<string>();
      let hungStarts = 0;
      const consumer = spawnBusChild(config, (what, id) => {
        if (what === 'got') {
          started.add(id!);
          // Output of one process arrives in order: a handler that started after its tenth
          // `done` is past the child's hang point and is surely still in flight at the kill.
          if (finished.size >= config.hangAfter) hungStarts++;
        }
        if (what === 'done') finished.add(id!);
      });
      const child = consumer.process;
      children.push(child);
      await eventually(() => {
        if (child.exitCode !== null) throw new Error(`consumer exited early (${child.exitCode}): ${consumer.stderr()}`);
        expect(finished.size).toBeGreaterThanOrEqual(10);
        // Kill it while it holds events it has not finished (its handlers now hang).
        expect(hungStarts).toBeGreaterThan(0);
      }, 15_000);
      child.kill('SIGKILL');
      await new Promise((r) => child.once('close', r)); // 'close': its stdout is fully read
      const inFlightAtKill = [...started].filter((id) => !finished.has(id));
      expect(inFlightAtKill.length).toBeGreaterThan(0);
      expect(finished.size).toBeLessThan(events.length);

      const survivor = await open(f);
      const second = new Tally();
      const order = new Map<string, number[]>();
      survivor.subscribe('orders.placed', 'billing', async (e) => {
        second.add(e.id);
        const list = order.get(e.key!) ?? [];
        list.push((e.payload as { i: number }).i);
        order.set(e.key!, list);
      });
      const remaining = ids.filter((id) => !finished.has(id));
      await eventually(() => second.hasAll(remaining), f.redeliveryMs + 10_000);
      // None lost: every event was finished by the killed consumer or handled by the survivor,
      // including those the killed one had started but not finished.
      expect(ids.filter((id) => !finished.has(id) && !second.has(id))).toEqual([]);
      expect(inFlightAtKill.filter((id) => !second.has(id))).toEqual([]);
      for (const list of order.values()) expect(list).toEqual([...list].sort((x, y) => x - y));
      const duplicates = ids.filter((id) => finished.has(id) && second.has(id)).length;
      console.info(
        `[${name}] killed consumer finished ${finished.size}/${ids.length} (${inFlightAtKill.length} in flight at the kill); ` +
          `survivor handled ${second.counts.size}, of which ${duplicates} duplicates (finished but not yet acknowledged)`,
      );
    });

    test('published events survive a restart of the bus and reach a group that subscribes later', async () => {
      const f = await setup();
      const first = await open(f);
      const events = Array.from({ length: 10 }, (_, i) => envelope('orders.placed', { i }, `k${i % 2}`));
      for (const e of events) await first.publish(e);
      await first.close();
      const second = await open(f);
      const got = new Tally();
      second.subscribe('orders.placed', 'billing', async (e) => got.add(e.id));
      await eventually(() => got.hasAll(events.map((e) => e.id)));
    });

    test('a re-published id is stored once', async () => {
      const f = await setup();
      const bus = await open(f);
      const got = new Tally();
      const e = envelope('orders.placed', { i: 1 }, 'k');
      await bus.publish(e);
      await bus.publish(e);
      await bus.publish({ ...e });
      bus.subscribe('orders.placed', 'billing', async (x) => got.add(x.id));
      await eventually(() => got.hasAll([e.id]));
      await sleep(200);
      expect(got.counts.get(e.id)).toBe(1);
    });

    test('close() lets a running handler finish and acknowledge', async () => {
      const f = await setup();
      const bus = await open(f);
      let started = false;
      let finished = false;
      bus.subscribe('orders.placed', 'billing', async () => {
        started = true;
        await sleep(200);
        finished = true;
      });
      const e = envelope('orders.placed', {});
      await bus.publish(e);
      await eventually(() => expect(started).toBe(true));
      await bus.close();
      expect(finished).toBe(true);
      // Acknowledged before close returned: a restarted member of the group does not see it again.
      const again = await open(f);
      const seen: string[] = [];
      again.subscribe('orders.placed', 'billing', async (x) => {
        seen.push(x.id);
      });
      await again.publish(envelope('orders.placed', { marker: true }));
      await eventually(() => expect(seen).toHaveLength(1));
      // Long enough for an unacknowledged event's lease / ack wait to run out.
      await sleep(f.redeliveryMs + 300);
      expect(seen).not.toContain(e.id);
    });
  });
}
