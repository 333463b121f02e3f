import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { AppDefinition } from '../../app/define.js';
import { RegistryServer } from '../../discovery/registry-server.js';
import { ConfigError } from '../../kernel/errors.js';
import { Supervisor } from '../supervisor.js';
import { serviceGroups, type ServiceGroup } from './groups.js';
import { watchTopology, type Topology, type TopologyOverrides, type TopologyWatch } from '../topology.js';

const bin = resolve(fileURLToPath(new URL('../../../bin/evolith.mjs', import.meta.url)));

export interface RunningDeployment {
  readonly url: string;
  readonly architecture: string;
  readonly services: { name: string; location: string }[];
  readonly registryUrl: string;
  stop(): Promise<void>;
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
  options: { readyTimeoutMs?: number } = {},
): Promise<RunningDeployment> {
  let groups = serviceGroups(app, topology);
  const supervisor = new Supervisor({});
  const registry = new RegistryServer({ log: log.child({ component: 'registry' }) });
  // The control plane's own view beside the registry's: processes, pids, restarts.
  registry.app.get('/processes', async () => ({ processes: supervisor.status() }));
  await registry.listen(0, topology.internalHost);
  const registryUrl = registry.url!;
  const env = { EVOLITH_TOPOLOGY_OVERRIDES: JSON.stringify(overrides) };
  const spawnWorker = (group: string, replica: number) =>
    supervisor.start({
      name: group,
      replica,
      command: process.execPath,
      args: [bin, 'worker', appDir, '--registry', registryUrl, ...(group === 'edge' ? ['--edge'] : ['--group', group]), '--replica', String(replica)],
      env,
    });
  for (const g of groups) for (let r = 0; r < g.replicas; r++) spawnWorker(g.name, r);
  spawnWorker('edge', 0);

  const controlFile = join(topology.data, '.evolith', 'control-plane.json');
  mkdirSync(join(topology.data, '.evolith'), { recursive: true });
  const stopAll = async () => {
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
  let watch: TopologyWatch | undefined = watchTopology(
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

  writeFileSync(controlFile, JSON.stringify({ registryUrl, url, pid: process.pid }, null, 2));

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

