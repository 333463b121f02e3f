/**
 * The bookstore as `evolith deploy kubernetes` writes it, run in the local cluster simulation
 * (test/support/cluster): the real pod entry from a local image directory (buildPodImage), each
 * pod in its own network namespace, finding the others through the simulation's DNS, ready by
 * its own probes, PostgreSQL and NATS on this machine reached through the bridge's host address.
 *
 * The only change to what the generator wrote: the ConfigMap's topology gets a schema prefix and
 * stream of this run's own, since every run shares the machine's PostgreSQL and NATS.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { buildPodImage } from '../../src/deploy/kubernetes/build.js';
import { ClusterSimulation } from '../support/cluster/simulation.js';
import { expectSettled } from '../support/bookstore.js';
import { eventually } from '../support/eventually.js';
import { deleteSharedStreams, SHARED_NATS, sharedNatsUnreachable } from '../support/nats-server.js';
import { dropSchemas, postgresAvailable, postgresUrl } from '../support/postgres.js';
import { dnsPropagated } from '../support/cluster-bookstore.js';

const NAME = 'kubernetes: the bookstore in the cluster simulation';
const repoRoot = resolve(import.meta.dirname, '../..');
const reason = (await ClusterSimulation.unavailable()) ?? (await postgresAvailable()) ?? (await sharedNatsUnreachable());
if (reason) console.warn(`[acceptance] skipping "${NAME}": ${reason}`);

const LOGIN =
  '/oauth/token?grant_type=password&username=icyfenix&password=MFfTW3uNI4eqhwDkG7HP9p2mzEUu%2Fr2&client_id=bookstore_frontend&client_secret=bookstore_secret';

describe.skipIf(reason !== undefined)(NAME, () => {
  let dir: string;
  let image: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'evolith-k8s-sim-'));
    // Pods run as uid 10001 (the manifests' runAsUser): the image directory must be readable by it.
    chmodSync(dir, 0o755);
    image = join(dir, 'image');
    await buildPodImage(join(repoRoot, 'examples/bookstore'), image);
  }, 120_000);

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  describe.each(['microservices', 'mesh', 'serverless'] as const)('%s', (arch) => {
    const run = randomBytes(4).toString('hex');
    const namespace = `bk-${arch.slice(0, 4)}-${run}`;
    const schemaPrefix = `k8ssim_${run}_`;
    const stream = `EVOK8SSIM_${run}`;
    let sim: ClusterSimulation;
    let edge = '';
    let configMapTopology = '';

    beforeAll(async () => {
      const pg = new URL(postgresUrl());
      const [natsHost, natsPort] = SHARED_NATS.replace(/^nats:\/\//, '').split(':');
      sim = await ClusterSimulation.start({
        appImages: ['bookstore'],
        imageDir: image,
        externals: [
          { port: Number(pg.port || 5432), target: `${pg.hostname}:${pg.port || 5432}` },
          { port: Number(natsPort ?? 4222), target: `${natsHost}:${natsPort ?? 4222}` },
        ],
        timeScale: 0.5,
      });
      pg.hostname = sim.hostAddress;
      const out = join(dir, `manifests-${arch}`);
      execFileSync(
        process.execPath,
        [
          join(repoRoot, 'bin/evolith.mjs'),
          'deploy',
          'kubernetes',
          'examples/bookstore',
          '--out',
          out,
          '--arch',
          arch,
          '--namespace',
          namespace,
          '--postgres-url',
          pg.toString(),
          '--nats-url',
          `nats://${sim.hostAddress}:${natsPort ?? 4222}`,
        ],
        { cwd: repoRoot, encoding: 'utf8' },
      );
      const topologyFile = join(out, 'topology.yaml');
      const configMap = YAML.parse(readFileSync(topologyFile, 'utf8')) as { data: Record<string, string> };
      const topology = YAML.parse(configMap.data['evolith.yaml']!) as Record<string, any>;
      topology.storage = { ...topology.storage, schemaPrefix };
      topology.events = { ...topology.events, stream };
      configMap.data['evolith.yaml'] = YAML.stringify(topology);
      configMapTopology = configMap.data['evolith.yaml'];
      writeFileSync(topologyFile, YAML.stringify(configMap));

      await sim.apply(out);
      await sim.waitReady(120_000);
      await dnsPropagated();
      edge = sim.url('edge', 80, namespace);
    }, 180_000);

    afterAll(async () => {
      await sim?.stop();
      await dropSchemas(schemaPrefix).catch(() => undefined);
      await deleteSharedStreams([stream]);
    }, 60_000);

    it('every workload runs as its manifests say', () => {
      const workloads = new Set(sim.pods().map((p) => p.workload));
      for (const w of ['edge', 'account', 'auth', 'payment', 'warehouse']) expect(workloads).toContain(w);
      for (const p of sim.pods()) expect(p.containers[0]!.runAs).toBe('uid 10001 gid 10001');
    });

    /** Every pod's last log lines, for a failure's message. */
    const podLogs = (): string => sim.pods().map((p) => `--- ${p.name} ---\n${sim.logs(p.name).slice(-12).join('\n')}`).join('\n');

    it('the edge answers from the warehouse, a login travels edge → auth → account, and a settlement crosses pods', async () => {
      await flow().catch((err: Error) => {
        throw new Error(`${err.message}\n${podLogs()}`);
      });
    }, 60_000);

    const flow = async (): Promise<void> => {
      const products = await fetch(`${edge}/restful/products`);
      expect(products.status).toBe(200);
      const list = (await products.json()) as { id: number }[];
      expect(list.length).toBeGreaterThan(0);
      const token = await fetch(`${edge}${LOGIN}`);
      expect(token.status, await token.clone().text()).toBe(200);
      const { access_token } = (await token.json()) as { access_token: string };
      await expectSettled(edge, access_token, list[0]!.id);
    };

    it('an edit of the topology ConfigMap reaches every pod through its mounted volume and applies live', async () => {
      const topology = YAML.parse(configMapTopology) as Record<string, any>;
      topology.policies = { ...topology.policies, warehouse: { timeoutMs: 7000 } };
      sim.updateConfigMap('evolith-topology', { 'evolith.yaml': YAML.stringify(topology) }, namespace);
      const groups = sim.pods().filter((p) => !p.workload.endsWith('-wakeups'));
      await eventually(
        () => {
          for (const p of groups) expect(sim.logs(p.name).join('\n'), p.name).toContain('policies updated from the topology');
        },
        { timeoutMs: 15_000, intervalMs: 250 },
      ).catch((err: Error) => {
        throw new Error(`${err.message}\n${podLogs()}`);
      });
      expect((await fetch(`${edge}/restful/products`)).status).toBe(200);
    }, 30_000);

    it('a deleted warehouse pod is replaced, and the edge finds the new one', async () => {
      // In a mesh a group with versions has a Deployment per version (warehouse-v1, …).
      const isWarehouse = (p: { workload: string }) => p.workload === 'warehouse' || /^warehouse-v\d/.test(p.workload);
      const before = sim.pods().filter(isWarehouse).length;
      const old = sim.pods().find(isWarehouse)!;
      await sim.deletePod(old.name);
      await sim.waitReady(120_000);
      const now = sim.pods().filter(isWarehouse);
      expect(now).toHaveLength(before);
      expect(now.map((p) => p.name)).not.toContain(old.name);
      await eventually(async () => expect((await fetch(`${edge}/restful/products`)).status).toBe(200), { timeoutMs: 20_000, intervalMs: 250 }).catch((err: Error) => {
        throw new Error(`${err.message}\n${podLogs()}`);
      });
    }, 180_000);
  });
});
