/**
 * bench:architectures — the bookstore's checkout flow under a fixed load, run as a monolith
 * (one process) and as microservices (a control plane, one worker process per service and an
 * edge process), same code, same machine.
 *
 * Each of BENCH_USERS virtual users runs the flow in a loop, one request at a time:
 *
 *   login     GET   /oauth/token (password grant)           — only every LOGIN_EVERY-th flow, see below
 *   products  GET   /restful/products
 *   settle    POST  /restful/settlements (one product, 1–2 units)
 *   pay       PATCH /restful/pay/{payId}?state=PAYED
 *
 * Login checks the password with bcrypt, which is slow by design (bcryptjs at cost 10: ~100 ms
 * of CPU here): logging in on every flow would make both architectures measure bcrypt. A real
 * shopper signs in once and buys several times, so each user signs in once before the clock
 * starts and then on every LOGIN_EVERY-th (default 10th) flow, the users' turns staggered so the
 * logins do not come in bursts. Even so that is ~10 ms of CPU per flow, a large share of the
 * total in both architectures (the per-process CPU lines show it in microservices' auth process);
 * BENCH_LOGIN_EVERY=50 makes it a small one.
 *
 * Both architectures start once, each on a fresh data directory, with
 * config.payment.paymentExpiresMs=3600000 (no payment times out during the bench) and every
 * product's stock raised to 10^9, and stay up for the whole bench; only one is under load at a
 * time (the other idles). Every round runs each architecture for BENCH_WARMUP s of warm-up
 * followed, without a pause, by BENCH_DURATION s of measurement, the order alternating from
 * round to round. The load generator is this process (node:http, keep-alive, 127.0.0.1), so it
 * shares the machine's cores with the servers — alike for both.
 *
 * Measured window: requests and flows that complete inside it; latency per request from just
 * before writing it to the end of its response. Memory: the sum of VmRSS over every process of
 * the architecture (for microservices the control plane, each process the registry lists and any
 * other descendant of the control plane; for the monolith its process and any descendant),
 * sampled every 500 ms during the window, median sample. CPU: utime+stime deltas of the same
 * processes over the window, from /proc/<pid>/stat. Reported: the median over rounds, and the
 * microservices / monolith ratios. Any non-2xx response or transport error fails the bench.
 *
 * Target: microservices p50 ≤ 3× the monolith's (Service Weaver's paper, Ghemawat et al.,
 * HotOS '23, measured 14× for classic microservices against co-location in one process).
 *
 * Env: BENCH_USERS (8), BENCH_DURATION (s, 10), BENCH_ROUNDS (2), BENCH_WARMUP (s, 3),
 * BENCH_LOGIN_EVERY (10). The demo wallet (10^7 yuan) pays for ~60,000 flows per architecture;
 * a payment refused for want of money is a failed request.
 */
import { Agent } from 'node:http';
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import { bookstoreArgs, call, loginQuery, PRODUCTS, PURCHASE, raiseStock, send, type Reply } from './support/bookstore.js';
import { controlPlaneOf, cpuByPid, Deployments, fail, runBench, type Deployment, type ProcessSet } from './support/deployments.js';
import { CLK_TCK, memoryKb, rssKb } from './support/procfs.js';
import { median, printTable } from './support/stats.js';

const USERS = Number(process.env.BENCH_USERS ?? 8);
const DURATION = Number(process.env.BENCH_DURATION ?? 10);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 3);
/** A user signs in before the warm-up and on every LOGIN_EVERY-th flow after that (bcrypt is slow by design). */
const LOGIN_EVERY = Number(process.env.BENCH_LOGIN_EVERY ?? 10);
const RSS_SAMPLE_MS = 500;
const REPRODUCE = `BENCH_USERS=${USERS} BENCH_DURATION=${DURATION} BENCH_ROUNDS=${ROUNDS} BENCH_WARMUP=${WARMUP} BENCH_LOGIN_EVERY=${LOGIN_EVERY} npm run bench:architectures`;

