import { Migrator as KyselyMigrator, type Kysely, type Migration as KyselyMigration } from 'kysely';
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
    db,
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

/** Kysely's migrator, with its tracking tables in each service's own database. */
export const kyselyMigrator: Migrator = { migrate };
