/**
 * What the mesh's control plane and its proxies say to each other, over each proxy's private
 * IPC channel (its supervisor's): never in an environment, on disk or on a port, where another
 * process could read a key.
 *
 *   control plane → proxy   start      credential, trust, certificates, instances, policy snapshot
 *                           identity   renewed certificates (rotation)
 *                           instances  the app instances the proxy serves (node mode: all of this machine's)
 *                           config     a new policy snapshot, versioned
 *   proxy → control plane   ack/nack   a snapshot applied, or refused with the reason
 *                           status     where it listens, which certificate each identity holds
 */
import type { CredentialBundle } from '../auth/credentials.js';
import type { IssuedCertificate } from './identity.js';
import type { AppShape } from './policy.js';
import type { ProxiedInstance } from './sidecar.js';

export const MESH_START = 'evolith:mesh-start';
export const MESH_IDENTITY = 'evolith:mesh-identity';
export const MESH_INSTANCES = 'evolith:mesh-instances';
export const MESH_CONFIG = 'evolith:mesh-config';
export const MESH_ACK = 'evolith:mesh-ack';
export const MESH_NACK = 'evolith:mesh-nack';
export const MESH_STATUS = 'evolith:mesh-status';

/** A versioned policy snapshot: the normalized document and what it is checked against. */
export interface PolicySnapshot {
  readonly version: number;
  readonly document: unknown;
  readonly shape: AppShape;
}

export interface MeshIdentity {
  readonly trustPem: string;
  /** Per app instance (`warehouse#0`): the certificate its proxy presents for it. */
  readonly certificates: Readonly<Record<string, IssuedCertificate>>;
}

export interface MeshStartMessage {
  readonly type: typeof MESH_START;
  readonly credentials: CredentialBundle;
  readonly app: string;
  readonly registryUrl: string;
  readonly internalHost: string;
  readonly identity: MeshIdentity;
  readonly instances: readonly ProxiedInstance[];
  readonly config: PolicySnapshot;
}

export interface MeshIdentityMessage {
  readonly type: typeof MESH_IDENTITY;
  readonly identity: MeshIdentity;
}

export interface MeshInstancesMessage {
  readonly type: typeof MESH_INSTANCES;
  readonly instances: readonly ProxiedInstance[];
  readonly identity: MeshIdentity;
}

export interface MeshConfigMessage {
  readonly type: typeof MESH_CONFIG;
  readonly config: PolicySnapshot;
}

export type ToProxy = MeshStartMessage | MeshIdentityMessage | MeshInstancesMessage | MeshConfigMessage;

/** What a proxy reports about one identity it serves. */
export interface ProxiedStatus {
  readonly instance: string;
  readonly inbound: string;
  /** Where the app serves, behind this proxy (none for the edge). */
  readonly appSocket: string | undefined;
  readonly ids: readonly string[];
  readonly serial: string;
  readonly notAfter: number;
}

export type FromProxy =
  | { readonly type: typeof MESH_ACK; readonly version: number }
  | { readonly type: typeof MESH_NACK; readonly version: number; readonly reason: string }
  | { readonly type: typeof MESH_STATUS; readonly metrics: string; readonly configVersion: number; readonly proxied: readonly ProxiedStatus[] };