for (const [name, v] of Object.entries({ BENCH_USERS: USERS, BENCH_DURATION: DURATION, BENCH_ROUNDS: ROUNDS, BENCH_WARMUP: WARMUP, BENCH_LOGIN_EVERY: LOGIN_EVERY })) {
  if (!Number.isFinite(v) || v < 0 || (name !== 'BENCH_WARMUP' && v <= 0) || (name !== 'BENCH_WARMUP' && name !== 'BENCH_DURATION' && !Number.isInteger(v))) {
    console.error(`bench:architectures: ${name} must be a positive number, got ${String(process.env[name])}`);
    process.exit(2);
  }
}

// ---------------------------------------------------------------------------------------------
// The two architectures, as child processes; their processes, memory and CPU.

type ArchName = 'monolith' | 'microservices';
const ARCHS: ArchName[] = ['monolith', 'microservices'];

type Server = Deployment & { name: ArchName };
const deployments = new Deployments('bench:architectures', 'evolith-bench-arch-').cleanUpOnExit();

async function startServer(name: ArchName, timeoutMs: number): Promise<Server> {
  return { ...(await deployments.start({ name, dirName: name, args: (dataDir) => bookstoreArgs(name, dataDir), timeoutMs })), name };
}

/**
 * The monolith's process, or the control plane and every process its registry lists; with any
 * other descendant of either.
 */
async function processesOf(server: Server): Promise<ProcessSet> {
  const labels = new Map<number, string>([[server.child.pid!, server.name === 'monolith' ? 'monolith' : 'control plane']]);
  if (server.name === 'microservices') {
    const control = controlPlaneOf(server);
    // The registry answers credentials of its deployment only: the operator's, as `evolith status` does.
    const status = JSON.parse((await call(`${control.registryUrl}/status`, { headers: { authorization: `Bearer ${control.operatorToken}` } })).text) as {
      instances: { id: string; metadata?: Record<string, string> }[];
    };
    for (const inst of status.instances) {
      const pid = Number(inst.metadata?.pid);
      if (!Number.isInteger(pid) || pid <= 0) fail(`registry instance ${inst.id} has no metadata.pid`);
      labels.set(pid, inst.id);
    }
  }
  return deployments.track(server, labels);
}

/** CPU seconds used so far by each process of the set, by label. */
function cpuByProcess(set: ProcessSet): Map<string, number> {
  return new Map([...cpuByPid(set)].map(([pid, c]) => [set.labels.get(pid)!, c]));
}

function totalRssKb(set: ProcessSet): number {
  return set.pids.reduce((sum, pid) => sum + (rssKb(pid) ?? 0), 0);
}

// ---------------------------------------------------------------------------------------------
// The load.

const KINDS = ['login', 'products', 'settle', 'pay'] as const;
type Kind = (typeof KINDS)[number];
const KIND_LABEL: Record<Kind, string> = {
  login: 'login     GET /oauth/token',
  products: 'products  GET /restful/products',
  settle: 'settle    POST /restful/settlements',
  pay: 'pay       PATCH /restful/pay/{payId}',
};

interface Window {
  /** performance.now() bounds of the measured window; requests completing inside it count. */
  start: number;
  end: number;
}

interface RunResult {
  arch: ArchName;
  seconds: number;
  flows: number;
  latencies: Record<Kind, number[]>;
  failures: number;
  failureSamples: string[];
  cpuSeconds: number;
  cpuByProcess: Map<string, number>;
  rssSamplesKb: number[];
  processes: number;
  driverCpuSeconds: number;
}

