/**
 * What the `evolith` commands do. bin/evolith.mjs parses the arguments (in plain JavaScript, so a
 * wrong argument is answered before any of this loads) and then calls these. Each command
 * imports the parts of Evolith it needs when it runs: `contracts` never loads a deployer.
 */
import { resolve } from 'node:path';
import type { RunningDeployment } from '../deploy/deployer.js';
import type { TopologyOverrides } from '../deploy/topology.js';
import { EvolithError } from '../kernel/errors.js';
import { CliError } from './cli-error.js';

export { CliError };

/** The one-line message for a failure the user can fix, or undefined for a bug (which keeps its stack). */
export function userFailure(err: unknown): string | undefined {
  return err instanceof CliError || err instanceof EvolithError ? err.message : undefined;
}

export interface RunOptions extends TopologyOverrides {
  storage?: string;
}

/** `evolith run`: starts the app in the architecture its topology (or --arch) names, until a signal stops it. */
export async function run(appDirArg: string, opts: RunOptions): Promise<void> {
  const appDir = resolve(appDirArg);
  const [{ ARCHITECTURES, loadTopology }, { loadApp }, { createLogger }, { stopOnSignals }] = await Promise.all([
    import('../deploy/topology.js'),
    import('../app/load.js'),
    import('../observe/logger.js'),
    import('../deploy/process-signals.js'),
  ]);
  const topology = loadTopology(appDir, opts);
  const deployers: Record<string, () => Promise<import('../deploy/deployer.js').Deployer>> = {
    monolith: async () => (await import('../deploy/monolith.js')).runMonolith,
    microservices: async () => (await import('../deploy/microservices/control-plane.js')).runMicroservices,
    mesh: async () => (await import('../deploy/mesh/deployer.js')).runMesh,
    serverless: async () => (await import('../deploy/serverless/deployer.js')).runServerless,
  };
  const available = Object.keys(deployers);
  if (topology.architecture === 'kubernetes') {
    throw new CliError(
      'kubernetes is a deployment target, not a local architecture: use evolith deploy kubernetes <app> --out <dir> --arch microservices|mesh|serverless',
    );
  }
  const load = deployers[topology.architecture];
  if (!load) {
    const known = (ARCHITECTURES as readonly string[]).includes(topology.architecture);
    throw new CliError(
      known
        ? `architecture "${topology.architecture}" is not available in this version; available: ${available.join(', ')}`
        : `unknown architecture "${topology.architecture}"; choose one of: ${available.join(', ')}`,
    );
  }
  const [app, deploy] = await Promise.all([loadApp(appDir), load()]);
  const log = createLogger({ app: app.name });
  const running = await deploy(app, appDir, topology, opts, log);
  process.stdout.write(banner(running));
  stopOnSignals(running, log);
}

function banner(running: RunningDeployment): string {
  const lines = [
    `evolith: ${running.services.length} ${running.architecture === 'monolith' ? 'services' : 'service groups'} running as ${running.architecture}`,
    ...running.services.map((s) => `  ${s.name.padEnd(12)} ${s.location}`),
    `evolith: listening on ${running.url}`,
  ];
  return lines.join('\n') + '\n';
}

/** `evolith status`: what a running deployment of the app has where. */
export async function status(appDirArg: string, opts: { data?: string }): Promise<void> {
  const { deploymentStatus } = await import('../deploy/status.js');
  process.stdout.write(await deploymentStatus(resolve(appDirArg), opts.data === undefined ? undefined : resolve(opts.data)));
}

/** `evolith metering`: usage and cost per function of the app's running serverless deployment(s). */
export async function metering(appDirArg: string, opts: { data?: string; json: boolean }): Promise<void> {
  const { deploymentMetering } = await import('../deploy/serverless/metering-report.js');
  process.stdout.write(await deploymentMetering(resolve(appDirArg), opts.data === undefined ? undefined : resolve(opts.data), opts.json));
}

/** `evolith contracts`: a readable summary (default), the JSON Schema of everything (`json`), or the edge as OpenAPI. */
export async function contracts(appDirArg: string, format: 'summary' | 'json' | 'openapi'): Promise<void> {
  const { loadApp } = await import('../app/load.js');
  const app = await loadApp(resolve(appDirArg));
  if (format === 'openapi') {
    const { openApiDocument } = await import('../edge/openapi.js');
    process.stdout.write(JSON.stringify(openApiDocument(app), null, 2) + '\n');
    return;
  }
  const { contractDocument } = await import('../contract/schema.js');
  const docs = app.services.map((s) => contractDocument(s.contract));
  if (format === 'json') {
    process.stdout.write(JSON.stringify({ app: app.name, contracts: docs }, null, 2) + '\n');
    return;
  }
  const { contractsSummary } = await import('./contracts-summary.js');
  const descriptions = Object.fromEntries(app.services.map((s) => [s.contract.name, s.contract.description]));
  process.stdout.write(contractsSummary(app.name, docs, descriptions));
}

/** `evolith build`: the bundle a container image runs (`node pod.mjs`), written to `opts.out`. */
export async function build(appDirArg: string, opts: { out: string }): Promise<void> {
  const [{ buildPod }, { relative }] = await Promise.all([import('../deploy/kubernetes/build.js'), import('node:path')]);
  const bundle = await buildPod(resolve(appDirArg), resolve(opts.out));
  const shown = relative(process.cwd(), bundle);
  process.stdout.write(`evolith: built ${shown.startsWith('..') ? bundle : shown}\n`);
}

