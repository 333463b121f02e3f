/**
 * The mesh envelope: what the mesh deployer gives each app worker. The app keeps no
 * resilience and no discovery of its own:
 *
 * - Placement: every callee hosted elsewhere has an empty chain ending at the worker's own
 *   proxy (its outbound Unix socket); the proxy routes, retries, balances and encrypts.
 * - Serving: the hosted services answer RPC on a Unix socket that only the worker's own proxy
 *   may use (owner-only file in an owner-only directory, and the proxy must prove its
 *   credential names this worker). The worker opens no other internal listener: every call
 *   reaches it through its proxy. It registers its instances with the proxy's mutual-TLS
 *   address, labelled with its version, so that other proxies find it there.
 */
import type { Logger } from 'pino';
import type { CredentialClaims } from '../../auth/credentials.js';
import type { InternalPlane } from '../../auth/internal-plane.js';
import type { Runtime } from '../../kernel/runtime.js';
import { hostResolver, RpcServer } from '../../rpc/tcp-server.js';
import { TcpTerminal } from '../../rpc/terminals.js';
import { TcpTransport } from '../../rpc/tcp-transport.js';
import type { Envelope, Offer } from '../../worker/worker.js';
import { registrationAgents } from '../microservices/registration.js';
import type { Topology } from '../topology.js';

/** What the control plane tells an app worker about its place in the mesh (EVOLITH_MESH_INSTANCE). */
export interface MeshInstanceEnv {
  /** The worker's process slot (`warehouse#0`): its proxy carries calls for this slot. */
  readonly instance: string;
  /** The Unix socket path the worker serves its services on (absent for the edge). */
  readonly appSocket?: string;
  /** Where its proxy takes its calls. */
  readonly outboundPath: string;
  /** Where other proxies reach it: its proxy's mutual-TLS address. */
  readonly inboundAddress: string;
  /** The version label of this replica (e.g. `v2`). */
  readonly version: string;
}

export const MESH_INSTANCE_ENV = 'EVOLITH_MESH_INSTANCE';

export function meshInstanceFromEnv(): MeshInstanceEnv | undefined {
  const raw = process.env[MESH_INSTANCE_ENV];
  return raw ? (JSON.parse(raw) as MeshInstanceEnv) : undefined;
}

export interface MeshWorkerOptions {
  readonly topology: Topology;
  readonly plane: InternalPlane;
  readonly registryUrl: string;
  readonly role: { kind: 'group'; group: string } | { kind: 'edge' };
  readonly replica: number;
  readonly mesh: MeshInstanceEnv;
}

export function meshEnvelope(options: MeshWorkerOptions) {
  return async ({ log }: { log: Logger }): Promise<Envelope> => {
    const { plane, mesh } = options;
    // One connection to the proxy carries every call (multiplexed); a second opens under load.
    const tcp = new TcpTransport({ log, plane });
    const terminal = new TcpTerminal(tcp, `unix:${mesh.outboundPath}`);
    return {
      placement: {
        placement: () => ({ links: [], terminal }),
        close: () => tcp.close(),
      },
      assertIdentity: plane.signer ? (identity) => plane.signer!.assert(identity) : undefined,
      serve: ({ runtime, edgeUrl }) => serve(options, runtime, edgeUrl, log),
    };
  };
}

/**
 * Whom an app worker's socket admits: a mesh proxy whose credential says it carries this
 * worker's calls (`px`), and no one else, not even another process of the deployment.
 */
export function proxyOnly(instance: string): (peer: CredentialClaims) => string | undefined {
  return (peer) => (peer.px?.includes(instance) || peer.px?.includes('*') ? undefined : `${instance} takes calls through its mesh proxy only`);
}

async function serve(options: MeshWorkerOptions, runtime: Runtime, edgeUrl: string | undefined, log: Logger): Promise<Offer> {
  const { topology, registryUrl, replica, plane, mesh } = options;
  const token = () => plane.credential.token;
  const hosted = [...runtime.hosts.values()];
  let rpc: RpcServer | undefined;
  if (hosted.length > 0) {
    if (!mesh.appSocket) throw new Error(`${mesh.instance} hosts services but was given no socket to serve them on`);
    rpc = new RpcServer({
      resolve: hostResolver(runtime.hosts.values()),
      log,
      path: mesh.appSocket,
      drainMs: topology.drainMs,
      plane,
      admit: proxyOnly(mesh.instance),
    });
    await rpc.listen();
  }
  const metadata = { pid: String(process.pid), replica: String(replica), version: mesh.version };
  const agents = registrationAgents({ registryUrl, token, role: options.role, replica, runtime, edgeUrl, address: mesh.inboundAddress, metadata, log });
  await Promise.all(agents.map((a) => a.start()));
  return {
    address: mesh.inboundAddress,
    async withdraw() {
      await Promise.all(agents.map((a) => a.stop()));
      await rpc?.close();
    },
  };
}