async function runLoad(server: Server, warmupS: number, durationS: number): Promise<RunResult> {
  const base = new URL(server.url);
  const agent = new Agent({ keepAlive: true, maxSockets: USERS });
  const latencies: Record<Kind, number[]> = { login: [], products: [], settle: [], pay: [] };
  const failureSamples: string[] = [];
  let failures = 0;
  let flows = 0;
  // Set when the warm-up starts, after every user has signed in once.
  const win: Window = { start: Infinity, end: -Infinity };
  let stop = false;
  /** Ends the run now: at the window's end, or at the first failure (which fails the bench). */
  let abortRun = () => {
    stop = true;
  };
  const inWindow = (t: number) => t >= win.start && t <= win.end;

  const timed = async (kind: Kind, method: string, path: string, headers: Record<string, string>, body?: string): Promise<Reply | undefined> => {
    const t0 = performance.now();
    let reply: Reply | undefined;
    let problem: string | undefined;
    try {
      reply = await send(agent, base, method, path, headers, body);
      if (reply.status < 200 || reply.status > 299) problem = `${reply.status} ${reply.body.slice(0, 300)}`;
    } catch (err) {
      problem = (err as Error).message;
    }
    const t1 = performance.now();
    if (problem !== undefined) {
      // Failures count whenever they happen, warm-up included.
      failures++;
      if (failureSamples.length < 5) failureSamples.push(`${kind} ${method} ${path}: ${problem}`);
      abortRun();
      return undefined;
    }
    if (inWindow(t1)) latencies[kind].push(t1 - t0);
    return reply;
  };

  const signIn = async (): Promise<string | undefined> => {
    const r = await timed('login', 'GET', `/oauth/token?${loginQuery}`, {});
    return r && (JSON.parse(r.body) as { access_token: string }).access_token;
  };

  const user = async (u: number, first: string | undefined): Promise<void> => {
    let token = first;
    for (let i = 1; !stop && !deployments.stopping; i++) {
      // Signed in before the warm-up; again every LOGIN_EVERY-th flow, each user's turn offset by its number.
      if (token === undefined || i % LOGIN_EVERY === u % LOGIN_EVERY) {
        token = await signIn();
        if (token === undefined || stop) continue;
      }
      const auth = { authorization: `bearer ${token}` };
      if (!(await timed('products', 'GET', '/restful/products', {})) || stop) continue;
      const items = [{ id: PRODUCTS[Math.floor(Math.random() * PRODUCTS.length)]!, amount: 1 + Math.floor(Math.random() * 2) }];
      const settled = await timed('settle', 'POST', '/restful/settlements', { ...auth, 'content-type': 'application/json' }, JSON.stringify({ items, purchase: PURCHASE }));
      if (!settled || stop) continue;
      const payId = (JSON.parse(settled.body) as { payId?: string }).payId;
      if (typeof payId !== 'string') {
        failures++;
        failureSamples.push(`settle answered without a payId: ${settled.body.slice(0, 300)}`);
        abortRun();
        continue;
      }
      const paid = await timed('pay', 'PATCH', `/restful/pay/${encodeURIComponent(payId)}?state=PAYED`, auth);
      if (paid && inWindow(performance.now())) flows++;
    }
  };

  // CPU and memory of the architecture's processes over the window only. The processes are
  // listed before the load starts; one that exits or is replaced meanwhile fails the run.
  const set = await processesOf(server);
  let cpuAtStart = new Map<string, number>();
  let driverAtStart = process.cpuUsage();
  const cpuSpent = new Map<string, number>();
  let driverSpent = 0;
  const rssSamplesKb: number[] = [];
  let sampler: NodeJS.Timeout | undefined;
  let measureError: unknown;
  const timers: NodeJS.Timeout[] = [];
  const result = (): RunResult => ({
    arch: server.name,
    seconds: durationS,
    flows,
    latencies,
    failures,
    failureSamples,
    cpuSeconds: [...cpuSpent.values()].reduce((a, b) => a + b, 0),
    cpuByProcess: cpuSpent,
    rssSamplesKb,
    processes: set.pids.length,
    driverCpuSeconds: driverSpent,
  });

  // Every user signs in before the clock starts, so the warm-up does not open with a burst of
  // USERS concurrent bcrypt checks; after that each user signs in on its own turn.
  const tokens = await Promise.all(Array.from({ length: USERS }, signIn));
  const begin = performance.now();
  win.start = begin + warmupS * 1000;
  win.end = win.start + durationS * 1000;
  if (failures > 0) {
    agent.destroy();
    return result();
  }
  const windowClosed = new Promise<void>((done) => {
    abortRun = () => {
      stop = true;
      done();
    };
    timers.push(
      setTimeout(() => {
        try {
          cpuAtStart = cpuByProcess(set);
          driverAtStart = process.cpuUsage();
          sampler = setInterval(() => rssSamplesKb.push(totalRssKb(set)), RSS_SAMPLE_MS);
        } catch (err) {
          measureError = err;
          abortRun();
        }
      }, win.start - performance.now()),
      setTimeout(() => {
        try {
          for (const [label, c] of cpuByProcess(set)) cpuSpent.set(label, c - cpuAtStart.get(label)!);
          const d = process.cpuUsage(driverAtStart);
          driverSpent = (d.user + d.system) / 1e6;
        } catch (err) {
          measureError = err;
        }
        abortRun();
      }, win.end - performance.now()),
    );
  });

  const users = tokens.map((token, u) => user(u, token));
  await windowClosed;
  for (const t of timers) clearTimeout(t);
  clearInterval(sampler);
  await Promise.all(users);
  agent.destroy();
  if (measureError) throw measureError;
  if (deployments.stopping) fail('interrupted');
  return result();
}

