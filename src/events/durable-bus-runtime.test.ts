/**
 * The durable buses under the kernel: services in separate runtimes (as separate processes
 * would be) exchange events through the outbox, the bus and the subscriber's inbox.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterEach, describe, expect, test } from 'vitest';
import { z } from 'zod';
import { eventually, Kit } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import type { EventBus } from '../kernel/plugins.js';
import { database, implement } from '../kernel/service.js';
import { NatsEventBus } from './nats-bus.js';
import { SqliteEventBus } from './sqlite-bus.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

const shop = defineContract({
  name: 'shop',
  version: '1',
  methods: { sell: { input: z.object({ sku: z.string(), n: z.number() }), output: z.null() } },
  events: { sold: z.object({ sku: z.string(), n: z.number() }) },
});
const ledger = defineContract({ name: 'ledger', version: '1', methods: {} });

type LedgerDB = { entry: { sku: string; n: number; replica: string } };

const shopService = implement(shop, {
  handlers: {
    async sell({ sku, n }, ctx) {
      await ctx.emit(shop.events.sold, { sku, n }, { key: sku });
      return null;
    },
  },
});

function ledgerService(replica: string) {
  return implement(ledger, {
    database: database<LedgerDB>({
      migrations: {
        '001': async (db) => db.schema.createTable('entry').ifNotExists().addColumn('sku', 'text').addColumn('n', 'integer').addColumn('replica', 'text').execute(),
      },
    }),
    handlers: {},
  }).on(shop.events.sold, async ({ sku, n }, ctx) => {
    await ctx.transaction(async (tx) => {
      await tx.db.insertInto('entry').values({ sku, n, replica }).execute();
    });
  });
}

const SERVERS = process.env.NATS_URL ?? '127.0.0.1:4222';
const natsDown = await connect({ servers: SERVERS, timeout: 2_000, maxReconnectAttempts: 0 }).then(
  (nc) => nc.close().then(() => undefined),
  (err: Error) => `no NATS server at ${SERVERS} (${err.message})`,
);
if (natsDown) console.warn(`[nats] skipping the kernel test of NatsEventBus: ${natsDown}`);

/** Opens buses that share one installation; `dispose` removes it. */
interface Backend {
  open(): Promise<EventBus>;
  dispose(): Promise<void>;
}

const backends: [string, () => Backend, string | undefined][] = [
  [
    'sqlite',
    () => {
      const file = join(kit.tmp('bus'), 'events.sqlite');
      return { open: async () => new SqliteEventBus(file, { pollIntervalMs: 20, synchronous: 'normal' }), dispose: async () => undefined };
    },
    undefined,
  ],
  [
    'nats',
    () => {
      const tag = randomUUID().replace(/-/g, '').slice(0, 12);
      const options = { servers: SERVERS, stream: `EVOLITH_KTEST_${tag}`, prefix: `evolith_ktest_${tag}`, partitions: 4 };
      return {
        open: () => NatsEventBus.connect(options),
        dispose: async () => {
          const nc = await connect({ servers: SERVERS });
          await (await jetstreamManager(nc)).streams.delete(options.stream).catch(() => undefined);
          await nc.close();
        },
      };
    },
    natsDown,
  ],
];

describe.each(backends)('%s bus under the kernel', (_name, makeBackend, skip) => {
  test.skipIf(skip !== undefined)('two replicas of a subscriber apply each event once, in key order', async () => {
    const backend = makeBackend();
    try {
      const ledgerData = kit.tmp('ledger');
      // Migrations run once before the replicas start, as the supervisor would arrange.
      const first = await kit.start([ledgerService('r1')], { dir: ledgerData, bus: await backend.open() });
      await kit.start([ledgerService('r2')], { dir: ledgerData, bus: await backend.open() });
      const seller = await kit.start([shopService], { bus: await backend.open() });
      const client = seller.client(shop);
      for (let n = 0; n < 20; n++) await Promise.all(['a', 'b', 'c'].map((sku) => client.sell({ sku, n })));
      const db = first.host('ledger').db;
      await eventually(async () => expect(await db.selectFrom('entry').selectAll().execute()).toHaveLength(60), 10_000);
      const rows = (await db.selectFrom('entry').selectAll().execute()) as LedgerDB['entry'][];
      for (const sku of ['a', 'b', 'c']) {
        expect(rows.filter((r) => r.sku === sku).map((r) => r.n)).toEqual(Array.from({ length: 20 }, (_, i) => i));
      }
    } finally {
      await kit.cleanup();
      await backend.dispose();
    }
  });
});
