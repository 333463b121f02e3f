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
  private readonly statements = new Map<string, { stmt: Database.Statement; used: number }>();
  private clock = 0;

  constructor(
    readonly db: Database.Database,
    private readonly size = DEFAULT_SIZE,
  ) {}

  /** A statement for `sql`: the cached one, or a fresh one that is then kept. */
  get(sql: string): Database.Statement {
    const hit = this.statements.get(sql);
    if (hit) {
      // A use stamp rather than re-inserting the entry: a hit is the common case and stays one lookup.
      hit.used = ++this.clock;
      return hit.stmt;
    }
    const stmt = this.db.prepare(sql);
    if (this.statements.size >= this.size) this.evictLeastRecentlyUsed();
    this.statements.set(sql, { stmt, used: ++this.clock });
    return stmt;
  }

  /** How many statements are kept (for tests and diagnostics). */
  get cached(): number {
    return this.statements.size;
  }

  clear(): void {
    this.statements.clear();
  }

  private evictLeastRecentlyUsed(): void {
    let oldest: string | undefined;
    let stamp = Infinity;
    for (const [sql, e] of this.statements) {
      if (e.used < stamp) {
        stamp = e.used;
        oldest = sql;
      }
    }
    if (oldest !== undefined) this.statements.delete(oldest);
  }
}
