import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { AppDefinition } from '../app/define.js';
import { startRegistryServer, type RegistryServer } from '../discovery/registry-server.js';
import { ConfigError } from '../kernel/errors.js';
import { Supervisor } from './supervisor.js';
import { watchTopology, type Topology, type TopologyOverrides, type TopologyWatch } from './topology.js';

export interface ServiceGroup {
  readonly name: string;
  readonly services: readonly string[];
  readonly replicas: number;
}

/** Groups from the topology; every service not named in one runs in a group of its own. */
export function serviceGroups(app: AppDefinition, topology: Topology): ServiceGroup[] {
  const known = new Set(app.services.map((s) => s.contract.name));
  const placed = new Map<string, string>();
  const problems: string[] = [];
  for (const [group, services] of Object.entries(topology.groups)) {
    for (const s of services) {
      if (!known.has(s)) problems.push(`group ${group} names ${s}, which is not a service of ${app.name}`);
      else if (placed.has(s)) problems.push(`${s} is in two groups: ${placed.get(s)} and ${group}`);
      else placed.set(s, group);
    }
  }
  const groups = new Map<string, string[]>();
  for (const s of app.services.map((d) => d.contract.name)) {
    const g = placed.get(s) ?? s;
    if (!placed.has(s) && topology.groups[s]) problems.push(`service ${s} is not in group ${s}, yet a group has its name`);
    groups.set(g, [...(groups.get(g) ?? []), s]);
  }
  for (const name of Object.keys(topology.replicas)) {
    if (!groups.has(name)) problems.push(`replicas names ${name}, which is neither a group nor an ungrouped service`);
  }
  if (groups.has('edge')) problems.push('"edge" is reserved for the HTTP gateway process');
  if (problems.length) throw new ConfigError(`invalid microservices topology:\n${problems.map((p) => `  ${p}`).join('\n')}`);
  return [...groups].map(([name, services]) => ({ name, services, replicas: topology.replicas[name] ?? 1 }));
}

const bin = resolve(fileURLToPath(new URL('../../bin/evolith.mjs', import.meta.url)));

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
  const registry: RegistryServer = await startRegistryServer({ log: log.child({ component: 'registry' }) });
  const registryUrl = registry.url!;
  const supervisor = new Supervisor({});
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

  const stopAll = async () => {
    watch?.close();
    // The edge first, so that no new request starts; then the services, which drain their calls.
    await supervisor.stop('edge', 0);
    await supervisor.stopAll();
    await registry.close();
  };

  let url: string;
  try {
    url = await waitUntilReady(registry, groups, options.readyTimeoutMs ?? 60_000);
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

  const controlFile = join(topology.data, '.evolith', 'control-plane.json');
  mkdirSync(join(topology.data, '.evolith'), { recursive: true });
  writeFileSync(controlFile, JSON.stringify({ registryUrl, url, pid: process.pid }, null, 2));

  return {
    url,
    architecture: 'microservices',
    registryUrl,
    services: groups.map((g) => ({ name: g.name, location: `${g.replicas} process${g.replicas === 1 ? '' : 'es'}: ${g.services.join(', ')}` })),
    stop: stopAll,
  };
}

async function waitUntilReady(registry: RegistryServer, groups: ServiceGroup[], timeoutMs: number): Promise<string> {
  const end = Date.now() + timeoutMs;
  const needed = groups.filter((g) => g.replicas > 0).flatMap((g) => g.services);
  for (;;) {
    const ready = (service: string) => registry.registry.endpoints(service).length > 0;
    const edge = registry.registry.endpoints('edge')[0];
    const missing = needed.filter((s) => !ready(s));
    if (edge && missing.length === 0) return `http://${edge.address}`;
    if (Date.now() > end) {
      throw new ConfigError(`the deployment did not become ready within ${timeoutMs} ms; waiting for: ${[...missing, ...(edge ? [] : ['edge'])].join(', ')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
