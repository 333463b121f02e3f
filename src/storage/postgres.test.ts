import { randomBytes } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import pg from 'pg';
import { afterAll, afterEach, describe, expect, test } from 'vitest';
import { z } from 'zod';
import { dropSchemas, postgresAvailable, postgresUrl } from '../../test/support/postgres.js';
import { silentLog } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import type { ServiceStore } from '../kernel/plugins.js';
import { Runtime } from '../kernel/runtime.js';
import { inProcessPlugins } from '../worker/backends.js';
import { database, implement } from '../kernel/service.js';
import { migrate } from './migrate.js';
import { isConnectionFailure, PostgresStorage } from './postgres.js';

// A real connection attempt decides; when it fails the reason is printed, never skipped silently.
const unavailable = await postgresAvailable();
if (unavailable) console.warn(`skipping PostgreSQL storage tests: ${unavailable}`);

const prefix = `evut_${randomBytes(4).toString('hex')}_`;

describe('PostgresStorage.schemaFor (no server needed)', () => {
  test('prefixes, lower-cases and replaces characters a schema name cannot hold', () => {
    const s = new PostgresStorage({ connectionString: 'postgres://x@127.0.0.1/db', schemaPrefix: 'Shop_' });
    expect(s.schemaFor('order-items')).toBe('shop_order_items');
    expect(s.schemaFor('accounts')).toBe('shop_accounts');
    expect(new PostgresStorage({ connectionString: 'postgres://x@127.0.0.1/db' }).schemaFor('a.b"c')).toBe('a_b_c');
  });
});

describe('isConnectionFailure (no server needed)', () => {
  const coded = (code: string, message = 'x') => Object.assign(new Error(message), { code });
  test('network errors, connection exceptions and server shutdowns are; statement errors are not', () => {
    expect(isConnectionFailure(coded('ECONNREFUSED'))).toBe(true);
    expect(isConnectionFailure(new AggregateError([coded('ECONNREFUSED'), coded('ECONNREFUSED')], 'x'))).toBe(true);
    expect(isConnectionFailure(coded('57P01', 'terminating connection due to administrator command'))).toBe(true);
    expect(isConnectionFailure(coded('08006'))).toBe(true);
    expect(isConnectionFailure(new Error('Connection terminated unexpectedly'))).toBe(true);
    expect(isConnectionFailure(coded('23505', 'duplicate key value violates unique constraint'))).toBe(false);
    expect(isConnectionFailure(coded('42P01', 'relation "x" does not exist'))).toBe(false);
    expect(isConnectionFailure(new Error('boom'))).toBe(false);
    expect(isConnectionFailure(undefined)).toBe(false);
  });
});

