import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { AppDefinition } from '../app/define.js';
import { RegistryServer } from '../discovery/registry-server.js';
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
  const supervisor = new Supervisor({});
  const registry = new RegistryServer({ log: log.child({ component: 'registry' }) });
  // The control plane's own view beside the registry's: processes, pids, restarts.
  registry.app.get('/processes', async () => ({ processes: supervisor.status() }));
  await registry.listen(0, '127.0.0.1');
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

interface StatusInstance {
  id: string;
  service: string;
  address: string;
  ready: boolean;
  health: string;
  metadata?: Record<string, string>;
}

/** A table of what a running deployment (found through its data directory) has where. */
export async function deploymentStatus(dataDir: string): Promise<string> {
  const file = join(dataDir, '.evolith', 'control-plane.json');
  let control: { registryUrl: string; url: string; pid: number };
  try {
    control = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    throw new ConfigError(`no running microservices deployment found (no ${file}); start one with --arch microservices`);
  }
  let instances: StatusInstance[];
  let processes: { name: string; replica: number; pid?: number; state: string; restarts: number }[];
  try {
    const [s, p] = await Promise.all([fetch(`${control.registryUrl}/status`), fetch(`${control.registryUrl}/processes`)]);
    instances = ((await s.json()) as { instances: StatusInstance[] }).instances;
    processes = ((await p.json()) as { processes: typeof processes }).processes;
  } catch (err) {
    throw new ConfigError(`the control plane at ${control.registryUrl} (pid ${control.pid}) does not answer: ${(err as Error).message}`);
  }
  const rows = [['process', 'pid', 'state', 'restarts', 'instances (address, health)']];
  for (const p of processes) {
    const mine = instances.filter((i) => i.metadata?.pid !== undefined && Number(i.metadata.pid) === p.pid);
    const where = mine.map((i) => `${i.service}@${i.address} ${i.health}${i.ready ? '' : ' (not ready)'}`).join(', ') || '-';
    const http = mine.find((i) => i.metadata?.http)?.metadata?.http;
    rows.push([`${p.name}#${p.replica}`, String(p.pid ?? '-'), p.state, String(p.restarts), http ? `${where} (rpc over http ${http})` : where]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const lines = rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd());
  return `edge ${control.url}, control plane pid ${control.pid}, registry ${control.registryUrl}\n${lines.join('\n')}\n`;
}
