/** The backends a topology names: where services keep their data and how events travel. */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Topology } from '../deploy/topology.js';
import { MemoryEventBus } from '../events/memory-bus.js';
import { NatsEventBus } from '../events/nats-bus.js';
import { sqlOutbox } from '../events/outbox.js';
import { SqliteEventBus } from '../events/sqlite-bus.js';
import type { EventBus, Migrator, OutboxStore, StorageProvider } from '../kernel/plugins.js';
import { kyselyMigrator } from '../storage/migrate.js';
import { PostgresStorage } from '../storage/postgres.js';
import { SqliteStorage } from '../storage/sqlite.js';

export function storageFor(topology: Topology): StorageProvider {
  const s = topology.storage;
  if (s === 'sqlite' || s.driver === 'sqlite') return new SqliteStorage(topology.data);
  return new PostgresStorage({ connectionString: s.url, schemaPrefix: s.schemaPrefix, poolSize: s.poolSize });
}

export async function eventBusFor(topology: Topology, log: Logger): Promise<EventBus> {
  const e = topology.events;
  if (e === 'memory') return new MemoryEventBus();
  if (e === 'sqlite' || e.driver === 'sqlite') {
    const file = typeof e === 'object' && e.file ? e.file : join(topology.data, 'events.sqlite');
    return new SqliteEventBus(file, { log, synchronous: 'normal' });
  }
  // The subject prefix follows the stream, so two apps on one server never claim the same subjects.
  return NatsEventBus.connect({ servers: e.url.replace(/^nats:\/\//, ''), stream: e.stream, prefix: e.stream.toLowerCase(), log });
}

/** The kernel's data plugins as every worker uses them: outbox and inbox tables, Kysely's migrator. */
export const dataPlugins: { outbox: OutboxStore; migrator: Migrator } = { outbox: sqlOutbox, migrator: kyselyMigrator };

/** Everything a single-process runtime needs besides its storage: for tests, benchmarks and scripts. */
export function inProcessPlugins(): { bus: EventBus; outbox: OutboxStore; migrator: Migrator } {
  return { bus: new MemoryEventBus(), ...dataPlugins };
}
