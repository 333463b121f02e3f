/**
 * The backends a topology names: where services keep their data and how events travel. Each
 * is loaded only when the topology names it, so a process carries no driver it does not use.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Topology } from '../deploy/topology.js';
import { MemoryEventBus } from '../events/memory-bus.js';
import { sqlOutbox } from '../events/outbox.js';
import type { EventBus, Migrator, OutboxStore, StorageProvider } from '../kernel/plugins.js';
import { kyselyMigrator } from '../storage/migrate.js';

export async function storageFor(topology: Pick<Topology, 'storage' | 'data'>, poolSize?: number, log?: Logger): Promise<StorageProvider> {
  const s = topology.storage;
  if (s === 'sqlite' || s.driver === 'sqlite') {
    const { SqliteStorage } = await import('../storage/sqlite.js');
    return new SqliteStorage(topology.data);
  }
  const { PostgresStorage } = await import('../storage/postgres.js');
  return new PostgresStorage({
    connectionString: s.url,
    schemaPrefix: s.schemaPrefix,
    poolSize: poolSize ?? s.poolSize,
    connectTimeoutMs: s.connectTimeoutMs,
    startAttempts: s.startAttempts,
    startRetryMs: s.startRetryMs,
    log,
  });
}

/** The file of the embedded SQLite event bus. */
export function sqliteBusFile(topology: Pick<Topology, 'events' | 'data'>): string {
  const e = topology.events;
  return typeof e === 'object' && e.driver === 'sqlite' && e.file ? e.file : join(topology.data, 'events.sqlite');
}

export async function eventBusFor(topology: Topology, log: Logger): Promise<EventBus> {
  const e = topology.events;
  if (e === 'memory') return new MemoryEventBus();
  if (e === 'sqlite' || e.driver === 'sqlite') {
    const { SqliteEventBus } = await import('../events/sqlite-bus.js');
    return new SqliteEventBus(sqliteBusFile(topology), { log, synchronous: 'normal' });
  }
  const { NatsEventBus } = await import('../events/nats-bus.js');
  // The subject prefix follows the stream, so two apps on one server never claim the same subjects.
  return NatsEventBus.connect({ servers: e.url.replace(/^nats:\/\//, ''), stream: e.stream, prefix: e.stream.toLowerCase(), ackWaitMs: e.ackWaitMs, log });
}

/** The kernel's data plugins as every worker uses them: outbox and inbox tables, Kysely's migrator. */
export const dataPlugins: { outbox: OutboxStore; migrator: Migrator } = { outbox: sqlOutbox, migrator: kyselyMigrator };

/** Everything a single-process runtime needs besides its storage: for tests, benchmarks and scripts. */
export function inProcessPlugins(): { bus: EventBus; outbox: OutboxStore; migrator: Migrator } {
  return { bus: new MemoryEventBus(), ...dataPlugins };
}
