/**
 * PostgresStorage when the database goes away without a word (a black hole: connections are
 * accepted and never answered): one call at a time waits for a connection, up to
 * connectTimeoutMs; the others fail at once; the first connection that works ends the outage.
 */
import { randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import { afterAll, describe, expect, test } from 'vitest';
import { dropSchemas, postgresAvailable, postgresUrl } from '../../test/support/postgres.js';
import { startTcpProxy } from '../../test/support/tcp-proxy.js';
import { PostgresStorage } from './postgres.js';

const unavailable = await postgresAvailable();
if (unavailable) console.warn(`skipping PostgreSQL outage tests: ${unavailable}`);

const prefix = `evout_${randomBytes(4).toString('hex')}_`;

describe.skipIf(unavailable !== undefined)('PostgresStorage outages', () => {
  afterAll(async () => {
    if (!unavailable) await dropSchemas(prefix, postgresUrl());
  });

  test('a black-holed database: one call waits up to connectTimeoutMs, the others fail at once, and calls succeed once it is back', async () => {
    const target = new URL(postgresUrl());
    const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    const url = new URL(postgresUrl());
    url.hostname = '127.0.0.1';
    url.port = String(proxy.port);
    const CONNECT_TIMEOUT = 600;
    const store = await new PostgresStorage({ connectionString: url.toString(), schemaPrefix: prefix, poolSize: 4, connectTimeoutMs: CONNECT_TIMEOUT }).open('orders');
    const timed = async () => {
      const t0 = performance.now();
      const outcome = await sql`select 1 as one`.execute(store.db).then(
        () => 'ok',
        (err: { code?: string }) => err.code ?? 'other',
      );
      return { outcome, ms: performance.now() - t0 };
    };
    try {
      expect((await timed()).outcome).toBe('ok');
      await proxy.hang();
      await new Promise((r) => setTimeout(r, 200)); // the pool hears its idle connection drop
      // The first call finds out, within the connect timeout.
      const first = await timed();
      expect(first.outcome).toBe('EVOLITH_UNAVAILABLE');
      expect(first.ms).toBeGreaterThanOrEqual(CONNECT_TIMEOUT - 50);
      expect(first.ms).toBeLessThan(CONNECT_TIMEOUT + 1_000);
      // Now known to be down: of calls at the same moment, one tries again, the rest fail at once.
      const wave = await Promise.all(Array.from({ length: 6 }, () => timed()));
      expect(wave.every((r) => r.outcome === 'EVOLITH_UNAVAILABLE')).toBe(true);
      const fast = wave.filter((r) => r.ms < 100);
      expect(fast.length).toBe(5);
      console.info(`[postgres] black hole: the probing call failed after ${Math.max(...wave.map((r) => r.ms)).toFixed(0)} ms, the other ${fast.length} after at most ${Math.max(...fast.map((r) => r.ms)).toFixed(1)} ms`);
      await proxy.restore();
      const back = await timed();
      expect(back.outcome).toBe('ok');
      expect((await timed()).outcome).toBe('ok');
    } finally {
      await store.close();
      await proxy.close();
    }
  }, 30_000);

  test('every connection busy past the connect timeout is a 503 of its own, not an outage: the next calls still wait for a connection', async () => {
    const store = await new PostgresStorage({ connectionString: postgresUrl(), schemaPrefix: prefix, poolSize: 1, connectTimeoutMs: 300 }).open('busy');
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let taken!: () => void;
    const holding = new Promise<void>((r) => (taken = r));
    try {
      // The only connection is made first (on a busy machine making one can outlast the 300 ms);
      // then a transaction keeps it.
      await sql`select 1`.execute(store.db);
      const tx = store.db.transaction().execute(async (t) => {
        await sql`select 1`.execute(t);
        taken();
        await held;
      });
      await holding;
      await expect(sql`select 1`.execute(store.db)).rejects.toMatchObject({ code: 'EVOLITH_UNAVAILABLE', message: expect.stringMatching(/no database connection came free/) });
      // Not taken for an outage: calls made now (none of them failed at once) wait for the connection and get it.
      const waiting = [1, 2].map(() => sql<{ one: number }>`select 1 as one`.execute(store.db));
      setTimeout(release, 100);
      for (const w of waiting) await expect(w).resolves.toMatchObject({ rows: [{ one: 1 }] });
      await tx;
    } finally {
      release();
      await store.close();
    }
  }, 30_000);
});
