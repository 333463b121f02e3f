/**
 * A NATS outage under the kernel: a seller keeps taking orders (their events wait in its
 * outbox) while a private nats-server is down; when it is back on the same port and store,
 * every event reaches the subscriber exactly once and the backlog drains within seconds.
 *
 * The outage lasts EVOLITH_TEST_NATS_OUTAGE_MS (default 6 s) with the bus's publish timeout at
 * EVOLITH_TEST_NATS_PUBLISH_TIMEOUT_MS (default 2 s): several publish timeouts and outbox
 * retries, the same path a 17 s outage takes with the default 10 s timeout (run with 17000 and
 * 10000 to see that one).
 */
import { afterEach, describe, expect, test } from 'vitest';
import { z } from 'zod';
import pino from 'pino';
import { startPrivateNats, natsServerMissing, type PrivateNats } from '../../test/support/nats-server.js';
import { eventually, Kit, sleep } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import { database, implement } from '../kernel/service.js';
import { NatsEventBus } from './nats-bus.js';

const missing = natsServerMissing();
if (missing) console.warn(`skipping the NATS outage test: ${missing}`);

const OUTAGE_MS = Number(process.env.EVOLITH_TEST_NATS_OUTAGE_MS ?? 6_000);
const PUBLISH_TIMEOUT_MS = Number(process.env.EVOLITH_TEST_NATS_PUBLISH_TIMEOUT_MS ?? 2_000);

const shop = defineContract({
  name: 'shop',
  version: '1',
  methods: { sell: { input: z.object({ sku: z.string(), n: z.number() }), output: z.null() } },
  events: { sold: z.object({ sku: z.string(), n: z.number() }) },
});
const ledger = defineContract({ name: 'ledger', version: '1', methods: {} });
type LedgerDB = { entry: { sku: string; n: number } };

const shopService = implement(shop, {
  handlers: {
    async sell({ sku, n }, ctx) {
      await ctx.emit(shop.events.sold, { sku, n }, { key: sku });
      return null;
    },
  },
});

let handled = 0;
let lastHandledAt = 0;
const handledAt: number[] = [];
const ledgerService = implement(ledger, {
  database: database<LedgerDB>({
    migrations: { '001': async (db) => db.schema.createTable('entry').addColumn('sku', 'text').addColumn('n', 'integer').execute() },
  }),
  handlers: {},
}).on(shop.events.sold, async ({ sku, n }, ctx) => {
  handled++;
  lastHandledAt = performance.now();
  handledAt.push(lastHandledAt);
  await ctx.transaction(async (tx) => {
    await tx.db.insertInto('entry').values({ sku, n }).execute();
  });
});

const kit = new Kit();
let nats: PrivateNats | undefined;
afterEach(async () => {
  await kit.cleanup();
  await nats?.dispose();
  nats = undefined;
});

describe.skipIf(missing !== undefined)('NATS outage under the kernel', () => {
  test(`a ${OUTAGE_MS / 1000} s outage loses nothing, and the backlog drains within 3 s of NATS coming back`, async () => {
    handled = 0;
    nats = await startPrivateNats();
    const log = pino({ level: process.env.EVOLITH_TEST_VERBOSE ? 'info' : 'silent' });
    const bus = () => NatsEventBus.connect({ servers: nats!.servers, publishTimeoutMs: PUBLISH_TIMEOUT_MS, log });
    const books = await kit.start([ledgerService], { bus: await bus() });
    const seller = await kit.start([shopService], { bus: await bus() });
    const client = seller.client(shop);
    const db = books.host('ledger').db;
    const count = async () => Number((await db.selectFrom('entry').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow()).n);

    const skus = ['a', 'b', 'c', 'd', 'e', 'f'];
    let n = 0;
    const sellRound = () => Promise.all(skus.map((sku) => client.sell({ sku, n }))).then(() => void n++);
    for (let i = 0; i < 5; i++) await sellRound();
    await eventually(async () => expect(await count()).toBe(n * skus.length), 10_000);

    await nats.stop();
    const downAt = Date.now();
    // Orders keep coming while NATS is down: their events wait in the seller's outbox.
    while (Date.now() - downAt < OUTAGE_MS) {
      await sellRound();
      await sleep(100);
    }
    const during = n;
    expect(await count()).toBe(5 * skus.length); // nothing got through meanwhile
    await nats.start();
    const backAt = performance.now();
    for (let i = 0; i < 5; i++) await sellRound(); // and after
    const total = n * skus.length;
    const outbox = seller.host('shop').db;
    let sentAt = 0;
    const unsent = async () =>
      Number((await outbox.selectFrom('evolith_outbox').select((eb) => eb.fn.countAll().as('n')).where('delivered_at', 'is', null).executeTakeFirstOrThrow()).n);
    await eventually(async () => {
      if (!sentAt && (await unsent()) === 0) sentAt = performance.now();
      expect(await count()).toBe(total);
    }, 20_000, 20);
    const drained = performance.now() - backAt;
    const firstAfter = handledAt.find((t) => t > backAt);
    console.info(
      `[nats] outage of ${OUTAGE_MS} ms (publish timeout ${PUBLISH_TIMEOUT_MS} ms): ${(during - 5) * skus.length} events published during it, ` +
        `all ${total} handled ${drained.toFixed(0)} ms after NATS was back (the outbox empty after ${(sentAt - backAt).toFixed(0)} ms; ` +
        `the first handled after ${((firstAfter ?? backAt) - backAt).toFixed(0)} ms, the last after ${(lastHandledAt - backAt).toFixed(0)} ms; ${handled} handler runs)`,
    );
    // Exactly once, and in order per key.
    const rows = (await db.selectFrom('entry').selectAll().orderBy('sku').execute()) as LedgerDB['entry'][];
    for (const sku of skus) {
      expect(rows.filter((r) => r.sku === sku).map((r) => r.n)).toEqual(Array.from({ length: n }, (_, i) => i));
    }
    // The handler itself ran once per event (a redelivery of an applied event stops at the inbox).
    expect(handled).toBe(total);
    expect(drained).toBeLessThan(3_000);
  }, 120_000);
});

describe.skipIf(missing !== undefined)('NatsEventBus.check()', () => {
  test('ready while connected, not ready while NATS is down (saying so), ready again once it is back, closed after close()', async () => {
    nats = await startPrivateNats();
    const bus = await NatsEventBus.connect({ servers: nats.servers, partitions: 2 });
    try {
      await expect(bus.check()).resolves.toBeUndefined();
      await nats.stop();
      const err = await eventually(async () => {
        const e = await bus.check().then(
          () => undefined,
          (x: unknown) => x,
        );
        expect(e).toBeDefined();
        return e;
      }, 5_000);
      expect(err).toMatchObject({ code: 'EVOLITH_UNAVAILABLE' });
      expect((err as Error).message).toMatch(/connection to NATS is lost|JetStream does not answer/);
      // Still down a while later: no false recovery.
      await sleep(500);
      await expect(bus.check()).rejects.toMatchObject({ code: 'EVOLITH_UNAVAILABLE' });
      await nats.start();
      await eventually(() => bus.check(), 10_000, 50);
    } finally {
      await bus.close();
    }
    await expect(bus.check()).rejects.toThrow(/closed/);
  }, 30_000);
});
