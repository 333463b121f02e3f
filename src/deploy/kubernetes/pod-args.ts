/**
 * What a pod is told to run: its command-line arguments (written by the generated manifests)
 * and its environment (the downward API and the backends' Secret). Every problem is collected,
 * so that a pod that cannot start says all of them at once in its status, not one per restart.
 */
import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { Command, CommanderError } from 'commander';
import type { PodTransport } from './pod-envelope.js';

/** The exit code of a pod that cannot start as configured (Kubernetes shows its last line in the pod's status). */
export const CONFIG_EXIT = 2;

export type PodRoleArg = { readonly kind: 'group'; readonly group: string } | { readonly kind: 'edge' } | { readonly kind: 'wakeups'; readonly group: string };

export interface PodArgs {
  readonly appDir: string;
  readonly topologyFile: string;
  readonly credentialsFile: string;
  readonly role: PodRoleArg;
  /** Given, or undefined: then the architecture decides (TCP for plain Kubernetes, HTTP for Istio and Knative). */
  readonly transport: PodTransport | undefined;
  /** Given (or Knative's PORT), or undefined: then the default of the transport. */
  readonly rpcPort: number | undefined;
  readonly probePort: number | undefined;
  /** The edge's HTTP port (default 8080). */
  readonly port: number;
  readonly namespace: string;
  readonly podName: string | undefined;
  readonly podIp: string | undefined;
  /** EVOLITH_CLUSTER_DOMAIN, or undefined: then the topology's `kubernetes.clusterDomain`. */
  readonly clusterDomain: string | undefined;
  readonly postgresUrl: string;
  readonly natsUrl: string;
  /** The waker's sink (Knative's K_SINK): the function's URL. */
  readonly sink: string | undefined;
  /** The version label of the pod's Deployment (EVOLITH_VERSION), when its group runs several side by side. */
  readonly version: string | undefined;
  /** `ip:port` of a DNS server to ask instead of the system's (EVOLITH_DNS_SERVER). */
  readonly dnsServer: string | undefined;
}

export type PodArgsResult = { readonly ok: true; readonly args: PodArgs } | { readonly ok: false; readonly problems: readonly string[] };

function portProblem(name: string, value: string | undefined, problems: string[]): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < 1 || n > 65535) {
    problems.push(`${name} must be a port number (1-65535), got "${value}"`);
    return undefined;
  }
  return n;
}

