import type { Logger } from 'pino';
import type { AppDefinition } from '../app/define.js';
import type { Runtime } from '../kernel/runtime.js';
import { startWorker, type RunningWorker } from '../worker/worker.js';
import { claimDataDir } from './deployment-record.js';
import type { RunningDeployment } from './deployer.js';
import type { Topology, TopologyOverrides } from './topology.js';

export interface RunningApp extends RunningDeployment {
  readonly runtime: Runtime;
}

/**
 * Monolith: one worker hosts every service and the edge; every chain is a function call on the
 * local host after validation. No envelope: nothing leaves the process.
 */
export async function runMonolith(app: AppDefinition, appDir: string, topology: Topology, overrides: TopologyOverrides, log: Logger): Promise<RunningApp> {
  const claim = claimDataDir({
    architecture: 'monolith',
    dataDir: topology.data,
    appDir,
    // One process: events are delivered in it, whatever bus the topology names for others.
    events: { data: topology.data, storage: topology.storage, events: 'memory', services: app.services.map((s) => s.contract.name) },
  });
  let worker: RunningWorker;
  try {
    worker = await startMonolith(app, appDir, topology, overrides, log);
  } catch (err) {
    claim.release();
    throw err;
  }
  const { runtime } = worker;
  const services = [...runtime.hosts.values()].map((h) => ({ name: h.name, location: h.store?.location ?? '-' }));
  claim.update({ url: worker.url!, services });
  return {
    url: worker.url!,
    architecture: 'monolith',
    services,
    runtime,
    async stop() {
      await worker.stop();
      claim.release();
    },
  };
}

function startMonolith(app: AppDefinition, appDir: string, topology: Topology, overrides: TopologyOverrides, log: Logger): Promise<RunningWorker> {
  return startWorker({
    app,
    appDir,
    topology,
    overrides,
    log,
    architecture: 'monolith',
    services: app.services.map((s) => s.contract.name),
    edge: true,
    crossProcess: false,
  });
}
