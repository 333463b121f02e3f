import { resolve } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import pino from 'pino';
import type { AppDefinition } from '../app/define.js';
import { loadApp } from '../app/load.js';
import type { Deployer, RunningDeployment } from '../deploy/deployer.js';
import { stopOnSignals } from '../deploy/process-signals.js';
import { contractDocument } from '../contract/schema.js';
import { openApiDocument } from '../edge/openapi.js';
import { runMicroservices } from '../deploy/microservices/control-plane.js';
import { deploymentStatus } from '../deploy/status.js';
import { runMonolith } from '../deploy/monolith.js';
import { ARCHITECTURES, loadTopology, type Topology, type TopologyOverrides } from '../deploy/topology.js';
import { EvolithError } from '../kernel/errors.js';

class CliError extends Error {}

const deployers: Partial<Record<string, Deployer>> = {
  monolith: runMonolith,
  microservices: runMicroservices,
};

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('must be a port number (0-65535)');
  return n;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

async function run(appDirArg: string, opts: TopologyOverrides & { storage?: string }): Promise<void> {
  const appDir = resolve(appDirArg);
  const topology = loadTopology(appDir, opts);
  const deploy = deployers[topology.architecture];
  if (!deploy) {
    const known = (ARCHITECTURES as readonly string[]).includes(topology.architecture);
    throw new CliError(
      known
        ? `architecture "${topology.architecture}" is not available in this version; available: ${Object.keys(deployers).join(', ')}`
        : `unknown architecture "${topology.architecture}"; choose one of: ${Object.keys(deployers).join(', ')}`,
    );
  }
  const app = await loadApp(appDir);
  const log = pino({ level: process.env.EVOLITH_LOG_LEVEL ?? 'info', base: { app: app.name } });
  const running = await deploy(app, appDir, topology, opts, log);
  printBanner(running);
  stopOnSignals(running, log);
}

function printBanner(running: RunningDeployment): void {
  const lines = [
    `evolith: ${running.services.length} ${running.architecture === 'monolith' ? 'services' : 'service groups'} running as ${running.architecture}`,
    ...running.services.map((s) => `  ${s.name.padEnd(12)} ${s.location}`),
    `evolith: listening on ${running.url}`,
  ];
  process.stdout.write(lines.join('\n') + '\n');
}

export async function main(argv: string[]): Promise<void> {
  const program = new Command('evolith')
    .description('Run one codebase of services as a monolith, microservices, a mesh or serverless functions.')
    .showHelpAfterError();

  program
    .command('run')
    .description('run an app in the architecture its topology (evolith.yaml) or --arch names')
    .argument('<appDir>', 'directory holding app.ts and evolith.yaml')
    .option('-a, --arch <name>', `architecture (${ARCHITECTURES.join(', ')})`)
    .option('-p, --port <n>', 'HTTP port of the edge (0 picks a free one)', port)
    .option('--host <address>', 'address the public edge listens on')
    .option('--internal-host <address>', 'address internal listeners (RPC, registry) bind to; default 127.0.0.1')
    .option('-d, --data <dir>', 'data directory for embedded databases')
    .option('--storage <kind>', 'sqlite, or a postgres:// URL (one schema per service)')
    .option('--schema-prefix <prefix>', 'prefix for PostgreSQL schema names')
    .option('--set <path=value>', 'override a topology value, e.g. config.payment.paymentExpiresMs=5000', collect, [])
    .action(async (appDir: string, o: Record<string, unknown>) => {
      await run(appDir, {
        architecture: o.arch as string | undefined,
        port: o.port as number | undefined,
        host: o.host as string | undefined,
        internalHost: o.internalHost as string | undefined,
        data: o.data === undefined ? undefined : resolve(o.data as string),
        storage: o.storage as string | undefined,
        schemaPrefix: o.schemaPrefix as string | undefined,
        set: o.set as string[],
      });
    });

  program
    .command('status')
    .description('what a running deployment of the app has where (every architecture); found without --data')
    .argument('<appDir>', 'directory holding app.ts and evolith.yaml')
    .option('-d, --data <dir>', 'only the deployment on this data directory')
    .action(async (appDirArg: string, o: { data?: string }) => {
      process.stdout.write(await deploymentStatus(resolve(appDirArg), o.data === undefined ? undefined : resolve(o.data)));
    });

  program
    .command('contracts')
    .description('print the JSON Schema of every method and event (or the edge as OpenAPI 3.1)')
    .argument('<appDir>', 'directory holding app.ts')
    .option('--openapi', 'print the HTTP edge as an OpenAPI 3.1 document')
    .action(async (appDir: string, o: { openapi?: boolean }) => {
      const app = await loadApp(resolve(appDir));
      const doc = o.openapi ? openApiDocument(app) : { app: app.name, contracts: app.services.map((s) => contractDocument(s.contract)) };
      process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
    });

  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CliError || err instanceof EvolithError) {
      process.stderr.write(`evolith: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}
