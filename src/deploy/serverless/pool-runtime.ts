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
import type { Logger } from 'pino';
import { z } from 'zod';
import { DeploymentAuthority } from '../../auth/credentials.js';
import { InternalPlane } from '../../auth/internal-plane.js';
import { defineContract } from '../../contract/define.js';
import { newTrace } from '../../kernel/trace.js';
import { RpcServer } from '../../rpc/tcp-server.js';
import { TcpTransport } from '../../rpc/tcp-transport.js';
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
  const log = createLogger({ app: app.name, process: 'pool' });
  await warmRpc(log);
  return prepareBackends(app, topology, log);
}

const warmContract = defineContract({
  name: 'warm',
  version: '1.0.0',
  methods: { up: { input: z.object({ n: z.number() }), output: z.object({ n: z.number() }) } },
});

/**
 * One RPC connection and a few calls to itself over loopback, so that the first real caller
 * finds the accepting, handshake and framing code compiled. Both ends hold credentials of an
 * authority made here and dropped after, so nothing outside this process can use the listener
 * in the milliseconds it is open.
 */
async function warmRpc(log: Logger): Promise<void> {
  const authority = new DeploymentAuthority('pool-warm-up');
  const method = warmContract.methods.up;
  const server = new RpcServer({
    resolve: (service, name) => (service === 'warm' && name === 'up' ? { method, host: { handle: async (_m, input) => input } } : undefined),
    log: log.child({ component: 'warm-up' }, { level: 'warn' }),
    host: '127.0.0.1',
    plane: new InternalPlane(authority.issue({ sub: 'warm#0', svc: ['warm'], ins: ['warm-0'] })),
  });
  await server.listen();
  const tcp = new TcpTransport({ log, plane: new InternalPlane(authority.issue({ sub: 'edge#0', edge: true })) });
  try {
    for (let i = 0; i < 20; i++) await tcp.send(server.address!, method, { n: i }, { deadline: Date.now() + 1000, trace: newTrace() });
  } finally {
    await tcp.close();
    await server.close();
  }
}
