/**
 * bench:mesh — what the service mesh costs: the bookstore as microservices beside the same app
 * as a mesh, with a proxy beside each instance (sidecar mode) and with one proxy for the whole
 * node (node mode), same code, same machine, same run.
 *
 * In the mesh every internal call goes app → its proxy (Unix socket) → the callee's proxy
 * (mutual TLS) → the callee app; in microservices the app calls the callee directly. The
 * difference between the two, on a route whose handling is exactly one internal call, is the
 * price of those two proxy hops:
 *
 *   fixed rate   GET /restful/products/1 (edge → warehouse.getProduct) at BENCH_RATE req/s, open
 *                loop: each request leaves on schedule whatever the answers, and its latency is
 *                counted from its scheduled send (no coordinated omission); a request due while
 *                BENCH_MAX_OUTSTANDING are unanswered is dropped and counted. BENCH_ROUNDS rounds
 *                of BENCH_WARMUP s + BENCH_DURATION s per architecture, the order alternating
 *                from round to round; medians over rounds. The added latency is mesh minus
 *                microservices within the same round, then the median over rounds.
 *   proxy cost   during each fixed-rate window: utime+stime deltas (/proc/<pid>/stat) of every
 *                proxy process (supervised as `<group>.proxy#<replica>`, or `node-proxy#0`, as
 *                the registry's /processes lists them) and of the whole deployment (control
 *                plane, every supervised process, any other descendant); RSS sampled every
 *                500 ms, median sample.
 *   serial       closed loop, one connection for BENCH_SERIAL_DURATION s (after 1 s of warm-up)
 *                on the same route: the hops' own latency, no request queued behind another.
 *   max rate     closed loop, BENCH_CONCURRENCY keep-alive connections for BENCH_MAX_DURATION s
 *                (after 1 s of warm-up) on the same route, once per architecture.
 *   checkout     products → settle → pay flows at BENCH_FLOW_RATE flows/s for BENCH_FLOW_DURATION
 *                s (after 1 s of warm-up), open loop, with users signed in beforehand; the
 *                latency of POST /restful/settlements from its own send: five internal calls in
 *                a row (the edge's auth.checkToken and payment.settle, then payment's three:
 *                account.getByUsername, warehouse.prices, warehouse.freeze).
 *
 * All three start once, each on a fresh data directory with SQLite storage,
 * config.payment.paymentExpiresMs=3600000 and every product's stock raised to 10^9, and stay up
 * for the whole bench; only one is under load at a time. The load generator is this process
 * (node:http, keep-alive, 127.0.0.1) on the same cores as the servers — alike for all three.
 * Any non-2xx answer or transport error is counted and printed; more than 0.1 % of the requests
 * sent in any fixed-rate run fails the bench (exit 1).
 *
 * Target: ≤ +0.3 ms p90 added by the mesh at 1000 req/s. For scale: Istio 1.20's published
 * benchmark (Envoy, two sidecars) adds 0.228 ms p90 / 0.298 ms p99; Dapr's adds 1.4 ms p90.
 */
