/**
 * bench:http — the bookstore over HTTP: Evolith (monolith) against a minimal hand-written
 * fastify 5 + better-sqlite3 server (bench/baseline/fastify-bookstore.ts) that serves the same
 * two endpoints from the same SQLite files, doing the same work.
 *
 *   GET  /restful/products     read-only: products with specifications
 *   POST /restful/settlements  JWT check, validation, price lookup, payment + timer, stock freeze
 *
 * Both servers run as child processes on one data directory; autocannon drives them from this
 * process (127.0.0.1 only) with fixed connections and duration, Evolith and baseline interleaved
 * (the order alternating every round) so machine noise hits both alike. Reported: the median
 * over rounds of requests/s, p50 and p99 latency. Target: Evolith ≥ 0.80× the baseline's
 * requests/s with a comparable p99.
 *
 * Env: BENCH_DURATION (s, default 5), BENCH_ROUNDS (3), BENCH_CONNECTIONS (16), BENCH_WARMUP (s, 1).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { ChildProcesses } from './support/children.js';
import { median, printTable } from './support/stats.js';

// autocannon ships no type declarations: the part of its API used here.
interface AutocannonOptions {
  url: string;
  connections: number;
  duration: number;
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  body?: string;
  timeout?: number;
}
interface AutocannonResult {
  requests: { average: number; total: number };
  latency: { p50: number; p99: number };
  non2xx: number;
  errors: number;
  timeouts: number;
  duration: number;
  statusCodeStats: Record<string, { count: number }>;
}
interface AutocannonInstance extends PromiseLike<AutocannonResult> {
  on(event: 'response', fn: (client: unknown, statusCode: number, resBytes: number, responseTime: number) => void): void;
}
const autocannon = createRequire(import.meta.url)('autocannon') as (opts: AutocannonOptions) => AutocannonInstance;

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DURATION = Number(process.env.BENCH_DURATION ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 1);
/** Long enough that no payment made here times out while the bench runs (the timers' work would be noise). */
const EXPIRES_MS = 3_600_000;
const USERNAME = 'icyfenix';
const PASSWORD = 'MFfTW3uNI4eqhwDkG7HP9p2mzEUu/r2';
const REPRODUCE = `BENCH_DURATION=${DURATION} BENCH_ROUNDS=${ROUNDS} BENCH_CONNECTIONS=${CONNECTIONS} BENCH_WARMUP=${WARMUP} npm run bench:http`;

const SETTLEMENT = JSON.stringify({
  items: [{ id: 1, amount: 1 }],
  purchase: { delivery: true, pay: 'wechat', name: 'Bench Buyer', telephone: '18888888888', location: 'Tangjiawan, Zhuhai' },
});

class BenchError extends Error {}
const fail = (message: string): never => {
  throw new BenchError(message);
};

// ---------------------------------------------------------------------------------------------
// Child processes.

interface Server {
  name: string;
  url: string;
  child: ChildProcess;
  output: string[];
}
const dataDir = mkdtempSync(join(tmpdir(), 'evolith-bench-http-'));
// Whatever happens (error, Ctrl-C), no server outlives the bench; the data goes with them.
const children = new ChildProcesses();
process.once('exit', () => rmSync(dataDir, { recursive: true, force: true }));

