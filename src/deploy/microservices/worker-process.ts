/**
 * The entry of a microservices worker process: the control plane bundles it with the app (see
 * bundle.ts) and starts it as `node <bundle> --registry <url> (--group <name> | --edge) --replica <n>`.
 */
import { Command, InvalidArgumentError } from 'commander';
import type { AppDefinition } from '../../app/define.js';
import type { TopologyOverrides } from '../topology.js';
import { exitWithSupervisor, stopOnSignals } from '../process-signals.js';
import { EvolithError } from '../../kernel/errors.js';
import { runMicroservicesWorker, type WorkerArgs } from './worker-main.js';
import { FATAL_EXIT } from './worker-process-exit.js';

function replica(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('must be a replica number');
  return n;
}

export async function main(app: AppDefinition): Promise<void> {
  exitWithSupervisor();
  const program = new Command('evolith-worker')
    .requiredOption('--app-dir <dir>', 'the app directory (evolith.yaml)')
    .requiredOption('--registry <url>', 'the control plane registry')
    .option('--group <name>', 'the service group this process hosts')
    .option('--edge', 'run the HTTP edge instead of a service group')
    .option('--replica <n>', 'replica number', replica, 0)
    .option('--pool', 'serverless: start ahead, load the app, and wait to be told which function to run')
    .exitOverride();
  program.parse(process.argv);
  const o = program.opts<WorkerArgs & { appDir: string; pool?: boolean }>();
  const overrides = JSON.parse(process.env.EVOLITH_TOPOLOGY_OVERRIDES ?? '{}') as TopologyOverrides;
  let started: Awaited<ReturnType<typeof runMicroservicesWorker>>;
  try {
    if (o.pool) {
      // A generic runtime: the app is loaded (this bundle), the backends' code too; it holds no
      // credential and serves nothing until the platform gives it a function to run.
      const { takeOn } = await import('../serverless/pool-runtime.js');
      const role = await takeOn(app, o.appDir, overrides);
      started = await runMicroservicesWorker(app, o.appDir, overrides, { registry: o.registry, group: role.group, replica: role.replica }, role);
    } else {
      started = await runMicroservicesWorker(app, o.appDir, overrides, o);
    }
  } catch (err) {
    // One line that says why, and an exit code that tells the supervisor not to try again.
    process.stderr.write(`evolith: ${(err as Error).message ?? String(err)}\n`);
    if (!(err instanceof EvolithError)) process.stderr.write(`${(err as Error).stack ?? ''}\n`);
    process.exit(FATAL_EXIT);
  }
  const { label, worker, log } = started;
  process.stdout.write(`evolith: ${label} serving on ${worker.url ?? worker.address}\n`);
  stopOnSignals(worker, log);
}