// ---------------------------------------------------------------------------------------------
// Reporting.

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

interface Summary {
  flowsPerS: number;
  reqPerS: number;
  p50: number;
  p99: number;
  /** All requests but logins: the per-flow requests. */
  p50NoLogin: number;
  p99NoLogin: number;
  kind: Record<Kind, { p50: number; p99: number; count: number }>;
  rssMb: number;
  cpuS: number;
  cpuMsPerFlow: number;
  cores: number;
}

function summarize(r: RunResult): Summary {
  const all = Float64Array.from(KINDS.flatMap((k) => r.latencies[k])).sort();
  const noLogin = Float64Array.from(KINDS.filter((k) => k !== 'login').flatMap((k) => r.latencies[k])).sort();
  const kind = Object.fromEntries(
    KINDS.map((k) => {
      const s = Float64Array.from(r.latencies[k]).sort();
      return [k, { p50: percentile(s, 50), p99: percentile(s, 99), count: s.length }];
    }),
  ) as Summary['kind'];
  return {
    flowsPerS: r.flows / r.seconds,
    reqPerS: all.length / r.seconds,
    p50: percentile(all, 50),
    p99: percentile(all, 99),
    p50NoLogin: percentile(noLogin, 50),
    p99NoLogin: percentile(noLogin, 99),
    kind,
    rssMb: median(r.rssSamplesKb) / 1024,
    cpuS: r.cpuSeconds,
    cpuMsPerFlow: (r.cpuSeconds * 1000) / r.flows,
    cores: r.cpuSeconds / r.seconds,
  };
}

const f0 = (v: number) => v.toFixed(0);
const f1 = (v: number) => v.toFixed(1);
const f2 = (v: number) => v.toFixed(2);
const x = (v: number) => `${v.toFixed(2)}×`;

