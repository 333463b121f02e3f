/**
 * A pool runtime: a worker process started before any function needs it, with the app and
 * Evolith loaded and the backends' code imported, waiting on its IPC channel for the platform to
 * say which function it runs. Taking a role on then costs what is left of a start: opening the
 * service's stores, listening, registering — not Node's start nor loading the code.
 */
import { loadTopology, type TopologyOverrides } from '../topology.js';
import { SERVERLESS_ENV, TAKE_ON, type TakeOnMessage } from './instance.js';
import type { CredentialBundle } from '../../auth/credentials.js';
import type { AppDefinition } from '../../app/define.js';
import { createLogger } from '../../observe/logger.js';
import { prepareBackends, type PreparedBackends } from '../../worker/prepared-backends.js';

export interface Role {
  readonly group: string;
  readonly replica: number;
  readonly credentials: CredentialBundle;
  /** When the role arrived: the instance's initialisation is counted from here. */
  readonly startedAt: number;
  /** Every service's store opened, prepared and migrated, and the event bus open. */
  readonly backends: PreparedBackends;
}

export async function takeOn(app: AppDefinition, appDir: string, overrides: TopologyOverrides): Promise<Role> {
  const message = waitForRole();
  const backends = await warmUp(app, appDir, overrides);
  const m = await message;
  const startedAt = Date.now();
  process.env[SERVERLESS_ENV] = JSON.stringify(m.serverless);
  return { group: m.group, replica: m.replica, credentials: m.credentials, startedAt, backends };
}

function waitForRole(): Promise<TakeOnMessage> {
  return new Promise((resolve) => {
    const listener = (m: unknown) => {
      if ((m as TakeOnMessage | undefined)?.type !== TAKE_ON) return;
      process.off('message', listener);
      resolve(m as TakeOnMessage);
    };
    process.on('message', listener);
  });
}

/**
 * Does now what a start would do then and what does not depend on the function: imports the
 * drivers, opens, prepares and migrates every service's store, opens the bus.
 */
async function warmUp(app: AppDefinition, appDir: string, overrides: TopologyOverrides): Promise<PreparedBackends> {
  const topology = loadTopology(appDir, overrides);
  const sqliteStorage = topology.storage === 'sqlite' || topology.storage.driver === 'sqlite';
  const sqliteEvents = topology.events === 'sqlite' || (typeof topology.events === 'object' && topology.events.driver === 'sqlite');
  await Promise.all([
    sqliteStorage ? import('../../storage/sqlite.js') : import('../../storage/postgres.js'),
    sqliteEvents ? import('../../events/sqlite-bus.js') : topology.events === 'memory' ? undefined : import('../../events/nats-bus.js'),
    import('../microservices/envelope.js'),
    import('../../worker/worker.js'),
  ]);
  // The first HTTP server and the first fetch of a process pay for loading and compiling their
  // code (tens of ms each): pay it here, with nothing listening and nothing sent anywhere.
  const { default: Fastify } = await import('fastify');
  const http = Fastify({ logger: false });
  http.get('/', async () => ({ ok: true }));
  await http.inject({ method: 'GET', url: '/' });
  await http.close();
  await (await fetch('data:application/json,{}')).json();
  return prepareBackends(app, topology, createLogger({ app: app.name, process: 'pool' }));
}
