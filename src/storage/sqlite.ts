import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import type { ServiceStore, StorageProvider } from '../kernel/plugins.js';

/** Embedded default: one SQLite file per service under the app's data directory. */
export class SqliteStorage implements StorageProvider {
  readonly name = 'sqlite';
  readonly dir: string;
  constructor(dir: string) {
    this.dir = resolve(dir);
  }

  async open(service: string): Promise<ServiceStore> {
    mkdirSync(this.dir, { recursive: true });
    const file = join(this.dir, `${service}.sqlite`);
    const sqlite = new Database(file);
    // WAL lets readers run beside the writer; the busy timeout rides out a checkpoint;
    // synchronous=NORMAL in WAL mode never corrupts and loses at most the last commits on power loss.
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('busy_timeout = 5000');
    sqlite.pragma('foreign_keys = ON');
    sqlite.pragma('synchronous = NORMAL');
    const db = new Kysely<any>({ dialect: new SqliteDialect({ database: new StatementCache(sqlite) }) });
    return {
      db,
      dialect: 'sqlite',
      location: file,
      close: () => db.destroy(),
    };
  }
}

const CACHE_SIZE = 256;

/**
 * Kysely prepares every query it runs; preparing costs more than running a small query, and
 * an app sends the same few statements again and again. This keeps the most recent ones.
 * Reuse is safe because Kysely's SQLite driver runs one query at a time per connection.
 */
class StatementCache {
  private readonly statements = new Map<string, Database.Statement>();
  constructor(private readonly db: Database.Database) {}

  prepare(sql: string): Database.Statement {
    // Several processes (replicas) may share a service's file. A deferred transaction that reads
    // and then writes can fail at once with SQLITE_BUSY when another writer got there first (the
    // busy timeout cannot help a lock upgrade); taking the write lock at BEGIN waits instead.
    if (sql === 'begin') sql = 'begin immediate';
    let stmt = this.statements.get(sql);
    if (stmt) {
      // Move to the most-recent end so eviction drops the least recently used.
      this.statements.delete(sql);
    } else {
      stmt = this.db.prepare(sql);
      if (this.statements.size >= CACHE_SIZE) this.statements.delete(this.statements.keys().next().value!);
    }
    this.statements.set(sql, stmt);
    return stmt;
  }

  close(): void {
    this.statements.clear();
    this.db.close();
  }
}
