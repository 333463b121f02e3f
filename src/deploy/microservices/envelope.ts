/**
 * The microservices envelope: what the microservices deployer gives each of its workers.
 *
 * - Placement: every callee hosted elsewhere gets the client library's resilience links
 *   (bulkhead → retry → choose endpoint → circuit) ending in TCP to the chosen instance;
 *   discovery comes from the control plane's registry.
 * - Serving: the hosted services answer RPC (TCP, and HTTP for interop) on the internal host,
 *   and are registered with the registry; an edge worker registers its URL. Every worker also
 *   serves its own resilience state (`GET /evolith/endpoints`) on the internal HTTP listener,
 *   never on the public edge.
 * - Identity: every internal request carries this process's credential; the edge signs the
 *   users it verified so that callees in other processes can check them.
 */
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { InternalPlane } from '../../auth/internal-plane.js';
import { UnauthenticatedError } from '../../kernel/errors.js';
import { RegistryClient } from '../../discovery/registry-client.js';
import type { MethodDef } from '../../contract/define.js';
import type { PolicyTable } from '../../kernel/policy-table.js';
import type { Runtime } from '../../kernel/runtime.js';
import { Resilience } from '../../resilience/resilience.js';
import { rpcHttpPlugin } from '../../rpc/http-transport.js';
import { hostResolver, RpcServer, type RpcResolver } from '../../rpc/tcp-server.js';
import type { Link } from '../../kernel/placement.js';
import type { InstanceInfo } from '../../discovery/registry.js';
import { TcpTerminal } from '../../rpc/terminals.js';
import { TcpTransport } from '../../rpc/tcp-transport.js';
import type { Envelope, Offer } from '../../worker/worker.js';
import { registrationAgents } from './registration.js';
import type { Topology } from '../topology.js';

export interface MicroservicesWorkerOptions {
  readonly topology: Topology;
  /** This process's credentials, from the control plane. */
  readonly plane: InternalPlane;
  readonly registryUrl: string;
  /** The service group this worker hosts, or the edge. */
  readonly role: { kind: 'group'; group: string } | { kind: 'edge' };
  readonly replica: number;
  /** How a variant of this architecture (serverless) differs: its own links, readiness, serving. */
  readonly variant?: EnvelopeVariant;
}

/** What a variant of the microservices envelope changes, each part optional. */
export interface EnvelopeVariant {
  /** The chain to `service`, given the client library's resilience links. */
  links?(service: string, resilience: readonly Link[], registry: RegistryClient): Link[];
  /** Whether a service hosted elsewhere can take calls now (default: it has a registered instance). */
  ready?(service: string, registry: RegistryClient): boolean;
  /** Wraps what the hosted services answer with (limits, accounting). */
  resolver?(resolve: RpcResolver): RpcResolver;
  /**
   * Announces the hosted instances itself instead of registering them over HTTP (a platform
   * that started the worker registers what it says); then the worker opens no interop HTTP
   * listener either: its callers are the deployment's own workers, over RPC.
   */
  announce?(instances: InstanceInfo[]): Promise<void>;
  /** More series for the edge's /metrics. */
  metrics?(): Promise<string>;
  /** Start without waiting for discovery's first list (calls wait for instances in the chain anyway). */
  lateDiscovery?: boolean;
  /** The worker stopped (its calls finished). */
  close?(): Promise<void> | void;
}

