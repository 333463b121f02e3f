/**
 * The serverless platform as an operator meets it, with real processes: functions that go to
 * zero and come back on the next call, a burst that scales a function out without dropping a
 * call, an instance killed over its memory limit, a durable timer that wakes a function at zero,
 * metering checked against a hand computation, and a function that cannot start. Most of it runs
 * on a small app (test/fixtures/serverless-kit); the timer on the bookstore.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FunctionsStatus } from '../../src/deploy/serverless/platform.js';
import type { MeteringReport } from '../../src/serverless/metering.js';
import { repoRoot, startBookstore, type Bookstore } from '../support/bookstore-process.js';
import { ADMIN, getStock, setStock, settle } from '../support/bookstore.js';
import { operatorAuth, readControlPlane, type ControlPlane } from '../support/control-plane.js';
import { eventually, sleep } from '../support/eventually.js';
import { Http, login } from '../support/http.js';

const KIT = 'test/fixtures/serverless-kit';
const START_MS = 60_000;

/** Windows short enough for a function to reach zero within seconds of its last call. */
const EAGER = {
  'serverless.defaults.scaleToZeroGraceMs': 500,
  'serverless.defaults.stableWindowMs': 2000,
  'serverless.defaults.panicWindowMs': 1000,
  'serverless.wakeupPollMs': 200,
};

type Fn = FunctionsStatus['functions'][number];

/** Reads from a running deployment's control plane, as its operator. */
function operator(app: Bookstore) {
  const cp: ControlPlane = readControlPlane(app.dataDir);
  const read = async (path: string) => {
    const res = await fetch(`${cp.registryUrl}${path}`, { headers: operatorAuth(cp.registryUrl), signal: AbortSignal.timeout(5_000) });
    expect(res.status, `GET ${path}`).toBe(200);
    return res;
  };
  return {
    cp,
    functions: async (): Promise<FunctionsStatus> => (await (await read('/functions')).json()) as FunctionsStatus,
    fn: async (name: string): Promise<Fn> => {
      const st = (await (await read('/functions')).json()) as FunctionsStatus;
      const f = st.functions.find((x) => x.name === name || x.services.includes(name));
      if (!f) throw new Error(`no function ${name} in ${JSON.stringify(st)}`);
      return f;
    },
    metering: async (): Promise<MeteringReport> => ((await (await read('/metering')).json()) as { report: MeteringReport }).report,
    metrics: async (): Promise<string> => (await read('/metrics')).text(),
    /** `evolith status` for the deployment, as its operator runs it. */
    status: (): string =>
      execFileSync(process.execPath, ['bin/evolith.mjs', 'status', app.options.app!, '--data', app.dataDir], { cwd: repoRoot, encoding: 'utf8', timeout: 15_000 }),
  };
}

