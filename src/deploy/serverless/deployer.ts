/**
 * Serverless on one machine: the microservices control plane (registry, supervisor, the edge,
 * credentials) with the serverless platform deciding which function instances run: none until
 * called (after the first minute), as many as the load needs, each in a one-shot process taken
 * from a pool of started runtimes.
 */
import type { Logger } from 'pino';
import type { AppDefinition } from '../../app/define.js';
import type { RunningDeployment } from '../deployer.js';
import { runMicroservices } from '../microservices/control-plane.js';
import { serviceGroups } from '../microservices/groups.js';
import type { Topology, TopologyOverrides } from '../topology.js';
import { ServerlessPlatform } from './platform.js';

export async function runServerless(
  app: AppDefinition,
  appDir: string,
  topology: Topology,
  overrides: TopologyOverrides,
  log: Logger,
  options: { readyTimeoutMs?: number } = {},
): Promise<RunningDeployment & { readonly registryUrl: string }> {
  const serverless = ServerlessPlatform.create(serviceGroups(app, topology), topology, log);
  return runMicroservices(app, appDir, topology, overrides, log, { ...options, serverless });
}
