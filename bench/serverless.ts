/**
 * bench:serverless — what the serverless architecture costs and saves, each figure beside a
 * baseline measured in the same run on the same machine (a shared, noisy one: medians and
 * ratios, not single readings).
 *
 *   1. cold start  GET /restful/products/1 (edge → warehouse.getProduct) on two serverless
 *                  deployments with short windows (serverless.defaults.scaleToZeroGraceMs=300,
 *                  stableWindowMs=2000, panicWindowMs=1000: the autoscaler's smallest legal
 *                  windows), one with the pool (serverless.pool=2, the default) and one without
 *                  (serverless.pool=0: a fresh process per cold start). A sample: wait, polling
 *                  the registry's /functions every 20 ms, until warehouse has no instance in
 *                  either deployment (and the pool is full again), then time one call (cold: it
 *                  arrives at a function with zero instances) and at once one more (warm: the
 *                  same call on the instance the first one started). The cold start is cold minus
 *                  warm, per sample, median over BENCH_COLD_SAMPLES samples; the two deployments
 *                  take turns sample by sample so that both see the same noise. The instance's
 *                  own initialisation (`initMs`, from taking the role or process start to
 *                  serving, as /functions reports it) is printed beside it.
 *   2. warm calls  the same request at BENCH_RATE req/s, open loop (latency from the scheduled
 *                  send, no coordinated omission), BENCH_ROUNDS rounds of BENCH_WARMUP s +
 *                  BENCH_DURATION s per architecture, alternating: serverless with the default
 *                  windows (nothing scales to zero between rounds; checked through /functions)
 *                  against microservices. The added latency is serverless minus microservices
 *                  within a round, median over rounds.
 *   3. idle memory RSS (/proc/<pid>/status) of the serverless deployment with the pool once every
 *                  function is at zero (control plane, edge, pool runtimes, any other descendant)
 *                  and of the microservices deployment idle after its load (every process).
 *   4. metering    a fresh serverless deployment (default windows) runs BENCH_CHECKOUTS checkout
 *                  flows, BENCH_CHECKOUT_CONCURRENCY at a time: create an account, log in, settle
 *                  an order, pay it (the login, order and payment are the demo user's: a new
 *                  account has no wallet to pay from). Nothing else is called on it, so the registry's
 *                  /metering report covers those flows alone (and the instances it starts with);
 *                  it is printed as `evolith metering` prints it, with the cost per 1000 checkouts.
 *
 * Every deployment is the bookstore on a fresh data directory with SQLite storage; the load
 * generator is this process (node:http, keep-alive, 127.0.0.1) on the same cores as the servers.
 *
 * Targets: cold start p50 ≤ 15 ms (published anchors: AWS Lambda Node.js init 118–162 ms,
 * Cloudflare Workers ≈ 5 ms); added warm latency ≤ 0.2 ms at p50 and p90.
 */
