import { Kysely, PostgresDialect, sql, type PostgresCursor, type PostgresPool, type PostgresPoolClient } from 'kysely';
import { userInfo } from 'node:os';
import pg from 'pg';
import type { Logger } from 'pino';
import { UnavailableError } from '../kernel/errors.js';
import type { ServiceStore, StorageProvider } from '../kernel/plugins.js';

const INT8 = 20;
const NUMERIC = 1700;

// Counters and epoch milliseconds are int8; they fit a JS number for any real value.
const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === INT8 || oid === NUMERIC) return (v: string) => Number(v);
    return pg.types.getTypeParser(oid, format as 'text');
  },
};

export interface PostgresStorageOptions {
  connectionString: string;
  /** Prefix for each service's schema (`<prefix><service>`), so several apps can share a database. */
  schemaPrefix?: string;
  poolSize?: number;
  /** How long one attempt to connect may take before it counts as failed (default 5 s). */
  connectTimeoutMs?: number;
  /** Attempts to reach the database when a service's store is first opened (default 10). */
  startAttempts?: number;
  /** The wait between those attempts (default 1 s). */
  startRetryMs?: number;
  /** Where lost connections and start-up attempts are reported (one line each). */
  log?: Logger;
}

/** libpq falls back to $USER for a URL without a user; a service started without one still connects. */
function withDefaultUser(connectionString: string): string {
  const url = new URL(connectionString);
  if (url.username || process.env.PGUSER || process.env.USER) return connectionString;
  url.username = userInfo().username;
  return url.toString();
}

/** What pg's pool says when no connection came free within connectionTimeoutMillis. */
const POOL_EXHAUSTED = 'timeout exceeded when trying to connect';
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EHOSTUNREACH', 'EHOSTDOWN', 'ENETUNREACH', 'ENETDOWN', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN']);
const LOST_CONNECTION = /Connection terminated|timeout exceeded when trying to connect|encountered a connection error and is not queryable/;

/**
 * Whether `err` says the database could not be reached or the connection was lost (rather than
 * that a statement was wrong): network errors, SQLSTATE class 08 (connection exception), and
 * 57P01-57P03 (the server shut the connection down, crashed, or cannot take connections yet).
 */
export function isConnectionFailure(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const { code, message } = err as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && (NETWORK_CODES.has(code) || code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03')) return true;
  if (err instanceof AggregateError) return err.errors.some(isConnectionFailure);
  return typeof message === 'string' && LOST_CONNECTION.test(message);
}

/** One line for a log: the error's code and message, never the client object or a stack. */
function describe(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length) return describe(err.errors[0]);
  const { code, message } = (err ?? {}) as { code?: unknown; message?: unknown };
  const text = typeof message === 'string' && message ? message : String(err);
  return typeof code === 'string' && !text.includes(code) ? `${code} ${text}` : text;
}

function where(connectionString: string): string {
  const url = new URL(connectionString);
  return `${url.hostname}:${url.port || 5432}${url.pathname}`;
}

/**
 * The pg pool as Kysely sees it, made safe for a database that goes away: a connection the
 * server drops (idle or checked out) is reported in one line and replaced on next use instead of
 * taking the process down with an unhandled 'error' event; while the database cannot be reached,
 * a call fails at once with UnavailableError (503 with Retry-After at the edge) — one call at a
 * time tries to connect, the others do not wait for it — and the first successful connection
 * ends the outage.
 */
class GuardedPool implements PostgresPool {
  private down = false;
  private probing = false;
  private readonly lost = new WeakSet<pg.PoolClient>();
  private readonly wrapped = new WeakMap<pg.PoolClient, PostgresPoolClient>();

  constructor(
    private readonly pool: pg.Pool,
    private readonly schema: string,
    private readonly log: Logger | undefined,
  ) {
    // An idle client that fails is already removed by the pool, which then emits 'error'; the
    // client's own listener below reported it.
    pool.on('error', () => undefined);
    pool.on('connect', (client) => {
      client.on('error', (err) => {
        // A dropped connection emits twice (the server's message, then the socket's end).
        if (this.lost.has(client)) return;
        this.lost.add(client);
        this.log?.warn({ schema: this.schema, err: describe(err) }, 'PostgreSQL connection lost; it is replaced on next use');
      });
    });
  }

  private unavailable(cause: unknown): UnavailableError {
    return new UnavailableError(`the database is unreachable (${describe(cause)}); retry shortly`);
  }

