import { join } from 'node:path';
import Database from 'better-sqlite3';
import { CamelCasePlugin, sql, type Kysely } from 'kysely';
import { afterEach, describe, expect, test } from 'vitest';
import { Kit } from '../../test/fixtures/unit-kit.js';
import { sqliteKysely } from './sqlite-kysely.js';
import { StatementCache } from './statement-cache.js';

interface DB {
  item: { id: number; name: string; owner_name: string | null };
}

const kit = new Kit();
const open: Kysely<any>[] = [];
afterEach(async () => {
  for (const db of open.splice(0)) await db.destroy().catch(() => undefined);
  await kit.cleanup();
});

async function fresh(): Promise<Kysely<DB>> {
  const sqlite = new Database(join(kit.tmp('sqlite-kysely'), 'db.sqlite'));
  sqlite.pragma('journal_mode = WAL');
  const db = sqliteKysely<DB>(sqlite);
  open.push(db);
  await db.schema
    .createTable('item')
    .addColumn('id', 'integer', (c) => c.primaryKey())
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('owner_name', 'text')
    .execute();
  return db;
}

const names = async (db: Kysely<DB>) => (await db.selectFrom('item').select('name').orderBy('id').execute()).map((r) => r.name);
const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

describe('sqliteKysely: queries', () => {
  test('runs the query builder, raw SQL and results as Kysely’s SQLite dialect does', async () => {
    const db = await fresh();
    const ins = await db.insertInto('item').values({ id: 1, name: 'a', owner_name: null }).executeTakeFirstOrThrow();
    expect(ins.insertId).toBe(1n);
    expect(ins.numInsertedOrUpdatedRows).toBe(1n);
    await db.insertInto('item').values([{ id: 2, name: 'b', owner_name: 'x' }, { id: 3, name: 'c', owner_name: 'x' }]).execute();
    const upd = await db.updateTable('item').set({ name: 'B' }).where('owner_name', '=', 'x').executeTakeFirst();
    expect(upd.numUpdatedRows).toBe(2n);
    const returned = await db.insertInto('item').values({ id: 4, name: 'd', owner_name: null }).returning(['id', 'name']).executeTakeFirst();
    expect(returned).toEqual({ id: 4, name: 'd' });
    expect(await names(db)).toEqual(['a', 'B', 'B', 'd']);
    const { rows } = await sql<{ n: number }>`select count(*) as n from item where name = ${'B'}`.execute(db);
    expect(rows).toEqual([{ n: 2 }]);
    const del = await db.deleteFrom('item').where('id', '>', 2).executeTakeFirst();
    expect(del.numDeletedRows).toBe(2n);
  });

  test('a failing statement rejects its own promise only; the connection stays usable', async () => {
    const db = await fresh();
    await db.insertInto('item').values({ id: 1, name: 'a', owner_name: null }).execute();
    await expect(db.insertInto('item').values({ id: 1, name: 'dup', owner_name: null }).execute()).rejects.toThrow(/UNIQUE constraint failed/);
    await expect(sql`select * from nowhere`.execute(db)).rejects.toThrow(/no such table: nowhere/);
    expect(await names(db)).toEqual(['a']);
  });

  test('plugins transform queries and results, in and out of transactions', async () => {
    const db = (await fresh()).withPlugin(new CamelCasePlugin()) as unknown as Kysely<{ item: { id: number; name: string; ownerName: string | null } }>;
    await db.insertInto('item').values({ id: 1, name: 'a', ownerName: 'ann' }).execute();
    expect(await db.selectFrom('item').selectAll().execute()).toEqual([{ id: 1, name: 'a', ownerName: 'ann' }]);
    const inTx = await db.transaction().execute((trx) => trx.selectFrom('item').select(['ownerName']).executeTakeFirst());
    expect(inTx).toEqual({ ownerName: 'ann' });
  });

  test('streams rows in chunks', async () => {
    const db = await fresh();
    await db.insertInto('item').values(Array.from({ length: 7 }, (_, i) => ({ id: i + 1, name: `n${i + 1}`, owner_name: null }))).execute();
    const seen: string[] = [];
    for await (const row of db.selectFrom('item').select('name').orderBy('id').stream(3)) seen.push(row.name);
    expect(seen).toEqual(['n1', 'n2', 'n3', 'n4', 'n5', 'n6', 'n7']);
    // The connection was handed back: a write goes through afterwards.
    await db.insertInto('item').values({ id: 8, name: 'n8', owner_name: null }).execute();
    expect((await names(db)).length).toBe(8);
  });
});

