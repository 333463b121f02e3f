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
import { SqliteStorage } from '../src/storage/sqlite.js';
import { median, printTable } from './support/stats.js';

const input = z.object({
  id: z.number().int().positive(),
  title: z.string().min(1).max(200),
  amount: z.number().int().min(1),
  tags: z.array(z.string()).max(10),
});
const output = z.object({ id: z.number(), total: z.number(), accepted: z.boolean() });
type In = z.output<typeof input>;

const work = async (i: In) => ({ id: i.id, total: i.amount * 2, accepted: true });

const contract = defineContract({ name: 'calc', version: '1.0.0', methods: { price: { input, output, idempotent: true } } });
const service = implement(contract, { handlers: { price: work } });

const payload = { id: 7, title: 'Deep Learning with Types', amount: 3, tags: ['book', 'typescript'] };

async function direct(raw: unknown) {
  const i = input.parse(raw);
  return output.parse(await work(i));
}

async function measure(name: string, call: () => Promise<unknown>, iterations: number): Promise<number> {
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
  const runtime = new Runtime({ services: [service], storage: new SqliteStorage(dir), log: pino({ level: 'warn' }) });
  await runtime.start();
  const client = runtime.client(contract);

  const broker = new ServiceBroker({ logger: false, metrics: false, tracing: false });
  broker.createService({
    name: 'calc',
    actions: {
      price: async (ctx: { params: unknown }) => output.parse(await work(input.parse(ctx.params))),
    },
  });
  await broker.start();

  const rates: Record<string, number[]> = { direct: [], evolith: [], moleculer: [] };
  for (let r = 0; r < rounds; r++) {
    // Interleave the contenders so machine noise hits all of them alike.
    rates.direct!.push(await measure('direct', () => direct(payload), iterations));
    rates.evolith!.push(await measure('evolith', () => client.price(payload), iterations));
    rates.moleculer!.push(await measure('moleculer', () => broker.call('calc.price', payload), iterations));
  }
  await broker.stop();
  await runtime.stop();
  rmSync(dir, { recursive: true, force: true });

  const d = median(rates.direct!);
  const e = median(rates.evolith!);
  const m = median(rates.moleculer!);
  printTable('bench:local-call (median of ' + rounds + ' rounds × ' + iterations + ' sequential calls)', [
    ['contender', 'calls/s', 'µs/call', 'vs direct'],
    ['direct async fn + zod (baseline)', d.toFixed(0), (1e6 / d).toFixed(3), '1.00×'],
    ['evolith in-process call', e.toFixed(0), (1e6 / e).toFixed(3), `${(d / e).toFixed(2)}× cost`],
    ['moleculer 0.14 broker.call + zod', m.toFixed(0), (1e6 / m).toFixed(3), `${(d / m).toFixed(2)}× cost`],
  ]);
  console.log(`evolith cost / direct cost = ${(d / e).toFixed(2)} (target ≤ 1.30)`);
  console.log(`evolith rate / moleculer rate = ${(e / m).toFixed(2)} (target ≥ 3.00)`);
}

await main();
