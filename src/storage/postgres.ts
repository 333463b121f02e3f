import { Kysely, PostgresDialect, sql } from 'kysely';
import { userInfo } from 'node:os';
import pg from 'pg';
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
}

/** libpq falls back to $USER for a URL without a user; a service started without one still connects. */
function withDefaultUser(connectionString: string): string {
  const url = new URL(connectionString);
  if (url.username || process.env.PGUSER || process.env.USER) return connectionString;
  url.username = userInfo().username;
  return url.toString();
}

/** PostgreSQL: one schema per service, reached through a pool whose search_path is that schema only. */
export class PostgresStorage implements StorageProvider {
  readonly name = 'postgres';
  constructor(private readonly options: PostgresStorageOptions) {}

  schemaFor(service: string): string {
    return `${this.options.schemaPrefix ?? ''}${service}`.replace(/[^a-zA-Z0-9_]/g, '_').toLowerCase();
  }

  async open(service: string): Promise<ServiceStore> {
    const schema = this.schemaFor(service);
    const connectionString = withDefaultUser(this.options.connectionString);
    const admin = new pg.Client({ connectionString });
    await admin.connect();
    try {
      await admin.query(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
    } finally {
      await admin.end();
    }
    const pool = new pg.Pool({
      connectionString,
      max: this.options.poolSize ?? 10,
      options: `-c search_path="${schema}"`,
      types,
    });
    const db = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
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
