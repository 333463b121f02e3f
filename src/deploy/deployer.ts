import type { Logger } from 'pino';
import type { AppDefinition } from '../app/define.js';
import type { Topology, TopologyOverrides } from './topology.js';

/** A running deployment, as `evolith run` reports and stops it. */
export interface RunningDeployment {
  /** The public edge's URL. */
  readonly url: string;
  readonly architecture: string;
  /** What runs where, for the start-up banner. */
  readonly services: { name: string; location: string }[];
  stop(): Promise<void>;
}

/** An architecture: starts an app as the topology describes. */
export type Deployer = (app: AppDefinition, appDir: string, topology: Topology, overrides: TopologyOverrides, log: Logger) => Promise<RunningDeployment>;
