/**
 * The bookstore as `evolith deploy kubernetes` writes it, as a target of the acceptance suite:
 * every start generates the manifests for one cluster architecture into a directory of its own,
 * applies them to the local cluster simulation (test/support/cluster) in a namespace of their
 * own, and waits until every pod is ready by its own probes. The pods run the real pod entry
 * from a local directory laid out as the image (buildPodImage), each in its network namespace,
 * with this machine's PostgreSQL and NATS reached through the simulation's bridge.
 *
 * What the suite asks of "the server" maps onto the deployment as a whole: stopping it deletes
 * every workload, the edge first and then the service groups (each pod gets its SIGTERM, and the
 * exit code is 0 only if every container exited 0), killing it SIGKILLs every container, restarting it applies the same manifests
 * again (same schemas and stream, so the data survives). The suite talks to the edge pod's own
 * address, as it would to a process.
 *
 * The only edits to what the generator wrote: the topology's PostgreSQL schema prefix and NATS
 * stream are this start's own (runs share the machine's servers), and the pre-stop pause is 0
 * (`--set kubernetes.preStopSeconds=0`), since the suite times how soon a stopped server is gone.
 */
import { randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll } from 'vitest';
import YAML from 'yaml';
import type { BookstoreTarget, StartOverrides } from '../acceptance/bookstore.suite.js';
import { buildPodImage } from '../../src/deploy/kubernetes/build.js';
import { recordFile, type DeploymentRecord } from '../../src/deploy/deployment-record.js';
import type { Bookstore, BookstoreOptions, ExitInfo } from './bookstore-process.js';
import { repoRoot } from './bookstore-process.js';
import { ClusterSimulation, type ContainerExit } from './cluster/simulation.js';
import { deleteSharedStreams, SHARED_NATS, sharedNatsUnreachable } from './nats-server.js';
import { dropSchemas, postgresAvailable, postgresUrl } from './postgres.js';