function startServer(name: string, args: string[], timeoutMs: number): Promise<Server> {
  const child = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const output: string[] = [];
  return new Promise((resolveStart, rejectStart) => {
    const timer = setTimeout(() => rejectStart(new BenchError(`${name} did not report "listening on" within ${timeoutMs} ms:\n${output.join('')}`)), timeoutMs);
    let ready = false;
    const onData = (chunk: Buffer) => {
      output.push(chunk.toString());
      if (output.length > 200) output.splice(0, output.length - 200); // keep a tail for error reports
      if (ready) return;
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output.join(''));
      if (m) {
        ready = true;
        clearTimeout(timer);
        resolveStart({ name, url: m[1]!, child, output });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      rejectStart(new BenchError(`${name} exited (${signal ?? code}) before it was ready:\n${output.join('')}`));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers (setup and comparison only; the measuring is autocannon's).

async function call(url: string, init: RequestInit = {}): Promise<{ status: number; text: string; type: string | null }> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(10_000) });
  return { status: res.status, text: await res.text(), type: res.headers.get('content-type') };
}

async function login(base: string): Promise<string> {
  const qs = new URLSearchParams({
    grant_type: 'password',
    username: USERNAME,
    password: PASSWORD,
    client_id: 'bookstore_frontend',
    client_secret: 'bookstore_secret',
  });
  const r = await call(`${base}/oauth/token?${qs}`);
  if (r.status !== 200) fail(`login failed: ${r.status} ${r.text}`);
  return (JSON.parse(r.text) as { access_token: string }).access_token;
}

function firstDifference(a: string, b: string): string {
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  return `at character ${i}:\n  evolith : …${a.slice(Math.max(0, i - 60), i + 80)}\n  baseline: …${b.slice(Math.max(0, i - 60), i + 80)}`;
}

const settleInit = (token: string | undefined, body: string): RequestInit => ({
  method: 'POST',
  headers: { 'content-type': 'application/json', ...(token ? { authorization: `bearer ${token}` } : {}) },
  body,
});

/** The rows one settlement left behind, with ids and clocks taken out, so the two servers' writes can be compared. */
function writesOf(dataDir: string, payId: string): unknown {
  const pay = new Database(join(dataDir, 'payment.sqlite'), { readonly: true });
  const wh = new Database(join(dataDir, 'warehouse.sqlite'), { readonly: true });
  try {
    const p = pay.prepare('select * from payment where pay_id = ?').get(payId) as Record<string, unknown> | undefined;
    const timers = pay.prepare('select * from evolith_outbox where key = ? order by id').all(payId) as Record<string, unknown>[];
    const hold = wh.prepare('select * from stock_hold where pay_id = ?').get(payId) as Record<string, unknown> | undefined;
    const items = wh.prepare('select * from stock_hold_item where pay_id = ? order by product_id').all(payId);
    const gap = (r: Record<string, unknown> | undefined, a: string, b: string) => (r ? Number(r[a]) - Number(r[b]) : undefined);
    return {
      payment: p && { ...p, id: typeof p.id, pay_id: '<payId>', create_time: typeof p.create_time, expires_at: gap(p, 'expires_at', 'create_time') },
      outbox: timers.map((t) => ({
        ...t,
        id: String(t.id).replace(payId, '<payId>'),
        payload: String(t.payload).replace(payId, '<payId>'),
        key: '<payId>',
        traceparent: /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/.test(String(t.traceparent)) ? '<traceparent>' : t.traceparent,
        deliver_at: p ? Number(t.deliver_at) - Number(p.create_time) : t.deliver_at,
        created_at: typeof t.created_at,
      })),
      stockHold: hold && { ...hold, pay_id: '<payId>', created_at: typeof hold.created_at, updated_at: typeof hold.updated_at },
      stockHoldItems: (items as Record<string, unknown>[]).map((i) => ({ ...i, pay_id: '<payId>' })),
    };
  } finally {
    pay.close();
    wh.close();
  }
}

/** Fails unless both servers answer the measured requests alike; returns notes on the error paths. */
async function compare(evolith: Server, baseline: Server, token: string, dataDir: string): Promise<string[]> {
  // 1. GET /restful/products: byte-identical bodies.
  const [e, b] = await Promise.all([call(`${evolith.url}/restful/products`), call(`${baseline.url}/restful/products`)]);
  if (e.status !== 200 || b.status !== 200) fail(`GET /restful/products: evolith ${e.status}, baseline ${b.status}`);
  if (e.text !== b.text) fail(`GET /restful/products bodies differ ${firstDifference(e.text, b.text)}`);
  if (e.type !== b.type) fail(`GET /restful/products content types differ: ${e.type} vs ${b.type}`);
  const products = JSON.parse(e.text) as { specifications: unknown[] }[];
  if (products.length < 8 || products.some((p) => p.specifications.length === 0)) fail('GET /restful/products: expected ≥ 8 products with specifications');

  // 2. POST /restful/settlements: the same Payment (but for ids and clocks) and the same rows written.
  const [es, bs] = [await call(`${evolith.url}/restful/settlements`, settleInit(token, SETTLEMENT)), await call(`${baseline.url}/restful/settlements`, settleInit(token, SETTLEMENT))];
  if (es.status !== 200 || bs.status !== 200) fail(`POST /restful/settlements: evolith ${es.status} ${es.text}, baseline ${bs.status} ${bs.text}`);
  if (es.type !== bs.type) fail(`POST /restful/settlements content types differ: ${es.type} vs ${bs.type}`);
  const pe = JSON.parse(es.text) as Record<string, unknown>;
  const pb = JSON.parse(bs.text) as Record<string, unknown>;
  const shape = (p: Record<string, unknown>) => {
    const payId = String(p.payId);
    const created = Date.parse(String(p.createTime));
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(payId)) fail(`payId is not a random UUID: ${payId}`);
    if (new Date(created).toISOString() !== p.createTime || Math.abs(Date.now() - created) > 60_000) fail(`createTime is not a recent ISO instant: ${String(p.createTime)}`);
    if (!Number.isInteger(p.id)) fail(`id is not an integer: ${String(p.id)}`);
    return JSON.stringify({ ...p, id: '<int>', createTime: '<iso>', payId: '<uuid>', paymentLink: String(p.paymentLink).replace(payId, '<payId>') });
  };
  const [se, sb] = [shape(pe), shape(pb)];
  if (se !== sb) fail(`POST /restful/settlements answers differ ${firstDifference(se, sb)}`);
  const [we, wb] = [JSON.stringify(writesOf(dataDir, String(pe.payId))), JSON.stringify(writesOf(dataDir, String(pb.payId)))];
  if (we !== wb) fail(`the two servers' settlements wrote different rows ${firstDifference(we, wb)}`);
  if (!we.includes('"state":"FROZEN"') || !we.includes('payment.expired')) fail(`a settlement wrote unexpected rows: ${we}`);

  // 3. Error paths: not measured, so differences are reported rather than fatal.
  const notes: string[] = [];
  const goodPurchase = JSON.parse(SETTLEMENT).purchase as object;
  const cases: [string, string | undefined, string][] = [
    ['anonymous settlement', undefined, SETTLEMENT],
    ['forged token', `${token.slice(0, -4)}AAAA`, SETTLEMENT],
    ['invalid body', token, JSON.stringify({ items: [{ id: 1, amount: 0 }], purchase: {} })],
    ['unknown product', token, JSON.stringify({ items: [{ id: 999999, amount: 1 }], purchase: goodPurchase })],
    ['insufficient stock', token, JSON.stringify({ items: [{ id: 2, amount: 10_000 }], purchase: goodPurchase })],
  ];
  for (const [what, t, body] of cases) {
    const [x, y] = [await call(`${evolith.url}/restful/settlements`, settleInit(t, body)), await call(`${baseline.url}/restful/settlements`, settleInit(t, body))];
    if (x.status !== y.status || x.text !== y.text) notes.push(`${what}: evolith ${x.status} ${x.text} | baseline ${y.status} ${y.text}`);
  }
  return notes;
}

// ---------------------------------------------------------------------------------------------
// Measuring.

interface Sample {
  rps: number;
  p50: number;
  p99: number;
  non2xx: number;
  errors: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function measure(url: string, opts: Omit<AutocannonOptions, 'url' | 'connections'>): Promise<Sample> {
  // autocannon's own histogram keeps whole milliseconds; the response events carry the
  // hrtime-based duration, which gives sub-millisecond percentiles.
  const times: number[] = [];
  const instance = autocannon({ url, connections: CONNECTIONS, timeout: 10, ...opts });
  instance.on('response', (_client, _status, _bytes, ms) => {
    times.push(ms);
  });
  const r = await instance;
  const sorted = Float64Array.from(times).sort();
  return { rps: r.requests.total / r.duration, p50: percentile(sorted, 50), p99: percentile(sorted, 99), non2xx: r.non2xx, errors: r.errors + r.timeouts };
}

interface Endpoint {
  label: string;
  path: string;
  opts: (token: string) => Omit<AutocannonOptions, 'url' | 'connections' | 'duration'>;
}

const endpoints: Endpoint[] = [
  { label: 'GET /restful/products', path: '/restful/products', opts: () => ({ method: 'GET' }) },
  {
    label: 'POST /restful/settlements',
    path: '/restful/settlements',
    opts: (token) => ({ method: 'POST', headers: { 'content-type': 'application/json', authorization: `bearer ${token}` }, body: SETTLEMENT }),
  },
];

const ms = (v: number) => v.toFixed(2);

async function main(): Promise<void> {
  console.log(`bench:http — reproduce with: ${REPRODUCE}`);
  console.log(`${CONNECTIONS} connections, ${DURATION} s per run, ${ROUNDS} rounds (+ ${WARMUP} s warm-up per server and endpoint), node ${process.version}`);
  const started = Date.now();
  try {
    const evolith = await startServer(
      'evolith',
      [
        'bin/evolith.mjs', 'run', 'examples/bookstore', '--port', '0', '--data', dataDir,
        '--set', 'checkSerializable=false', '--set', `config.payment.paymentExpiresMs=${EXPIRES_MS}`,
      ],
      60_000,
    );
    console.log(`evolith  (monolith) on ${evolith.url}, data in ${dataDir}`);

    const token = await login(evolith.url);
    const stock = await call(`${evolith.url}/restful/products/stockpile/1?amount=1000000000`, { method: 'PATCH', headers: { authorization: `bearer ${token}` } });
    if (stock.status !== 200) fail(`could not raise the stock of product 1: ${stock.status} ${stock.text}`);

    const baseline = await startServer(
      'baseline',
      ['bin/run-ts.mjs', 'bench/baseline/fastify-bookstore.ts', '--data', dataDir, '--jwks', `${evolith.url}/.well-known/jwks.json`, '--port', '0', '--expires-ms', String(EXPIRES_MS)],
      30_000,
    );
    console.log(`baseline (fastify + better-sqlite3) on ${baseline.url}`);

    const notes = await compare(evolith, baseline, token, dataDir);
    console.log('responses compared: GET /restful/products identical; POST /restful/settlements same Payment and same rows written');

    const servers = [evolith, baseline];
    const samples = new Map<string, Sample[]>();
    const key = (ep: Endpoint, s: Server) => `${ep.label}|${s.name}`;
    const run = async (ep: Endpoint, s: Server, duration: number, record: boolean) => {
      const sample = await measure(`${s.url}${ep.path}`, { duration, ...ep.opts(token) });
      if (sample.non2xx > 0 || sample.errors > 0) {
        fail(`${s.name} ${ep.label}: ${sample.non2xx} non-2xx responses and ${sample.errors} errors/timeouts; server output:\n${s.output.join('').slice(-4000)}`);
      }
      if (record) {
        const list = samples.get(key(ep, s)) ?? [];
        list.push(sample);
        samples.set(key(ep, s), list);
        console.log(`  round ${list.length}  ${s.name.padEnd(8)} ${ep.label.padEnd(26)} ${sample.rps.toFixed(0).padStart(6)} req/s  p50 ${ms(sample.p50)} ms  p99 ${ms(sample.p99)} ms`);
      }
    };

    for (const ep of endpoints) {
      if (WARMUP > 0) for (const s of servers) await run(ep, s, WARMUP, false);
      for (let r = 0; r < ROUNDS; r++) {
        // Alternate who goes first, so neither always meets the fresher machine (or the smaller tables).
        for (const s of r % 2 === 0 ? servers : [...servers].reverse()) await run(ep, s, DURATION, true);
      }
    }

    const rows: string[][] = [['endpoint', 'server', 'req/s', 'p50 ms', 'p99 ms', 'non-2xx', 'req/s per round']];
    const ratios: string[][] = [['endpoint', 'req/s evolith/baseline', 'target', 'verdict', 'p99 evolith/baseline', 'p50 evolith/baseline']];
    for (const ep of endpoints) {
      const agg = servers.map((s) => {
        const list = samples.get(key(ep, s))!;
        return {
          s,
          list,
          rps: median(list.map((x) => x.rps)),
          p50: median(list.map((x) => x.p50)),
          p99: median(list.map((x) => x.p99)),
          non2xx: list.reduce((n, x) => n + x.non2xx, 0),
        };
      });
      for (const a of agg) {
        rows.push([ep.label, a.s.name, a.rps.toFixed(0), ms(a.p50), ms(a.p99), String(a.non2xx), a.list.map((x) => x.rps.toFixed(0)).join(' / ')]);
      }
      const [ev, bl] = agg as [(typeof agg)[0], (typeof agg)[0]];
      const ratio = ev.rps / bl.rps;
      ratios.push([ep.label, `${ratio.toFixed(2)}×`, '≥ 0.80×', ratio >= 0.8 ? 'meets' : 'MISSES', `${(ev.p99 / bl.p99).toFixed(2)}×`, `${(ev.p50 / bl.p50).toFixed(2)}×`]);
    }
    printTable(`bench:http — median of ${ROUNDS} rounds × ${DURATION} s, ${CONNECTIONS} connections (latency per request, from autocannon's hrtime)`, rows);
    printTable('evolith / baseline (target: ≥ 0.80× requests/s, comparable p99)', ratios);
    if (notes.length) {
      console.log('\nresponses that differ on error paths (not measured):');
      for (const n of notes) console.log(`  - ${n}`);
    } else {
      console.log('\nerror paths (anonymous, forged token, invalid body, unknown product, insufficient stock): same status and body');
    }
    console.log(`\ntotal time ${((Date.now() - started) / 1000).toFixed(0)} s; reproduce with: ${REPRODUCE}`);
  } finally {
    await children.stopAll();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (err) {
  console.error(`\nbench:http FAILED: ${err instanceof BenchError ? err.message : ((err as Error)?.stack ?? String(err))}`);
  await children.stopAll();
  process.exitCode = 1;
}
