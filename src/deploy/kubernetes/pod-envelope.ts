/**
 * The Kubernetes envelope: what a pod's worker is given. There is no control plane and no
 * registry: Kubernetes starts, restarts and replaces the pods, its Services say where they are,
 * and the pod's credential comes from a Secret.
 *
 * - transport `tcp` (plain Kubernetes): every callee hosted in another group is reached with the
 *   client library's resilience links over Evolith's TCP RPC; its endpoints are the addresses
 *   the group's headless Service resolves to (dns-discovery.ts), so the client balances, retries
 *   and breaks circuits per pod. The hosted services answer RPC on the rpc port; the probes have
 *   a listener of their own.
 * - transport `http2` (Istio, Knative): every callee has one endpoint, its group's Service
 *   (`http://<group>.<ns>.svc.<domain>:<port>`), and the sidecar or Knative's activator picks
 *   the pod per request. In a mesh the app does not retry: Istio's routes do. The hosted
 *   services answer RPC over HTTP on the rpc port, which also answers the probes and (for a
 *   function at zero) the waker's `POST /evolith/wake`.
 * - Identity: every internal request carries the pod's credential; the edge signs the users it
 *   verified, as in microservices.
 */
import type { Logger } from 'pino';
import type { InternalPlane } from '../../auth/internal-plane.js';
import type { Discovery, Endpoint } from '../../kernel/plugins.js';
import type { PolicyTable } from '../../kernel/policy-table.js';
import type { Link, Terminal } from '../../kernel/placement.js';
import type { Runtime } from '../../kernel/runtime.js';
import { Resilience } from '../../resilience/resilience.js';
import { hostResolver, RpcServer, type RpcResolver } from '../../rpc/tcp-server.js';
import { TcpTerminal } from '../../rpc/terminals.js';
import { TcpTransport } from '../../rpc/tcp-transport.js';
import type { Envelope, Offer } from '../../worker/worker.js';
import type { Topology } from '../topology.js';
import { DEFAULT_RPC_PORT, DnsDiscovery, type Resolve4 } from './dns-discovery.js';
import { listenPodHttp, podHttpClient, type PodHttpClient, type PodHttpListener } from './pod-http.js';
import { listenProbes, PodProbes, type ProbeListener } from './pod-probes.js';

/** The architecture a cluster runs: plain Kubernetes, Istio, or Knative. */
export type ClusterArchitecture = 'microservices' | 'mesh' | 'serverless';
export type PodTransport = 'tcp' | 'http2';

/** What a pod runs: a service group, or the edge. */
export type PodRole = { readonly kind: 'group'; readonly group: string } | { readonly kind: 'edge' };

export interface KubernetesEnvelopeOptions {
  readonly topology: Topology;
  readonly plane: InternalPlane;
  readonly role: PodRole;
  /** Every service group of the app, with the services it hosts. */
  readonly groups: Readonly<Record<string, readonly string[]>>;
  readonly architecture: ClusterArchitecture;
  readonly transport: PodTransport;
  readonly namespace: string;
  readonly clusterDomain: string;
  /** Where this pod serves RPC (groups only). */
  readonly rpcPort: number;
  /** Where it answers probes (groups only; equal to `rpcPort` with HTTP RPC). */
  readonly probePort: number;
  /** Where other groups' pods take RPC: 7000 over TCP; their Service's port over HTTP (7000 in a mesh, 80 for Knative). */
  readonly calleePort?: number;
  /** DNS for TCP discovery (default: the system's resolver). */
  readonly resolve4?: Resolve4;
  /** How often TCP discovery resolves the groups' names again (default 2 s, or `kubernetes.dnsRefreshMs`). */
  readonly dnsRefreshMs?: number;
  /** The pod's own address, for logs and the start-up line. */
  readonly podIp?: string;
}

/** The port a callee's Service takes RPC on, by transport and architecture. */
export function defaultCalleePort(transport: PodTransport, architecture: ClusterArchitecture): number {
  return transport === 'http2' && architecture === 'serverless' ? 80 : DEFAULT_RPC_PORT;
}

