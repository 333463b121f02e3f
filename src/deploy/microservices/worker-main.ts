/**
 * One process of a microservices deployment (started by the control plane through the worker
 * bundle, see worker-process.ts): the shared worker runtime with the microservices envelope,
 * and the credentials the control plane sends it.
 */
import type { Logger } from 'pino';
import { createLogger } from '../../observe/logger.js';
import type { AppDefinition } from '../../app/define.js';
import { ConfigError } from '../../kernel/errors.js';
import { startWorker, type RunningWorker } from '../../worker/worker.js';
import { loadTopology, withVersionConfig, type TopologyOverrides } from '../topology.js';
import { InternalPlane } from '../../auth/internal-plane.js';
import { onRenewal, receiveCredentials } from './credentials-channel.js';
import { microservicesEnvelope } from './envelope.js';
import { meshEnvelope, meshInstanceFromEnv } from '../mesh/envelope.js';
import { serviceGroups } from './groups.js';
import type { CredentialBundle } from '../../auth/credentials.js';
import type { PreparedBackends } from '../../worker/prepared-backends.js';
import { serverlessFromEnv, serverlessVariant } from '../serverless/instance.js';

export interface WorkerArgs {
  registry: string;
  group?: string;
  edge?: boolean;
  replica: number;
}

export async function runMicroservicesWorker(
  app: AppDefinition,
  appDir: string,
  overrides: TopologyOverrides,
  args: WorkerArgs,
  /** A pool runtime's credentials and the moment it took its role on (else they come by IPC, and the process start). */
  given?: { credentials: CredentialBundle; startedAt: number; backends?: PreparedBackends },
): Promise<{ label: string; worker: RunningWorker; log: Logger }> {
  const startedAt = given?.startedAt ?? Date.now() - process.uptime() * 1000;
  const loaded = loadTopology(appDir, overrides);
  // Serverless: the function this instance runs (its limits), or the edge's activators.
  const serverless = serverlessFromEnv();
  // In a mesh, the control plane says where this worker's proxy is, and which version it runs.
  const mesh = meshInstanceFromEnv();
  const topology = mesh && args.group ? withVersionConfig(loaded, args.group, mesh.version) : loaded;
  const label = `${args.edge ? 'edge' : args.group}#${args.replica}`;
  const log = createLogger({ app: app.name, process: label });
  let services: readonly string[] = [];
  if (!args.edge) {
    const group = serviceGroups(app, topology).find((g) => g.name === args.group);
    if (!group) throw new ConfigError(`no service group named ${args.group}`);
    services = group.services;
  }
  const plane = new InternalPlane(given?.credentials ?? (await receiveCredentials()));
  onRenewal((token) => {
    try {
      plane.credential.renewed(token);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'refused a credential renewal');
    }
  });
  const worker = await startWorker({
    app,
    appDir,
    topology,
    overrides,
    log,
    architecture: mesh ? 'mesh' : serverless ? 'serverless' : 'microservices',
    services,
    edge: args.edge === true,
    crossProcess: true,
    backends: given?.backends,
    topologyErrorsReportedElsewhere: true,
    envelope: (mesh ? meshEnvelope : microservicesEnvelope)({
      topology,
      plane,
      registryUrl: args.registry,
      role: args.edge ? { kind: 'edge' } : { kind: 'group', group: args.group! },
      replica: args.replica,
      mesh: mesh!,
      variant: serverless && serverlessVariant(serverless, startedAt, log),
    }),
  });
  return { label, worker, log };
}