export function microservicesEnvelope(options: MicroservicesWorkerOptions) {
  return async ({ policies, log }: { policies: PolicyTable; log: Logger }): Promise<Envelope> => {
    const { topology, registryUrl, plane } = options;
    const token = () => plane.credential.token;
    const registry = new RegistryClient({ url: registryUrl, token, log }).start();
    const resilience = new Resilience({ discovery: registry, policies, affinity: topology.affinity, log });
    const tcp = new TcpTransport({ log, plane });
    const terminal = new TcpTerminal(tcp);
    // A variant whose calls wait for instances anyway (serverless) connects while it starts,
    // and only its registration waits for the first list.
    const synced = registry.whenSynced(5_000);
    if (!options.variant?.lateDiscovery) await synced;
    return {
      placement: {
        placement: (service) => ({ links: options.variant?.links?.(service, resilience.links(service), registry) ?? resilience.links(service), terminal }),
        async close() {
          await tcp.close();
          registry.close();
          await options.variant?.close?.();
        },
      },
      reconfigure: (next) => resilience.setAffinity(next.affinity),
      ready: (service) => options.variant?.ready?.(service, registry) ?? registry.endpoints(service).length > 0,
      unavailable: (service) => {
        const endpoints = registry.endpoints(service);
        // A variant that serves services without instances (on demand) is not unavailable for having none.
        return endpoints.length === 0 && options.variant?.ready ? undefined : resilience.guards.noneAvailable(endpoints);
      },
      assertIdentity: plane.signer ? (identity) => plane.signer!.assert(identity) : undefined,
      metrics: options.variant?.metrics,
      serve: async ({ runtime, edgeUrl }) => {
        // Registered only once it can find what it calls (a late-discovery worker's calls wait in its chain instead).
        if (!options.variant?.lateDiscovery) await synced;
        return serve(options, runtime, edgeUrl, resilience, policies, log);
      },
    };
  };
}

async function serve(
  options: MicroservicesWorkerOptions,
  runtime: Runtime,
  edgeUrl: string | undefined,
  resilience: Resilience,
  policies: PolicyTable,
  log: Logger,
): Promise<Offer> {
  const { topology, registryUrl, replica, plane } = options;
  const token = () => plane.credential.token;
  const hosts = hostResolver(runtime.hosts.values());
  const resolve = options.variant?.resolver?.(hosts) ?? hosts;
  const hosted = [...runtime.hosts.values()];
  const rpc = hosted.length > 0 ? new RpcServer({ resolve, log, host: topology.internalHost, drainMs: topology.drainMs, plane }) : undefined;
  if (rpc) await rpc.listen();
  const announce = options.variant?.announce;
  if (announce && rpc && options.role.kind === 'group') {
    const group = options.role.group;
    const metadata = { pid: String(process.pid), replica: String(replica), group };
    await announce(hosted.map((h) => ({ id: `${h.name}-${replica}`, service: h.name, version: h.definition.contract.version, address: rpc.address, metadata })));
    return {
      address: rpc.address,
      // The platform has withdrawn it from the registry before asking it to stop.
      withdraw: () => rpc.close(),
    };
  }
  // The internal HTTP listener: the same methods as RPC over HTTP (interop, debugging) and
  // this worker's view of the endpoints it calls.
  const http: FastifyInstance = Fastify({ logger: false });
  if (hosted.length > 0) await http.register(rpcHttpPlugin, { resolve, plane, log, timeoutFor: (m: MethodDef) => policies.timeoutFor(m) });
  http.get('/evolith/endpoints', async (req, reply) => {
    const m = /^bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    try {
      if (!m) throw new UnauthenticatedError('this worker’s state is for the deployment’s processes and operators: present a credential');
      plane.peer(m[1]!);
    } catch (err) {
      log.warn({ remote: req.ip, reason: (err as Error).message }, 'internal request refused');
      return reply.status(401).send({ code: 'EVOLITH_UNAUTHENTICATED', message: (err as Error).message });
    }
    return resilience.health();
  });
  await http.listen({ port: 0, host: topology.internalHost });
  const httpUrl = `http://${hostForUrl(topology.internalHost)}:${(http.server.address() as AddressInfo).port}`;
  const metadata = { pid: String(process.pid), http: httpUrl, replica: String(replica) };
  const agents = registrationAgents({ registryUrl, token, role: options.role, replica, runtime, edgeUrl, address: rpc?.address, metadata, log });
  await Promise.all(agents.map((a) => a.start()));
  return {
    address: rpc?.address ?? httpUrl,
    async withdraw() {
      // Leave the registry first so callers stop choosing this instance, then drain.
      await Promise.all(agents.map((a) => a.stop()));
      await Promise.all([rpc?.close(), http.close()]);
    },
  };
}

function hostForUrl(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
