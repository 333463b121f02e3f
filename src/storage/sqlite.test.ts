import { existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterEach, describe, expect, test } from 'vitest';
import { z } from 'zod';
import { Kit } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import { ConfigError } from '../kernel/errors.js';
import type { ServiceStore } from '../kernel/plugins.js';
import { database, implement, type Migration } from '../kernel/service.js';
import { migrate } from './migrate.js';
import { SqliteStorage } from './sqlite.js';

const kit = new Kit();
const opened: ServiceStore[] = [];
afterEach(async () => {
  for (const s of opened.splice(0)) await s.close().catch(() => undefined);
  await kit.cleanup();
});

async function open(storage: SqliteStorage, service: string): Promise<ServiceStore> {
  const s = await storage.open(service);
  opened.push(s);
  return s;
}

describe('SqliteStorage', () => {
  test('one file per service under the data directory (created if missing)', async () => {
    const dir = join(kit.tmp('sqlite'), 'nested', 'data');
    const storage = new SqliteStorage(dir);
    const a = await open(storage, 'accounts');
    const b = await open(storage, 'orders');
    expect(a.dialect).toBe('sqlite');
    expect(a.location).toBe(join(dir, 'accounts.sqlite'));
    expect(b.location).toBe(join(dir, 'orders.sqlite'));
    expect(existsSync(a.location)).toBe(true);
    expect(existsSync(b.location)).toBe(true);
  });

  test('uses WAL, foreign keys and a busy timeout', async () => {
    const s = await open(new SqliteStorage(kit.tmp('sqlite')), 'accounts');
    const pragma = async (name: string) => (await sql.raw(`PRAGMA ${name}`).execute(s.db)).rows[0] as Record<string, unknown>;
    expect(await pragma('journal_mode')).toEqual({ journal_mode: 'wal' });
    expect(await pragma('foreign_keys')).toEqual({ foreign_keys: 1 });
    expect(Number(Object.values(await pragma('busy_timeout'))[0])).toBeGreaterThan(0);
    await s.db.schema.createTable('t').addColumn('v', 'integer').execute();
    expect(existsSync(`${s.location}-wal`)).toBe(true);
  });

  test('foreign keys are enforced', async () => {
    const s = await open(new SqliteStorage(kit.tmp('sqlite')), 'shop');
    await s.db.schema.createTable('parent').addColumn('id', 'integer', (c) => c.primaryKey()).execute();
    await s.db.schema
      .createTable('child')
      .addColumn('id', 'integer', (c) => c.primaryKey())
      .addColumn('parent_id', 'integer', (c) => c.references('parent.id'))
      .execute();
    await expect(s.db.insertInto('child').values({ id: 1, parent_id: 99 }).execute()).rejects.toThrow(/FOREIGN KEY/);
  });

  test('services cannot see each other’s tables', async () => {
    const storage = new SqliteStorage(kit.tmp('sqlite'));
    const a = await open(storage, 'accounts');
    const b = await open(storage, 'orders');
    await a.db.schema.createTable('secret').addColumn('v', 'text').execute();
    await a.db.insertInto('secret').values({ v: 'x' }).execute();
    await expect(b.db.selectFrom('secret').selectAll().execute()).rejects.toThrow(/no such table: secret/);
  });

  test('data survives closing and reopening', async () => {
    const dir = kit.tmp('sqlite');
    const first = await new SqliteStorage(dir).open('accounts');
    await first.db.schema.createTable('t').addColumn('v', 'integer').execute();
    await first.db.insertInto('t').values({ v: 7 }).execute();
    await first.close();
    const again = await open(new SqliteStorage(dir), 'accounts');
    expect(await again.db.selectFrom('t').selectAll().execute()).toEqual([{ v: 7 }]);
  });
});

