import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterEach, describe, expect, it } from 'vitest';
import { envelope, eventually } from '../events/bus-contract.test-helpers.js';
import { NatsEventBus } from '../events/nats-bus.js';
import { createEventTables } from '../events/outbox.js';
import { SqliteEventBus } from '../events/sqlite-bus.js';
import type { EventBus } from '../kernel/plugins.js';
import { SqliteStorage } from '../storage/sqlite.js';
import { eventBacklog, totalBacklog, type BacklogSource } from './event-backlog.js';

const NATS = process.env.NATS_URL ?? '127.0.0.1:4222';

async function natsMissing(): Promise<string | undefined> {
  try {
    const nc = await connect({ servers: NATS, timeout: 2_000, maxReconnectAttempts: 0 });
    await (await jetstreamManager(nc)).getAccountInfo();
    await nc.close();
    return undefined;
  } catch (err) {
    return `no JetStream server at ${NATS}: ${(err as Error).message}`;
  }
}
const natsSkip = await natsMissing();
if (natsSkip) console.warn(`[event-backlog] skipping the NATS case: ${natsSkip}`);

describe('eventBacklog', () => {
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  const tempDir = () => {
    const dir = mkdtempSync(join(tmpdir(), 'evolith-backlog-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  };

  it("counts a service's due outbox rows as unsent, not its timers, and nothing for a service without a database", async () => {
    const data = tempDir();
    const store = await new SqliteStorage(data).open('orders');
    await createEventTables(store.db);
    const row = (id: string, deliverAt: number, deliveredAt: number | null) => ({
      id,
      topic: 'orders.placed',
      payload: '{}',
      deliver_at: deliverAt,
      created_at: Date.now() * 1000,
      delivered_at: deliveredAt,
    });
    await store.db
      .insertInto('evolith_outbox')
      .values([row('due', Date.now() - 10, null), row('sent', Date.now() - 10, Date.now()), row('timer', Date.now() + 60_000, null)])
      .execute();
    await store.close();
    const source: BacklogSource = { data, storage: 'sqlite', events: 'memory', services: ['orders', 'billing'] };
    expect(await eventBacklog(source)).toEqual({ unsent: { orders: 1, billing: 0 }, unhandled: 0 });
  });

  /** Publishes three events to a group whose handler holds the first until released. */
  async function heldEvents(bus: EventBus): Promise<() => void> {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let calls = 0;
    bus.subscribe('orders.placed', 'billing', async () => {
      calls++;
      await gate;
    });
    for (let i = 0; i < 3; i++) await bus.publish(envelope('orders.placed', { i }, 'one-key'));
    await eventually(() => expect(calls).toBeGreaterThan(0), 10_000);
    return release;
  }

  it('counts events on the SQLite bus that a group has not handled, until it has', async () => {
    const data = tempDir();
    const bus = new SqliteEventBus(join(data, 'events.sqlite'), { pollIntervalMs: 20 });
    cleanups.push(() => bus.close());
    const source: BacklogSource = { data, storage: 'sqlite', events: 'sqlite', services: [] };
    expect((await eventBacklog(source)).unhandled).toBe(0);
    const release = await heldEvents(bus);
    expect((await eventBacklog(source)).unhandled).toBe(3);
    release();
    await eventually(async () => expect(totalBacklog(await eventBacklog(source))).toBe(0), 10_000, 50);
  });

  it.skipIf(natsSkip !== undefined)('counts events on NATS JetStream that a group has not acknowledged, until it has', async () => {
    const stream = `EVOLITH_BACKLOG_${randomUUID().replace(/-/g, '').slice(0, 10)}`;
    const bus = await NatsEventBus.connect({ servers: NATS, stream, prefix: stream.toLowerCase(), partitions: 2 });
    cleanups.push(async () => {
      await bus.close();
      const nc = await connect({ servers: NATS });
      await (await jetstreamManager(nc)).streams.delete(stream).catch(() => undefined);
      await nc.close();
    });
    const source: BacklogSource = { data: tempDir(), storage: 'sqlite', events: { driver: 'nats', url: `nats://${NATS}`, stream }, services: [] };
    const release = await heldEvents(bus);
    expect((await eventBacklog(source)).unhandled).toBe(3);
    release();
    await eventually(async () => expect((await eventBacklog(source)).unhandled).toBe(0), 10_000, 50);
  });

  it.skipIf(natsSkip !== undefined)('reports a stream that does not exist yet as nothing waiting', async () => {
    const source: BacklogSource = {
      data: tempDir(),
      storage: 'sqlite',
      events: { driver: 'nats', url: `nats://${NATS}`, stream: `EVOLITH_NONE_${randomUUID().slice(0, 8)}` },
      services: [],
    };
    expect(await eventBacklog(source)).toEqual({ unsent: {}, unhandled: 0 });
  });
});