describe.skipIf(unavailable !== undefined)('PostgresStorage', () => {
  const url = unavailable ? '' : postgresUrl();
  const storage = new PostgresStorage({ connectionString: url, schemaPrefix: prefix, poolSize: 2 });
  const opened: ServiceStore[] = [];
  const open = async (service: string) => {
    const s = await storage.open(service);
    opened.push(s);
    return s;
  };

  afterEach(async () => {
    for (const s of opened.splice(0)) await s.close().catch(() => undefined);
  });
  afterAll(async () => {
    if (!unavailable) await dropSchemas(prefix, url);
  });

  test('each service gets its own schema as its search path', async () => {
    const a = await open('accounts');
    const b = await open('order-items');
    expect(a.dialect).toBe('postgres');
    expect(a.location).toContain(`schema ${prefix}accounts`);
    const current = async (s: ServiceStore) => (await sql<{ s: string }>`select current_schema() as s`.execute(s.db)).rows[0]!.s;
    expect(await current(a)).toBe(`${prefix}accounts`);
    expect(await current(b)).toBe(`${prefix}order_items`);
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      const { rows } = await c.query<{ n: string }>('select nspname as n from pg_namespace where left(nspname, length($1)) = $1 order by 1', [prefix]);
      expect(rows.map((r) => r.n)).toEqual(expect.arrayContaining([`${prefix}accounts`, `${prefix}order_items`]));
    } finally {
      await c.end();
    }
  });

  test('a table created by one service is invisible to another', async () => {
    const a = await open('iso-a');
    const b = await open('iso-b');
    await a.db.schema.createTable('secret').addColumn('v', 'text').execute();
    await a.db.insertInto('secret').values({ v: 'only mine' }).execute();
    await expect(a.db.selectFrom('secret').selectAll().execute()).resolves.toEqual([{ v: 'only mine' }]);
    await expect(b.db.selectFrom('secret').selectAll().execute()).rejects.toThrow(/relation "secret" does not exist/);
    // And the same name may exist in both, holding different rows.
    await b.db.schema.createTable('secret').addColumn('v', 'text').execute();
    await expect(b.db.selectFrom('secret').selectAll().execute()).resolves.toEqual([]);
  });

  test('int8 and numeric columns come back as numbers', async () => {
    const s = await open('numbers');
    await s.db.schema
      .createTable('t')
      .addColumn('big', 'bigint')
      .addColumn('amount', 'numeric(12, 2)')
      .execute();
    await s.db.insertInto('t').values({ big: 1_700_000_000_123, amount: '12.50' }).execute();
    const row = await s.db.selectFrom('t').selectAll().executeTakeFirstOrThrow();
    expect(row).toEqual({ big: 1_700_000_000_123, amount: 12.5 });
    const { count } = await s.db.selectFrom('t').select((eb) => eb.fn.countAll().as('count')).executeTakeFirstOrThrow();
    expect(count).toBe(1);
  });

  test('the printed location never holds the password', async () => {
    const u = new URL(url);
    if (!u.username) {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      u.username = (await c.query<{ u: string }>('select current_user as u')).rows[0]!.u;
      await c.end();
    }
    u.password = 'hunter2';
    const s = await new PostgresStorage({ connectionString: u.toString(), schemaPrefix: prefix }).open('secretive');
    opened.push(s);
    expect(s.location).not.toContain('hunter2');
    expect(s.location).toContain(`${prefix}secretive`);
  });

  // The migrator must keep its bookkeeping tables in the service's own schema: kysely's
  // introspection sees every schema, so another service's evolith_migration tables must not count.
  test('two services in one database each apply their own migrations', async () => {
    const a = await open('mig-a');
    const b = await open('mig-b');
    expect(a.schema).toBe(`${prefix}mig_a`);
    expect(b.schema).toBe(`${prefix}mig_b`);
    const create = (table: string) => ({ '001': async (db: Kysely<any>) => db.schema.createTable(table).addColumn('v', 'integer').execute() });
    await expect(migrate(a.db, 'mig-a', create('alpha'), a.schema)).resolves.toEqual(['001']);
    await expect(migrate(b.db, 'mig-b', create('beta'), b.schema)).resolves.toEqual(['001']);
    await expect(b.db.selectFrom('beta').selectAll().execute()).resolves.toEqual([]);
    // Each keeps its own record: running again applies nothing.
    await expect(migrate(b.db, 'mig-b', create('beta'), b.schema)).resolves.toEqual([]);
    const own = await sql<{ t: string }>`select table_name as t from information_schema.tables where table_schema = ${b.schema!} order by 1`.execute(b.db);
    expect(own.rows.map((r) => r.t)).toEqual(['beta', 'evolith_migration', 'evolith_migration_lock']);
  });

  // Kysely's migrator reads the whole catalogue (every schema's tables) before it migrates; a
  // schema another client drops meanwhile made that read fail, and the service did not start.
  test('migrations succeed while other clients create and drop schemas in the same database', async () => {
    const churn = new pg.Client({ connectionString: url });
    await churn.connect();
    let stop = false;
    const churning = (async () => {
      for (let i = 0; !stop; i++) {
        const name = `${prefix}churn_${i}`;
        await churn.query(`create schema "${name}"`);
        for (let t = 0; t < 5; t++) await churn.query(`create table "${name}".t${t} (v integer)`);
        await churn.query(`drop schema "${name}" cascade`);
      }
    })();
    try {
      for (let n = 0; n < 30; n++) {
        const s = await open(`churned-${n}`);
        await expect(migrate(s.db, `churned-${n}`, { '001': async (db: Kysely<any>) => db.schema.createTable('x').addColumn('v', 'integer').execute() }, s.schema)).resolves.toEqual(['001']);
      }
    } finally {
      stop = true;
      await churning.catch(() => undefined);
      await churn.end();
    }
  }, 60_000);

  test('through the Runtime: migrations, outbox tables and calls work per schema', async () => {
    const c = defineContract({
      name: 'ledger',
      version: '1',
      methods: { add: { input: z.object({ cents: z.number().int() }), output: z.object({ total: z.number() }) } },
    });
    const svc = implement(c, {
      database: database<{ entry: { cents: number } }>({
        migrations: { '001': async (db) => db.schema.createTable('entry').addColumn('cents', 'bigint').execute() },
      }),
      handlers: {
        async add({ cents }, ctx) {
          await ctx.db.insertInto('entry').values({ cents }).execute();
          const { total } = await ctx.db.selectFrom('entry').select((eb) => eb.fn.sum<number>('cents').as('total')).executeTakeFirstOrThrow();
          return { total };
        },
      },
    });
    // A second service with its own migrations in the same database.
    const audit = implement(defineContract({ name: 'audit', version: '1', methods: {} }), {
      database: database({ migrations: { '001': async (db) => db.schema.createTable('trail').addColumn('v', 'text').execute() } }),
      handlers: {},
    });
    const rt = new Runtime({ services: [svc, audit], ...inProcessPlugins(), storage, log: silentLog, checkSerializable: true });
    await rt.start();
    try {
      await rt.client(c).add({ cents: 5_000_000_000 });
      await expect(rt.client(c).add({ cents: 1 })).resolves.toEqual({ total: 5_000_000_001 });
      const tables = await sql<{ t: string }>`select table_name as t from information_schema.tables where table_schema = current_schema() order by 1`.execute(
        rt.host('ledger').db,
      );
      expect(tables.rows.map((r) => r.t)).toEqual(expect.arrayContaining(['entry', 'evolith_inbox', 'evolith_migration', 'evolith_outbox']));
    } finally {
      await rt.stop();
    }
  });
});