import { Agent } from 'node:http';
import { availableParallelism, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { bookstoreArgs, call, PRODUCTS, PURCHASE, raiseStock, send, signIn, type Reply } from './support/bookstore.js';
import { BenchError, controlPlaneOf, cpuByPid, Deployments, fail, runBench, type Deployment, type ProcessSet as Processes } from './support/deployments.js';
import { closedLoop, openLoop, type OpenLoopResult } from './support/open-loop.js';
import { CLK_TCK, rssKb } from './support/procfs.js';
import { median, percentile, printTable } from './support/stats.js';
import { envNumber as readEnvNumber } from './support/env.js';

const envNumber = (name: string, fallback: number, integer: boolean, allowZero = false) => readEnvNumber('bench:mesh', name, fallback, integer, allowZero);

const RATE = envNumber('BENCH_RATE', 1000, false);
const DURATION = envNumber('BENCH_DURATION', 10, false);
const WARMUP = envNumber('BENCH_WARMUP', 3, false, true);
const ROUNDS = envNumber('BENCH_ROUNDS', 3, true);
const MAX_OUTSTANDING = envNumber('BENCH_MAX_OUTSTANDING', 256, true);
const CONCURRENCY = envNumber('BENCH_CONCURRENCY', 32, true);
const MAX_DURATION = envNumber('BENCH_MAX_DURATION', 5, false);
const SERIAL_DURATION = envNumber('BENCH_SERIAL_DURATION', 3, false);
const FLOW_RATE = envNumber('BENCH_FLOW_RATE', 50, false);
const FLOW_DURATION = envNumber('BENCH_FLOW_DURATION', 5, false);
const REPRODUCE =
  `BENCH_RATE=${RATE} BENCH_DURATION=${DURATION} BENCH_WARMUP=${WARMUP} BENCH_ROUNDS=${ROUNDS} BENCH_MAX_OUTSTANDING=${MAX_OUTSTANDING} ` +
  `BENCH_CONCURRENCY=${CONCURRENCY} BENCH_MAX_DURATION=${MAX_DURATION} BENCH_SERIAL_DURATION=${SERIAL_DURATION} BENCH_FLOW_RATE=${FLOW_RATE} BENCH_FLOW_DURATION=${FLOW_DURATION} npm run bench:mesh`;

/** The closed-loop and checkout phases are short: one second of warm-up each. */
const SHORT_WARMUP_MS = 1_000;
const RSS_SAMPLE_MS = 500;
/** More failures than this share of the requests sent in a fixed-rate run fails the bench. */
const MAX_FAILURE_SHARE = 0.001;
/** A request leaving this many ms after its schedule counts as late (the load generator fell behind). */
const LATE_MS = 5;
/** The mesh target, and published figures for two sidecar hops to put it beside. */
const TARGET_P90_MS = 0.3;
const ANCHORS = 'Istio 1.20 (Envoy, two sidecars) +0.228 ms p90 / +0.298 ms p99; Dapr +1.4 ms p90';
/** Istio's own performance page (releases 1.10 to 1.16): what one Envoy costs for the traffic through it. */
const RESOURCE_ANCHOR = 'Istio docs (1.10–1.16): an Envoy sidecar uses 0.35 vCPU (350 ms/s) and 40 MB per 1000 req/s through it';
/** Signed-in users of the checkout phase; flows take their tokens in turn. */
const FLOW_USERS = 4;
const ROUTE = '/restful/products/1';

// ---------------------------------------------------------------------------------------------
// The three deployments, as child processes (started and cleaned up by support/deployments.ts).

interface ArchSpec {
  label: string;
  arch: 'microservices' | 'mesh';
  sets: string[];
}
const ARCHS: ArchSpec[] = [
  { label: 'microservices', arch: 'microservices', sets: [] },
  { label: 'mesh sidecar', arch: 'mesh', sets: [] },
  { label: 'mesh node', arch: 'mesh', sets: ['mesh.mode=node'] },
];
const BASELINE = ARCHS[0]!.label;

type Server = Deployment & { spec: ArchSpec };
const deployments = new Deployments('bench:mesh', 'evolith-bench-mesh-').cleanUpOnExit();

async function startServer(spec: ArchSpec, index: number, timeoutMs: number): Promise<Server> {
  const started = await deployments.start({
    name: spec.label,
    dirName: `${index}-${spec.label.replace(/\s+/g, '-')}`,
    args: (dataDir) => bookstoreArgs(spec.arch, dataDir, ['--storage', 'sqlite']).concat(spec.sets.flatMap((s) => ['--set', s])),
    timeoutMs,
  });
  return { ...started, spec };
}

// ---------------------------------------------------------------------------------------------
// The processes of a deployment: which are proxies, their CPU and memory.

interface ProcessSet extends Processes {
  /** The mesh's proxy processes (none in microservices). */
  proxies: number[];
}

/** Supervised names of proxies: `<group>.proxy` beside each instance, or the node's one `node-proxy`. */
const isProxyName = (name: string) => name.endsWith('.proxy') || name === 'node-proxy';

async function processesOf(server: Server): Promise<ProcessSet> {
  const labels = new Map<number, string>([[server.child.pid!, 'control plane']]);
  const proxies: number[] = [];
  const record = controlPlaneOf(server);
  // The registry answers credentials of its deployment only: the operator's, as `evolith status` does.
  const r = await call(`${record.registryUrl}/processes`, { headers: { authorization: `Bearer ${record.operatorToken}` } });
  if (r.status !== 200) fail(`${server.spec.label}: the registry's /processes answered ${r.status} ${r.text}`);
  const listed = (JSON.parse(r.text) as { processes: { name: string; replica: number; pid?: number; state: string }[] }).processes;
  for (const p of listed) {
    if (p.state !== 'running' || !Number.isInteger(p.pid)) fail(`${server.spec.label}: ${p.name}#${p.replica} is ${p.state} (pid ${p.pid})`);
    labels.set(p.pid!, `${p.name}#${p.replica}`);
    if (isProxyName(p.name)) proxies.push(p.pid!);
  }
  return { ...deployments.track(server, labels), proxies };
}

// ---------------------------------------------------------------------------------------------
// HTTP: setup calls with fetch; the load with node:http over keep-alive connections.

/** Raises every product's stock (as admin) so that no settlement runs out, and checks the route answers. */
async function prepare(server: Server): Promise<void> {
  await raiseStock(server);
  const p = await call(`${server.url}${ROUTE}`);
  if (p.status !== 200 || (JSON.parse(p.text) as { id?: number }).id !== 1) fail(`${server.spec.label}: GET ${ROUTE} answered ${p.status} ${p.text.slice(0, 300)}`);
}

/** What was wrong with a reply, or undefined for a 2xx. */
const problemOf = (what: string, r: Reply) => (r.status >= 200 && r.status <= 299 ? undefined : `${what}: ${r.status} ${r.body.slice(0, 200)}`);

async function getProduct(agent: Agent, base: URL): Promise<string | undefined> {
  try {
    return problemOf(`GET ${ROUTE}`, await send(agent, base, 'GET', ROUTE, {}));
  } catch (err) {
    return `GET ${ROUTE}: ${(err as Error).message}`;
  }
}

// ---------------------------------------------------------------------------------------------
// Phase 1 and 2: the fixed-rate runs, with the processes' CPU and memory over each window.

interface FixedRun {
  load: OpenLoopResult;
  p50: number;
  p90: number;
  p99: number;
  /** CPU ms over the window: the whole deployment, its proxies, and each proxy by label. */
  cpuMs: number;
  proxyCpuMs: number;
  proxyCpuMsBy: Map<string, number>;
  /** Median RSS samples, MB: the whole deployment, its proxies together, and each proxy. */
  rssMb: number;
  proxyRssMb: number;
  proxyRssMbBy: Map<string, number>;
  driverCpuMs: number;
}

async function fixedRateRun(server: Server): Promise<FixedRun> {
  const set = await processesOf(server);
  const base = new URL(server.url);
  const agent = new Agent({ keepAlive: true, maxSockets: MAX_OUTSTANDING });
  let cpuAtStart = new Map<number, number>();
  let cpuAtEnd = new Map<number, number>();
  let driverAtStart = process.cpuUsage();
  let driverSpent = 0;
  const rssSamples: Map<number, number>[] = [];
  let sampler: NodeJS.Timeout | undefined;
  let measureError: unknown;
  const sample = () => rssSamples.push(new Map(set.pids.map((pid) => [pid, rssKb(pid) ?? 0])));
  let load: OpenLoopResult;
  try {
    load = await openLoop({
      ratePerS: RATE,
      warmupMs: WARMUP * 1000,
      durationMs: DURATION * 1000,
      maxOutstanding: MAX_OUTSTANDING,
      lateMs: LATE_MS,
      send: () => getProduct(agent, base),
      onWindowStart: () => {
        try {
          cpuAtStart = cpuByPid(set);
          driverAtStart = process.cpuUsage();
          sample();
          sampler = setInterval(sample, RSS_SAMPLE_MS);
        } catch (err) {
          measureError = err;
        }
      },
      onWindowEnd: () => {
        clearInterval(sampler);
        try {
          cpuAtEnd = cpuByPid(set);
          const d = process.cpuUsage(driverAtStart);
          driverSpent = (d.user + d.system) / 1000;
        } catch (err) {
          measureError = err;
        }
      },
    });
  } finally {
    clearInterval(sampler);
    agent.destroy();
  }
  if (measureError) throw measureError;
  if (deployments.stopping) fail('interrupted');
  const spent = (pid: number) => ((cpuAtEnd.get(pid) ?? NaN) - (cpuAtStart.get(pid) ?? NaN)) * 1000;
  const medianRss = (pids: number[]) => median(rssSamples.map((s) => pids.reduce((sum, pid) => sum + (s.get(pid) ?? 0), 0))) / 1024;
  const sorted = Float64Array.from(load.latencies).sort();
  return {
    load,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    cpuMs: set.pids.reduce((sum, pid) => sum + spent(pid), 0),
    proxyCpuMs: set.proxies.reduce((sum, pid) => sum + spent(pid), 0),
    proxyCpuMsBy: new Map(set.proxies.map((pid) => [set.labels.get(pid)!, spent(pid)])),
    rssMb: medianRss(set.pids),
    proxyRssMb: medianRss(set.proxies),
    proxyRssMbBy: new Map(set.proxies.map((pid) => [set.labels.get(pid)!, medianRss([pid])])),
    driverCpuMs: driverSpent,
  };
}

// ---------------------------------------------------------------------------------------------
// Phase 3: the highest rate a closed loop gets.

interface MaxRun {
  perS: number;
  p50: number;
  p90: number;
  p99: number;
  failures: number;
  failureSamples: string[];
}

async function closedRun(server: Server, concurrency: number, durationS: number): Promise<MaxRun> {
  const base = new URL(server.url);
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  try {
    const r = await closedLoop({ concurrency, warmupMs: SHORT_WARMUP_MS, durationMs: durationS * 1000, send: () => getProduct(agent, base) });
    const sorted = Float64Array.from(r.latencies).sort();
    return { perS: r.perS, p50: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99), failures: r.failures, failureSamples: r.failureSamples };
  } finally {
    agent.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Phase 4: the checkout flow at a low fixed rate.

interface FlowRun {
  load: OpenLoopResult;
  settleP50: number;
  settleP90: number;
  flowP50: number;
  flowP90: number;
  settles: number;
}

async function flowRun(server: Server, tokens: string[]): Promise<FlowRun> {
  const base = new URL(server.url);
  const agent = new Agent({ keepAlive: true, maxSockets: MAX_OUTSTANDING });
  const settleLatencies: number[] = [];
  let measuring = false;
  const flow = async (seq: number): Promise<string | undefined> => {
    const auth = { authorization: `bearer ${tokens[seq % tokens.length]!}` };
    try {
      const products = await send(agent, base, 'GET', '/restful/products', {});
      const p1 = problemOf('GET /restful/products', products);
      if (p1) return p1;
      const items = [{ id: PRODUCTS[seq % PRODUCTS.length]!, amount: 1 }];
      const measured = measuring;
      const t0 = performance.now();
      const settled = await send(agent, base, 'POST', '/restful/settlements', { ...auth, 'content-type': 'application/json' }, JSON.stringify({ items, purchase: PURCHASE }));
      const t1 = performance.now();
      const p2 = problemOf('POST /restful/settlements', settled);
      if (p2) return p2;
      if (measured) settleLatencies.push(t1 - t0);
      const payId = (JSON.parse(settled.body) as { payId?: string }).payId;
      if (typeof payId !== 'string') return `settle answered without a payId: ${settled.body.slice(0, 200)}`;
      return problemOf('PATCH /restful/pay', await send(agent, base, 'PATCH', `/restful/pay/${encodeURIComponent(payId)}?state=PAYED`, auth));
    } catch (err) {
      return (err as Error).message;
    }
  };
  try {
    const load = await openLoop({
      ratePerS: FLOW_RATE,
      warmupMs: SHORT_WARMUP_MS,
      durationMs: FLOW_DURATION * 1000,
      maxOutstanding: MAX_OUTSTANDING,
      lateMs: LATE_MS,
      send: flow,
      onWindowStart: () => (measuring = true),
      onWindowEnd: () => (measuring = false),
    });
    const settles = Float64Array.from(settleLatencies).sort();
    const flows = Float64Array.from(load.latencies).sort();
    return {
      load,
      settleP50: percentile(settles, 50),
      settleP90: percentile(settles, 90),
      flowP50: percentile(flows, 50),
      flowP90: percentile(flows, 90),
      settles: settles.length,
    };
  } finally {
    agent.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Reporting.

const f0 = (v: number) => v.toFixed(0);
const f1 = (v: number) => v.toFixed(1);
const f2 = (v: number) => v.toFixed(2);
const f3 = (v: number) => v.toFixed(3);
const x = (v: number) => `${v.toFixed(2)}×`;
const plus = (v: number) => `${v >= 0 ? '+' : ''}${v.toFixed(3)}`;
const pct = (part: number, whole: number) => (whole === 0 ? '0' : `${((100 * part) / whole).toFixed(2)} %`);
const load = () => loadavg().map((l) => l.toFixed(2)).join(' ');

async function main(): Promise<void> {
  console.log(`bench:mesh — reproduce with: ${REPRODUCE}`);
  console.log(
    `GET ${ROUTE} (edge → warehouse.getProduct) at ${RATE} req/s open loop, ${DURATION} s measured after ${WARMUP} s warm-up, ${ROUNDS} rounds, ` +
      `≤ ${MAX_OUTSTANDING} outstanding; node ${process.version}, ${availableParallelism()} cores, clock ticks ${CLK_TCK}/s, load average ${load()}`,
  );
  const started = Date.now();
  const failuresSeen: string[] = [];
  // Started side by side (startup is not measured); only one is ever under load.
  // One that cannot start is reported and the others measured; the bench then fails.
  const starts = await Promise.allSettled(ARCHS.map((a, i) => startServer(a, i, 180_000)));
  const servers: Server[] = [];
  starts.forEach((st, i) => {
    if (st.status === 'fulfilled') servers.push(st.value);
    else {
      const reason = st.reason instanceof BenchError ? st.reason.message : String(st.reason);
      failuresSeen.push(`${ARCHS[i]!.label} did not start: ${reason.split('\n').slice(-3).join(' | ')}`);
      console.log(`${ARCHS[i]!.label.padEnd(13)} DID NOT START — left out of every table below:\n${reason}`);
    }
  });
  if (servers[0]?.spec.label !== BASELINE) fail(`the baseline (${BASELINE}) did not start`);
  const live = servers.map((s) => s.spec);
  for (const s of servers) {
    await prepare(s);
    const set = await processesOf(s);
    if (s.spec.arch === 'mesh' && set.proxies.length === 0) fail(`${s.spec.label}: the registry lists no proxy process`);
    if (s.spec.sets.includes('mesh.mode=node') && !(set.proxies.length === 1 && set.labels.get(set.proxies[0]!) === 'node-proxy#0')) {
      fail(`${s.spec.label}: expected one node-proxy#0, found ${set.proxies.map((p) => set.labels.get(p)).join(', ') || 'none'}`);
    }
    console.log(
      `${s.spec.label.padEnd(13)} on ${s.url}: ${set.pids.length} processes, ${set.proxies.length} prox${set.proxies.length === 1 ? 'y' : 'ies'} ` +
        `(${set.pids.map((p) => `${set.labels.get(p)}=${p}`).join(', ')}); startup ${((Date.now() - started) / 1000).toFixed(1)} s since bench start`,
    );
  }

  // --- fixed rate, rounds
  const runs = new Map<string, FixedRun[]>(live.map((a) => [a.label, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const s of round % 2 === 0 ? servers : [...servers].reverse()) {
      const r = await fixedRateRun(s);
      runs.get(s.spec.label)!.push(r);
      const l = r.load;
      if (l.failures > MAX_FAILURE_SHARE * l.sent) {
        failuresSeen.push(`${s.spec.label}, round ${round + 1}: ${l.failures} of ${l.sent} requests failed, e.g.:\n  ${l.failureSamples.join('\n  ')}`);
      }
      console.log(
        `  round ${round + 1}  ${s.spec.label.padEnd(13)} ${f0(l.achievedPerS).padStart(5)} req/s  p50 ${f3(r.p50)}  p90 ${f3(r.p90)}  p99 ${f3(r.p99)} ms  ` +
          `dropped ${l.dropped}  late ${l.late}  failed ${l.failures}/${l.sent}  CPU ${f0(r.cpuMs / DURATION)} ms/s (proxies ${f0(r.proxyCpuMs / DURATION)})  ` +
          `load generator ${f0(r.driverCpuMs / DURATION)} ms/s  load average ${load()}`,
      );
    }
  }

  const med = (label: string, pick: (r: FixedRun) => number) => median(runs.get(label)!.map(pick));
  const base = (pick: (r: FixedRun) => number) => med(BASELINE, pick);

  const fixedRows: string[][] = [['architecture', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'p90 / micro', 'dropped', 'late', 'failed / sent', 'send lag p99 ms', 'p90 per round']];
  for (const a of live) {
    const rs = runs.get(a.label)!;
    const sum = (pick: (l: OpenLoopResult) => number) => rs.reduce((n, r) => n + pick(r.load), 0);
    fixedRows.push([
      a.label, f0(med(a.label, (r) => r.load.achievedPerS)), f3(med(a.label, (r) => r.p50)), f3(med(a.label, (r) => r.p90)), f3(med(a.label, (r) => r.p99)),
      x(med(a.label, (r) => r.p90) / base((r) => r.p90)),
      String(sum((l) => l.dropped)), String(sum((l) => l.late)), `${sum((l) => l.failures)} / ${sum((l) => l.sent)}`,
      f2(med(a.label, (r) => percentile(Float64Array.from(r.load.sendLags).sort(), 99))),
      rs.map((r) => f3(r.p90)).join(' / '),
    ]);
  }
  printTable(
    `fixed rate — GET ${ROUTE} at ${RATE} req/s, median of ${ROUNDS} rounds × ${DURATION} s (latency from the scheduled send; dropped, late and failed summed over rounds)`,
    fixedRows,
  );

  // Added latency: mesh minus microservices in the same round, median over rounds.
  const deltaOf = (label: string, pick: (r: FixedRun) => number) =>
    median(runs.get(label)!.map((r, i) => pick(r) - pick(runs.get(BASELINE)![i]!)));
  const addedRows: string[][] = [['architecture', 'Δp50 ms', 'Δp90 ms', 'Δp99 ms', `target Δp90 ≤ +${TARGET_P90_MS} ms`, 'Δp90 per round']];
  const verdicts: string[] = [];
  for (const a of live.slice(1)) {
    const d90 = deltaOf(a.label, (r) => r.p90);
    const verdict = d90 <= TARGET_P90_MS ? 'meets' : 'MISSES';
    verdicts.push(`${a.label} ${plus(d90)} ms p90 (${verdict})`);
    addedRows.push([
      a.label, plus(deltaOf(a.label, (r) => r.p50)), plus(d90), plus(deltaOf(a.label, (r) => r.p99)), verdict,
      runs.get(a.label)!.map((r, i) => plus(r.p90 - runs.get(BASELINE)![i]!.p90)).join(' / '),
    ]);
  }
  printTable(`latency the mesh adds over microservices at ${RATE} req/s (two proxy hops per call; same round, median over rounds)`, addedRows);
  console.log(`anchors (two sidecar hops, their own published benchmarks, other hardware): ${ANCHORS}`);

  // --- proxy cost
  const kreq = (r: FixedRun) => r.load.completed / 1000;
  const costRows: string[][] = [
    ['architecture', 'proxies', 'proxy CPU ms/s', 'proxy CPU ms / 1000 req', 'proxy RSS MB', 'RSS MB per proxy', 'all CPU ms/s', 'all CPU ms / 1000 req', 'CPU / micro', 'all RSS MB', 'RSS / micro'],
  ];
  for (const a of live) {
    const rs = runs.get(a.label)!;
    const proxies = [...rs[0]!.proxyRssMbBy.keys()];
    costRows.push([
      a.label, String(proxies.length),
      f1(med(a.label, (r) => r.proxyCpuMs) / DURATION), f1(med(a.label, (r) => r.proxyCpuMs / kreq(r))),
      f1(med(a.label, (r) => r.proxyRssMb)), proxies.length ? f1(med(a.label, (r) => r.proxyRssMb) / proxies.length) : '-',
      f1(med(a.label, (r) => r.cpuMs) / DURATION), f1(med(a.label, (r) => r.cpuMs / kreq(r))), x(med(a.label, (r) => r.cpuMs) / base((r) => r.cpuMs)),
      f1(med(a.label, (r) => r.rssMb)), x(med(a.label, (r) => r.rssMb) / base((r) => r.rssMb)),
    ]);
  }
  printTable(`cost during the fixed-rate window (CPU: utime+stime from /proc; RSS: median 500 ms sample; medians over rounds)`, costRows);
  for (const a of live.slice(1)) {
    const rs = runs.get(a.label)!;
    const each = [...rs[0]!.proxyRssMbBy.keys()].map(
      (label) => `${label} ${f1(median(rs.map((r) => r.proxyCpuMsBy.get(label)!)) / DURATION)} ms/s ${f1(median(rs.map((r) => r.proxyRssMbBy.get(label)!)))} MB`,
    );
    console.log(`  ${a.label.padEnd(13)} per proxy (CPU, RSS): ${each.join(', ')}`);
  }
  console.log(`  for scale: ${RESOURCE_ANCHOR} (each request here passes two proxies: the edge's and the warehouse's)`);
  console.log(`  the load generator itself (this process): ${live.map((a) => `${a.label} ${f0(med(a.label, (r) => r.driverCpuMs) / DURATION)} ms/s`).join(', ')}`);

  // --- serial, one request at a time: the hops' own cost, without queueing behind other requests
  const serialRuns = new Map<string, MaxRun>();
  for (const s of servers) {
    const r = await closedRun(s, 1, SERIAL_DURATION);
    serialRuns.set(s.spec.label, r);
    if (r.failures > 0) console.log(`  ${s.spec.label}: ${r.failures} failed requests one at a time, e.g. ${r.failureSamples.join('; ')}`);
  }
  const serialBase = serialRuns.get(BASELINE)!;
  const serialRows: string[][] = [['architecture', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'Δp50 ms', 'Δp90 ms', 'failed']];
  for (const a of live) {
    const r = serialRuns.get(a.label)!;
    const isBase = a.label === BASELINE;
    serialRows.push([a.label, f0(r.perS), f3(r.p50), f3(r.p90), f3(r.p99), isBase ? '-' : plus(r.p50 - serialBase.p50), isBase ? '-' : plus(r.p90 - serialBase.p90), String(r.failures)]);
  }
  printTable(`one at a time — GET ${ROUTE}, closed loop, 1 connection, ${SERIAL_DURATION} s after 1 s warm-up, one run each (no queueing: the hops' own latency)`, serialRows);

  // --- max throughput
  const maxRuns = new Map<string, MaxRun>();
  for (const s of servers) {
    const r = await closedRun(s, CONCURRENCY, MAX_DURATION);
    maxRuns.set(s.spec.label, r);
    if (r.failures > 0) console.log(`  ${s.spec.label}: ${r.failures} failed requests in the closed loop, e.g. ${r.failureSamples.join('; ')}`);
  }
  const maxBase = maxRuns.get(BASELINE)!;
  const maxRows: string[][] = [['architecture', 'req/s', `/ ${BASELINE}`, 'p50 ms', 'p99 ms', 'failed']];
  for (const a of live) {
    const r = maxRuns.get(a.label)!;
    maxRows.push([a.label, f0(r.perS), x(r.perS / maxBase.perS), f2(r.p50), f2(r.p99), String(r.failures)]);
  }
  printTable(`maximum throughput — GET ${ROUTE}, closed loop, ${CONCURRENCY} connections, ${MAX_DURATION} s after 1 s warm-up, one run each`, maxRows);

  // --- checkout flow
  const flowRuns = new Map<string, FlowRun>();
  for (const s of servers) {
    const tokens: string[] = [];
    for (let i = 0; i < FLOW_USERS; i++) tokens.push(await signIn(s));
    const r = await flowRun(s, tokens);
    flowRuns.set(s.spec.label, r);
    if (r.load.failures > MAX_FAILURE_SHARE * r.load.sent) {
      failuresSeen.push(`${s.spec.label}, checkout: ${r.load.failures} of ${r.load.sent} flows failed, e.g.:\n  ${r.load.failureSamples.join('\n  ')}`);
    }
  }
  const flowBase = flowRuns.get(BASELINE)!;
  const flowRows: string[][] = [['architecture', 'flows/s', 'settle p50 ms', 'settle p90 ms', 'Δ settle p50', 'Δ settle p90', 'flow p50 ms', 'flow p90 ms', 'dropped', 'failed / sent']];
  for (const a of live) {
    const r = flowRuns.get(a.label)!;
    const isBase = a.label === BASELINE;
    flowRows.push([
      a.label, f1(r.load.achievedPerS), f2(r.settleP50), f2(r.settleP90),
      isBase ? '-' : plus(r.settleP50 - flowBase.settleP50), isBase ? '-' : plus(r.settleP90 - flowBase.settleP90),
      f2(r.flowP50), f2(r.flowP90), String(r.load.dropped), `${r.load.failures} / ${r.load.sent}`,
    ]);
  }
  printTable(
    `checkout — products → settle → pay at ${FLOW_RATE} flows/s, ${FLOW_DURATION} s after 1 s warm-up, one run each ` +
      `(settle: POST /restful/settlements, five internal calls in a row, from its own send; flow: from its scheduled start)`,
    flowRows,
  );

  console.log(`\ntarget: the mesh adds ≤ +${TARGET_P90_MS} ms p90 at ${RATE} req/s — ${verdicts.join('; ')}. For scale: ${ANCHORS}.`);
  console.log(
    `notes: the load generator shares the ${availableParallelism()} cores with the servers; the deployments not under load idle meanwhile; ` +
      `load average at the end ${load()}.`,
  );
  console.log(`\ntotal time ${((Date.now() - started) / 1000).toFixed(0)} s; reproduce with: ${REPRODUCE}`);
  if (failuresSeen.length) fail(`${failuresSeen.join('\n')}\n(the bench allows at most ${MAX_FAILURE_SHARE * 100} % failed requests per fixed-rate run, and needs every architecture)`);
}

await runBench(deployments, 'bench:mesh', main);