async function main(): Promise<void> {
  console.log(`bench:architectures — reproduce with: ${REPRODUCE}`);
  console.log(
    `${USERS} virtual users, ${DURATION} s measured after ${WARMUP} s warm-up per run, ${ROUNDS} rounds, login once every ${LOGIN_EVERY} flows per user; ` +
      `node ${process.version}, clock ticks ${CLK_TCK}/s`,
  );
  const started = Date.now();
  // Started side by side (startup is not measured); only one is ever under load.
  const servers = await Promise.all(ARCHS.map((a) => startServer(a, 120_000)));
  for (const s of servers) {
    await raiseStock(s);
    const set = await processesOf(s);
    console.log(
      `${s.name.padEnd(13)} on ${s.url}: ${set.pids.length} process${set.pids.length === 1 ? '' : 'es'} ` +
        `(${set.pids.map((p) => `${set.labels.get(p)}=${p}`).join(', ')}); stock raised; startup ${((Date.now() - started) / 1000).toFixed(1)} s since bench start`,
    );
    // Memory of each process before any load: what an idle deployment holds.
    const memRows: string[][] = [['process', 'RSS MB', 'PSS MB', 'private MB']];
    for (const pid of set.pids) {
      const m = memoryKb(pid);
      if (m) memRows.push([set.labels.get(pid)!, f1(m.rss / 1024), f1(m.pss / 1024), f1(m.private / 1024)]);
    }
    printTable(`${s.name}: memory per process, idle after start (PSS shares the node binary and libraries among the processes using them)`, memRows);
  }

  const results = new Map<ArchName, RunResult[]>(ARCHS.map((a) => [a, []]));
  for (let round = 0; round < ROUNDS; round++) {
    // Alternate who goes first, so neither always meets the fresher machine (or the smaller tables).
    for (const s of round % 2 === 0 ? servers : [...servers].reverse()) {
      const r = await runLoad(s, WARMUP, DURATION);
      if (r.failures > 0) {
        fail(
          `${s.name}, round ${round + 1}: ${r.failures} failed requests (non-2xx or transport errors), e.g.:\n  ${r.failureSamples.join('\n  ')}\n` +
            `server output (tail):\n${s.output.join('').slice(-4000)}`,
        );
      }
      if (r.flows === 0) fail(`${s.name}, round ${round + 1}: no flow completed in the measured window`);
      results.get(s.name)!.push(r);
      const m = summarize(r);
      console.log(
        `  round ${round + 1}  ${s.name.padEnd(13)} ${f0(m.flowsPerS).padStart(5)} flows/s ${f0(m.reqPerS).padStart(6)} req/s  ` +
          `p50 ${f2(m.p50)} ms  p99 ${f2(m.p99)} ms  RSS ${f0(m.rssMb)} MB  CPU ${f2(m.cpuS)} s (${f2(m.cores)} cores)  ` +
          `load generator CPU ${f2(r.driverCpuSeconds)} s`,
      );
    }
  }

  // Medians over rounds.
  const agg = new Map(
    ARCHS.map((a) => {
      const runs = results.get(a)!;
      const ms = runs.map(summarize);
      const med = (pick: (s: Summary) => number) => median(ms.map(pick));
      return [
        a,
        {
          runs,
          ms,
          flowsPerS: med((s) => s.flowsPerS),
          reqPerS: med((s) => s.reqPerS),
          p50: med((s) => s.p50),
          p99: med((s) => s.p99),
          p50NoLogin: med((s) => s.p50NoLogin),
          p99NoLogin: med((s) => s.p99NoLogin),
          cpuByProcess: [...runs[0]!.cpuByProcess.keys()].map((label) => [label, median(runs.map((r) => r.cpuByProcess.get(label)!))] as const),
          kind: Object.fromEntries(KINDS.map((k) => [k, { p50: med((s) => s.kind[k].p50), p99: med((s) => s.kind[k].p99), count: ms.reduce((n, s) => n + s.kind[k].count, 0) }])) as Summary['kind'],
          // RSS: the median of all samples taken under load, over all rounds.
          rssMb: median(runs.flatMap((r) => r.rssSamplesKb)) / 1024,
          processes: runs[0]!.processes,
          cpuS: med((s) => s.cpuS),
          cpuMsPerFlow: med((s) => s.cpuMsPerFlow),
          cores: med((s) => s.cores),
          failures: runs.reduce((n, r) => n + r.failures, 0),
        },
      ] as const;
    }),
  );
  const mono = agg.get('monolith')!;
  const micro = agg.get('microservices')!;

  const rows: string[][] = [['architecture', 'flows/s', 'req/s', 'p50 ms', 'p99 ms', 'RSS MB (procs)', `CPU s / ${DURATION} s`, 'cores', 'CPU ms/flow', 'failed', 'flows/s per round']];
  for (const a of ARCHS) {
    const g = agg.get(a)!;
    rows.push([
      a, f0(g.flowsPerS), f0(g.reqPerS), f2(g.p50), f2(g.p99), `${f0(g.rssMb)} (${g.processes})`, f2(g.cpuS), f2(g.cores), f2(g.cpuMsPerFlow), String(g.failures),
      g.ms.map((s) => f0(s.flowsPerS)).join(' / '),
    ]);
  }
  printTable(`bench:architectures — checkout flow, ${USERS} users, median of ${ROUNDS} rounds × ${DURATION} s (latency per request, all kinds)`, rows);

  const kindRows: string[][] = [['request', 'monolith p50', 'p99', 'microservices p50', 'p99', 'p50 ratio', 'p99 ratio', 'count mono / micro']];
  for (const k of KINDS) {
    const a = mono.kind[k];
    const b = micro.kind[k];
    kindRows.push([KIND_LABEL[k], f2(a.p50), f2(a.p99), f2(b.p50), f2(b.p99), x(b.p50 / a.p50), x(b.p99 / a.p99), `${a.count} / ${b.count}`]);
  }
  kindRows.push(['all requests', f2(mono.p50), f2(mono.p99), f2(micro.p50), f2(micro.p99), x(micro.p50 / mono.p50), x(micro.p99 / mono.p99), `${KINDS.reduce((n, k) => n + mono.kind[k].count, 0)} / ${KINDS.reduce((n, k) => n + micro.kind[k].count, 0)}`]);
  printTable('latency per request kind, ms (median over rounds of each round\'s percentile; counts summed over rounds)', kindRows);

  const p50Ratio = micro.p50 / mono.p50;
  const ratioRows: string[][] = [
    ['metric', 'monolith', 'microservices', 'micro / mono', 'target'],
    ['p50 latency, ms (all requests)', f2(mono.p50), f2(micro.p50), x(p50Ratio), `≤ 3.00× — ${p50Ratio <= 3 ? 'meets' : 'MISSES'}`],
    ['p99 latency, ms (all requests)', f2(mono.p99), f2(micro.p99), x(micro.p99 / mono.p99), ''],
    ['p50 latency, ms (all but login)', f2(mono.p50NoLogin), f2(micro.p50NoLogin), x(micro.p50NoLogin / mono.p50NoLogin), ''],
    ['p99 latency, ms (all but login)', f2(mono.p99NoLogin), f2(micro.p99NoLogin), x(micro.p99NoLogin / mono.p99NoLogin), ''],
    ['flows/s', f1(mono.flowsPerS), f1(micro.flowsPerS), x(micro.flowsPerS / mono.flowsPerS), ''],
    ['requests/s', f1(mono.reqPerS), f1(micro.reqPerS), x(micro.reqPerS / mono.reqPerS), ''],
    ['RSS, MB (all processes, median sample)', f1(mono.rssMb), f1(micro.rssMb), x(micro.rssMb / mono.rssMb), ''],
    [`CPU s in ${DURATION} s (all processes)`, f2(mono.cpuS), f2(micro.cpuS), x(micro.cpuS / mono.cpuS), ''],
    ['CPU ms per flow', f2(mono.cpuMsPerFlow), f2(micro.cpuMsPerFlow), x(micro.cpuMsPerFlow / mono.cpuMsPerFlow), ''],
  ];
  printTable('microservices / monolith', ratioRows);
  console.log(`\nCPU s per process in the ${DURATION} s window (median over rounds):`);
  for (const a of ARCHS) {
    const g = agg.get(a)!;
    console.log(`  ${a.padEnd(13)} ${g.cpuByProcess.map(([label, c]) => `${label} ${f2(c)}`).join(', ')}`);
  }
  console.log(
    `\ntarget: microservices p50 ≤ 3× monolith — ${p50Ratio <= 3 ? 'meets' : 'MISSES'} (${x(p50Ratio)}). ` +
      `For scale: Service Weaver's paper (Ghemawat et al., "Towards Modern Development of Cloud Applications", HotOS '23) ` +
      `measured 14× for classic microservices against co-location in one process.`,
  );
  console.log(
    `notes: one flow = products + settle + pay, plus a login once every ${LOGIN_EVERY} flows (bcrypt, ~100 ms of CPU each, is slow by design); ` +
      `the load generator runs on the same ${availableParallelism()} cores; the architecture not under load idles meanwhile; ` +
      `0 failed requests across ${ROUNDS} rounds (warm-ups included).`,
  );
  console.log(`\ntotal time ${((Date.now() - started) / 1000).toFixed(0)} s; reproduce with: ${REPRODUCE}`);
}

await runBench(deployments, 'bench:architectures', main);
