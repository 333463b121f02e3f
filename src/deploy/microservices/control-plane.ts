import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { AppDefinition } from '../../app/define.js';
import { DeploymentAuthority } from '../../auth/credentials.js';
import { RegistryServer, requireOperator } from '../../discovery/registry-server.js';
import { ConfigError } from '../../kernel/errors.js';
import { buildBundle } from '../bundle.js';
import type { RunningDeployment } from '../deployer.js';
import { Supervisor } from '../supervisor.js';
import { CREDENTIAL_TTL_MS, CREDENTIALS, RENEWAL, type CredentialsMessage, type RenewalMessage } from './credentials-channel.js';
import { serviceGroups, type ServiceGroup } from './groups.js';
import { watchTopology, type Topology, type TopologyOverrides, type TopologyWatch } from '../topology.js';

/** The worker process's entry, bundled with the app before any worker starts. */
const here = fileURLToPath(import.meta.url);
const workerEntry = resolve(dirname(here), `worker-process${extname(here)}`);

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
  options: { readyTimeoutMs?: number } = {},
): Promise<RunningDeployment & { readonly registryUrl: string }> {
  let groups = serviceGroups(app, topology);
  const bundle = await buildBundle(appDir, workerEntry, 'worker');
  // The deployment's authority: every process gets a credential signed by it, and nothing on
  // the internal plane (registry, RPC, interop) answers a caller without one.
  const authority = new DeploymentAuthority();
  // The credential each running process was last given, renewed while it runs.
  const tokens = new Map<string, string>();
  const supervisor = new Supervisor({
    onChange: (p) => {
      if (p.state === 'stopped') tokens.delete(Supervisor.key(p.name, p.replica));
    },
  });
  const registry = new RegistryServer({ trust: authority.trust, log: log.child({ component: 'registry' }) });
  // The control plane's own view beside the registry's: processes, pids, restarts (operators only).
  registry.app.get('/processes', async (req) => {
    requireOperator(req);
    return { processes: supervisor.status() };
  });
  await registry.listen(0, topology.internalHost);
  const registryUrl = registry.url!;
  const env = { EVOLITH_TOPOLOGY_OVERRIDES: JSON.stringify(overrides) };
  const servicesOf = (group: string) => groups.find((g) => g.name === group)?.services ?? [];
  const spawnWorker = (group: string, replica: number) =>
    supervisor.start({
      name: group,
      replica,
      command: process.execPath,
      args: [
        // A small young generation: an idle worker keeps tens of MB less (see the README's figures).
        '--max-semi-space-size=2',
        bundle,
        '--app-dir',
        appDir,
        '--registry',
        registryUrl,
        ...(group === 'edge' ? ['--edge'] : ['--group', group]),
        '--replica',
        String(replica),
      ],
      env,
      message: (): CredentialsMessage => {
        const key = Supervisor.key(group, replica);
        const svc = group === 'edge' ? [] : servicesOf(group);
        const bundle = authority.issue(
          { sub: key, svc, ins: group === 'edge' ? [`edge-${replica}`] : svc.map((s) => `${s}-${replica}`), edge: group === 'edge' },
          CREDENTIAL_TTL_MS,
        );
        tokens.set(key, bundle.token);
        return { type: CREDENTIALS, bundle };
      },
    });
  for (const g of groups) for (let r = 0; r < g.replicas; r++) spawnWorker(g.name, r);
  spawnWorker('edge', 0);
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

  const stateDir = join(topology.data, '.evolith');
  const controlFile = join(stateDir, 'control-plane.json');
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  chmodSync(stateDir, 0o700);
  let watch: TopologyWatch | undefined;
  const stopAll = async () => {
    clearInterval(renewals);
    watch?.close();
    // The edge first, so that no new request starts; then the services, which drain their calls.
    await supervisor.stop('edge', 0);
    await supervisor.stopAll();
    await registry.close();
    rmSync(controlFile, { force: true });
  };

  let url: string;
  try {
    url = await waitUntilReady(registry, groups, options.readyTimeoutMs ?? 60_000, (line) => process.stdout.write(line + '\n'));
  } catch (err) {
    await stopAll();
    throw err;
  }

  // Live topology: replica counts are reconciled here; timeouts and retries reach the running
  // processes through their own watch of the same file.
  watch = watchTopology(
    appDir,
    overrides,
    (next) => {
      let nextGroups: ServiceGroup[];
      try {
        nextGroups = serviceGroups(app, next);
      } catch (err) {
        log.error({ err: (err as Error).message }, 'topology change refused');
        return;
      }
      for (const g of nextGroups) {
        const before = groups.find((x) => x.name === g.name)?.replicas ?? 0;
        for (let r = before; r < g.replicas; r++) spawnWorker(g.name, r);
        for (let r = before - 1; r >= g.replicas; r--) void supervisor.stop(g.name, r);
        if (before !== g.replicas) log.info({ group: g.name, from: before, to: g.replicas }, 'replicas changed');
      }
      groups = nextGroups;
    },
    (err) => log.error({ err: err.message }, 'topology change ignored: the file is invalid'),
  );

  // What `evolith status` (and an operator's tools) need: where the control plane is, and an
  // operator credential. Readable by this user only.
  const operator = authority.issue({ sub: 'operator', op: true }, 30 * 24 * 60 * 60 * 1000);
  writeFileSync(controlFile, JSON.stringify({ registryUrl, url, pid: process.pid, operatorToken: operator.token }, null, 2), { mode: 0o600 });
  chmodSync(controlFile, 0o600);

  return {
    url,
    architecture: 'microservices',
    registryUrl,
    services: groups.map((g) => ({ name: g.name, location: `${g.replicas} process${g.replicas === 1 ? '' : 'es'}: ${g.services.join(', ')}` })),
    stop: stopAll,
  };
}

async function waitUntilReady(registry: RegistryServer, groups: ServiceGroup[], timeoutMs: number, progress: (line: string) => void): Promise<string> {
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
    if (edge && missing.length === 0) return `http://${edge.address}`;
    if (Date.now() > end) {
      throw new ConfigError(`the deployment did not become ready within ${timeoutMs} ms; waiting for: ${[...missing, ...(edge ? [] : ['edge'])].join(', ')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

