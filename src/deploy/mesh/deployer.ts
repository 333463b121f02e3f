/**
 * Mesh on one machine: the microservices deployment (registry, supervisor, one process per
 * service group replica, the edge) with a proxy beside each instance — or one per machine —
 * and the mesh's control plane: certificate authority, traffic policy, proxy configuration.
 */
import type { Logger } from 'pino';
import type { AppDefinition } from '../../app/define.js';
import type { RunningDeployment } from '../deployer.js';
import { runMicroservices } from '../microservices/control-plane.js';
import type { Topology, TopologyOverrides } from '../topology.js';
import { MeshControl } from './mesh-control.js';

export async function runMesh(
  app: AppDefinition,
  appDir: string,
  topology: Topology,
  overrides: TopologyOverrides,
  log: Logger,
  options: { readyTimeoutMs?: number } = {},
): Promise<RunningDeployment & { readonly registryUrl: string }> {
  const mesh = await MeshControl.create(app, appDir, topology, log);
  try {
    return await runMicroservices(app, appDir, topology, overrides, log, { ...options, mesh });
  } catch (err) {
    // A start refused early (a port in use, a data directory taken) leaves no sockets directory behind.
    await mesh.stop();
    throw err;
  }
}
