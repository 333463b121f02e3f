import type Database from 'better-sqlite3';

const DEFAULT_SIZE = 256;

/**
 * The most recently used prepared statements of one SQLite connection, by SQL text.
 *
 * Preparing costs more than running a small query, and an app sends the same few statements
 * again and again. A cached statement stays valid across schema changes: SQLite prepares it
 * again by itself when the schema it was compiled against changed.
 */
export class StatementCache {
  private readonly statements = new Map<string, Database.Statement>();

  constructor(
    readonly db: Database.Database,
    private readonly size = DEFAULT_SIZE,
  ) {}

  /** A statement for `sql`: the cached one, or a fresh one that is then kept. */
  get(sql: string): Database.Statement {
    let stmt = this.statements.get(sql);
    if (stmt) {
      // Moved to the most-recent end, so eviction drops the least recently used.
      this.statements.delete(sql);
    } else {
      stmt = this.db.prepare(sql);
      if (this.statements.size >= this.size) this.statements.delete(this.statements.keys().next().value!);
    }
    this.statements.set(sql, stmt);
    return stmt;
  }

  /** How many statements are kept (for tests and diagnostics). */
  get cached(): number {
    return this.statements.size;
  }

  clear(): void {
    this.statements.clear();
  }
}