  async connect(): Promise<PostgresPoolClient> {
    if (this.down && this.probing) throw new UnavailableError('the database is unreachable; retry shortly');
    const probe = this.down;
    if (probe) this.probing = true;
    try {
      for (let attempt = 0; ; attempt++) {
        let client: pg.PoolClient;
        try {
          client = await this.pool.connect();
        } catch (err) {
          // Every connection busy for the whole connect timeout: the database is up, but full.
          if ((err as Error)?.message === POOL_EXHAUSTED) throw new UnavailableError('no database connection came free in time; retry shortly');
          if (!isConnectionFailure(err)) throw err;
          if (!this.down) this.log?.warn({ schema: this.schema, err: describe(err) }, 'PostgreSQL unreachable; calls fail with 503 until it is back');
          this.down = true;
          throw this.unavailable(err);
        }
        if (this.down) this.log?.info({ schema: this.schema }, 'PostgreSQL reachable again');
        this.down = false;
        // A connection that died while idle in the pool, before the pool heard of it.
        const dead = this.lost.has(client) || (client as unknown as { _queryable?: boolean })._queryable === false;
        if (!dead) return this.wrap(client);
        client.release(true);
        if (attempt >= 3) throw this.unavailable(new Error('Connection terminated unexpectedly'));
      }
    } finally {
      if (probe) this.probing = false;
    }
  }

  private wrap(client: pg.PoolClient): PostgresPoolClient {
    let w = this.wrapped.get(client);
    if (w) return w;
    const query = (sqlOrCursor: string | PostgresCursor<unknown>, parameters?: ReadonlyArray<unknown>): unknown => {
      if (typeof sqlOrCursor !== 'string') return client.query(sqlOrCursor as never);
      return client.query(sqlOrCursor, parameters as unknown[]).catch((err: unknown) => {
        if (!isConnectionFailure(err)) throw err;
        this.lost.add(client);
        throw new UnavailableError(`the database connection was lost (${describe(err)}); retry shortly`);
      });
    };
    w = {
      query: query as PostgresPoolClient['query'],
      // A connection that failed is closed rather than handed to the next call.
      release: () => client.release(this.lost.has(client) ? true : undefined),
    };
    this.wrapped.set(client, w);
    return w;
  }

  end(): Promise<void> {
    return this.pool.end();
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** PostgreSQL: one schema per service, reached through a pool whose search_path is that schema only. */
export class PostgresStorage implements StorageProvider {
  readonly name = 'postgres';
  constructor(private readonly options: PostgresStorageOptions) {}

  schemaFor(service: string): string {
    return `${this.options.schemaPrefix ?? ''}${service}`.replace(/[^a-zA-Z0-9_]/g, '_').toLowerCase();
  }

  /**
   * Creates the service's schema, trying again while the database cannot be reached (one line
   * per failed attempt); after the last attempt, one UnavailableError that says so.
   */
  private async createSchema(connectionString: string, schema: string): Promise<void> {
    const attempts = Math.max(1, this.options.startAttempts ?? 10);
    const retryMs = this.options.startRetryMs ?? 1_000;
    for (let attempt = 1; ; attempt++) {
      const admin = new pg.Client({ connectionString, connectionTimeoutMillis: this.options.connectTimeoutMs ?? 5_000 });
      admin.on('error', () => undefined); // a drop after connect fails the query below
      try {
        await admin.connect();
        await admin.query(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
        return;
      } catch (err) {
        if (!isConnectionFailure(err)) throw err;
        if (attempt >= attempts) {
          throw new UnavailableError(`PostgreSQL at ${where(connectionString)} is unreachable (${describe(err)}); gave up after ${attempts} attempt${attempts === 1 ? '' : 's'}`);
        }
        this.options.log?.warn(`PostgreSQL at ${where(connectionString)} is unreachable (${describe(err)}), attempt ${attempt} of ${attempts}; retrying in ${retryMs} ms`);
        await sleep(retryMs);
      } finally {
        await admin.end().catch(() => undefined);
      }
    }
  }

  async open(service: string): Promise<ServiceStore> {
    const schema = this.schemaFor(service);
    const connectionString = withDefaultUser(this.options.connectionString);
    await this.createSchema(connectionString, schema);
    const pool = new pg.Pool({
      connectionString,
      max: this.options.poolSize ?? 10,
      options: `-c search_path="${schema}"`,
      connectionTimeoutMillis: this.options.connectTimeoutMs ?? 5_000,
      types,
    });
    const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: new GuardedPool(pool, schema, this.options.log) }) });
    await sql`select 1`.execute(db);
    const url = new URL(connectionString);
    url.password = '';
    return {
      db,
      dialect: 'postgres',
      schema,
      location: `${url.toString()} schema ${schema}`,
      close: () => db.destroy(),
    };
  }
}
