import { sql, type Kysely } from 'evolith';

/**
 * Integer ids that work the same on SQLite and PostgreSQL.
 *
 * Auto-increment is spelled differently by each dialect (`integer primary key autoincrement`
 * against identity or serial columns) and a migration is not told which one it runs on, so a
 * service keeps one counter row per table and bumps it with an upsert (`insert … on conflict
 * do update … returning`), which both dialects run unchanged. Called inside the transaction
 * that inserts the row, an id is never handed out twice and a rollback at worst leaves a gap.
 * On PostgreSQL the bump locks the counter row until commit, so inserts into one table queue
 * behind each other for the length of a short transaction.
 */
export interface IdCounterTable {
  name: string;
  last_id: number;
}

export async function createIdCounterTable(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('id_counter')
    .addColumn('name', 'varchar(50)', (c) => c.primaryKey())
    .addColumn('last_id', 'integer', (c) => c.notNull())
    .execute();
}

export async function nextId(db: Kysely<any>, name: string): Promise<number> {
  // Written as SQL rather than with the query builder: every insert of every service takes an
  // id, and building this upsert (its conflict clause and update expression) cost more than
  // running it on SQLite.
  const { rows } = await sql<IdCounterTable>`insert into id_counter (name, last_id) values (${name}, 1)
    on conflict (name) do update set last_id = id_counter.last_id + 1
    returning last_id`.execute(db);
  return Number(rows[0]!.last_id);
}

/**
 * Takes ids 1..count for demo data, but only if this counter never handed out an id: true means
 * the table is fresh and the caller may insert rows with those ids. A concurrent first start
 * waits on the counter's key and then gets false, so demo data is never seeded twice.
 */
export async function claimFirstIds(db: Kysely<any>, name: string, count: number): Promise<boolean> {
  const r = await db
    .insertInto('id_counter')
    .values({ name, last_id: count })
    .onConflict((oc) => oc.column('name').doNothing())
    .executeTakeFirst();
  return Number(r.numInsertedOrUpdatedRows ?? 0n) > 0;
}