describe('sqliteKysely: transactions', () => {
  test('commit keeps every write; an error rolls all of them back and is the error the caller sees', async () => {
    const db = await fresh();
    await db.transaction().execute(async (trx) => {
      await trx.insertInto('item').values({ id: 1, name: 'kept', owner_name: null }).execute();
      await trx.insertInto('item').values({ id: 2, name: 'kept too', owner_name: null }).execute();
    });
    const boom = new Error('handler failed half-way');
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.insertInto('item').values({ id: 3, name: 'lost', owner_name: null }).execute();
        await trx.updateTable('item').set({ name: 'changed' }).where('id', '=', 1).execute();
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(await names(db)).toEqual(['kept', 'kept too']);
    // A statement that fails inside the transaction rolls it back the same way.
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.insertInto('item').values({ id: 4, name: 'lost', owner_name: null }).execute();
        await trx.insertInto('item').values({ id: 1, name: 'duplicate key', owner_name: null }).execute();
      }),
    ).rejects.toThrow(/UNIQUE/);
    expect(await names(db)).toEqual(['kept', 'kept too']);
  });

  test('concurrent transactions never interleave, and nobody outside sees uncommitted rows', async () => {
    const db = await fresh();
    const log: string[] = [];
    const a = db.transaction().execute(async (trx) => {
      log.push('a begins');
      await trx.insertInto('item').values({ id: 1, name: 'from a', owner_name: null }).execute();
      await tick(20); // a transaction that spans real waiting, not just microtasks
      log.push('a ends');
      return trx.selectFrom('item').select('name').execute();
    });
    await tick(1);
    const outside = db
      .selectFrom('item')
      .select('name')
      .execute()
      .then((rows) => {
        log.push(`outside reads ${rows.length}`);
        return rows;
      });
    const b = db.transaction().execute(async (trx) => {
      log.push('b begins');
      const seen = await trx.selectFrom('item').select('name').execute();
      await trx.insertInto('item').values({ id: 2, name: 'from b', owner_name: null }).execute();
      log.push('b ends');
      return seen;
    });
    const [aSaw, outsideSaw, bSaw] = await Promise.all([a, outside, b]);
    expect(log).toEqual(['a begins', 'a ends', 'outside reads 1', 'b begins', 'b ends']);
    expect(aSaw.map((r) => r.name)).toEqual(['from a']);
    // The read waited for a's commit rather than seeing its rows half-way (or not at all).
    expect(outsideSaw.map((r) => r.name)).toEqual(['from a']);
    expect(bSaw.map((r) => r.name)).toEqual(['from a']);
    expect(await names(db)).toEqual(['from a', 'from b']);
  });

  test('a transaction that rolled back leaves nothing behind for the one waiting after it', async () => {
    const db = await fresh();
    const failing = db.transaction().execute(async (trx) => {
      await trx.insertInto('item').values({ id: 1, name: 'rolled back', owner_name: null }).execute();
      await tick(10);
      throw new Error('no');
    });
    const next = db.transaction().execute((trx) => trx.selectFrom('item').selectAll().execute());
    await expect(failing).rejects.toThrow('no');
    expect(await next).toEqual([]);
  });

  test('a transaction object used after it ended is refused instead of writing outside it', async () => {
    const db = await fresh();
    let escaped: Kysely<DB> | undefined;
    await db.transaction().execute(async (trx) => {
      escaped = trx;
      await trx.insertInto('item').values({ id: 1, name: 'a', owner_name: null }).execute();
    });
    await expect(escaped!.insertInto('item').values({ id: 2, name: 'late', owner_name: null }).execute()).rejects.toThrow();
    expect(await names(db)).toEqual(['a']);
  });

  test('savepoints roll back part of a controlled transaction', async () => {
    const db = await fresh();
    const trx = await db.startTransaction().execute();
    await trx.insertInto('item').values({ id: 1, name: 'kept', owner_name: null }).execute();
    const sp = await trx.savepoint('before_b').execute();
    await sp.insertInto('item').values({ id: 2, name: 'undone', owner_name: null }).execute();
    await sp.rollbackToSavepoint('before_b').execute();
    await trx.commit().execute();
    expect(await names(db)).toEqual(['kept']);
  });

  test('a pinned connection can run its own transaction (as the migrator does)', async () => {
    const db = await fresh();
    await db.connection().execute(async (conn) => {
      await conn.transaction().execute((trx) => trx.insertInto('item').values({ id: 1, name: 'a', owner_name: null }).execute());
      await conn.insertInto('item').values({ id: 2, name: 'b', owner_name: null }).execute();
    });
    expect(await names(db)).toEqual(['a', 'b']);
  });

  test('destroying the database refuses queries still waiting for the connection', async () => {
    const db = await fresh();
    let release!: () => void;
    const held = db.transaction().execute(() => new Promise<void>((r) => (release = r)));
    await tick(1);
    const waiting = db.selectFrom('item').selectAll().execute();
    const destroyed = db.destroy();
    await expect(waiting).rejects.toThrow(/closed/);
    release();
    await held.catch(() => undefined);
    await destroyed;
    open.splice(open.indexOf(db), 1);
  });
});

describe('StatementCache', () => {
  test('cached statements are prepared again by SQLite after the schema changes', async () => {
    const db = await fresh();
    await db.insertInto('item').values({ id: 1, name: 'a', owner_name: null }).execute();
    expect(await db.selectFrom('item').selectAll().execute()).toEqual([{ id: 1, name: 'a', owner_name: null }]);
    await sql`alter table item add column price integer not null default 5`.execute(db);
    // The same SQL text (and so the cached statement) now returns the new column.
    expect(await db.selectFrom('item').selectAll().execute()).toEqual([{ id: 1, name: 'a', owner_name: null, price: 5 }]);
    await sql`drop table item`.execute(db);
    await sql`create table item (id integer primary key, title text)`.execute(db);
    await sql`insert into item values (9, 't')`.execute(db);
    expect(await db.selectFrom('item').selectAll().execute()).toEqual([{ id: 9, title: 't' }]);
  });

  test('keeps the most recently used statements up to its size', () => {
    const sqlite = new Database(':memory:');
    const cache = new StatementCache(sqlite, 2);
    const one = cache.get('select 1');
    const two = cache.get('select 2');
    expect(cache.get('select 1')).toBe(one); // now the most recent
    cache.get('select 3'); // evicts "select 2", the least recently used
    expect(cache.cached).toBe(2);
    expect(cache.get('select 1')).toBe(one);
    expect(cache.get('select 2')).not.toBe(two);
    sqlite.close();
  });
});
