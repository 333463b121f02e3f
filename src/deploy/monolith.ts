import type { Logger } from 'pino';
import type { AppDefinition } from '../app/define.js';
import type { StorageProvider } from '../kernel/plugins.js';
import { Runtime } from '../kernel/runtime.js';
import { PrometheusTelemetry } from '../observe/telemetry.js';
import { PostgresStorage } from '../storage/postgres.js';
import { SqliteStorage } from '../storage/sqlite.js';
import { startEdge } from './edge.js';
import type { Topology } from './topology.js';

export interface RunningApp {
  readonly url: string;
  readonly architecture: string;
  /** What runs where, for the start-up banner. */
  readonly services: { name: string; location: string }[];
  readonly runtime: Runtime;
  stop(): Promise<void>;
}

export function storageFor(topology: Topology): StorageProvider {
  const s = topology.storage;
  if (s === 'sqlite' || s.driver === 'sqlite') return new SqliteStorage(topology.data);
  return new PostgresStorage({ connectionString: s.url, schemaPrefix: s.schemaPrefix, poolSize: s.poolSize });
}

/** Monolith: every service in this process; a call is a function call after validation. */
export async function runMonolith(app: AppDefinition, appDir: string, topology: Topology, log: Logger): Promise<RunningApp> {
  const telemetry = new PrometheusTelemetry({ collectDefault: true });
  const runtime = new Runtime({
    services: app.services,
    storage: storageFor(topology),
    telemetry,
    log,
    config: topology.config,
    policies: topology.policies,
    checkSerializable: topology.checkSerializable,
    drainMs: topology.drainMs,
  });
  await runtime.start();

  let edge;
  try {
    edge = await startEdge(app, appDir, topology, runtime, telemetry, log);
  } catch (err) {
    await runtime.stop();
    throw err;
  }
  const { gateway, port } = edge;
  let stopping: Promise<void> | undefined;
  return {
    url: `http://${topology.host}:${port}`,
    architecture: 'monolith',
    services: [...runtime.hosts.values()].map((h) => ({ name: h.name, location: h.store?.location ?? '-' })),
    runtime,
    stop: () =>
      (stopping ??= (async () => {
        // Stop taking requests and let in-flight ones finish, then drain the services.
        await gateway.close();
        await runtime.stop();
      })()),
  };
}