import { Agent } from 'node:http';
import { randomBytes } from 'node:crypto';
import { availableParallelism, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import type { FunctionsStatus } from '../src/deploy/serverless/platform.js';
import { ALWAYS_ON_VM, formatReport, type alwaysOnCost, type MeteringReport } from '../src/serverless/metering.js';
import { bookstoreArgs, call, loginQuery, PRODUCTS, PURCHASE, send, type Reply } from './support/bookstore.js';
import { controlPlaneOf, Deployments, fail, runBench, type Deployment } from './support/deployments.js';
import { openLoop, type OpenLoopResult } from './support/open-loop.js';
import { rssKb } from './support/procfs.js';
import { median, percentile, printTable } from './support/stats.js';
import { envNumber as readEnvNumber } from './support/env.js';

const envNumber = (name: string, fallback: number, integer: boolean, allowZero = false) => readEnvNumber('bench:serverless', name, fallback, integer, allowZero);

const COLD_SAMPLES = envNumber('BENCH_COLD_SAMPLES', 20, true);
const RATE = envNumber('BENCH_RATE', 300, false);
const DURATION = envNumber('BENCH_DURATION', 5, false);
const WARMUP = envNumber('BENCH_WARMUP', 1, false, true);
const ROUNDS = envNumber('BENCH_ROUNDS', 3, true);
const MAX_OUTSTANDING = envNumber('BENCH_MAX_OUTSTANDING', 256, true);
const CHECKOUTS = envNumber('BENCH_CHECKOUTS', 40, true);
const CHECKOUT_CONCURRENCY = envNumber('BENCH_CHECKOUT_CONCURRENCY', 4, true);
const REPRODUCE =
  `BENCH_COLD_SAMPLES=${COLD_SAMPLES} BENCH_RATE=${RATE} BENCH_DURATION=${DURATION} BENCH_WARMUP=${WARMUP} BENCH_ROUNDS=${ROUNDS} ` +
  `BENCH_MAX_OUTSTANDING=${MAX_OUTSTANDING} BENCH_CHECKOUTS=${CHECKOUTS} BENCH_CHECKOUT_CONCURRENCY=${CHECKOUT_CONCURRENCY} npm run bench:serverless`;

const ROUTE = '/restful/products/1';
const FUNCTION = 'warehouse';
/** The autoscaler's smallest legal windows (a window is at least one 1-second bucket, panic shorter than stable). */
const SHORT_WINDOWS = [
  'serverless.defaults.scaleToZeroGraceMs=300',
  'serverless.defaults.stableWindowMs=2000',
  'serverless.defaults.panicWindowMs=1000',
];
const POLL_MS = 20;
/** How long a function may take to reach zero instances before the bench gives up. */
const ZERO_TIMEOUT_MS = 30_000;
const START_TIMEOUT_MS = 180_000;
/** More failures than this share of the requests sent in a fixed-rate run fails the bench. */
const MAX_FAILURE_SHARE = 0.001;
const LATE_MS = 5;
const TARGET_COLD_MS = 15;
const TARGET_ADDED_MS = 0.2;
const COLD_ANCHORS = 'AWS Lambda Node.js init 118–162 ms; Cloudflare Workers ≈ 5 ms';
/** Instance reports reach the platform every 250 ms: wait a little over two before reading the meter. */
const REPORT_SETTLE_MS = 600;

const deployments = new Deployments('bench:serverless', 'evolith-bench-serverless-').cleanUpOnExit();
let nextDir = 0;

function startBookstore(name: string, arch: 'serverless' | 'microservices', sets: string[]): Promise<Deployment> {
  return deployments.start({
    name,
    dirName: `${nextDir++}-${name.replace(/\W+/g, '-')}`,
    args: (dataDir) => bookstoreArgs(arch, dataDir, ['--storage', 'sqlite']).concat(sets.flatMap((s) => ['--set', s])),
    timeoutMs: START_TIMEOUT_MS,
  });
}

// ---------------------------------------------------------------------------------------------
// The registry, as an operator: functions, processes, metering.

async function registryGet<T>(d: Deployment, path: string): Promise<T> {
  const cp = controlPlaneOf(d);
  const r = await call(`${cp.registryUrl}${path}`, { headers: { authorization: `Bearer ${cp.operatorToken}` } });
  if (r.status !== 200) fail(`${d.name}: the registry's ${path} answered ${r.status} ${r.text.slice(0, 300)}`);
  return JSON.parse(r.text) as T;
}

type FunctionStatus = FunctionsStatus['functions'][number];

async function functionsOf(d: Deployment): Promise<FunctionsStatus> {
  return registryGet<FunctionsStatus>(d, '/functions');
}

function fnOf(status: FunctionsStatus, name: string, d: Deployment): FunctionStatus {
  return status.functions.find((f) => f.name === name) ?? fail(`${d.name}: /functions lists no ${name}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls /functions every POLL_MS until `ready` holds for the deployment's status; fails after
 * `timeoutMs` with the last status.
 */
async function waitUntil(d: Deployment, what: string, ready: (s: FunctionsStatus) => boolean, timeoutMs = ZERO_TIMEOUT_MS): Promise<FunctionsStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await functionsOf(d);
    if (ready(s)) return s;
    if (Date.now() > deadline) fail(`${d.name}: ${what}: not within ${timeoutMs} ms; /functions says ${JSON.stringify(s).slice(0, 1500)}`);
    if (deployments.stopping) fail('interrupted');
    await sleep(POLL_MS);
  }
}

/** No instance of `fn` (none starting, serving or stopping), and the pool full again. */
const atZero = (fn: string) => (s: FunctionsStatus) => s.functions.some((f) => f.name === fn && f.instances.length === 0) && s.pool.waiting.length === s.pool.size;
/** Every function at zero, and the pool full. */
const allAtZero = (s: FunctionsStatus) => s.functions.every((f) => f.instances.length === 0) && s.pool.waiting.length === s.pool.size;

interface ProcessRow {
  name: string;
  replica: number;
  pid?: number;
  state: string;
}

/** The deployment's processes, labelled: the control plane, what the registry's /processes lists, any other descendant. */
async function processesOf(d: Deployment): Promise<{ pids: number[]; labels: Map<number, string> }> {
  const labels = new Map<number, string>([[d.child.pid!, 'control plane']]);
  const { processes } = await registryGet<{ processes: ProcessRow[] }>(d, '/processes');
  for (const p of processes) {
    if (p.state !== 'running' || !Number.isInteger(p.pid)) fail(`${d.name}: ${p.name}#${p.replica} is ${p.state} (pid ${p.pid})`);
    labels.set(p.pid!, `${p.name}#${p.replica}`);
  }
  return deployments.track(d, labels);
}

// ---------------------------------------------------------------------------------------------
// HTTP.

const problemOf = (what: string, r: Reply) => (r.status >= 200 && r.status <= 299 ? undefined : `${what}: ${r.status} ${r.body.slice(0, 200)}`);

async function getProduct(agent: Agent, base: URL): Promise<string | undefined> {
  try {
    return problemOf(`GET ${ROUTE}`, await send(agent, base, 'GET', ROUTE, {}));
  } catch (err) {
    return `GET ${ROUTE}: ${(err as Error).message}`;
  }
}

/** One timed GET of the route; a failure fails the bench. */
async function timedGet(agent: Agent, base: URL, who: string): Promise<number> {
  const t0 = performance.now();
  const r = await send(agent, base, 'GET', ROUTE, {});
  const ms = performance.now() - t0;
  if (r.status !== 200 || (JSON.parse(r.body) as { id?: number }).id !== 1) fail(`${who}: GET ${ROUTE} answered ${r.status} ${r.body.slice(0, 300)}`);
  return ms;
}

// ---------------------------------------------------------------------------------------------
// Phase 1: cold starts.

interface ColdSample {
  coldMs: number;
  warmMs: number;
  initMs: number;
  fromPool: boolean;
  /** Wall-clock ms from sending the cold call to the platform starting the instance (the activation request's way). */
  callToStartMs: number;
  /** Wall-clock ms from the instance serving (start + initMs) to the cold call's answer (registration, the edge learning of it, the call itself). */
  readyToAnswerMs: number;
}

interface ColdSubject {
  label: string;
  d: Deployment;
  agent: Agent;
  base: URL;
  samples: ColdSample[];
}

async function coldSample(s: ColdSubject): Promise<ColdSample> {
  const sentAt = Date.now();
  const coldMs = await timedGet(s.agent, s.base, s.label);
  const answeredAt = Date.now();
  const warmMs = await timedGet(s.agent, s.base, s.label);
  const fn = fnOf(await functionsOf(s.d), FUNCTION, s.d);
  // The instance the cold call started: the one instance there is (another start is a bug to report).
  const live = fn.instances.filter((i) => i.state !== 'stopping');
  if (live.length !== 1) fail(`${s.label}: after a cold call ${FUNCTION} has ${live.length} instances: ${JSON.stringify(fn.instances)}`);
  const i = live[0]!;
  if (i.cause !== 'activation') fail(`${s.label}: the instance after a cold call was started for "${i.cause}", not by the call's activation`);
  if (i.initMs === undefined) fail(`${s.label}: ${i.name} answered but reports no initMs`);
  return { coldMs, warmMs, initMs: i.initMs!, fromPool: i.fromPool, callToStartMs: i.startedAt - sentAt, readyToAnswerMs: answeredAt - (i.startedAt + i.initMs!) };
}

// ---------------------------------------------------------------------------------------------
// Phase 2: warm calls at a fixed rate.

interface FixedRun {
  load: OpenLoopResult;
  p50: number;
  p90: number;
  p99: number;
}

async function fixedRateRun(d: Deployment): Promise<FixedRun> {
  const base = new URL(d.url);
  const agent = new Agent({ keepAlive: true, maxSockets: MAX_OUTSTANDING });
  try {
    const load = await openLoop({
      ratePerS: RATE,
      warmupMs: WARMUP * 1000,
      durationMs: DURATION * 1000,
      maxOutstanding: MAX_OUTSTANDING,
      lateMs: LATE_MS,
      send: () => getProduct(agent, base),
    });
    if (deployments.stopping) fail('interrupted');
    const sorted = Float64Array.from(load.latencies).sort();
    return { load, p50: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99) };
  } finally {
    agent.destroy();
  }
}

