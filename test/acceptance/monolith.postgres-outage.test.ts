/**
 * The monolith on PostgreSQL survives its database going away: connections terminated by the
 * server, the server unreachable for a while (a TCP proxy in front of it is cut and restored;
 * the shared server itself is never restarted), and a start while it is unreachable.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { startBookstore, stopAllBookstores, type Bookstore } from '../support/bookstore-process.js';
import { sleep } from '../support/eventually.js';
import { dropSchemas, postgresAvailable, postgresUrl } from '../support/postgres.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';

const NAME = 'monolith · postgres outages';
const unavailable = await postgresAvailable();

/** The URL with its host and port replaced by the proxy's. */
function through(url: string, port: number): string {
  const u = new URL(url);
  u.hostname = '127.0.0.1';
  u.port = String(port);
  return u.toString();
}

async function get(base: string, path: string): Promise<{ status: number; retryAfter: string | null; ms: number }> {
  const t0 = performance.now();
  const res = await fetch(base + path, { signal: AbortSignal.timeout(15_000) });
  await res.arrayBuffer();
  return { status: res.status, retryAfter: res.headers.get('retry-after'), ms: performance.now() - t0 };
}

/** Terminates the server's backends that serve the proxy's connections; returns how many. */
async function terminateBackends(url: string, proxy: TcpProxy): Promise<number> {
  const ports = proxy.upstreamPorts();
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const { rows } = await c.query<{ ok: boolean }>(
      'select pg_terminate_backend(pid) as ok from pg_stat_activity where client_port = any($1::int[]) and pid <> pg_backend_pid()',
      [ports],
    );
    return rows.filter((r) => r.ok).length;
  } finally {
    await c.end();
  }
}

if (unavailable) {
  console.warn(`[acceptance] skipping "${NAME}": ${unavailable}`);
  describe.skip(NAME, () => {
    it(`needs PostgreSQL: ${unavailable}`, () => {});
  });
} else {
  const url = postgresUrl();
  const target = new URL(url);
  const runPrefix = `evo_out_${randomBytes(4).toString('hex')}_`;
  let starts = 0;
  const proxies: TcpProxy[] = [];
  const proxy = async () => {
    const p = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    proxies.push(p);
    return p;
  };
  afterAll(async () => {
    await stopAllBookstores();
    for (const p of proxies) await p.close();
    await dropSchemas(runPrefix, url);
  }, 30_000);

  const start = (p: TcpProxy, extra: Parameters<typeof startBookstore>[0] = {}): Promise<Bookstore> =>
    startBookstore({ arch: 'monolith', storage: through(url, p.port), schemaPrefix: `${runPrefix}${++starts}_`, ...extra });

  describe(NAME, () => {
    it('terminated connections, idle and under light load, never take the process down', async () => {
      const p = await proxy();
      const app = await start(p);
      expect((await get(app.baseUrl, '/restful/products')).status).toBe(200);

      // Idle: every pooled connection is killed by the server while nobody uses it.
      await sleep(300);
      expect(await terminateBackends(url, p)).toBeGreaterThan(0);
      await sleep(1_000);
      expect(app.exited()).toBe(false);
      expect((await get(app.baseUrl, '/restful/products')).status).toBe(200);

      // Under light load: requests keep coming while the server kills the connections again.
      const statuses: number[] = [];
      let running = true;
      const load = (async () => {
        while (running) {
          const r = await get(app.baseUrl, '/restful/products').catch(() => ({ status: -1 }));
          statuses.push(r.status);
          await sleep(20);
        }
      })();
      await sleep(300);
      for (let i = 0; i < 3; i++) {
        await terminateBackends(url, p);
        await sleep(300);
      }
      running = false;
      await load;
      expect(app.exited()).toBe(false);
      // A request may fail while its own connection is killed under it, but only as 503.
      expect(statuses.filter((s) => s !== 200 && s !== 503)).toEqual([]);
      expect(statuses.filter((s) => s === 200).length).toBeGreaterThan(0);
      expect((await get(app.baseUrl, '/restful/products')).status).toBe(200);
      expect(app.output()).not.toMatch(/Unhandled 'error' event/);
      // Each lost connection is one line, without the client object.
      expect(app.output()).toMatch(/PostgreSQL connection lost/);
      expect(app.output()).not.toMatch(/_queryable|_connectionError|"client":/);
    }, 60_000);

    it('while the database is unreachable requests fail fast with 503 and Retry-After, and service resumes by itself', async () => {
      const p = await proxy();
      const app = await start(p);
      expect((await get(app.baseUrl, '/restful/products')).status).toBe(200);

      await p.cut();
      const during: Array<{ status: number; retryAfter: string | null; ms: number }> = [];
      for (let i = 0; i < 10; i++) {
        during.push(await get(app.baseUrl, '/restful/products'));
        await sleep(100);
      }
      expect(app.exited()).toBe(false);
      for (const r of during) {
        expect(r.status).toBe(503);
        expect(r.retryAfter).not.toBeNull();
      }
      const slowest = Math.max(...during.map((r) => r.ms));
      console.log(`[outage] 503 answers while PostgreSQL is unreachable: slowest ${slowest.toFixed(1)} ms, median ${during.map((r) => r.ms).sort((a, b) => a - b)[5]!.toFixed(1)} ms`);
      expect(slowest).toBeLessThan(1_000);
      const ready = await fetch(`${app.baseUrl}/ready`);
      expect(ready.status).toBe(503);

      await p.restore();
      const t0 = performance.now();
      let back = await get(app.baseUrl, '/restful/products');
      while (back.status !== 200 && performance.now() - t0 < 10_000) {
        await sleep(100);
        back = await get(app.baseUrl, '/restful/products');
      }
      expect(back.status).toBe(200);
      console.log(`[outage] first 200 ${(performance.now() - t0).toFixed(0)} ms after PostgreSQL was reachable again`);
      expect((await fetch(`${app.baseUrl}/ready`)).status).toBe(200);
      expect(app.exited()).toBe(false);
      expect(app.output()).not.toMatch(/Unhandled 'error' event/);
    }, 60_000);

    it('starting while the database is unreachable retries, one line per attempt, then exits non-zero with one message', async () => {
      const p = await proxy();
      await p.cut();
      const t0 = performance.now();
      const failed = start(p, { set: { 'storage.startAttempts': 3, 'storage.startRetryMs': 200 }, readyTimeoutMs: 20_000 });
      await expect(failed).rejects.toThrow(/exited before it was ready \(code [1-9]/);
      const elapsed = performance.now() - t0;
      const out = ((await failed.catch((e: Error) => e)) as Error).message;
      if (process.env.EVOLITH_TEST_VERBOSE) console.log(out);
      // A line for each failed attempt that is retried, then one message for the last.
      const attempts = out.split('\n').filter((l) => /attempt \d+ of 3/.test(l));
      expect(attempts).toHaveLength(2);
      expect(attempts[0]).toMatch(/attempt 1 of 3/);
      expect(attempts[1]).toMatch(/attempt 2 of 3/);
      const final = out.split('\n').filter((l) => l.startsWith('evolith: '));
      expect(final).toHaveLength(1);
      expect(final[0]).toMatch(/^evolith: PostgreSQL at .* is unreachable .*gave up after 3 attempts/);
      expect(out).not.toMatch(/\n\s+at /); // no stack traces
      expect(out).not.toMatch(/Unhandled 'error' event/);
      expect(elapsed).toBeLessThan(15_000);
    }, 30_000);
  });
}
