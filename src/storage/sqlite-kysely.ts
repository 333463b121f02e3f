import type Database from 'better-sqlite3';
import { Kysely, SqliteAdapter, SqliteDialect } from 'kysely';
import { SerialConnection } from './serial-connection.js';
import { SqliteExecutor } from './sqlite-executor.js';
import { SqliteLeaseDriver } from './sqlite-driver.js';
import { StatementCache } from './statement-cache.js';

/**
 * Kysely over one better-sqlite3 connection, with the same query builder, compiler, adapter and
 * introspection as Kysely's SQLite dialect, but statements run synchronously on a shared
 * connection (see {@link SerialConnection}) instead of through Kysely's asynchronous driver
 * path. Destroying the Kysely instance closes the database.
 */
/**
 * SQLite runs DDL inside transactions, and ours begin IMMEDIATE (the write lock is taken at
 * BEGIN). Saying so makes Kysely's migrator apply migrations in one such transaction, so
 * replicas that start together on a new file take turns: the first applies each migration and
 * the others wait, then find it applied. (Kysely's own SQLite adapter says no, since it assumes
 * one connection, and its migration lock then does nothing across processes.)
 */
class TransactionalDdlSqliteAdapter extends SqliteAdapter {
  override get supportsTransactionalDdl(): boolean {
    return true;
  }
}

export function sqliteKysely<DB>(sqlite: Database.Database): Kysely<DB> {
  const dialect = new SqliteDialect({ database: sqlite });
  const connection = new SerialConnection(new StatementCache(sqlite));
  return new Kysely<DB>({
    config: { dialect },
    dialect,
    driver: new SqliteLeaseDriver(connection),
    executor: new SqliteExecutor(dialect.createQueryCompiler(), new TransactionalDdlSqliteAdapter(), connection),
  });
}
