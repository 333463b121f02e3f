/**
 * PostgreSQL for the acceptance tests: whether a server is reachable, and dropping the
 * schemas a run created. Set EVOLITH_TEST_POSTGRES_URL to use another server.
 */
import { userInfo } from 'node:os';
import pg from 'pg';

export const DEFAULT_POSTGRES_URL = 'postgres://127.0.0.1:5432/test';

let resolvedUrl: string | undefined;

/** The URLs to try, in order. Without USER/PGUSER in the environment a URL needs a user name. */
function candidates(): string[] {
  const fromEnv = process.env.EVOLITH_TEST_POSTGRES_URL;
  if (fromEnv) return [fromEnv];
  const list = [DEFAULT_POSTGRES_URL, 'postgres://postgres@127.0.0.1:5432/test'];
  try {
    const me = userInfo().username;
    if (me) list.push(`postgres://${encodeURIComponent(me)}@127.0.0.1:5432/test`);
  } catch {
    /* no passwd entry */
  }
  return [...new Set(list)];
}

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * Resolves undefined when PostgreSQL answers (then `postgresUrl()` is the URL that worked),
 * or a reason string saying why it is not usable.
 */
export async function postgresAvailable(): Promise<string | undefined> {
  const reasons: string[] = [];
  for (const url of candidates()) {
    try {
      await withClient(url, async (c) => {
        await c.query('select 1');
        // The bookstore creates its own schemas: make sure we may.
        const { rows } = await c.query<{ ok: boolean }>(
          "select has_database_privilege(current_user, current_database(), 'CREATE') as ok",
        );
        if (!rows[0]?.ok) throw new Error(`user ${c.user} may not create schemas`);
      });
      resolvedUrl = url;
      return undefined;
    } catch (err) {
      reasons.push(`${redact(url)}: ${(err as Error).message}`);
    }
  }
  return `PostgreSQL not usable (${reasons.join('; ')})`;
}

/** The URL `postgresAvailable()` connected with. */
export function postgresUrl(): string {
  if (!resolvedUrl) throw new Error('call postgresAvailable() first (and check that it found a server)');
  return resolvedUrl;
}

/** Drops every schema whose name starts with `prefix`; returns the names dropped. */
export async function dropSchemas(prefix: string, url: string = postgresUrl()): Promise<string[]> {
  if (prefix.length < 4) throw new Error(`refusing to drop schemas by the short prefix "${prefix}"`);
  return withClient(url, async (c) => {
    const { rows } = await c.query<{ name: string }>(
      'select nspname as name from pg_namespace where left(nspname, length($1)) = $1',
      [prefix],
    );
    for (const { name } of rows) await c.query(`drop schema if exists "${name.replace(/"/g, '""')}" cascade`);
    return rows.map((r) => r.name);
  });
}

function redact(url: string): string {
  return url.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
}
