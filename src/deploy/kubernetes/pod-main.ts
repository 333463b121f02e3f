/**
 * The entry of every Evolith container on Kubernetes: `node /app/pod.mjs --app-dir /app/app
 * --topology /etc/evolith/evolith.yaml --credentials /var/run/evolith/bundle.json
 * (--group <g> | --edge | --wakeups <g>) [--transport tcp|http2 --rpc-port <n> --probe-port <n>
 * | --port <n>]` (see `evolith build`, which bundles it with the app).
 *
 * A pod that cannot start — a wrong argument, a missing variable, a topology it cannot run —
 * writes one line naming every problem to stderr and exits with 2: Kubernetes shows the line
 * in the pod's status and restarts it with a growing delay. SIGTERM drains and exits with 0.
 */
import { existsSync, writeFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { AppDefinition } from '../../app/define.js';
import { InternalPlane } from '../../auth/internal-plane.js';
import { ConfigError, EvolithError } from '../../kernel/errors.js';
import { createLogger } from '../../observe/logger.js';
import { startWorker, type RunningWorker } from '../../worker/worker.js';
import { serviceGroups } from '../microservices/groups.js';
import { stopOnSignals } from '../process-signals.js';
import { withVersionConfig, type Topology, type TopologyOverrides } from '../topology.js';
import { resolverFromEnv } from './dns-discovery.js';
import { CONFIG_EXIT, parsePodArgs, type PodArgs } from './pod-args.js';
import { readCredentialBundle, watchCredentials } from './pod-credentials.js';
import { defaultCalleePort, kubernetesEnvelope, type ClusterArchitecture, type PodTransport } from './pod-envelope.js';
import { loadPodTopology, podTopologySource } from './pod-topology.js';

export { CONFIG_EXIT };

/** Where Kubernetes reads a container's termination message (its default terminationMessagePath). */
const TERMINATION_LOG = '/dev/termination-log';

/** The cluster architecture a topology names: Istio for `mesh`, Knative for `serverless`, else plain Kubernetes. */
export function clusterArchitecture(topology: Topology): ClusterArchitecture {
  return topology.architecture === 'mesh' ? 'mesh' : topology.architecture === 'serverless' ? 'serverless' : 'microservices';
}

/** The ports a group pod uses, from its arguments or the defaults of its transport. */
export function podPorts(args: PodArgs, transport: PodTransport, architecture: ClusterArchitecture): { rpcPort: number; probePort: number } {
  const rpcPort = args.rpcPort ?? (transport === 'http2' && architecture === 'serverless' ? 8080 : 7000);
  const probePort = transport === 'http2' ? rpcPort : (args.probePort ?? 8081);
  return { rpcPort, probePort };
}

export interface RunningPod {
  readonly label: string;
  readonly log: Logger;
  readonly address: string;
  stop(): Promise<void>;
}

/** Starts what `args` say (a group or the edge; the waker has its own entry in pod-waker.ts). */
export async function runPod(app: AppDefinition, args: PodArgs): Promise<RunningPod> {
  const backends = { postgresUrl: args.postgresUrl, natsUrl: args.natsUrl };
  const overrides: TopologyOverrides = args.role.kind === 'edge' ? { port: args.port } : {};
  const loaded = loadPodTopology(args.appDir, args.topologyFile, backends, overrides);
  // One version of a group running beside others (a canary): its own config over the group's.
  const topology = args.version && args.role.kind === 'group' ? withVersionConfig(loaded, args.role.group, args.version) : loaded;
  const architecture = clusterArchitecture(topology);
  // The edge is given no --transport: it calls the groups as the topology says they call each other.
  const transport: PodTransport = args.transport ?? topology.kubernetes.transport ?? (architecture === 'microservices' ? 'tcp' : 'http2');
  const groups = Object.fromEntries(serviceGroups(app, topology).map((g) => [g.name, g.services]));
  const role = args.role;
  if (role.kind === 'wakeups') throw new ConfigError('a waker runs with runWaker, not as a worker');
  if (role.kind === 'group' && !groups[role.group]) {
    throw new ConfigError(`${app.name} has no service group named ${role.group}; its groups: ${Object.keys(groups).join(', ')}`);
  }
  const label = role.kind === 'edge' ? 'edge' : role.group;
  const log = createLogger({ app: app.name, process: label, ...(args.podName ? { pod: args.podName } : {}), ...(args.version ? { version: args.version } : {}) });
  const plane = new InternalPlane(readCredentialBundle(args.credentialsFile));
  const credentials = watchCredentials(args.credentialsFile, plane, log);
  const { rpcPort, probePort } = podPorts(args, transport, architecture);
  let worker: RunningWorker;
  try {
    worker = await startWorker({
      app,
      appDir: args.appDir,
      topology,
      overrides,
      topologySource: podTopologySource(args.topologyFile, backends),
      log,
      architecture,
      services: role.kind === 'group' ? groups[role.group]! : [],
      edge: role.kind === 'edge',
      crossProcess: true,
      envelope: kubernetesEnvelope({
        topology,
        plane,
        role,
        groups,
        architecture,
        transport,
        namespace: args.namespace,
        clusterDomain: args.clusterDomain ?? topology.kubernetes.clusterDomain,
        rpcPort,
        probePort,
        calleePort: defaultCalleePort(transport, architecture),
        resolve4: resolverFromEnv(args.dnsServer),
        podIp: args.podIp,
      }),
    });
  } catch (err) {
    credentials.close();
    throw err;
  }
  return {
    label,
    log,
    address: worker.url ?? worker.address ?? '',
    async stop() {
      credentials.close();
      await worker.stop();
    },
  };
}

/**
 * Says in one line why the pod stops: on stderr, and as the container's termination message
 * (`/dev/termination-log`, which Kubernetes mounts in every container and shows in the pod's
 * status) when there is one.
 */
function terminate(line: string): void {
  process.stderr.write(`${line}\n`);
  if (!existsSync(TERMINATION_LOG)) return;
  try {
    writeFileSync(TERMINATION_LOG, line);
  } catch {
    /* a read-only or foreign file: stderr says it */
  }
}

/** Writes why the pod cannot start and exits: 2 for what its configuration must fix, 1 otherwise. */
function fail(err: unknown): never {
  const message = (err as Error).message ?? String(err);
  terminate(`evolith: ${message.replace(/:\n\s*/g, ': ').replace(/\n\s*/g, '; ')}`);
  if (!(err instanceof EvolithError)) process.stderr.write(`${(err as Error).stack ?? ''}\n`);
  process.exit(err instanceof ConfigError ? CONFIG_EXIT : 1);
}

export async function main(app: AppDefinition): Promise<void> {
  const parsed = parsePodArgs(process.argv.slice(2), process.env);
  if (!parsed.ok) {
    terminate(`evolith: this pod cannot start: ${parsed.problems.join('; ')}`);
    process.exit(CONFIG_EXIT);
  }
  const args = parsed.args;
  let running: RunningPod;
  try {
    if (args.role.kind === 'wakeups') {
      const { runWaker } = await import('./pod-waker.js');
      running = await runWaker(app, args);
    } else {
      running = await runPod(app, args);
    }
  } catch (err) {
    fail(err);
  }
  process.stdout.write(`evolith: ${running.label} serving on ${running.address}\n`);
  stopOnSignals(running, running.log);
}
