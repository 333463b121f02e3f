import type Database from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
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
export function sqliteKysely<DB>(sqlite: Database.Database): Kysely<DB> {
  const dialect = new SqliteDialect({ database: sqlite });
  const connection = new SerialConnection(new StatementCache(sqlite));
  return new Kysely<DB>({
    config: { dialect },
    dialect,
    driver: new SqliteLeaseDriver(connection),
    executor: new SqliteExecutor(dialect.createQueryCompiler(), dialect.createAdapter(), connection),
  });
}
