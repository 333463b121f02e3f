import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterEach, describe, expect, test } from 'vitest';
import { describeBusContract, envelope, eventually, type BusFixture } from './bus-contract.test-helpers.js';
import { NatsEventBus, type NatsEventBusOptions } from './nats-bus.js';
import { SHARED_NATS, sharedNatsUnreachable } from '../../test/support/nats-server.js';

const SERVERS = SHARED_NATS;

/** Why the NATS tests cannot run here, or undefined when a JetStream server answers. */
const skip = await sharedNatsUnreachable();

function fixture(extra: Partial<NatsEventBusOptions> = {}): BusFixture & { options: NatsEventBusOptions } {
  const tag = randomUUID().replace(/-/g, '').slice(0, 12);
  const options: NatsEventBusOptions = {
    servers: SERVERS,
    stream: `EVOLITH_TEST_${tag}`,
    prefix: `evolith_test_${tag}`,
    partitions: 4,
    ackWaitMs: 1_000,
    retry: { initialMs: 30, maxMs: 300 },
    closeTimeoutMs: 2_000,
    ...extra,
  };
  return {
    options,
    redeliveryMs: options.ackWaitMs!,
    open: () => NatsEventBus.connect(options),
    child: () => ({ kind: 'nats', options }),
    dispose: async () => {
      const nc = await connect({ servers: SERVERS });
      try {
        const jsm = await jetstreamManager(nc);
        await jsm.streams.delete(options.stream!).catch(() => undefined);
      } finally {
        await nc.close();
      }
    },
  };
}

describeBusContract('nats', async () => fixture(), skip);

describe.skipIf(skip !== undefined)('NatsEventBus', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  });

  test('consumption resumes after the connection drops', async () => {
    const f = fixture();
    cleanups.push(() => f.dispose());
    const nc = await connect({ servers: SERVERS, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    cleanups.push(() => nc.close());
    const bus = await NatsEventBus.connect({ ...f.options, connection: nc });
    cleanups.push(() => bus.close());
    const got = new Set<string>();
    bus.subscribe('orders.placed', 'billing', async (e) => {
      got.add(e.id);
    });
    const before = Array.from({ length: 5 }, (_, i) => envelope('orders.placed', { i }, `k${i}`));
    for (const e of before) await bus.publish(e);
    await eventually(() => expect(got.size).toBe(5));
    const statuses = nc.status();
    const reconnected = (async () => {
      for await (const s of statuses) if (s.type === 'reconnect') return;
    })();
    await nc.reconnect();
    // One publish while the connection is down or coming back, the rest once it is up.
    const after = Array.from({ length: 5 }, (_, i) => envelope('orders.placed', { i }, `k${i}`));
    await bus.publish(after[0]!);
    await reconnected;
    for (const e of after.slice(1)) await bus.publish(e);
    await eventually(() => expect(got.size).toBe(10), 10_000);
  });

  test('recreates a durable consumer deleted under it', async () => {
    const f = fixture({ partitions: 1 });
    cleanups.push(() => f.dispose());
    const bus = await f.open();
    cleanups.push(() => bus.close());
    const got = new Set<string>();
    bus.subscribe('orders.placed', 'billing', async (e) => {
      got.add(e.id);
    });
    await bus.publish(envelope('orders.placed', {}));
    await eventually(() => expect(got.size).toBe(1));
    const nc = await connect({ servers: SERVERS });
    cleanups.push(() => nc.close());
    const jsm = await jetstreamManager(nc);
    const names: string[] = [];
    for await (const c of jsm.consumers.list(f.options.stream!)) names.push(c.name);
    expect(names).toHaveLength(1);
    await jsm.consumers.delete(f.options.stream!, names[0]!);
    const t0 = Date.now();
    await bus.publish(envelope('orders.placed', {}));
    await eventually(() => expect(got.size).toBeGreaterThanOrEqual(2), 20_000);
    console.info(`[nats] consumer recreated and resumed after ${Date.now() - t0} ms`);
  });

  test('asks the server for events a batch at a time, still handling one per partition at a time in order', async () => {
    const f = fixture({ partitions: 1 });
    cleanups.push(() => f.dispose());
    const watcher = await connect({ servers: SERVERS });
    cleanups.push(() => watcher.close());
    let pulls = 0;
    const sub = watcher.subscribe(`$JS.API.CONSUMER.MSG.NEXT.${f.options.stream}.>`, { callback: () => void pulls++ });
    cleanups.push(async () => sub.unsubscribe());
    await watcher.flush();
    const bus = await f.open();
    cleanups.push(() => bus.close());
    const order: number[] = [];
    let running = 0;
    let overlaps = 0;
    bus.subscribe('orders.placed', 'billing', async (e) => {
      if (++running > 1) overlaps++;
      await new Promise((r) => setTimeout(r, 1));
      order.push((e.payload as { i: number }).i);
      running--;
    });
    const events = Array.from({ length: 40 }, (_, i) => envelope('orders.placed', { i }, 'k'));
    for (const e of events) await bus.publish(e);
    await eventually(() => expect(order).toHaveLength(40), 20_000);
    expect(order).toEqual(events.map((_, i) => i));
    expect(overlaps).toBe(0);
    // One pull request per event would be 40 or more.
    expect(pulls).toBeLessThan(20);
  });

  test('refuses a stream created with another partition count', async () => {
    const f = fixture();
    cleanups.push(() => f.dispose());
    const bus = await f.open();
    cleanups.push(() => bus.close());
    await expect(NatsEventBus.connect({ ...f.options, partitions: 3 })).rejects.toMatchObject({ code: 'EVOLITH_CONFIG' });
  });

  test('refuses a topic that cannot be a subject', async () => {
    const f = fixture();
    cleanups.push(() => f.dispose());
    const bus = await f.open();
    cleanups.push(() => bus.close());
    await expect(bus.publish(envelope('orders.*', {}))).rejects.toMatchObject({ code: 'EVOLITH_CONFIG' });
  });
});
