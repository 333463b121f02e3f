/**
 * bench:local-call — the cost of an in-process Evolith call (monolith mode) against
 * (a) a direct async function call doing the same zod validation of input and output, and
 * (b) Moleculer 0.14's local broker.call doing the same validation in its action.
 * Targets: Evolith ≤ 1.3× the direct call's cost; ≥ 3× Moleculer's rate.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ServiceBroker } from 'moleculer';
import pino from 'pino';
import { defineContract, implement, z } from '../src/index.js';
import { Runtime } from '../src/kernel/runtime.js';
import { inProcessPlugins } from '../src/worker/backends.js';
import { SqliteStorage } from '../src/storage/sqlite.js';
import { median, printTable } from './support/stats.js';

// Two workloads: a small record, and the shape of the bookstore's settlement (its real input).
const small = z.object({
  id: z.number().int().positive(),
  title: z.string().min(1).max(200),
  amount: z.number().int().min(1),
  tags: z.array(z.string()).max(10),
});
const smallOut = z.object({ id: z.number(), total: z.number(), accepted: z.boolean() });
const settlement = z.object({
  items: z.array(z.object({ id: z.number().int().positive(), amount: z.number().int().min(1).max(10_000) })).min(1).max(100),
  purchase: z.object({
    delivery: z.boolean(),
    pay: z.enum(['wechat', 'alipay']),
    name: z.string().min(1).max(100),
    telephone: z.string().regex(/^1\d{10}$/),
    location: z.string().min(1).max(500),
  }),
});
const payment = z.object({
  id: z.number().int(),
  payId: z.string().uuid(),
  totalPrice: z.number(),
  expires: z.number().int(),
  paymentLink: z.string(),
  payState: z.enum(['WAITING', 'CANCEL', 'PAYED', 'TIMEOUT']),
  createTime: z.number().int(),
});

const contract = defineContract({
  name: 'calc',
  version: '1.0.0',
  methods: {
    price: { input: small, output: smallOut, idempotent: true },
    settle: { input: settlement, output: payment },
  },
});
const price = async (i: z.output<typeof small>) => ({ id: i.id, total: i.amount * 2, accepted: true });
const settle = async (i: z.output<typeof settlement>) => ({
  id: 1,
  payId: '6f1c3a52-8f0e-4a7c-9b0e-2f4d8b1a9c11',
  totalPrice: i.items.reduce((s, x) => s + x.amount * 10, 12),
  expires: 120_000,
  paymentLink: '/pay/modify/6f1c3a52-8f0e-4a7c-9b0e-2f4d8b1a9c11?state=PAYED&accountId=1',
  payState: 'WAITING' as const,
  createTime: 1_700_000_000_000,
});
const service = implement(contract, { handlers: { price, settle } });

const smallPayload = { id: 7, title: 'Deep Learning with Types', amount: 3, tags: ['book', 'typescript'] };
const settlementPayload = {
  items: [
    { id: 1, amount: 2 },
    { id: 3, amount: 1 },
    { id: 5, amount: 4 },
  ],
  purchase: { delivery: true, pay: 'wechat' as const, name: 'Zhou Zhiming', telephone: '18888888888', location: 'Tianhe, Guangzhou' },
};

async function measure(call: () => Promise<unknown>, iterations: number): Promise<number> {
  for (let i = 0; i < 2000; i++) await call(); // warm-up
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) await call();
  const ns = Number(process.hrtime.bigint() - start);
  return iterations / (ns / 1e9);
}

async function main() {
  const iterations = Number(process.env.BENCH_ITERATIONS ?? 100_000);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 7);
  const dir = mkdtempSync(join(tmpdir(), 'evolith-bench-'));
  const runtime = new Runtime({ services: [service], ...inProcessPlugins(), storage: new SqliteStorage(dir), log: pino({ level: 'warn' }) });
  await runtime.start();
  const client = runtime.client(contract);

  const broker = new ServiceBroker({ logger: false, metrics: false, tracing: false });
  broker.createService({
    name: 'calc',
    actions: {
      price: async (ctx: { params: unknown }) => smallOut.parse(await price(small.parse(ctx.params))),
      settle: async (ctx: { params: unknown }) => payment.parse(await settle(settlement.parse(ctx.params))),
    },
  });
  await broker.start();

  const workloads = [
    {
      name: 'small record',
      direct: async (raw: unknown) => smallOut.parse(await price(small.parse(raw))),
      evolith: () => client.price(smallPayload),
      moleculer: () => broker.call('calc.price', smallPayload),
      payload: smallPayload,
    },
    {
      name: 'settlement',
      direct: async (raw: unknown) => payment.parse(await settle(settlement.parse(raw))),
      evolith: () => client.settle(settlementPayload),
      moleculer: () => broker.call('calc.settle', settlementPayload),
      payload: settlementPayload,
    },
  ];
  for (const w of workloads) {
    const rates = { direct: [] as number[], evolith: [] as number[], moleculer: [] as number[] };
    for (let r = 0; r < rounds; r++) {
      // Interleave the contenders so machine noise hits all of them alike.
      rates.direct.push(await measure(() => w.direct(w.payload), iterations));
      rates.evolith.push(await measure(w.evolith, iterations));
      rates.moleculer.push(await measure(w.moleculer, iterations));
    }
    const d = median(rates.direct);
    const e = median(rates.evolith);
    const m = median(rates.moleculer);
    printTable(`bench:local-call — ${w.name} (median of ${rounds} rounds × ${iterations} sequential calls)`, [
      ['contender', 'calls/s', 'µs/call', 'cost vs direct'],
      ['direct async fn + zod (baseline)', d.toFixed(0), (1e6 / d).toFixed(3), '1.00×'],
      ['evolith in-process call', e.toFixed(0), (1e6 / e).toFixed(3), `${(d / e).toFixed(2)}×`],
      ['moleculer 0.14 broker.call + zod', m.toFixed(0), (1e6 / m).toFixed(3), `${(d / m).toFixed(2)}×`],
    ]);
    console.log(`evolith cost / direct cost = ${(d / e).toFixed(2)} (target ≤ 1.30); evolith rate / moleculer rate = ${(e / m).toFixed(2)} (target ≥ 3.00)`);
  }
  await broker.stop();
  await runtime.stop();
  rmSync(dir, { recursive: true, force: true });
  console.log(`\nreproduce: BENCH_ROUNDS=${rounds} BENCH_ITERATIONS=${iterations} npm run bench:local-call`);
}

await main();