/** The names of the function's serving instances: the same before and after a round means no cold start in it. */
async function servingInstances(d: Deployment): Promise<string[]> {
  return fnOf(await functionsOf(d), FUNCTION, d)
    .instances.filter((i) => i.state === 'ready')
    .map((i) => i.name)
    .sort();
}

// ---------------------------------------------------------------------------------------------
// Phase 3: memory.

interface MemoryReading {
  totalMb: number;
  each: { label: string; mb: number }[];
}

async function memoryOf(d: Deployment): Promise<MemoryReading> {
  const set = await processesOf(d);
  const each = set.pids.map((pid) => ({ label: set.labels.get(pid)!, mb: (rssKb(pid) ?? fail(`${d.name}: process ${pid} (${set.labels.get(pid)}) is gone`)) / 1024 }));
  return { totalMb: each.reduce((n, e) => n + e.mb, 0), each };
}

// ---------------------------------------------------------------------------------------------
// Phase 4: checkout flows and their metering.

let phoneCounter = 0;
function newAccount() {
  const tag = `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
  phoneCounter = (phoneCounter + 1) % 1000;
  const phone = `1${String(randomBytes(4).readUInt32BE(0) % 10_000_000).padStart(7, '0')}${String(phoneCounter).padStart(3, '0')}`;
  return { username: `bench_${tag}`, name: `Bench ${tag}`, password: `pw-${tag}`, telephone: phone, email: `bench_${tag}@example.com`, location: 'Bench Lane 1', avatar: '' };
}

/**
 * One checkout: sign a new customer up, log in, settle one item, pay: a problem's description,
 * or undefined. The bookstore opens no wallet for a new account (nor has a way to fund one), so
 * the login, settlement and payment are the demo user's, whose wallet pays for every flow here.
 */
async function checkout(agent: Agent, base: URL, seq: number): Promise<string | undefined> {
  const account = newAccount();
  const json = { 'content-type': 'application/json' };
  const created = await send(agent, base, 'POST', '/restful/accounts', json, JSON.stringify(account));
  const p1 = problemOf('POST /restful/accounts', created);
  if (p1) return p1;
  const login = await send(agent, base, 'GET', `/oauth/token?${loginQuery}`, {});
  const p2 = problemOf('GET /oauth/token', login);
  if (p2) return p2;
  const token = (JSON.parse(login.body) as { access_token?: string }).access_token;
  if (typeof token !== 'string') return `login answered without a token: ${login.body.slice(0, 200)}`;
  const auth = { authorization: `bearer ${token}` };
  const items = [{ id: PRODUCTS[seq % PRODUCTS.length]!, amount: 1 }];
  const settled = await send(agent, base, 'POST', '/restful/settlements', { ...auth, ...json }, JSON.stringify({ items, purchase: PURCHASE }));
  const p3 = problemOf('POST /restful/settlements', settled);
  if (p3) return p3;
  const payId = (JSON.parse(settled.body) as { payId?: string }).payId;
  if (typeof payId !== 'string') return `settle answered without a payId: ${settled.body.slice(0, 200)}`;
  return problemOf('PATCH /restful/pay', await send(agent, base, 'PATCH', `/restful/pay/${encodeURIComponent(payId)}?state=PAYED`, auth));
}

// ---------------------------------------------------------------------------------------------
// Reporting.

const f1 = (v: number) => v.toFixed(1);
const f2 = (v: number) => v.toFixed(2);
const f3 = (v: number) => v.toFixed(3);
const plus = (v: number) => `${v >= 0 ? '+' : ''}${v.toFixed(3)}`;
const x = (v: number) => `${v.toFixed(2)}×`;
const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');
const sortedOf = (values: number[]) => Float64Array.from(values).sort();

async function main(): Promise<void> {
  console.log(`bench:serverless — reproduce with: ${REPRODUCE}`);
  console.log(`GET ${ROUTE} (edge → ${FUNCTION}.getProduct); node ${process.version}, ${availableParallelism()} cores, load average ${load()}`);
  const started = Date.now();
  const problems: string[] = [];

  // --- 1. cold starts, with and without the pool
  const [withPool, withoutPool] = await Promise.all([
    startBookstore('serverless pool 2', 'serverless', [...SHORT_WINDOWS, 'serverless.pool=2']),
    startBookstore('serverless pool 0', 'serverless', [...SHORT_WINDOWS, 'serverless.pool=0']),
  ]);
  const subjects: ColdSubject[] = [withPool, withoutPool].map((d) => ({ label: d.name, d, agent: new Agent({ keepAlive: true, maxSockets: 1 }), base: new URL(d.url), samples: [] }));
  console.log(`\n1. cold start: ${COLD_SAMPLES} samples per deployment, taking turns (${SHORT_WINDOWS.join(', ')}); started in ${f1((Date.now() - started) / 1000)} s`);
  for (let i = 0; i < COLD_SAMPLES; i++) {
    for (const s of i % 2 === 0 ? subjects : [...subjects].reverse()) {
      // Both quiet: no instance starting or stopping and no pool runtime starting in either one.
      await Promise.all(subjects.map((o) => waitUntil(o.d, `${FUNCTION} at zero instances`, atZero(FUNCTION))));
      s.samples.push(await coldSample(s));
    }
    if ((i + 1) % 5 === 0 || i + 1 === COLD_SAMPLES) {
      console.log(`  ${i + 1}/${COLD_SAMPLES}  ` + subjects.map((s) => `${s.label}: cold p50 ${f1(median(s.samples.map((c) => c.coldMs)))} ms`).join('  ') + `  load average ${load()}`);
    }
  }
  const coldRows: string[][] = [['deployment', 'cold p50 ms', 'cold p99 ms', 'warm p50 ms', 'cold−warm p50 ms', `target ≤ ${TARGET_COLD_MS} ms`, 'initMs p50', 'initMs p99', 'cold−warm−init p50', 'call→start p50', 'ready→answer p50', 'from pool']];
  for (const s of subjects) {
    const cold = sortedOf(s.samples.map((c) => c.coldMs));
    const delta = median(s.samples.map((c) => c.coldMs - c.warmMs));
    const init = sortedOf(s.samples.map((c) => c.initMs));
    coldRows.push([
      s.label, f1(percentile(cold, 50)), f1(percentile(cold, 99)), f2(median(s.samples.map((c) => c.warmMs))), f1(delta),
      delta <= TARGET_COLD_MS ? 'meets' : 'MISSES', f1(percentile(init, 50)), f1(percentile(init, 99)),
      f1(median(s.samples.map((c) => c.coldMs - c.warmMs - c.initMs))),
      f1(median(s.samples.map((c) => c.callToStartMs))),
      f1(median(s.samples.map((c) => c.readyToAnswerMs))),
      `${s.samples.filter((c) => c.fromPool).length}/${s.samples.length}`,
    ]);
  }
  printTable(`cold start — a call to ${FUNCTION} at zero instances, ${COLD_SAMPLES} samples each (differences per sample, then the median)`, coldRows);
  console.log("initMs: the instance's own start (role taken or process started → serving); cold−warm−init: the rest, of which call→start (the call reaching the edge, its activator asking the control plane) and ready→answer (registration, the edge learning of it, the call itself) are wall-clock readings in whole ms");
  const poolDelta = median(subjects[0]!.samples.map((c) => c.coldMs - c.warmMs));
  const freshDelta = median(subjects[1]!.samples.map((c) => c.coldMs - c.warmMs));
  console.log(`the pool makes a cold start ${x(freshDelta / poolDelta)} shorter than a fresh process (${f1(freshDelta)} → ${f1(poolDelta)} ms)`);
  console.log(`anchors (their own published figures, other hardware): ${COLD_ANCHORS}`);
  for (const s of subjects) s.agent.destroy();

  // --- 3 (first half). The idle platform: every function at zero.
  const idle = await Promise.all(
    [withPool, withoutPool].map(async (d) => {
      await waitUntil(d, 'every function at zero instances', allAtZero);
      return memoryOf(d);
    }),
  );
  await Promise.all([deployments.stop(withPool), deployments.stop(withoutPool)]);

  // --- 2. warm calls against microservices
  const phase2 = Date.now();
  const [serverless, micro] = await Promise.all([startBookstore('serverless', 'serverless', []), startBookstore('microservices', 'microservices', [])]);
  const pair = [serverless, micro];
  console.log(`\n2. warm calls at ${RATE} req/s, open loop, ${ROUNDS} rounds × (${WARMUP} s warm-up + ${DURATION} s), alternating; started in ${f1((Date.now() - phase2) / 1000)} s`);
  for (const d of pair) {
    const first = new Agent();
    await timedGet(first, new URL(d.url), d.name);
    first.destroy();
  }
  await waitUntil(serverless, `${FUNCTION} serving`, (s) => fnOf(s, FUNCTION, serverless).instances.some((i) => i.state === 'ready'));
  const runs = new Map<string, FixedRun[]>(pair.map((d) => [d.name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const d of round % 2 === 0 ? pair : [...pair].reverse()) {
      const before = d === serverless ? await servingInstances(d) : [];
      const r = await fixedRateRun(d);
      const after = d === serverless ? await servingInstances(d) : [];
      if (before.join() !== after.join()) problems.push(`serverless, round ${round + 1}: ${FUNCTION}'s instances changed during the round (${before.join(', ')} → ${after.join(', ')}): a cold start may be in its figures`);
      runs.get(d.name)!.push(r);
      const l = r.load;
      if (l.failures > MAX_FAILURE_SHARE * l.sent) problems.push(`${d.name}, round ${round + 1}: ${l.failures} of ${l.sent} requests failed, e.g.:\n  ${l.failureSamples.join('\n  ')}`);
      console.log(
        `  round ${round + 1}  ${d.name.padEnd(13)} ${l.achievedPerS.toFixed(0).padStart(5)} req/s  p50 ${f3(r.p50)}  p90 ${f3(r.p90)}  p99 ${f3(r.p99)} ms  ` +
          `dropped ${l.dropped}  late ${l.late}  failed ${l.failures}/${l.sent}${d === serverless ? `  instances ${after.join(', ')}` : ''}  load average ${load()}`,
      );
    }
  }
  const med = (name: string, pick: (r: FixedRun) => number) => median(runs.get(name)!.map(pick));
  const fixedRows: string[][] = [['architecture', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'dropped', 'late', 'failed / sent']];
  for (const d of pair) {
    const rs = runs.get(d.name)!;
    const sum = (pick: (l: OpenLoopResult) => number) => rs.reduce((n, r) => n + pick(r.load), 0);
    fixedRows.push([
      d.name, med(d.name, (r) => r.load.achievedPerS).toFixed(0), f3(med(d.name, (r) => r.p50)), f3(med(d.name, (r) => r.p90)), f3(med(d.name, (r) => r.p99)),
      String(sum((l) => l.dropped)), String(sum((l) => l.late)), `${sum((l) => l.failures)} / ${sum((l) => l.sent)}`,
    ]);
  }
  printTable(`warm calls — GET ${ROUTE} at ${RATE} req/s, median of ${ROUNDS} rounds × ${DURATION} s (latency from the scheduled send)`, fixedRows);
  const delta = (pick: (r: FixedRun) => number) => median(runs.get(serverless.name)!.map((r, i) => pick(r) - pick(runs.get(micro.name)![i]!)));
  const perRound = (pick: (r: FixedRun) => number) => runs.get(serverless.name)!.map((r, i) => plus(pick(r) - pick(runs.get(micro.name)![i]!))).join(' / ');
  const d50 = delta((r) => r.p50);
  const d90 = delta((r) => r.p90);
  printTable(`latency serverless adds over microservices (same round, median over rounds)`, [
    ['', 'Δp50 ms', 'Δp90 ms', 'Δp99 ms', `target ≤ +${TARGET_ADDED_MS} ms`, 'Δp50 per round', 'Δp90 per round'],
    ['serverless', plus(d50), plus(d90), plus(delta((r) => r.p99)), d50 <= TARGET_ADDED_MS && d90 <= TARGET_ADDED_MS ? 'meets' : 'MISSES', perRound((r) => r.p50), perRound((r) => r.p90)],
  ]);

  // --- 3 (second half). Microservices idle, after its load.
  await sleep(2_000);
  const microIdle = await memoryOf(micro);
  const memRows: string[][] = [['deployment', 'processes', 'RSS MB', 'RSS / microservices', 'each (MB)']];
  const memRow = (label: string, m: MemoryReading) => [label, String(m.each.length), f1(m.totalMb), x(m.totalMb / microIdle.totalMb), m.each.map((e) => `${e.label} ${f1(e.mb)}`).join(', ')];
  memRows.push(memRow(`${withPool.name}, all at zero`, idle[0]!), memRow(`${withoutPool.name}, all at zero`, idle[1]!), memRow('microservices, idle', microIdle));
  printTable('3. memory of an idle platform — resident set size of every process (VmRSS; shared pages counted in each)', memRows);
  await Promise.all([deployments.stop(serverless), deployments.stop(micro)]);

  // --- 4. metering of the checkout flow
  const phase4 = Date.now();
  const fresh = await startBookstore('serverless fresh', 'serverless', []);
  console.log(`\n4. metering: ${CHECKOUTS} checkout flows (create account, log in, settle, pay), ${CHECKOUT_CONCURRENCY} at a time, on a fresh serverless deployment; started in ${f1((Date.now() - phase4) / 1000)} s`);
  const agent = new Agent({ keepAlive: true, maxSockets: CHECKOUT_CONCURRENCY });
  const base = new URL(fresh.url);
  let next = 0;
  const flowMs: number[] = [];
  const flowProblems: string[] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CHECKOUT_CONCURRENCY }, async () => {
      while (next < CHECKOUTS && !deployments.stopping) {
        const seq = next++;
        const s = performance.now();
        let problem: string | undefined;
        try {
          problem = await checkout(agent, base, seq);
        } catch (err) {
          problem = (err as Error).message;
        }
        if (problem) flowProblems.push(problem);
        else flowMs.push(performance.now() - s);
      }
    }),
  );
  const wallS = (performance.now() - t0) / 1000;
  agent.destroy();
  if (flowProblems.length) problems.push(`${flowProblems.length} of ${CHECKOUTS} checkout flows failed, e.g.:\n  ${flowProblems.slice(0, 5).join('\n  ')}`);
  const flows = sortedOf(flowMs);
  console.log(`${flowMs.length} flows in ${f1(wallS)} s; a flow p50 ${f1(percentile(flows, 50))} ms, p90 ${f1(percentile(flows, 90))} ms`);
  await sleep(REPORT_SETTLE_MS);
  const { report, alwaysOn } = await registryGet<{ report: MeteringReport; alwaysOn: ReturnType<typeof alwaysOnCost> }>(fresh, '/metering');
  console.log('');
  process.stdout.write(formatReport(report, alwaysOn));
  const fnsAfter = await functionsOf(fresh);
  const completed = flowMs.length;
  if (completed > 0) {
    const per1000 = (report.total.cost / completed) * 1000;
    const alwaysPer1000 = (alwaysOn.cost / completed) * 1000;
    console.log(
      `\nper 1000 checkouts: $${per1000.toFixed(6)} serverless (${f1(report.total.invocations / completed)} invocations and ` +
        `${f1(report.functions.reduce((n, f) => n + f.billedMs, 0) / completed)} billed ms each); always on over the same period $${alwaysPer1000.toFixed(6)}` +
        ` — at this rate (${f1(completed / wallS)} checkouts/s over ${f1(wallS)} s, the rest of the period idle)`,
    );
    // The always-on side costs the same every hour whatever the load: serverless is cheaper below this rate.
    const alwaysOnPerHour = alwaysOn.vms * ALWAYS_ON_VM.perHour;
    const breakEven = alwaysOnPerHour / (report.total.cost / completed);
    console.log(
      `break-even: always on costs $${alwaysOnPerHour.toFixed(4)}/h (${alwaysOn.vms} × ${ALWAYS_ON_VM.name}); serverless costs less below ` +
        `${breakEven.toFixed(0)} checkouts/h (${f2(breakEven / 3600)}/s) at this flow's cost`,
    );
  }
  console.log(`instances at the end: ${fnsAfter.functions.map((f) => `${f.name} ${f.instances.filter((i) => i.state === 'ready').length}`).join(', ')}`);

  console.log(`\ntotal time ${((Date.now() - started) / 1000).toFixed(0)} s; reproduce with: ${REPRODUCE}`);
  if (problems.length) fail(problems.join('\n'));
}

await runBench(deployments, 'bench:serverless', main);
