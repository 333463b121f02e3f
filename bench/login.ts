/**
 * bench:login — does a storm of wrong-password logins starve everyone else's requests?
 *
 * bcrypt is slow by design (~100 ms of CPU per check at cost 10). A password check that runs on
 * the server's event loop holds up every other request while it runs; 16 clients guessing
 * passwords then make browsing the catalogue crawl. This bench starts the bookstore as a
 * monolith (a child process, fresh temporary data directory) and measures, from this process:
 *
 *   alone   GET /restful/products, PROBES concurrent clients, one request at a time each,
 *           for BENCH_ALONE seconds with nothing else running (the same-run baseline)
 *   storm   the same probe while BENCH_LOGINS wrong-password logins
 *           (POST /oauth/token grant_type=password, form body) run BENCH_LOGIN_CONCURRENCY at a
 *           time; the probe stops when the last login has answered
 *
 * Reported per phase: probe requests, p50 and p99 latency (ms, from just before writing the
 * request to the end of its response), and the storm's p50 / p99 over the baseline's. The
 * logins' own figures are reported too: duration, p50, and how they were answered (400
 * invalid_grant is the expected answer to a wrong password; 503 means the server shed the
 * check because too many were queued). A probe answered anything but 200, or a login answered
 * anything but 400 or 503, fails the bench.
 *
 * Env: BENCH_LOGINS (200), BENCH_LOGIN_CONCURRENCY (16), BENCH_PROBES (2), BENCH_ALONE (s, 3),
 * BENCH_WARMUP (s, 1).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { ChildProcesses } from './support/children.js';
import { median, printTable } from './support/stats.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const LOGINS = Number(process.env.BENCH_LOGINS ?? 200);
const LOGIN_CONCURRENCY = Number(process.env.BENCH_LOGIN_CONCURRENCY ?? 16);
const PROBES = Number(process.env.BENCH_PROBES ?? 2);
const ALONE = Number(process.env.BENCH_ALONE ?? 3);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 1);
const REQUEST_TIMEOUT_MS = 60_000;
const REPRODUCE = `BENCH_LOGINS=${LOGINS} BENCH_LOGIN_CONCURRENCY=${LOGIN_CONCURRENCY} BENCH_PROBES=${PROBES} BENCH_ALONE=${ALONE} BENCH_WARMUP=${WARMUP} npm run bench:login`;

for (const [name, v] of Object.entries({ BENCH_LOGINS: LOGINS, BENCH_LOGIN_CONCURRENCY: LOGIN_CONCURRENCY, BENCH_PROBES: PROBES, BENCH_ALONE: ALONE, BENCH_WARMUP: WARMUP })) {
  const integer = name !== 'BENCH_ALONE' && name !== 'BENCH_WARMUP';
  if (!Number.isFinite(v) || v < 0 || (name !== 'BENCH_WARMUP' && v === 0) || (integer && !Number.isInteger(v))) {
    console.error(`bench:login: ${name} must be a positive number, got ${String(process.env[name])}`);
    process.exit(2);
  }
}

class BenchError extends Error {}
const fail = (message: string): never => {
  throw new BenchError(message);
};

const dataDir = mkdtempSync(join(tmpdir(), 'evolith-bench-login-'));
const children = new ChildProcesses();
process.once('exit', () => rmSync(dataDir, { recursive: true, force: true }));

function startMonolith(timeoutMs: number): Promise<{ url: string; output: string[] }> {
  const args = ['bin/evolith.mjs', 'run', 'examples/bookstore', '--arch', 'monolith', '--port', '0', '--data', dataDir];
  // Warnings and errors only: an info line per request would make the bench measure logging.
  const child = children.add(spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, EVOLITH_LOG_LEVEL: 'warn' } }));
  const output: string[] = [];
  return new Promise((resolveStart, rejectStart) => {
    const timer = setTimeout(() => rejectStart(new BenchError(`the monolith did not report "listening on" within ${timeoutMs} ms:\n${output.join('')}`)), timeoutMs);
    let ready = false;
    const onData = (chunk: Buffer) => {
      output.push(chunk.toString());
      if (output.length > 200) output.splice(0, output.length - 200);
      if (ready) return;
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output.join(''));
      if (m) {
        ready = true;
        clearTimeout(timer);
        resolveStart({ url: m[1]!, output });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (!ready) rejectStart(new BenchError(`the monolith exited (${signal ?? code}) before it was ready:\n${output.join('')}`));
    });
  });
}

// One keep-alive agent per kind of client, so logins and probes do not wait for each other's sockets.
const probeAgent = new Agent({ keepAlive: true, maxSockets: PROBES });
const loginAgent = new Agent({ keepAlive: true, maxSockets: LOGIN_CONCURRENCY });

function send(agent: Agent, url: string, method: string, body?: string, contentType?: string): Promise<{ status: number; ms: number; text: string }> {
  return new Promise((done, reject) => {
    const start = performance.now();
    const req = httpRequest(url, { method, agent, timeout: REQUEST_TIMEOUT_MS, headers: body ? { 'content-type': contentType!, 'content-length': Buffer.byteLength(body) } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => done({ status: res.statusCode ?? 0, ms: performance.now() - start, text: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new BenchError(`${method} ${url} took longer than ${REQUEST_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** PROBES clients fetching the catalogue until `until()` says stop; latencies in ms. */
