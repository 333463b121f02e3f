/**
 * Backends made ready before a worker knows which services it will host: what a serverless
 * pool runtime does while it waits. Every service's store of the app is opened, its outbox
 * tables prepared and its migrations applied; the event bus is opened. When the runtime takes a
 * function on, its services' stores are handed over as they are, the other stores are closed,
 * and the preparation is not repeated: in this process, a store once prepared and migrated
 * stays so (migrations come with the code, and this process runs one version of it).
 */
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { AppDefinition } from '../app/define.js';
import type { Topology } from '../deploy/topology.js';
import type { EventBus, Migrator, OutboxStore, ServiceStore, StorageProvider } from '../kernel/plugins.js';
import { dataPlugins, eventBusFor, storageFor } from './backends.js';

export interface PreparedBackends {
  readonly storage: StorageProvider;
  readonly bus: EventBus;
  readonly outbox: OutboxStore;
  readonly migrator: Migrator;
  /** Closes the stores of every service but `keep`. */
  release(keep: readonly string[]): Promise<void>;
}

export async function prepareBackends(app: AppDefinition, topology: Topology, log: Logger): Promise<PreparedBackends> {
  const inner = await storageFor(topology, undefined, log);
  const bus = await eventBusFor(topology, log);
  const prepared = new WeakSet<Kysely<any>>();
  const migrated = new WeakMap<Kysely<any>, Set<string>>();
  const outbox: OutboxStore = {
    ...dataPlugins.outbox,
    async prepare(db) {
      if (prepared.has(db)) return;
      await dataPlugins.outbox.prepare(db);
      prepared.add(db);
    },
  };
  const migrator: Migrator = {
    async migrate(db, service, migrations, schema) {
      if (migrated.get(db)?.has(service)) return [];
      const applied = await dataPlugins.migrator.migrate(db, service, migrations, schema);
      const done = migrated.get(db) ?? new Set<string>();
      done.add(service);
      migrated.set(db, done);
      return applied;
    },
  };
  const stores = new Map<string, ServiceStore>();
  for (const def of app.services) {
    const name = def.contract.name;
    const store = await inner.open(name);
    stores.set(name, store);
    await outbox.prepare(store.db);
    if (def.database) await migrator.migrate(store.db, name, def.database.migrations, store.schema);
  }
  const storage: StorageProvider = {
    name: inner.name,
    // A prepared store is handed over once; anything else opens as usual.
    open: async (service) => {
      const store = stores.get(service);
      if (!store) return inner.open(service);
      stores.delete(service);
      return store;
    },
  };
  return {
    storage,
    bus,
    outbox,
    migrator,
    async release(keep) {
      for (const [service, store] of [...stores]) {
        if (keep.includes(service)) continue;
        stores.delete(service);
        await store.close();
      }
    },
  };
}