/** `evolith init`: a new one-service app in `dir`, and what to do next. */
export async function init(dirArg: string, options: { name?: string; evolithVersion?: string }): Promise<void> {
  const [{ init: write }, { readFileSync }, { relative }] = await Promise.all([import('./init.js'), import('node:fs'), import('node:path')]);
  const evolith = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string; devDependencies?: Record<string, string> };
  const files = write(dirArg, evolith, options);
  const dir = relative(process.cwd(), resolve(dirArg)) || '.';
  process.stdout.write(
    [
      `evolith: created ${files.length} files in ${dir}:`,
      ...files.map((f) => `  ${f}`),
      '',
      'next:',
      ...(dir === '.' ? [] : [`  cd ${dir}`]),
      '  npm install',
      '  npm start     # serves on http://127.0.0.1:8080 (evolith.yaml)',
      '  npm test      # runs the app in every architecture',
      '',
    ].join('\n'),
  );
}

export interface DeployKubernetesOptions {
  out: string;
  arch?: string;
  namespace?: string;
  image?: string;
  postgresUrl?: string;
  natsUrl?: string;
  withBackends?: boolean;
  clusterDomain?: string;
  transport?: string;
  newAuthority?: boolean;
  /** `path=value` topology overrides, as `evolith run --set`. */
  set?: string[];
}

/**
 * `evolith deploy kubernetes`: writes the app's manifests, image files and credentials into
 * `--out`, validates the objects, and says what was written and what to run next. Objects
 * that fail validation are still written (to be read), and the command then fails.
 */
export async function deployKubernetes(appDirArg: string, opts: DeployKubernetesOptions): Promise<void> {
  const appDir = resolve(appDirArg);
  const [{ loadTopology }, { loadApp }, { kubernetesManifests }, { checkOutputDirectory, outputAuthority, writeOutput }, { relative }] = await Promise.all([
    import('../deploy/topology.js'),
    import('../app/load.js'),
    import('../deploy/kubernetes/manifests.js'),
    import('../deploy/kubernetes/write.js'),
    import('node:path'),
  ]);
  const out = resolve(opts.out);
  checkOutputDirectory(out);
  const topology = loadTopology(appDir, { set: opts.set ?? [] });
  const app = await loadApp(appDir);
  const authority = outputAuthority(out, opts.newAuthority === true);
  const manifests = kubernetesManifests(app, topology, {
    appDir,
    architecture: opts.arch,
    namespace: opts.namespace,
    image: opts.image,
    postgresUrl: opts.postgresUrl,
    natsUrl: opts.natsUrl,
    withBackends: opts.withBackends,
    clusterDomain: opts.clusterDomain,
    transport: opts.transport,
    authority: authority.authority,
    backendPassword: authority.backendPassword,
    outDir: out,
  });
  const written = writeOutput(out, manifests, authority);

  const { validateObjects, checkWorkloads } = await import('../deploy/kubernetes/validate.js');
  const schema = await validateObjects(manifests.objects);
  const lint = checkWorkloads(manifests.objects);
  // Paths as the user would type them: relative below the working directory, absolute elsewhere.
  const show = (p: string) => {
    const r = relative(process.cwd(), p);
    return r === '' ? '.' : r.startsWith('..') ? p : r;
  };
  const shown = show(out);
  const root = show(manifests.projectRoot);
  const kinds = new Map<string, number>();
  for (const o of manifests.objects) kinds.set(o.kind, (kinds.get(o.kind) ?? 0) + 1);
  const lines = [
    `evolith: ${app.name} as ${manifests.architecture} on Kubernetes (namespace ${manifests.namespace}, transport ${manifests.transport}); wrote ${written.length} files to ${shown}/`,
    ...written.map((f, i) => `  ${i === written.length - 1 ? '└──' : '├──'} ${f}${f === '.authority.json' ? (authority.created ? '   (new authority: keep it private, never apply it)' : '   (authority kept from the earlier run)') : ''}`),
    '',
    `objects (${manifests.objects.length}):`,
    ...[...kinds].sort(([a], [b]) => a.localeCompare(b)).map(([kind, n]) => `  ${String(n).padStart(3)} ${kind}`),
    '',
  ];
  if (manifests.warnings.length > 0) lines.push('warnings:', ...manifests.warnings.map((w) => `  ${w}`), '');
  if (!schema.validated) {
    lines.push(
      `validation: not validated against the Kubernetes, Istio and Knative schemas (${schema.missing.join(', ')} not installed).`,
      `  to validate: npm install --no-save kubernetes-models @kubernetes-models/istio @kubernetes-models/knative and run again,`,
      `  or: kubectl apply -k ${shown} --dry-run=server`,
    );
  } else if (schema.problems.length === 0) {
    lines.push(`validation: every object matches its schema (Kubernetes, Istio, Knative)`);
  } else {
    lines.push(`validation: ${schema.problems.length} schema problems:`, ...schema.problems.map((p) => `  ${p}`));
  }
  lines.push(lint.length === 0 ? 'checks: every container has probes, resources and a locked-down security context; every reference resolves' : `checks: ${lint.length} problems:`);
  lines.push(...lint.map((p) => `  ${p}`), '');
  lines.push(
    'next:',
    `  docker build -f ${shown}/Dockerfile -t ${manifests.image} ${root}`,
    `  (push ${manifests.image} where the cluster pulls images from)`,
    ...(manifests.architecture === 'mesh' ? ['  (the cluster needs Istio installed)'] : []),
    ...(manifests.architecture === 'serverless' ? ['  (the cluster needs Knative Serving and Knative Eventing installed)'] : []),
    `  kubectl apply -k ${shown}`,
    '',
  );
  process.stdout.write(lines.join('\n'));
  if (schema.problems.length > 0 || lint.length > 0) {
    throw new CliError(`the generated objects have ${schema.problems.length + lint.length} problems (listed above); they were written to ${shown} for inspection`);
  }
}