/** POSTs JSON to the app's edge; resolves the status, the parsed body and how long it took. */
async function post(app: Bookstore, path: string, body: unknown, timeoutMs = 20_000) {
  const t = Date.now();
  const res = await fetch(`${app.baseUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let parsed: Record<string, any> = {};
  try {
    parsed = JSON.parse(text) as Record<string, any>;
  } catch {
    /* not JSON: the text is in the failure message */
  }
  return { status: res.status, body: parsed, text, ms: Date.now() - t };
}

/** Lines of the deployment's output that carry `msg`. */
function logLines(app: Bookstore, msg: string): Record<string, any>[] {
  const out: Record<string, any>[] = [];
  for (const line of app.output().split('\n')) {
    if (!line.includes(msg)) continue;
    const json = line.slice(line.indexOf('{'));
    try {
      out.push(JSON.parse(json) as Record<string, any>);
    } catch {
      /* a line that only mentions it */
    }
  }
  return out;
}

describe('serverless: scale to zero, activation, bursts and metering', () => {
  let app: Bookstore;
  let op: ReturnType<typeof operator>;

  beforeAll(async () => {
    app = await startBookstore({
      arch: 'serverless',
      app: KIT,
      set: {
        ...EAGER,
        'serverless.pool': 1,
        'serverless.functions.work.maxConcurrency': 10,
        'serverless.functions.work.targetConcurrency': 5,
        'serverless.functions.work.maxInstances': 4,
        'serverless.functions.work.memoryMb': 512,
      },
      readyTimeoutMs: START_MS,
    });
    op = operator(app);
  }, START_MS + 10_000);

  afterAll(async () => {
    await app?.stop();
  });

  const atZero = (name: string, timeoutMs = 15_000) =>
    eventually(
      async () => {
        const f = await op.fn(name);
        expect(f.instances, JSON.stringify(f)).toHaveLength(0);
        return f;
      },
      { timeoutMs, intervalMs: 200 },
    );

  it('an idle function goes to zero, `evolith status` shows it; the next call succeeds on an instance activated from the pool', async () => {
    expect((await post(app, '/echo', { text: 'warm' })).status).toBe(200);
    const zero = await atZero('echo');
    expect(zero.desired).toBe(0);
    const idle = op.status();
    expect(idle).toMatch(/^echo\s+0 ready\s+0\s/m);
    expect(idle).not.toMatch(/echo#\d+\s+ready/);

    // The pool has a runtime waiting for whichever function needs one next.
    await eventually(async () => expect((await op.functions()).pool.waiting.length).toBe(1));
    const reply = await post(app, '/echo', { text: 'again' });
    expect(reply.status, reply.text).toBe(200);
    expect(reply.body.text).toBe('again');

    const f = await op.fn('echo');
    expect(f.instances).toHaveLength(1);
    expect(f.instances[0]).toMatchObject({ state: 'ready', cause: 'activation', fromPool: true });
    const name = f.instances[0]!.name;
    expect(op.status()).toMatch(new RegExp(`${name}\\s+ready, up \\d+ s, activation from the pool`));
  }, 30_000);

  it('200 concurrent calls to a function at zero all answer 200, on more than one instance', async () => {
    await atZero('work');
    const startedBefore = logLines(app, 'function instance starting').filter((l) => l.function === 'work').length;
    const replies = await Promise.all(Array.from({ length: 200 }, () => post(app, '/sleep', { ms: 200 }, 60_000)));
    const bad = replies.filter((r) => r.status !== 200);
    expect(bad.map((r) => `${r.status} ${r.text}`), `${bad.length} of 200 failed`).toEqual([]);
    const pids = new Set(replies.map((r) => r.body.pid));
    const started = logLines(app, 'function instance starting').filter((l) => l.function === 'work').length - startedBefore;
    // Scaled out: more than one instance was started for the burst, and within the bound.
    expect(started).toBeGreaterThan(1);
    expect(pids.size).toBeGreaterThan(1);
    expect(pids.size).toBeLessThanOrEqual(4);
    expect(logLines(app, 'autoscaler decision').some((l) => l.function === 'work' && l.desired > 1)).toBe(true);
  }, 60_000);

  it('metering matches a hand computation of the calls made; /metrics agrees; /metering needs the operator', async () => {
    await atZero('work');
    // Every instance report of the burst is in before the baseline is read.
    await sleep(600);
    const before = (await op.metering()).functions.find((f) => f.fn === 'work')!;
    const readyBefore = logLines(app, 'function instance ready').length;

    const sleeps = [...Array<number>(20).fill(30), ...Array<number>(10).fill(5)];
    for (const ms of sleeps) expect((await post(app, '/sleep', { ms })).status).toBe(200);

    const after = await eventually(
      async () => {
        const f = (await op.metering()).functions.find((x) => x.fn === 'work')!;
        expect(f.invocations - before.invocations).toBe(sleeps.length);
        return f;
      },
      { timeoutMs: 5_000 },
    );
    const invocations = after.invocations - before.invocations;
    const billedMs = after.billedMs - before.billedMs;
    const coldStarts = after.coldStarts - before.coldStarts;
    expect(coldStarts).toBeGreaterThanOrEqual(1);
    const slept = sleeps.reduce((a, b) => a + b, 0);
    expect(billedMs).toBeGreaterThanOrEqual(slept);
    // The bound: a cold start bills its instance's initialisation with its first call (as the
    // INIT phase), and each call may take a little longer than its sleep (the timer's lateness,
    // validation, the gate) and is rounded up to a whole millisecond; 20 ms a call is generous
    // on a loaded machine and still far below what a billing error (a call counted twice, or
    // an instance's idle time billed) would add.
    const inits = logLines(app, 'function instance ready')
      .slice(readyBefore)
      .filter((l) => String(l.instance).startsWith('work#'))
      .reduce((n, l) => n + Number(l.initMs), 0);
    expect(billedMs).toBeLessThan(slept + inits + coldStarts + sleeps.length * 20);

    const cost = (f: typeof after) => f.invocations * 0.2 / 1e6 + (f.billedMs * f.memoryMb) / 1024 / 1000 * 0.0000166667;
    expect(after.memoryMb).toBe(512);
    expect(Math.abs(after.cost - cost(after))).toBeLessThan(1e-12);

    const metrics = await op.metrics();
    const m = /^evolith_serverless_invocations_total\{function="work"\} (\d+)$/m.exec(metrics);
    expect(m, metrics).not.toBeNull();
    const now = (await op.metering()).functions.find((x) => x.fn === 'work')!;
    expect(Number(m![1])).toBe(now.invocations);

    for (const headers of [{}, { authorization: 'Bearer not-the-operator' }] as Record<string, string>[]) {
      const res = await fetch(`${op.cp.registryUrl}/metering`, { headers });
      expect(res.status).toBe(401);
    }
  }, 40_000);
});

describe('serverless: an instance over its memory limit', () => {
  let app: Bookstore;
  let op: ReturnType<typeof operator>;

  beforeAll(async () => {
    app = await startBookstore({
      arch: 'serverless',
      app: KIT,
      set: { 'serverless.pool': 1, 'serverless.initialInstances': 1, 'serverless.functions.work.memoryMb': 160 },
      readyTimeoutMs: START_MS,
    });
    op = operator(app);
  }, START_MS + 10_000);

  afterAll(async () => {
    await app?.stop();
  });

  it('is killed; its caller gets a typed error, another function keeps serving, and the next call runs on a new instance', async () => {
    const first = await post(app, '/hog', { mb: 0 });
    expect(first.status, first.text).toBe(200);

    let echoing = true;
    const echoes: number[] = [];
    const loop = (async () => {
      while (echoing) {
        echoes.push((await post(app, '/echo', { text: 'still here' })).status);
        await sleep(50);
      }
    })();

    try {
      const hog = await post(app, '/hog', { mb: 400 }, 30_000);
      // The edge's typed failure: a 5xx status with the app's error body, well before the deadline.
      expect(hog.status, hog.text).toBeGreaterThanOrEqual(500);
      expect(hog.body, hog.text).toMatchObject({ code: 1, message: expect.stringMatching(/work\.hog/) });
      expect(hog.ms).toBeLessThan(15_000);

      const killed = await eventually(async () => {
        const f = await op.fn('work');
        expect(f.lastKill).toBeDefined();
        return f.lastKill!;
      });
      expect(killed.reason).toMatch(/resident memory \d+ MB over its limit of 160 MB/);
      expect(app.output()).toMatch(/function instance killed: over its memory limit/);

      const next = await post(app, '/hog', { mb: 1 });
      expect(next.status, next.text).toBe(200);
      expect(next.body.pid).not.toBe(first.body.pid);
    } finally {
      echoing = false;
      await loop;
    }
    expect(echoes.length).toBeGreaterThan(3);
    expect(echoes.filter((s) => s !== 200)).toEqual([]);
  }, 60_000);
});

describe('serverless: a function that cannot start', () => {
  let app: Bookstore;
  let op: ReturnType<typeof operator>;

  beforeAll(async () => {
    app = await startBookstore({
      arch: 'serverless',
      app: KIT,
      set: { 'serverless.pool': 0, 'serverless.initialInstances': 0, 'config.work.failStart': true },
      readyTimeoutMs: START_MS,
    });
    op = operator(app);
  }, START_MS + 10_000);

  afterAll(async () => {
    await app?.stop();
  });

  it('refuses calls to it fast with a typed 503 that names the reason', async () => {
    const first = await post(app, '/sleep', { ms: 1 }, 40_000);
    expect(first.status, first.text).toBe(503);
    expect(first.body, first.text).toMatchObject({ code: 1, message: expect.stringMatching(/work cannot start: .*configured not to start/) });
    expect(first.ms).toBeLessThan(10_000);

    const f = await eventually(async () => {
      const x = await op.fn('work');
      expect(x.broken).toBeDefined();
      return x;
    });
    expect(f.broken).toMatch(/configured not to start/);

    const again = await post(app, '/sleep', { ms: 1 });
    expect(again.status, again.text).toBe(503);
    expect(again.body, again.text).toMatchObject({ code: 1, message: expect.stringMatching(/work cannot start: .*configured not to start/) });
    expect(again.ms).toBeLessThan(2_000);

    // The other function is not affected.
    expect((await post(app, '/echo', { text: 'fine' })).status).toBe(200);
  }, 60_000);
});

describe('serverless bookstore: a payment timeout reaches a payment function at zero', () => {
  let app: Bookstore;
  let op: ReturnType<typeof operator>;
  const EXPIRES_MS = 5_000;

  beforeAll(async () => {
    app = await startBookstore({
      arch: 'serverless',
      storage: 'sqlite',
      set: { ...EAGER, events: 'sqlite', 'config.payment.paymentExpiresMs': EXPIRES_MS },
      readyTimeoutMs: START_MS,
    });
    op = operator(app);
  }, START_MS + 10_000);

  afterAll(async () => {
    await app?.stop();
  });

  it('releases the frozen stock after the expiry, waking the payment function for it', async () => {
    const http = new Http(app.baseUrl);
    const admin = (await login(http, ADMIN.username, ADMIN.password)).access_token;
    const product = 3;
    await setStock(http, admin, product, 50);
    const before = await getStock(http, admin, product);
    const settled = await settle(http, admin, [[product, 2]]);
    const settledAt = Date.now();
    expect(settled.status, settled.text).toBe(200);
    expect(await getStock(http, admin, product)).toMatchObject({ amount: before.amount - 2, frozen: before.frozen + 2 });

    const wakeupsBefore = logLines(app, 'wake-up: work is due').filter((l) => l.service === 'payment').length;
    await eventually(
      async () => {
        const f = await op.fn('payment');
        expect(f.instances).toHaveLength(0);
      },
      { timeoutMs: EXPIRES_MS, intervalMs: 100 },
    );
    // At zero before the timer is due: only a wake-up can run it.
    expect(Date.now() - settledAt).toBeLessThan(EXPIRES_MS);

    await eventually(async () => expect(await getStock(http, admin, product)).toMatchObject({ amount: before.amount, frozen: before.frozen }), {
      timeoutMs: 15_000,
      intervalMs: 250,
    });
    const wakeups = logLines(app, 'wake-up: work is due').filter((l) => l.service === 'payment');
    expect(wakeups.length).toBeGreaterThan(wakeupsBefore);
  }, 60_000);
});