export function kubernetesEnvelope(options: KubernetesEnvelopeOptions) {
  return async ({ policies, log }: { policies: PolicyTable; log: Logger }): Promise<Envelope> => {
    const { topology, plane, role } = options;
    const own = role.kind === 'group' ? role.group : undefined;
    const others = Object.fromEntries(Object.entries(options.groups).filter(([g]) => g !== own));
    const calleePort = options.calleePort ?? defaultCalleePort(options.transport, options.architecture);
    const probes = new PodProbes();
    let current: RpcResolver | undefined;
    // Late-bound: the listeners open before the services run, so that the kubelet's startup
    // probe is answered while migrations and the backends' connections take their time.
    const resolve: RpcResolver = (service, method) => current?.(service, method);

    let discovery: Discovery;
    let dns: DnsDiscovery | undefined;
    if (options.transport === 'tcp') {
      dns = new DnsDiscovery({
        namespace: options.namespace,
        clusterDomain: options.clusterDomain,
        groups: others,
        port: calleePort,
        refreshMs: options.dnsRefreshMs ?? topology.kubernetes.dnsRefreshMs,
        resolve4: options.resolve4,
        log,
      }).start();
      discovery = dns;
    } else {
      discovery = serviceAddresses(others, options, calleePort);
    }
    const resilience = new Resilience({ discovery, policies, affinity: topology.affinity, log });
    // Over HTTP, Istio's routes retry (VirtualService retries): retrying here too would
    // multiply attempts. Over TCP the mesh sees only connections and retries nothing.
    const meshRetries = options.architecture === 'mesh' && options.transport === 'http2';
    const links = (service: string): Link[] => {
      const all = resilience.links(service);
      return meshRetries ? all.filter((l) => l.name !== 'retry') : all;
    };

    let tcp: TcpTransport | undefined;
    let http: PodHttpListener | undefined;
    let client: PodHttpClient | undefined;
    let probeListener: ProbeListener | undefined;
    let terminal: Terminal;
    if (options.transport === 'tcp') {
      tcp = new TcpTransport({ log, plane });
      terminal = new TcpTerminal(tcp);
      if (role.kind === 'group') probeListener = await listenProbes(probes, topology.internalHost, options.probePort, log);
    } else {
      client = podHttpClient(plane, options.resolve4);
      terminal = client.terminal;
      if (role.kind === 'group') {
        http = await listenPodHttp({
          host: topology.internalHost,
          port: options.rpcPort,
          resolve,
          plane,
          log,
          timeoutFor: (m) => policies.timeoutFor(m),
          drainMs: topology.drainMs,
          probes,
          wake: options.architecture === 'serverless' ? { group: role.group } : undefined,
        });
      }
    }
    // Calls find their callees from the start (DNS answers within a round trip or two).
    if (dns) await dns.whenSynced(5_000);

    const close = async (): Promise<void> => {
      dns?.close();
      await Promise.all([tcp?.close(), client?.close(), http?.close(), probeListener?.close()]);
    };
    return {
      placement: {
        placement: (service) => ({ links: links(service), terminal }),
        close,
      },
      reconfigure: (next) => resilience.setAffinity(next.affinity),
      ready: (service) => discovery.endpoints(service).length > 0,
      unavailable: (service) => resilience.guards.noneAvailable(discovery.endpoints(service)),
      assertIdentity: plane.signer ? (identity) => plane.signer!.assert(identity) : undefined,
      serve: async ({ runtime }) => serve(options, runtime, probes, (r) => (current = r), http, log),
    };
  };
}

async function serve(
  options: KubernetesEnvelopeOptions,
  runtime: Runtime,
  probes: PodProbes,
  setResolver: (resolve: RpcResolver) => void,
  http: PodHttpListener | undefined,
  log: Logger,
): Promise<Offer> {
  const { topology, plane } = options;
  const where = options.podIp ?? topology.internalHost;
  if (options.role.kind === 'edge') {
    return { address: `${where} (edge)`, withdraw: async () => undefined };
  }
  const resolve = hostResolver(runtime.hosts.values());
  setResolver(resolve);
  let rpc: RpcServer | undefined;
  if (options.transport === 'tcp') {
    rpc = new RpcServer({ resolve, log, host: topology.internalHost, port: options.rpcPort, drainMs: topology.drainMs, plane });
    await rpc.listen();
  }
  probes.serving(runtime);
  return {
    address: `${where}:${options.rpcPort}`,
    async withdraw() {
      // Not ready from now on: Kubernetes takes the pod out of its Services while it drains.
      probes.stop();
      await Promise.all([rpc?.close(), http?.drain()]);
    },
  };
}

/**
 * Discovery over HTTP: one endpoint per service, its group's Service, which balances per
 * request (the sidecar, or Knative's activator and queue proxies).
 */
function serviceAddresses(groups: Readonly<Record<string, readonly string[]>>, options: KubernetesEnvelopeOptions, port: number): Discovery {
  const byService = new Map<string, readonly Endpoint[]>();
  for (const [group, services] of Object.entries(groups)) {
    const url = `http://${group}.${options.namespace}.svc.${options.clusterDomain}${port === 80 ? '' : `:${port}`}`;
    for (const service of services) byService.set(service, Object.freeze([Object.freeze({ service, id: `${service}@${group}`, address: url, metadata: Object.freeze({ group }) })]));
  }
  return { endpoints: (service) => byService.get(service) ?? [] };
}
