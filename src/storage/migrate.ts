import { Migrator as KyselyMigrator, sql, type DatabaseIntrospector, type Kysely, type Migration as KyselyMigration, type TableMetadata } from 'kysely';
import type { Migrator } from '../kernel/plugins.js';
import type { Migration } from '../kernel/service.js';
import { ConfigError } from '../kernel/errors.js';

/** Applies a service's migrations in name order; each runs once, tracked in the service's own database. */
export async function migrate(
  db: Kysely<any>,
  service: string,
  migrations: Readonly<Record<string, Migration>>,
  schema?: string,
): Promise<string[]> {
  const provided: Record<string, KyselyMigration> = {};
  for (const [name, up] of Object.entries(migrations)) provided[name] = { up };
  const migrator = new KyselyMigrator({
    db: schema ? withSchemaIntrospection(db, schema) : db,
    provider: { getMigrations: async () => provided },
    migrationTableName: 'evolith_migration',
    migrationLockTableName: 'evolith_migration_lock',
    // On PostgreSQL the tracking tables live in the service's own schema; otherwise the
    // migrator finds another service's tables through the search path and skips creating them.
    ...(schema ? { migrationTableSchema: schema } : {}),
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName;
    throw new ConfigError(`migration ${failed ?? '(unknown)'} of service ${service} failed: ${(error as Error).message ?? error}`, {
      cause: String(error),
    });
  }
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}

/**
 * `db`, whose introspection sees one schema only. Kysely's migrator asks whether its tracking
 * tables exist by listing every table of every schema, and that catalogue read fails ("schema …
 * does not exist") when another client drops a schema meanwhile — another service's, another
 * deployment's on a shared server — so the service failed to start. The migrator only needs to
 * know about the service's own schema.
 */
function withSchemaIntrospection(db: Kysely<any>, schema: string): Kysely<any> {
  const introspection: DatabaseIntrospector = {
    async getSchemas() {
      const { rows } = await sql<{ name: string }>`select nspname as name from pg_catalog.pg_namespace where nspname = ${schema}`.execute(db);
      return rows;
    },
    async getTables(): Promise<TableMetadata[]> {
      const { rows } = await sql<{ name: string; type: string }>`select table_name as name, table_type as type from information_schema.tables where table_schema = ${schema}`.execute(db);
      return rows.map((r) => ({ name: r.name, schema, isView: r.type === 'VIEW', columns: [] }));
    },
    async getMetadata() {
      return { tables: await this.getTables() };
    },
  };
  // Kysely keeps its state in private fields: its methods must run on the instance itself.
  return new Proxy(db, {
    get(target, property) {
      if (property === 'introspection') return introspection;
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/** Kysely's migrator, with its tracking tables in each service's own database. */
export const kyselyMigrator: Migrator = { migrate };
