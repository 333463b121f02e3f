import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { AppDefinition } from '../app/define.js';
import { createJwtAuthenticator } from '../auth/jwt-authenticator.js';
import { openApiDocument } from '../contract/schema.js';
import { createGateway } from '../edge/gateway.js';
import { ConfigError } from '../kernel/errors.js';
import type { StorageProvider } from '../kernel/plugins.js';
import { Runtime } from '../kernel/runtime.js';
import { PrometheusTelemetry } from '../observe/telemetry.js';
import { PostgresStorage } from '../storage/postgres.js';
import { SqliteStorage } from '../storage/sqlite.js';
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

  const edgeAuth = app.edge?.auth;
  const authenticator = edgeAuth
    ? createJwtAuthenticator({
        fetchJwks: async () => (await runtime.invoke(edgeAuth.jwks, {}, undefined, undefined)) as never,
        issuer: edgeAuth.issuer,
        audience: edgeAuth.audience,
      })
    : undefined;
  const gateway = await createGateway({
    app,
    appDir,
    invoke: (method, input, root) => runtime.invoke(method, input, undefined, root),
    authenticator,
    log,
    bodyLimit: topology.edge.bodyLimit,
    extras: (server) => {
      server.get('/metrics', async (_req, reply) => reply.type('text/plain; version=0.0.4').send(await telemetry.metrics()));
      server.get('/openapi.json', async () => openApiDocument(app));
    },
  });
  try {
    await gateway.listen({ port: topology.port, host: topology.host });
  } catch (err) {
    await runtime.stop();
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new ConfigError(`port ${topology.port} on ${topology.host} is already in use; stop whatever holds it or choose another with --port`);
    }
    throw err;
  }
  const address = gateway.server.address() as AddressInfo;
  let stopping: Promise<void> | undefined;
  return {
    url: `http://${topology.host}:${address.port}`,
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
