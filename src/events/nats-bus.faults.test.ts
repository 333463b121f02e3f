/**
 * NATS JetStream bus under faults: a consumer process that dies holding events, a handler that
 * outlives the ack wait, and (with a private nats-server that the test stops and starts) the
 * broker going away while the outbox keeps publishing.
 */
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterEach, describe, expect, test } from 'vitest';
import { envelope, eventually, sleep, spawnBusChild, type ChildConfig } from './bus-contract.test-helpers.js';
import { NatsEventBus, type NatsEventBusOptions } from './nats-bus.js';
import { SHARED_NATS, sharedNatsUnreachable } from '../../test/support/nats-server.js';

const SERVERS = SHARED_NATS;

const skip = await sharedNatsUnreachable();
if (skip) console.warn(`skipping NATS fault tests: ${skip}`);

describe.skipIf(skip !== undefined)('NatsEventBus faults (default ack wait)', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  const children: ChildProcess[] = [];
  afterEach(async () => {
    for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  });

  /** A fresh stream; the bus's own defaults otherwise (no ackWaitMs: the default is under test). */
  function options(): NatsEventBusOptions {
    const tag = randomUUID().replace(/-/g, '').slice(0, 12);
    const o: NatsEventBusOptions = { servers: SERVERS, stream: `EVOLITH_FAULT_${tag}`, prefix: `evolith_fault_${tag}`, partitions: 4, closeTimeoutMs: 1_000 };
    cleanups.push(async () => {
      const nc = await connect({ servers: SERVERS });
      try {
        await (await jetstreamManager(nc)).streams.delete(o.stream!).catch(() => undefined);
      } finally {
        await nc.close();
      }
    });
    return o;
  }

  async function open(o: NatsEventBusOptions): Promise<NatsEventBus> {
    const bus = await NatsEventBus.connect(o);
    cleanups.push(() => bus.close());
    return bus;
  }

  test('events held by a consumer process that is killed reach another consumer within 2 s, and not while it lives', async () => {
    const o = options();
    const publisher = await open(o);
    const events = Array.from({ length: 16 }, (_, i) => envelope('orders.placed', { i }, `k${i}`));
    for (const e of events) await publisher.publish(e);

    // Its handlers never return: whatever it takes, it holds until it dies.
    const config: ChildConfig = { bus: { kind: 'nats', options: o }, topic: 'orders.placed', group: 'billing', delayMs: 0, hangAfter: 0 };
    const held = new Set<string>();
    const consumer = spawnBusChild(config, (what, id) => {
      if (what === 'got') held.add(id!);
    });
    const child = consumer.process;
    children.push(child);
    // One event per partition: each partition lets one event at a time be unacknowledged.
    await eventually(() => {
      if (child.exitCode !== null) throw new Error(`consumer exited early (${child.exitCode}): ${consumer.stderr()}`);
      expect(held.size).toBe(o.partitions);
    }, 30_000);

    const survivor = await open(o);
    const seen = new Map<string, number>();
    survivor.subscribe('orders.placed', 'billing', async (e) => {
      if (!seen.has(e.id)) seen.set(e.id, performance.now());
      await new Promise<void>(() => undefined); // hold it too: nothing moves on behind it
    });
    // Alive and busy past the ack wait: its events stay with it.
    const ackWaitMs = survivor.settings.ackWaitMs;
    await sleep(ackWaitMs * 2);
    expect([...held].filter((id) => seen.has(id))).toEqual([]);

    child.kill('SIGKILL');
    const killedAt = performance.now();
    await eventually(() => expect([...held].filter((id) => !seen.has(id))).toEqual([]), 10_000, 20);
    const took = Math.max(...[...held].map((id) => seen.get(id)! - killedAt));
    console.info(`[nats] ${held.size} events held by the killed consumer redelivered ${took.toFixed(0)} ms after the kill (ack wait ${ackWaitMs} ms)`);
    expect(took).toBeLessThan(2_500);
  }, 60_000);

  test('a handler running longer than the ack wait is not redelivered while its process lives', async () => {
    const o = options();
    const a = await open(o);
    const b = await open(o); // a competing member of the group, ready to take anything let go
    const ackWaitMs = a.settings.ackWaitMs;
    const runs = new Map<string, number>();
    const handler = async (e: { id: string }) => {
      runs.set(e.id, (runs.get(e.id) ?? 0) + 1);
      await sleep(ackWaitMs * 2.5);
    };
    a.subscribe('orders.placed', 'billing', handler);
    b.subscribe('orders.placed', 'billing', handler);
    const events = Array.from({ length: 4 }, (_, i) => envelope('orders.placed', { i }, `slow${i}`));
    for (const e of events) await a.publish(e);
    await eventually(() => expect(runs.size).toBe(events.length), 10_000);
    // Every handler has run past the ack wait (twice over) and another ack wait on top.
    await sleep(ackWaitMs * 3.5);
    expect([...runs.values()]).toEqual(events.map(() => 1));
  }, 60_000);
});