/** Parses a pod's arguments (`argv` without node and the script) and environment. */
export function parsePodArgs(argv: readonly string[], env: NodeJS.ProcessEnv): PodArgsResult {
  const problems: string[] = [];
  const program = new Command('evolith-pod')
    .option('--app-dir <dir>')
    .option('--topology <file>')
    .option('--credentials <file>')
    .option('--group <name>')
    .option('--edge')
    .option('--wakeups <group>')
    .option('--transport <kind>')
    .option('--rpc-port <n>')
    .option('--probe-port <n>')
    .option('--port <n>')
    .allowUnknownOption()
    .allowExcessArguments()
    .exitOverride()
    .configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
  try {
    program.parse([...argv], { from: 'user' });
  } catch (err) {
    if (!(err instanceof CommanderError)) throw err;
    problems.push(err.message.replace(/^error: /, ''));
  }
  const o = program.opts<{
    appDir?: string;
    topology?: string;
    credentials?: string;
    group?: string;
    edge?: boolean;
    wakeups?: string;
    transport?: string;
    rpcPort?: string;
    probePort?: string;
    port?: string;
  }>();
  for (const extra of program.args) problems.push(extra.startsWith('-') ? `unknown option ${extra}` : `unexpected argument "${extra}"`);

  const file = (flag: string, value: string | undefined, kind: 'file' | 'directory'): string => {
    if (value === undefined) {
      problems.push(`${flag} is required`);
      return '';
    }
    const path = resolve(value);
    if (!existsSync(path)) problems.push(`${flag} ${path} does not exist`);
    else if (kind === 'directory' ? !statSync(path).isDirectory() : statSync(path).isDirectory()) problems.push(`${flag} ${path} is not a ${kind}`);
    return path;
  };
  const appDir = file('--app-dir', o.appDir, 'directory');
  const topologyFile = file('--topology', o.topology, 'file');
  const credentialsFile = file('--credentials', o.credentials, 'file');

  const roles = [o.group !== undefined && '--group', o.edge === true && '--edge', o.wakeups !== undefined && '--wakeups'].filter((r): r is string => r !== false);
  if (roles.length !== 1) problems.push(roles.length === 0 ? 'one of --group <name>, --edge or --wakeups <group> is required' : `${roles.join(' and ')} exclude each other: a pod runs one of them`);
  const groupName = /^[a-z][a-z0-9-]*$/;
  for (const [flag, value] of [['--group', o.group], ['--wakeups', o.wakeups]] as const) {
    if (value !== undefined && !groupName.test(value)) problems.push(`${flag} "${value}" is not a group name`);
  }
  const role: PodRoleArg = o.edge ? { kind: 'edge' } : o.wakeups !== undefined ? { kind: 'wakeups', group: o.wakeups } : { kind: 'group', group: o.group ?? '' };

  let transport: PodTransport | undefined;
  if (o.transport !== undefined) {
    if (o.transport === 'tcp' || o.transport === 'http2') transport = o.transport;
    else problems.push(`--transport must be tcp or http2, got "${o.transport}"`);
  }
  // Knative tells the container its port in PORT; an explicit --rpc-port wins.
  const rpcPort = portProblem('--rpc-port', o.rpcPort, problems) ?? (o.rpcPort === undefined ? portProblem('PORT', env.PORT, problems) : undefined);
  const probePort = portProblem('--probe-port', o.probePort, problems);
  const port = portProblem('--port', o.port, problems) ?? 8080;
  if (role.kind !== 'edge' && o.port !== undefined) problems.push('--port is the edge’s; a group takes --rpc-port and --probe-port');
  if (role.kind === 'edge' && (o.rpcPort !== undefined || o.probePort !== undefined)) problems.push('the edge takes --port; --rpc-port and --probe-port are for groups');
  if (transport === 'http2' && rpcPort !== undefined && probePort !== undefined && rpcPort !== probePort) {
    problems.push(`with --transport http2 the probes are answered on the rpc port: --probe-port (${probePort}) must equal --rpc-port (${rpcPort})`);
  }
  if (transport === 'tcp' && rpcPort !== undefined && probePort !== undefined && rpcPort === probePort) {
    problems.push(`with --transport tcp the probes need a port of their own: --probe-port and --rpc-port are both ${rpcPort}`);
  }

  const required = (name: string): string => {
    const v = env[name];
    if (v === undefined || v.trim() === '') problems.push(`${name} is not set`);
    return v ?? '';
  };
  const namespace = required('EVOLITH_NAMESPACE');
  const postgresUrl = required('EVOLITH_POSTGRES_URL');
  const natsUrl = required('EVOLITH_NATS_URL');
  if (postgresUrl && !/^postgres(ql)?:\/\//.test(postgresUrl)) problems.push('EVOLITH_POSTGRES_URL must be a postgres:// URL');
  if (natsUrl && !/^nats:\/\//.test(natsUrl)) problems.push('EVOLITH_NATS_URL must be a nats:// URL');
  const clusterDomain = env.EVOLITH_CLUSTER_DOMAIN?.trim() || undefined;
  if (clusterDomain !== undefined && !/^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/i.test(clusterDomain)) problems.push(`EVOLITH_CLUSTER_DOMAIN "${clusterDomain}" is not a domain name`);
  const sink = env.K_SINK?.trim() || undefined;
  if (role.kind === 'wakeups') {
    if (!sink) problems.push('K_SINK is not set: a waker posts to the function Knative names in it');
    else if (!/^https?:\/\//.test(sink)) problems.push(`K_SINK must be an http(s) URL, got "${sink}"`);
  }

  const version = env.EVOLITH_VERSION?.trim() || undefined;
  if (version !== undefined && !/^[a-z0-9][a-z0-9.-]*$/.test(version)) problems.push(`EVOLITH_VERSION "${version}" is not a version label (e.g. v2)`);

  if (problems.length > 0) return { ok: false, problems };
  return {
    ok: true,
    args: {
      appDir,
      topologyFile,
      credentialsFile,
      role,
      transport,
      rpcPort,
      probePort,
      port,
      namespace,
      podName: env.EVOLITH_POD_NAME || undefined,
      podIp: env.EVOLITH_POD_IP || undefined,
      clusterDomain,
      postgresUrl,
      natsUrl,
      sink,
      version,
      dnsServer: env.EVOLITH_DNS_SERVER || undefined,
    },
  };
}
