import { dirname, extname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { AppDefinition } from '../../app/define.js';
import { DeploymentAuthority } from '../../auth/credentials.js';
import { RegistryServer, requireOperator } from '../../discovery/registry-server.js';
import { ConfigError } from '../../kernel/errors.js';
import { buildBundle } from '../bundle.js';
import type { RunningDeployment } from '../deployer.js';
import { claimDataDir, type ClaimedDataDir } from '../deployment-record.js';
import { assertPortFree } from '../port.js';
import { Supervisor, type ProcessStatus } from '../supervisor.js';
import { FATAL_EXIT } from './worker-process-exit.js';
import { CREDENTIAL_TTL_MS, CREDENTIALS, RENEWAL, type CredentialsMessage, type RenewalMessage } from './credentials-channel.js';
import { serviceGroups, type ServiceGroup } from './groups.js';
import { prettyLineFormatter, prettyLogs } from '../../observe/logger.js';
import { watchTopology, type Topology, type TopologyOverrides, type TopologyWatch } from '../topology.js';
import { MESH_INSTANCE_ENV } from '../mesh/envelope.js';
import type { MeshControl } from '../mesh/mesh-control.js';
import type { ServerlessPlatform } from '../serverless/platform.js';
import { SERVERLESS_ENV, TAKE_ON, type TakeOnMessage } from '../serverless/instance.js';

/** A function instance reports four times a second; one silent this long is taken out of discovery. */
const SERVERLESS_INSTANCE_TTL_MS = 10_000;

/** The worker process's entry, bundled with the app before any worker starts. */
const here = fileURLToPath(import.meta.url);
const workerEntry = resolve(dirname(here), `worker-process${extname(here)}`);
/** A mesh proxy's entry: Evolith's own code, without the app. */
const proxyEntry = resolve(dirname(here), '..', '..', 'mesh', `proxy-process${extname(here)}`);

export interface ControlPlaneOptions {
  readyTimeoutMs?: number;
  /** Mesh: the proxies, certificates and traffic policy beside the workers. */
  mesh?: MeshControl;
  /** Serverless: instances on demand, the pool, the autoscaler, wake-ups and metering. */
  serverless?: ServerlessPlatform;
}

/**
 * Microservices on one machine: this process is the control plane (registry, supervisor and
 * configuration watcher); each service group runs in its own processes, with the replicas the
 * topology asks for, and the edge gateway runs in another.
 */
export async function runMicroservices(
  app: AppDefinition,
  appDir: string,
  topology: Topology,
  overrides: TopologyOverrides,
  log: Logger,
  options: ControlPlaneOptions = {},
): Promise<RunningDeployment & { readonly registryUrl: string }> {
  const architecture = options.mesh ? 'mesh' : options.serverless ? 'serverless' : 'microservices';
  const base = serviceGroups(app, topology);
  const groups = options.mesh ? options.mesh.groups(base) : options.serverless ? options.serverless.groups(base) : base;
  // Refused at once, naming the cause, rather than after a worker tried and failed.
  await assertPortFree(topology.host, topology.port);
  const claim = claimDataDir({
    architecture,
    dataDir: topology.data,
    appDir,
    events: { data: topology.data, storage: topology.storage, events: topology.events, services: app.services.map((s) => s.contract.name) },
  });
  try {
    return await start(app, appDir, topology, overrides, log, options, groups, claim);
  } catch (err) {
    claim.release();
    throw err;
  }
}

async function start(
  app: AppDefinition,
  appDir: string,
  topology: Topology,
  overrides: TopologyOverrides,
  log: Logger,
  options: ControlPlaneOptions,
  initialGroups: ServiceGroup[],
  claim: ClaimedDataDir,
): Promise<RunningDeployment & { readonly registryUrl: string }> {
  let groups = initialGroups;
  const mesh = options.mesh;
  const serverless = options.serverless;
  const architecture = mesh ? 'mesh' : serverless ? 'serverless' : 'microservices';
  const bundle = await buildBundle(appDir, workerEntry, 'worker', { loadFailureExit: FATAL_EXIT });
  const proxyBundle = mesh ? await buildBundle(appDir, proxyEntry, 'mesh-proxy', { withApp: false }) : undefined;
  // The deployment's authority: every process gets a credential signed by it, and nothing on
  // the internal plane (registry, RPC, interop) answers a caller without one.
  const authority = new DeploymentAuthority();
  // The credential each running process was last given, renewed while it runs.
  const tokens = new Map<string, string>();
  // A worker that cannot start (exit code FATAL_EXIT) is not restarted: while the deployment
  // starts, that fails the whole start with its reason; later, it is reported and left down.
  let failed: ProcessStatus | undefined;
  const supervisor = new Supervisor({
    // Workers always log JSON to their pipe; a terminal sees it as readable lines.
    formatLine: prettyLogs() ? prettyLineFormatter() : undefined,
    onChange: (p) => {
      if (p.state === 'stopped' || p.state === 'failed' || p.state === 'exited') tokens.delete(Supervisor.key(p.name, p.replica));
      serverless?.onChange(p);
      if (p.state === 'failed') {
        failed ??= p;
        log.error({ process: Supervisor.key(p.name, p.replica), output: p.lastLines }, 'a worker cannot start and is not restarted');
      }
    },
    onMessage: mesh
      ? (name, replica, message) => mesh.onMessage(name, replica, message)
      : serverless
        ? (name, replica, message) => serverless.onMessage(name, replica, message)
        : undefined,
  });
  const registry = new RegistryServer({
    trust: authority.trust,
    log: log.child({ component: 'registry' }),
    // A registry that restarts under running instances merges what it hears for a while; this
    // one starts with its deployment, and serverless instances go within seconds of starting:
    // their removal must reach callers at once.
    ...(serverless && { warmupMs: 0 }),
  });
  // The control plane's own view beside the registry's: processes, pids, restarts (operators only).
  registry.app.get('/processes', async (req) => {
    requireOperator(req);
    return { processes: supervisor.status() };
  });
  if (serverless) {
    // The functions: instances coming and going, decisions, kills; and what they cost.
    registry.app.get('/functions', async (req) => {
      requireOperator(req);
      return serverless.status();
    });
    registry.app.get('/metering', async (req) => {
      requireOperator(req);
      return serverless.metering();
    });
    registry.app.get('/metrics', async (req, reply) => {
      requireOperator(req);
      return reply.type('text/plain; version=0.0.4').send(await serverless.metrics());
    });
  }
  if (mesh) {
    // The mesh's view: each proxy's identities, certificate expiry and policy version.
    registry.app.get('/mesh', async (req) => {
      requireOperator(req);
      return mesh.status();
    });
  }
  await registry.listen(0, topology.internalHost);
  const registryUrl = registry.url!;
  const env = { EVOLITH_TOPOLOGY_OVERRIDES: JSON.stringify(overrides), EVOLITH_LOG_FORMAT: 'json' };
  const servicesOf = (group: string) => groups.find((g) => g.name === group)?.services ?? [];
  /** Issues a process's credential (at each start) and remembers it for renewal. */
  const credentialsFor = (group: string, replica: number) => {
    const key = Supervisor.key(group, replica);
    const svc = group === 'edge' ? [] : servicesOf(group);
    const bundle = authority.issue(
      { sub: key, svc, ins: group === 'edge' ? [`edge-${replica}`] : svc.map((s) => `${s}-${replica}`), edge: group === 'edge' },
      CREDENTIAL_TTL_MS,
    );
    tokens.set(key, bundle.token);
    return bundle;
  };
  const workerArgs = (role: string[]) => [
    // A small young generation: an idle worker keeps tens of MB less (see the README's figures).
    '--max-semi-space-size=2',
    bundle,
    '--app-dir',
    appDir,
    '--registry',
    registryUrl,
    ...role,
  ];
  // In a mesh, each worker is told where its proxy is (and its proxy is started) first.
  const spawnWorker = async (group: string, replica: number, extra: { env?: Record<string, string>; memoryLimitMb?: number; restart?: boolean } = {}) => {
    const own = group === 'edge' ? 'edge' : groups.find((g) => g.name === group)!;
    const placeInMesh: Record<string, string> = mesh ? { [MESH_INSTANCE_ENV]: JSON.stringify(await mesh.addInstance(own, replica)) } : {};
    const inServerless: Record<string, string> = serverless && group === 'edge' ? { [SERVERLESS_ENV]: JSON.stringify(serverless.role()) } : {};
    supervisor.start({
      name: group,
      replica,
      command: process.execPath,
      args: workerArgs([...(group === 'edge' ? ['--edge'] : ['--group', group]), '--replica', String(replica)]),
      env: { ...env, ...placeInMesh, ...inServerless, ...extra.env },
      fatalExitCode: FATAL_EXIT,
      ...(extra.memoryLimitMb !== undefined && { memoryLimitMb: extra.memoryLimitMb }),
      ...(extra.restart !== undefined && { restart: extra.restart }),
      message: (): CredentialsMessage => ({ type: CREDENTIALS, bundle: credentialsFor(group, replica) }),
    });
  };
  const stopWorker = async (group: string, replica: number) => {
    await supervisor.stop(group, replica);
    await mesh?.removeInstance(group, replica);
  };
  mesh?.begin(
    {
      startProxy: (name, replica, holder, start) =>
        supervisor.start({
          name,
          replica,
          command: process.execPath,
          args: ['--max-semi-space-size=2', proxyBundle!],
          env: { EVOLITH_LOG_FORMAT: 'json' },
          message: () => {
            const credentials = authority.issue(holder, CREDENTIAL_TTL_MS);
            tokens.set(Supervisor.key(name, replica), credentials.token);
            return start(credentials);
          },
        }),
      stopProxy: (name, replica) => supervisor.stop(name, replica),
      send: (name, replica, message) => supervisor.send(name, replica, message),
    },
    registryUrl,
  );
  if (serverless) {
    // The platform starts the functions' instances (and its pool) itself, now and on demand.
    serverless.begin({
      spawnInstance: (group, replica, instanceEnv, memoryLimitMb) => void spawnWorker(group, replica, { env: instanceEnv, memoryLimitMb, restart: false }),
      spawnPool: (replica) =>
        supervisor.start({
          name: 'pool',
          replica,
          command: process.execPath,
          args: workerArgs(['--pool']),
          env,
          fatalExitCode: FATAL_EXIT,
          restart: false,
        }),
      takeOn: (poolReplica, group, replica, role, memoryLimitMb) => {
        supervisor.reassign({ name: 'pool', replica: poolReplica }, { name: group, replica, memoryLimitMb });
        const credentials = credentialsFor(group, replica);
        supervisor.send(group, replica, { type: TAKE_ON, group, replica, credentials, serverless: role } satisfies TakeOnMessage);
      },
      stop: (name, replica) => supervisor.stop(name, replica),
      send: (name, replica, message) => supervisor.send(name, replica, message),
      register: (owner, instances) => {
        for (const i of instances) {
          if (!registry.registry.heartbeat(i.id, owner)) registry.registry.register({ ...i, owner, ttlMs: SERVERLESS_INSTANCE_TTL_MS, ready: true });
        }
      },
      deregister: (owner, ids) => {
        for (const id of ids) registry.registry.deregister(id, owner);
      },
    });
  } else {
    for (const g of groups) for (let r = 0; r < g.replicas; r++) await spawnWorker(g.name, r);
  }
  await spawnWorker('edge', 0);
  // Renew every running process's credential long before it lapses.
  const renewals = setInterval(() => {
    for (const [key, token] of tokens) {
      const [name, replica] = [key.slice(0, key.lastIndexOf('#')), Number(key.slice(key.lastIndexOf('#') + 1))];
      const renewed = authority.renew(token, CREDENTIAL_TTL_MS);
      tokens.set(key, renewed);
      supervisor.send(name, replica, { type: RENEWAL, token: renewed } satisfies RenewalMessage);
    }
  }, CREDENTIAL_TTL_MS / 3);
  renewals.unref();

  let watch: TopologyWatch | undefined;
  const stopAll = async () => {
    clearInterval(renewals);
    watch?.close();
    // The edge first, so that no new request starts; then the services, which drain their calls.
    await supervisor.stop('edge', 0);
    await supervisor.stopAll();
    await registry.close();
    await mesh?.stop();
    await serverless?.stop();
    claim.release();
  };

  let url: string;
  try {
    url = await waitUntilReady(registry, groups, options.readyTimeoutMs ?? 60_000, (line) => process.stdout.write(line + '\n'), () => failed, () => mesh?.waitingFor() ?? []);
  } catch (err) {
    await stopAll();
    throw err;
  }
  serverless?.serve();

  // Live topology: replica counts are reconciled here; timeouts and retries reach the running
  // processes through their own watch of the same file.
  watch = watchTopology(
    appDir,
    overrides,
    (next) => {
      let nextGroups: ServiceGroup[];
      if (serverless) {
        // Instances follow demand; what changes is each function's settings.
        try {
          serverless.reconfigure(next, serviceGroups(app, next));
        } catch (err) {
          log.error({ err: (err as Error).message }, 'topology change refused');
        }
        return;
      }
      try {
        nextGroups = serviceGroups(app, next);
        // A mesh's versions are fixed at start (each replica's label and config).
        if (mesh) nextGroups = mesh.groups(nextGroups);
      } catch (err) {
        log.error({ err: (err as Error).message }, 'topology change refused');
        return;
      }
      for (const g of nextGroups) {
        const before = groups.find((x) => x.name === g.name)?.replicas ?? 0;
        for (let r = before; r < g.replicas; r++) void spawnWorker(g.name, r).catch((err) => log.error({ err }, 'a replica could not be started'));
        for (let r = before - 1; r >= g.replicas; r--) void stopWorker(g.name, r);
        if (before !== g.replicas) log.info({ group: g.name, from: before, to: g.replicas }, 'replicas changed');
      }
      groups = nextGroups;
    },
    (err) => log.error({ err: err.message }, 'topology change ignored: the file is invalid'),
  );

  // What `evolith status` (and an operator's tools) need: where the control plane is, and an
  // operator credential. Readable by this user only.
  const operator = authority.issue({ sub: 'operator', op: true }, 30 * 24 * 60 * 60 * 1000);
  const services = serverless
    ? groups.map((g) => ({ name: g.name, location: `function on demand: ${g.services.join(', ')}` }))
    : groups.map((g) => ({ name: g.name, location: `${g.replicas} process${g.replicas === 1 ? '' : 'es'}: ${g.services.join(', ')}` }));
  claim.update({ url, registryUrl, operatorToken: operator.token, services });

  return { url, architecture, registryUrl, services, stop: stopAll };
}

async function waitUntilReady(
  registry: RegistryServer,
  groups: ServiceGroup[],
  timeoutMs: number,
  progress: (line: string) => void,
  failed: () => ProcessStatus | undefined,
  /** Processes beside the instances that must report first (a mesh's proxies). */
  alsoWaitingFor: () => string[] = () => [],
): Promise<string> {
  const end = Date.now() + timeoutMs;
  const needed = groups.filter((g) => g.replicas > 0).flatMap((g) => g.services);
  const total = groups.reduce((n, g) => n + g.replicas * g.services.length, 0) + 1;
  let shown = -1;
  for (;;) {
    const ready = (service: string) => registry.registry.endpoints(service).length > 0;
    const edge = registry.registry.endpoints('edge')[0];
    const missing = needed.filter((s) => !ready(s));
    const up = [...needed, 'edge'].reduce((n, s) => n + registry.registry.endpoints(s).length, 0);
    if (up !== shown) {
      shown = up;
      progress(`evolith: starting — ${up}/${total} instances ready${missing.length ? `; waiting for ${missing.join(', ')}` : ''}`);
    }
    const others = alsoWaitingFor();
    if (edge && missing.length === 0 && others.length === 0) return `http://${edge.address}`;
    const f = failed();
    if (f) {
      // The worker said why on its last line (see worker-process.ts).
      const why = [...f.lastLines].reverse().find((l) => l.startsWith('evolith: ')) ?? f.lastLines.at(-1) ?? `exit code ${f.lastExit?.code}`;
      throw new ConfigError(`${Supervisor.key(f.name, f.replica)} could not start: ${why.replace(/^evolith: /, '')}`);
    }
    if (Date.now() > end) {
      throw new ConfigError(`the deployment did not become ready within ${timeoutMs} ms; waiting for: ${[...missing, ...(edge ? [] : ['edge']), ...others].join(', ')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