async function probe(base: string, until: () => boolean): Promise<number[]> {
  const latencies: number[] = [];
  await Promise.all(
    Array.from({ length: PROBES }, async () => {
      while (!until()) {
        const r = await send(probeAgent, `${base}/restful/products`, 'GET');
        if (r.status !== 200) fail(`GET /restful/products answered ${r.status}: ${r.text.slice(0, 300)}`);
        latencies.push(r.ms);
      }
    }),
  );
  return latencies;
}

const percentile = (values: number[], p: number): number => {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

async function loginStorm(base: string): Promise<{ latencies: number[]; statuses: Map<number, number>; ms: number }> {
  const form = new URLSearchParams({
    grant_type: 'password',
    username: 'icyfenix',
    password: 'not-the-password',
    client_id: 'bookstore_frontend',
    client_secret: 'bookstore_secret',
  }).toString();
  const latencies: number[] = [];
  const statuses = new Map<number, number>();
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: LOGIN_CONCURRENCY }, async () => {
      while (next < LOGINS) {
        next++;
        const r = await send(loginAgent, `${base}/oauth/token`, 'POST', form, 'application/x-www-form-urlencoded');
        if (r.status !== 400 && r.status !== 503) fail(`a wrong-password login answered ${r.status}: ${r.text.slice(0, 300)}`);
        if (r.status === 400 && !r.text.includes('invalid_grant')) fail(`a wrong-password login answered 400 without invalid_grant: ${r.text.slice(0, 300)}`);
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        latencies.push(r.ms);
      }
    }),
  );
  return { latencies, statuses, ms: performance.now() - start };
}

const fmt = (ms: number) => (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1));

async function main(): Promise<void> {
  const { url } = await startMonolith(60_000);
  console.log(`bench:login — monolith at ${url}; ${REPRODUCE}`);

  // Warm-up: the catalogue path and one (wrong) login, so neither phase pays for first calls.
  const warmEnd = performance.now() + WARMUP * 1000;
  await probe(url, () => performance.now() >= warmEnd);
  await loginStormOnce(url);

  const aloneEnd = performance.now() + ALONE * 1000;
  const alone = await probe(url, () => performance.now() >= aloneEnd);

  let stormDone = false;
  const [storm, loaded] = await Promise.all([
    loginStorm(url).finally(() => {
      stormDone = true;
    }),
    probe(url, () => stormDone),
  ]);

  const p50Ratio = percentile(loaded, 50) / percentile(alone, 50);
  const p99Ratio = percentile(loaded, 99) / percentile(alone, 99);
  printTable('GET /restful/products', [
    ['phase', 'requests', 'p50 ms', 'p99 ms'],
    ['alone (baseline)', String(alone.length), fmt(percentile(alone, 50)), fmt(percentile(alone, 99))],
    [`during ${LOGINS} wrong logins ×${LOGIN_CONCURRENCY}`, String(loaded.length), fmt(percentile(loaded, 50)), fmt(percentile(loaded, 99))],
    ['storm / baseline', '', `${p50Ratio.toFixed(1)}×`, `${p99Ratio.toFixed(1)}×`],
  ]);
  const answered = [...storm.statuses].sort(([a], [b]) => a - b).map(([s, n]) => `${n}× ${s}`).join(', ');
  printTable('the wrong-password logins', [
    ['logins', 'total s', 'logins/s', 'p50 ms', 'p99 ms', 'answered'],
    [String(LOGINS), (storm.ms / 1000).toFixed(2), (LOGINS / (storm.ms / 1000)).toFixed(1), fmt(median(storm.latencies)), fmt(percentile(storm.latencies, 99)), answered],
  ]);
}

async function loginStormOnce(base: string): Promise<void> {
  const form = new URLSearchParams({ grant_type: 'password', username: 'icyfenix', password: 'warm-up', client_id: 'bookstore_frontend', client_secret: 'bookstore_secret' }).toString();
  const r = await send(loginAgent, `${base}/oauth/token`, 'POST', form, 'application/x-www-form-urlencoded');
  if (r.status !== 400) fail(`the warm-up login answered ${r.status}: ${r.text.slice(0, 300)}`);
}

main()
  .then(
    () => 0,
    (err: unknown) => {
      console.error(`bench:login failed: ${err instanceof BenchError ? err.message : (err as Error).stack}`);
      return 1;
    },
  )
  .then(async (code) => {
    probeAgent.destroy();
    loginAgent.destroy();
    await children.stopAll();
    process.exit(code);
  });