describe('migrate', () => {
  const table = (name: string): Migration => async (db) => {
    await db.schema.createTable(name).addColumn('v', 'integer').execute();
  };

  test('applies migrations in name order, each once, across restarts', async () => {
    const dir = kit.tmp('migrate');
    const ran: string[] = [];
    const track = (name: string): Migration => async (db) => {
      ran.push(name);
      await table(`t_${name}`)(db);
    };
    // Declared out of order: names decide.
    const first = { '002_items': track('002_items'), '001_users': track('001_users') };
    let s = await new SqliteStorage(dir).open('svc');
    expect(await migrate(s.db, 'svc', first)).toEqual(['001_users', '002_items']);
    expect(ran).toEqual(['001_users', '002_items']);
    expect(await migrate(s.db, 'svc', first)).toEqual([]);
    await s.close();

    s = await open(new SqliteStorage(dir), 'svc');
    const second = { ...first, '003_orders': track('003_orders') };
    expect(await migrate(s.db, 'svc', second)).toEqual(['003_orders']);
    expect(ran).toEqual(['001_users', '002_items', '003_orders']);
    const tables = await sql<{ name: string }>`select name from sqlite_master where type = 'table' and name like 't_%' order by name`.execute(s.db);
    expect(tables.rows.map((r) => r.name)).toEqual(['t_001_users', 't_002_items', 't_003_orders']);
  });

  test('a failing migration is a ConfigError naming it and the service; the run is undone whole, as on PostgreSQL', async () => {
    const s = await open(new SqliteStorage(kit.tmp('migrate')), 'billing');
    const migrations = {
      '001_ok': table('ok'),
      '002_bad': async () => {
        throw new Error('near "CRATE": syntax error');
      },
      '003_never': table('never'),
    };
    let err: unknown;
    try {
      await migrate(s.db, 'billing', migrations);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain('migration 002_bad of service billing failed');
    expect((err as Error).message).toContain('syntax error');
    const tables = await sql<{ name: string }>`select name from sqlite_master where type = 'table' and name in ('ok', 'never')`.execute(s.db);
    // One transaction per run: nothing of it stays, so the next start applies it all again.
    expect(tables.rows.map((r) => r.name)).toEqual([]);
    const applied = await sql<{ name: string }>`select name from evolith_migration`.execute(s.db);
    expect(applied.rows).toEqual([]);
  });

  test('through the Runtime: migrations run once on start and again only for new ones', async () => {
    const dir = kit.tmp('migrate');
    const ran: string[] = [];
    const c = defineContract({ name: 'notes', version: '1', methods: { count: { input: z.object({}), output: z.number() } } });
    const svc = (migrations: Record<string, Migration>) =>
      implement(c, {
        database: database<{ note: { v: number } }>({ migrations }),
        handlers: {
          async count(_i, ctx) {
            return (await ctx.db.selectFrom('note').selectAll().execute()).length;
          },
        },
      });
    const m1: Record<string, Migration> = {
      '001': async (db) => {
        ran.push('001');
        await db.schema.createTable('note').addColumn('v', 'integer').execute();
      },
    };
    const rt1 = await kit.start([svc(m1)], { dir });
    await expect(rt1.client(c).count({})).resolves.toBe(0);
    await rt1.stop();
    const m2: Record<string, Migration> = {
      ...m1,
      '002': async (db) => {
        ran.push('002');
        await db.insertInto('note').values({ v: 1 }).execute();
      },
    };
    const rt2 = await kit.start([svc(m2)], { dir });
    await expect(rt2.client(c).count({})).resolves.toBe(1);
    expect(ran).toEqual(['001', '002']);
  });

  test('through the Runtime: a failing migration fails start with a ConfigError naming it', async () => {
    const c = defineContract({ name: 'notes', version: '1', methods: {} });
    const svc = implement(c, {
      database: database({
        migrations: {
          '001_create': async () => {
            throw new Error('disk full');
          },
        },
      }),
      handlers: {},
    });
    const err = await kit.start([svc]).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(/migration 001_create of service notes failed: .*disk full/);
  });

  test('database() refuses an empty migration list', () => {
    expect(() => database({ migrations: {} })).toThrow(/at least one migration/);
  });
});

describe('SQLite shared by several processes', () => {
  test('replicas on one file all commit read-then-write transactions (BEGIN IMMEDIATE waits instead of failing)', async () => {
    const dir = kit.tmp('sqlite-shared');
    const store = await new SqliteStorage(dir).open('counter');
    await store.db.schema.createTable('n').addColumn('id', 'integer', (c) => c.primaryKey()).addColumn('v', 'integer').execute();
    await store.db.insertInto('n').values({ id: 1, v: 0 }).execute();
    await store.close();
    const run = () =>
      new Promise<number | null>((resolve) => {
        const child = spawn(process.execPath, ['bin/run-ts.mjs', 'test/fixtures/sqlite-increment.ts', dir, '25'], { stdio: 'inherit' });
        child.on('exit', resolve);
      });
    expect(await Promise.all([run(), run(), run()])).toEqual([0, 0, 0]);
    const again = await new SqliteStorage(dir).open('counter');
    const row = await again.db.selectFrom('n').select('v').where('id', '=', 1).executeTakeFirstOrThrow();
    await again.close();
    // Every increment of every process survived: no lost update, no SQLITE_BUSY.
    expect(Number(row.v)).toBe(75);
  });

  test('replicas starting together on a new file apply each migration once; none fails on tables another just made', async () => {
    const dir = kit.tmp('sqlite-migrate-race');
    const children = Array.from({ length: 4 }, () => {
      const child = spawn(process.execPath, ['bin/run-ts.mjs', 'test/fixtures/sqlite-migrate-race.ts', dir]);
      let out = '';
      let err = '';
      child.stderr.on('data', (d) => (err += d));
      const ready = new Promise<void>((resolve) =>
        child.stdout.on('data', (d) => {
          out += d;
          if (out.includes('ready\n')) resolve();
        }),
      );
      const exited = new Promise<{ code: number | null; out: string; err: string }>((resolve) =>
        child.on('exit', (code) => resolve({ code, out: out.replace('ready\n', ''), err })),
      );
      return { child, ready, exited };
    });
    await Promise.all(children.map((c) => c.ready));
    for (const c of children) c.child.stdin.write('go\n');
    const results = await Promise.all(children.map((c) => c.exited));
    for (const r of results) expect(r.code, r.err).toBe(0);
    // Every migration ran in exactly one process.
    const applied = results.flatMap((r) => JSON.parse(r.out) as string[]).sort();
    expect(applied).toEqual(['001_init', '002_more']);
    const again = await new SqliteStorage(dir).open('raced');
    const rows = await sql<{ name: string }>`select name from evolith_migration order by name`.execute(again.db);
    const counters = await sql<{ n: number }>`select count(*) as n from id_counter`.execute(again.db);
    await again.close();
    expect(rows.rows.map((r) => r.name)).toEqual(['001_init', '002_more']);
    expect(Number(counters.rows[0]!.n)).toBe(1);
  }, 60_000);
});