const run = promisify(execFile);
const SERVICES = ['account', 'auth', 'payment', 'warehouse'];
/** The topology's default `kubernetes.dnsRefreshMs`, which the generated bookstore keeps. */
const DNS_REFRESH_MS = 2_000;
/** The machine's NATS as host and port. */
const [NATS_HOST = '127.0.0.1', NATS_PORT = '4222'] = SHARED_NATS.replace(/^nats:\/\//, '').split(':');

export type ClusterArchitecture = 'microservices' | 'mesh' | 'serverless';

/**
 * Waits out one DNS refresh of every pod. Ready pods are in DNS at once, but a pod that started
 * before its callees learns of them at its next lookup, every `kubernetes.dnsRefreshMs`; a
 * client of a fresh rollout on a cluster sees the same. A test's first calls must not race it.
 */
export function dnsPropagated(): Promise<void> {
  return new Promise((r) => setTimeout(r, DNS_REFRESH_MS + 500));
}

/** Why the bookstore cannot run in the cluster simulation here (not root, no PostgreSQL or NATS), or undefined. */
export async function clusterBookstoreUnavailable(): Promise<string | undefined> {
  return (await ClusterSimulation.unavailable()) ?? (await postgresAvailable()) ?? (await sharedNatsUnreachable());
}

interface Shared {
  sim: ClusterSimulation;
  dir: string;
  image: string;
}

/**
 * A target for `bookstoreSuite` running `arch` in one simulation shared by the file's starts;
 * everything it made (simulation, schemas, streams, directories) is removed when the file ends.
 */
export function clusterBookstoreTarget(arch: ClusterArchitecture): BookstoreTarget {
  let shared: Promise<Shared> | undefined;
  const schemas: string[] = [];
  const streams: string[] = [];
  afterAll(async () => {
    const s = await shared?.catch(() => undefined);
    await s?.sim.stop();
    if (s) rmSync(s.dir, { recursive: true, force: true });
    for (const prefix of schemas) await dropSchemas(prefix).catch(() => undefined);
    if (streams.length > 0) await deleteSharedStreams(streams);
  }, 120_000);

  const setUp = async (): Promise<Shared> => {
    const dir = mkdtempSync(join(tmpdir(), `evolith-k8s-${arch}-`));
    // Pods run as the manifests' user (10001): what they read must be readable by it.
    chmodSync(dir, 0o755);
    const image = join(dir, 'image');
    await buildPodImage(join(repoRoot, 'examples/bookstore'), image);
    const pg = new URL(postgresUrl());
    const sim = await ClusterSimulation.start({
      appImages: ['bookstore'],
      imageDir: image,
      externals: [
        { port: Number(pg.port || 5432), target: `${pg.hostname}:${pg.port || 5432}` },
        { port: Number(NATS_PORT), target: `${NATS_HOST}:${NATS_PORT}` },
      ],
      timeScale: 0.5,
    });
    return { sim, dir, image };
  };

  const start = async (overrides?: StartOverrides): Promise<Bookstore> => {
    shared ??= setUp();
    const { sim, dir } = await shared;
    const id = randomBytes(4).toString('hex');
    const namespace = `bk-${arch.slice(0, 4)}-${id}`;
    const schemaPrefix = `k8s_${id}_`;
    const stream = `EVOK8S_${id}`;
    schemas.push(schemaPrefix);
    streams.push(stream);
    const pg = new URL(postgresUrl());
    const hostPg = pg.toString();
    pg.hostname = sim.hostAddress;
    const out = join(dir, namespace);
    const set = { checkSerializable: true, 'kubernetes.preStopSeconds': 0, ...overrides?.set };
    const args = [join(repoRoot, 'bin/evolith.mjs'), 'deploy', 'kubernetes', 'examples/bookstore', '--out', out, '--arch', arch, '--namespace', namespace];
    args.push('--postgres-url', pg.toString(), '--nats-url', `nats://${sim.hostAddress}:${NATS_PORT}`);
    for (const [path, value] of Object.entries(set)) args.push('--set', `${path}=${value}`);
    await run(process.execPath, args, { cwd: repoRoot });
    const topologyFile = join(out, 'topology.yaml');
    const configMap = YAML.parse(readFileSync(topologyFile, 'utf8')) as { data: Record<string, string> };
    const topology = YAML.parse(configMap.data['evolith.yaml']!) as Record<string, Record<string, unknown>>;
    topology.storage = { ...topology.storage, schemaPrefix };
    topology.events = { ...topology.events, stream };
    configMap.data['evolith.yaml'] = YAML.stringify(topology);
    writeFileSync(topologyFile, YAML.stringify(configMap));

    // The suite waits for events through the deployment record's backlog source, as it does
    // for a local deployment: the stores and the stream, read from here.
    const dataDir = join(out, 'data');
    const record: DeploymentRecord = {
      pid: process.pid,
      architecture: `kubernetes/${arch}`,
      url: '',
      dataDir,
      appDir: join(repoRoot, 'examples/bookstore'),
      startedAt: Date.now(),
      services: [],
      events: {
        data: dataDir,
        storage: { driver: 'postgres', url: hostPg, schemaPrefix },
        events: { driver: 'nats', url: `nats://${NATS_HOST}:${NATS_PORT}`, stream },
        services: SERVICES,
      },
    };
    mkdirSync(dirname(recordFile(dataDir)), { recursive: true });
    writeFileSync(recordFile(dataDir), JSON.stringify(record));
    return deploy(sim, out, namespace, dataDir, { arch, storage: hostPg, schemaPrefix, set: overrides?.set, env: overrides?.env });
  };
  return { name: `kubernetes ${arch} · cluster simulation`, start };
}

async function deploy(sim: ClusterSimulation, out: string, namespace: string, dataDir: string, options: BookstoreOptions): Promise<Bookstore> {
  await sim.apply(out);
  await sim.waitReady(120_000, namespace);
  await dnsPropagated();
  const edge = sim.pods().find((p) => p.namespace === namespace && p.workload === 'edge' && p.ready);
  if (!edge) throw new Error(`no ready edge pod in ${namespace}`);
  return new ClusterBookstore(sim, out, namespace, dataDir, options, `http://${edge.ip}:8080`, edge.pid ?? 0);
}

class ClusterBookstore implements Bookstore {
  readonly options: BookstoreOptions & { dataDir: string };
  private exits: Promise<ExitInfo & { exits: ContainerExit[] }> | undefined;
  private done: (ExitInfo & { exits: ContainerExit[] }) | undefined;
  private lastOutput = '';

  constructor(
    private readonly sim: ClusterSimulation,
    private readonly out: string,
    private readonly namespace: string,
    readonly dataDir: string,
    options: BookstoreOptions,
    readonly baseUrl: string,
    readonly pid: number,
  ) {
    this.options = { ...options, dataDir };
  }

  output(): string {
    if (this.done) return this.lastOutput;
    return this.sim
      .pods()
      .filter((p) => p.namespace === this.namespace)
      .map((p) => `--- ${p.name}\n${this.sim.logs(p.name).join('\n')}`)
      .join('\n');
  }

  exited(): boolean {
    return this.done !== undefined;
  }

  waitExit(): Promise<ExitInfo> {
    if (!this.exits) return new Promise(() => undefined);
    return this.exits;
  }

  /** Deletes every workload of the deployment: each pod gets SIGTERM, SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 20_000): Promise<number | null> {
    const info = await this.remove('SIGTERM', timeoutMs);
    return info.code;
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    void this.remove(signal, signal === 'SIGKILL' ? 0 : 20_000);
  }

  private remove(signal: NodeJS.Signals, graceMs: number): Promise<ExitInfo & { exits: ContainerExit[] }> {
    this.exits ??= (async () => {
      const output = this.output();
      // A crash takes everything at once. A stop goes as the local deployments stop, and as an
      // operator drains a namespace: the edge first (it takes no new requests and answers those
      // in flight, which still call the service groups), then the groups.
      const exits =
        signal === 'SIGTERM'
          ? [
              ...(await this.sim.removeWorkloads(this.namespace, { signal, graceMs, only: ['edge'] })),
              ...(await this.sim.removeWorkloads(this.namespace, { signal, graceMs })),
            ]
          : await this.sim.removeWorkloads(this.namespace, { signal, graceMs });
      this.lastOutput = output + '\n' + exits.map((e) => `--- ${e.pod}/${e.container}: ${e.signal ?? `exit ${e.code}`}`).join('\n');
      const failed = exits.find((e) => e.code !== 0);
      const info = {
        exits,
        code: failed ? failed.code : 0,
        signal: exits.find((e) => e.signal !== null)?.signal ?? null,
      };
      this.done = info;
      return info;
    })();
    return this.exits;
  }

  async restart(overrides?: Partial<BookstoreOptions>): Promise<Bookstore> {
    if (overrides && Object.keys(overrides).length > 0) throw new Error('the cluster target restarts with the same manifests only');
    if (!this.done) await this.stop();
    return deploy(this.sim, this.out, this.namespace, this.dataDir, this.options);
  }
}
