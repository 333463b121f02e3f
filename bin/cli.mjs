// @ts-check
/**
 * The `evolith` command (started by bin/evolith.mjs once the platform is known to be supported). Arguments are parsed here, in plain JavaScript, before any of Evolith,
 * the TypeScript loader or the runtime is loaded: `--version`, `--help` and a wrong argument are
 * answered at once. Each command then loads what it needs (src/cli/commands.ts).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { commandsModule, fromSource, useTypeScript } from './loader.mjs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
const ARCHITECTURES = ['monolith', 'microservices', 'mesh', 'serverless', 'kubernetes'];

/** A mistake found before anything is loaded: one line on stderr, exit code 2. */
class UsageError extends Error {}

/** @returns {Promise<typeof import('../src/cli/commands.ts')>} */
async function commands() {
  // In the repository the commands are TypeScript sources; an installed package runs dist/.
  if (fromSource) await useTypeScript();
  return import(commandsModule);
}

/** @param {string} value */
function port(value) {
  const n = Number(value);
  if (value.trim() === '' || !Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('must be a port number (0-65535)');
  return n;
}

/** @param {string} value @param {string[]} previous */
function collect(value, previous) {
  return [...previous, value];
}

/** The app directory, checked before anything heavy loads. @param {string} dir */
function appDirectory(dir) {
  const path = resolve(dir);
  if (!existsSync(path)) throw new UsageError(`app directory ${path} does not exist`);
  if (!statSync(path).isDirectory()) throw new UsageError(`${path} is not a directory`);
  return path;
}

const program = new Command('evolith')
  .description('Run one codebase of services as a monolith, microservices, a mesh or serverless functions.')
  .version(pkg.version, '-v, --version', 'print the version of Evolith')
  .showHelpAfterError()
  // Usage errors exit with 2, like every other mistake the command reports; help and --version with 0.
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));

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
  .action(async (appDir, o) => {
    const dir = appDirectory(appDir);
    await (await commands()).run(dir, {
      architecture: o.arch,
      port: o.port,
      host: o.host,
      internalHost: o.internalHost,
      data: o.data === undefined ? undefined : resolve(o.data),
      storage: o.storage,
      schemaPrefix: o.schemaPrefix,
      set: o.set,
    });
  });

program
  .command('status')
  .description('what a running deployment of the app has where (every architecture); found without --data')
  .argument('<appDir>', 'directory holding app.ts and evolith.yaml')
  .option('-d, --data <dir>', 'only the deployment on this data directory')
  .action(async (appDir, o) => {
    await (await commands()).status(appDirectory(appDir), { data: o.data });
  });

program
  .command('metering')
  .description("a serverless deployment's usage per function and its cost, beside what always-on processes would cost")
  .argument('<appDir>', 'directory holding app.ts and evolith.yaml')
  .option('-d, --data <dir>', 'only the deployment on this data directory')
  .option('--json', 'print the report as JSON')
  .action(async (appDir, o) => {
    await (await commands()).metering(appDirectory(appDir), { data: o.data, json: o.json === true });
  });

program
  .command('contracts')
  .description("summarise every service's methods and events (or print their JSON Schema, or the edge as OpenAPI 3.1)")
  .argument('<appDir>', 'directory holding app.ts')
  .addOption(new Option('--json', 'print the JSON Schema of every method and event').conflicts('openapi'))
  .addOption(new Option('--openapi', 'print the HTTP edge as an OpenAPI 3.1 document'))
  .action(async (appDir, o) => {
    const dir = appDirectory(appDir);
    await (await commands()).contracts(dir, o.openapi ? 'openapi' : o.json ? 'json' : 'summary');
  });

program
  .command('build')
  .description('bundle the app, Evolith and the pod entry into <dir>/pod.mjs (+ chunks), as a container image runs them')
  .argument('<appDir>', 'directory holding app.ts and evolith.yaml')
  .requiredOption('-o, --out <dir>', 'where pod.mjs and its chunks are written')
  .action(async (appDir, o) => {
    await (await commands()).build(appDirectory(appDir), { out: resolve(o.out) });
  });

program
  .command('init')
  .description('create a new app with one service, its HTTP route, evolith.yaml and a test')
  .argument('<dir>', 'a new or empty directory')
  .option('--name <name>', "the app's name (default: the directory's)")
  .option('--evolith-version <spec>', `how the app's package.json names evolith (default: ^${pkg.version})`)
  .action(async (dir, o) => {
    await (await commands()).init(dir, { name: o.name, evolithVersion: o.evolithVersion });
  });

const deploy = program.command('deploy').description('generate what deploys an app onto a platform');
deploy
  .command('kubernetes')
  .description('write Kubernetes manifests (Istio in the mesh, Knative when serverless), the image Dockerfile and credentials')
  .argument('<appDir>', 'directory holding app.ts and evolith.yaml')
  .requiredOption('-o, --out <dir>', 'directory to write (new, empty, or written by an earlier run)')
  .option('-a, --arch <name>', 'microservices, mesh or serverless (default: the topology\'s, or microservices)')
  .option('--namespace <ns>', "namespace of every object (default: the app's name)")
  .option('--image <ref>', 'the image the pods run (default: <app>:latest)')
  .option('--postgres-url <url>', 'PostgreSQL the stores use (postgres://...)')
  .option('--nats-url <url>', 'NATS JetStream the events use (nats://...)')
  .option('--with-backends', 'run PostgreSQL and NATS in the namespace instead')
  .option('--cluster-domain <domain>', 'the cluster DNS domain (default cluster.local)')
  .option('--transport <kind>', 'tcp or http2 between service groups (default: tcp for microservices, http2 otherwise)')
  .option('--new-authority', 'issue credentials from a new authority (running pods must restart)')
  .option('--set <path=value>', 'override a topology value, e.g. kubernetes.preStopSeconds=0', collect, [])
  .action(async (appDir, o) => {
    await (await commands()).deployKubernetes(appDirectory(appDir), {
      out: o.out,
      arch: o.arch,
      namespace: o.namespace,
      image: o.image,
      postgresUrl: o.postgresUrl,
      natsUrl: o.natsUrl,
      withBackends: o.withBackends === true,
      clusterDomain: o.clusterDomain,
      transport: o.transport,
      newAuthority: o.newAuthority === true,
      set: o.set,
    });
  });

try {
  await program.parseAsync(process.argv);
} catch (err) {
  const message = err instanceof UsageError ? err.message : (await commands()).userFailure(err);
  if (message === undefined) throw err;
  process.stderr.write(`evolith: ${message}\n`);
  process.exit(2);
}
