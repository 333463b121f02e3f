import type { CompiledQuery, DatabaseConnection, QueryResult } from 'kysely';
import type { StatementCache } from './statement-cache.js';

/** The SQL and parameters of a compiled query: all a statement needs to run. */
export interface SqlText {
  readonly sql: string;
  readonly parameters: ReadonlyArray<unknown>;
}

/** Runs one statement now, on the calling thread, and shapes its result as Kysely's SQLite driver does. */
export function runStatement<R>(statements: StatementCache, query: SqlText): QueryResult<R> {
  const stmt = statements.get(query.sql);
  const params = query.parameters as unknown[];
  if (stmt.reader) return { rows: stmt.all(params) as R[] };
  const { changes, lastInsertRowid } = stmt.run(params);
  return { numAffectedRows: BigInt(changes), insertId: BigInt(lastInsertRowid), rows: [] };
}

function settled<T>(work: () => T): Promise<T> {
  try {
    return Promise.resolve(work());
  } catch (err) {
    return Promise.reject(err);
  }
}

type Waiter =
  | { readonly query: SqlText; readonly resolve: (r: QueryResult<unknown>) => void; readonly reject: (e: unknown) => void }
  | { readonly query: undefined; readonly resolve: (lease: ConnectionLease) => void; readonly reject: (e: unknown) => void };

/**
 * One better-sqlite3 connection shared by every query of a service's store, one user at a time.
 *
 * better-sqlite3 runs a statement to completion before it returns, so a single query needs the
 * connection only for that call: while nobody holds it, a query runs at once, with no lock
 * to take and no promise to wait for. A transaction spans awaits, so it holds the connection
 * through a lease; queries and leases that arrive meanwhile wait in arrival order and never see
 * the transaction's uncommitted rows. This is the exclusion Kysely's own SQLite driver gets from
 * its connection mutex, without the mutex's round trips through the microtask queue.
 */
export class SerialConnection {
  private holder: ConnectionLease | undefined;
  private readonly waiting: Waiter[] = [];
  private closed = false;

  constructor(readonly statements: StatementCache) {}

  /** True while a lease (a transaction or a pinned connection) holds the connection. */
  get busy(): boolean {
    return this.holder !== undefined;
  }

  /** Whether `lease` is the one holding the connection now. */
  holds(lease: ConnectionLease): boolean {
    return this.holder === lease;
  }

  /** Runs a query now if the connection is free, otherwise after everyone who came first. */
  execute<R>(query: SqlText): Promise<QueryResult<R>> {
    if (this.closed) return Promise.reject(new Error('the database is closed'));
    if (this.holder === undefined) return settled(() => runStatement<R>(this.statements, query));
    return new Promise<QueryResult<R>>((resolve, reject) => {
      this.waiting.push({ query, resolve: resolve as (r: QueryResult<unknown>) => void, reject });
    });
  }

  /** The connection for exclusive use until {@link release}: free at once, or after everyone who came first. */
  acquire(): Promise<ConnectionLease> {
    if (this.closed) return Promise.reject(new Error('the database is closed'));
    if (this.holder === undefined) return Promise.resolve(this.grant());
    return new Promise<ConnectionLease>((resolve, reject) => {
      this.waiting.push({ query: undefined, resolve, reject });
    });
  }

  /** Ends a lease and serves the queue: waiting queries run until the next lease takes over. */
  release(lease: ConnectionLease): void {
    if (this.holder !== lease) return;
    this.holder = undefined;
    while (this.holder === undefined && this.waiting.length > 0) {
      const next = this.waiting.shift()!;
      if (next.query === undefined) {
        next.resolve(this.grant());
      } else {
        try {
          next.resolve(runStatement(this.statements, next.query));
        } catch (err) {
          next.reject(err);
        }
      }
    }
  }

  /** Acquires, hands the lease to `consumer`, and releases once its promise settles. */
  async provideConnection<T>(consumer: (connection: DatabaseConnection) => Promise<T>): Promise<T> {
    const lease = await this.acquire();
    try {
      return await consumer(lease);
    } finally {
      this.release(lease);
    }
  }

  /** Refuses everything still waiting and closes the database. */
  close(): void {
    this.closed = true;
    for (const w of this.waiting.splice(0)) w.reject(new Error('the database was closed'));
    this.statements.clear();
    this.statements.db.close();
  }

  private grant(): ConnectionLease {
    const lease = new ConnectionLease(this);
    this.holder = lease;
    return lease;
  }
}

/**
 * The connection as one transaction (or pinned block) holds it. Its queries run at once; once
 * the lease is released, using it is an error rather than a query outside the transaction.
 */
export class ConnectionLease implements DatabaseConnection {
  constructor(private readonly owner: SerialConnection) {}

  /** Still holding the connection. */
  get active(): boolean {
    return this.owner.holds(this);
  }

  /** Whether SQLite has a transaction open on the connection (it ends one by itself after some errors). */
  get inTransaction(): boolean {
    return this.owner.statements.db.inTransaction;
  }

  executeQuery<R>(query: CompiledQuery): Promise<QueryResult<R>> {
    return settled(() => this.run<R>(query));
  }

  /** Runs a query now; throws if the lease has ended. */
  run<R>(query: SqlText): QueryResult<R> {
    if (!this.active) throw new Error('this connection was already released: its transaction or connection block has ended');
    return runStatement<R>(this.owner.statements, query);
  }

  /** Runs a statement without parameters (transaction control). */
  exec(sql: string): void {
    this.run({ sql, parameters: [] });
  }

  async *streamQuery<R>(query: CompiledQuery, chunkSize = 100): AsyncIterableIterator<QueryResult<R>> {
    if (!this.active) throw new Error('this connection was already released: its transaction or connection block has ended');
    // A statement of its own: the cached one may be needed by other queries while this one is paused mid-way.
    const stmt = this.owner.statements.db.prepare(query.sql);
    if (!stmt.reader) throw new Error('only queries that return rows can be streamed');
    let rows: R[] = [];
    for (const row of stmt.iterate(query.parameters as unknown[])) {
      rows.push(row as R);
      if (rows.length >= chunkSize) {
        yield { rows };
        rows = [];
      }
    }
    if (rows.length > 0) yield { rows };
  }
}
