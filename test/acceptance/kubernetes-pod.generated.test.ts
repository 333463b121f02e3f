/**
 * What `evolith deploy kubernetes` writes runs: the bookstore's manifests are generated, and
 * every Deployment's container is started as the kubelet would start it — its command and
 * arguments, its environment resolved from the downward API and the Secrets, the ConfigMap and
 * its credential Secret as files — from a local image directory (buildPodImage). Readiness is
 * read from each container's own readiness probe, and calls go through the edge.
 *
 * Each pod gets a loopback address of its own (127.0.0.0/8 is all loopback on Linux), and the
 * topology each one reads differs from the ConfigMap's only in the addresses it binds (pods
 * share this machine's ports) and in a schema prefix and stream of this run's own (they share
 * its PostgreSQL and NATS). A small DNS server answers the groups' Service names.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect as netConnect, createServer as createNetServer, type Server } from 'node:net';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { buildPodImage } from '../../src/deploy/kubernetes/build.js';
import { expectSettled } from '../support/bookstore.js';
import { eventually } from '../support/eventually.js';
import { deleteSharedStreams, SHARED_NATS, sharedNatsUnreachable } from '../support/nats-server.js';
import { dnsServer, podAddress } from '../support/pod-network.js';
import { dropSchemas, postgresAvailable, postgresUrl } from '../support/postgres.js';

const NAME = 'kubernetes: the generated manifests run';
const NATS = SHARED_NATS;
const repoRoot = resolve(import.meta.dirname, '../..');

/** The parts of a manifest this test reads. */
interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string }; secretKeyRef?: { name: string; key: string } };
}
interface Container {
  command: string[];
  args: string[];
  env: EnvVar[];
  ports: { name: string; containerPort: number }[];
  readinessProbe: { httpGet: { path: string; port?: string | number } };
}
interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string };
  spec?: { template?: { spec?: { containers?: Container[] } } };
  stringData?: Record<string, string>;
  data?: Record<string, string>;
}

function objectsIn(dir: string): K8sObject[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml')
    .flatMap((f) => YAML.parseAllDocuments(readFileSync(join(dir, f), 'utf8')).map((d) => d.toJS() as K8sObject))
    .filter((o) => o !== null);
}

/**
 * Knative Services are called on port 80 (the activator or queue proxy forwards to the
 * container's port): here a forwarder stands in for them, which needs a port below 1024.
 */
async function privilegedPortsRefused(): Promise<string | undefined> {
  const server = createNetServer();
  try {
    await new Promise<void>((done, fail) => {
      server.once('error', fail);
      server.listen(80, podAddress(), () => done());
    });
    return undefined;
  } catch (err) {
    return `port 80 cannot be bound here (${(err as Error).message}), and Knative Services are called on it`;
  } finally {
    server.close();
  }
}

/** Forwards connections to `from` (ip:80) to the container's port, as Knative's routing does. */
async function forwarder(ip: string, port: number): Promise<Server> {
  const server = createNetServer((socket) => {
    const upstream = netConnect(port, ip);
    socket.pipe(upstream).pipe(socket);
    const drop = () => {
      socket.destroy();
      upstream.destroy();
    };
    socket.on('error', drop);
    upstream.on('error', drop);
  });
  await new Promise<void>((done) => server.listen(80, ip, () => done()));
  return server;
}

const pgUnavailable = await postgresAvailable();
const natsMissing = await sharedNatsUnreachable();
const reason = pgUnavailable ?? natsMissing;

if (reason) {
  console.warn(`[acceptance] skipping "${NAME}": ${reason}`);
  describe.skip(NAME, () => {
    it(`needs PostgreSQL and NATS: ${reason}`, () => {});
  });
} else {
  const dir = mkdtempSync(join(tmpdir(), 'evolith-k8s-generated-'));
  const image = join(dir, 'image');
  const children: ChildProcess[] = [];
  const prefixes: string[] = [];
  const streams: string[] = [];
  let dns: { address: string; close(): void };
  const records = new Map<string, string[]>();

  beforeAll(async () => {
    await buildPodImage(join(repoRoot, 'examples/bookstore'), image);
    dns = await dnsServer(records);
  }, 60_000);

  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    dns?.close();
    for (const p of prefixes) await dropSchemas(p).catch(() => undefined);
    await deleteSharedStreams(streams);
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const noKnative = await privilegedPortsRefused();
  if (noKnative) console.warn(`[acceptance] "${NAME}" runs microservices and mesh only: ${noKnative}`);
  const forwarders: Server[] = [];
  afterAll(() => {
    for (const f of forwarders) f.close();
  });

  describe.each(noKnative ? (['microservices', 'mesh'] as const) : (['microservices', 'mesh', 'serverless'] as const))(`${NAME} (%s)`, (arch) => {
    const run = randomBytes(4).toString('hex');
    const namespace = `bk-${arch.slice(0, 4)}-${run}`;
    const schemaPrefix = `k8sg_${run}_`;
    const stream = `EVOK8SG_${run}`;
    prefixes.push(schemaPrefix);
    streams.push(stream);
    const out = join(dir, `manifests-${arch}`);
    const pods: { name: string; ip: string; child: ChildProcess; output: () => string; ready: string }[] = [];
    let edgeUrl = '';

    beforeAll(async () => {
      const generated = await new Promise<{ code: number | null; output: string }>((done) => {
        const child = spawn(
          process.execPath,
          [join(repoRoot, 'bin/evolith.mjs'), 'deploy', 'kubernetes', 'examples/bookstore', '--out', out, '--arch', arch, '--namespace', namespace, '--postgres-url', postgresUrl(), '--nats-url', `nats://${NATS}`],
          { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
        );
        let output = '';
        child.stdout.on('data', (c: Buffer) => (output += c.toString()));
        child.stderr.on('data', (c: Buffer) => (output += c.toString()));
        child.on('exit', (code) => done({ code, output }));
      });
      expect(generated.code, generated.output).toBe(0);

      const objects = objectsIn(out);
      const secrets = new Map(objects.filter((o) => o.kind === 'Secret').map((o) => [o.metadata.name, o.stringData ?? {}]));
      const configMap = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'evolith-topology')!;
      // What runs pods: Deployments, Knative Services (one pod each here) and ContainerSources.
      const workloads = objects.filter((o) => o.kind === 'Deployment' || o.kind === 'ContainerSource' || (o.kind === 'Service' && o.apiVersion.startsWith('serving.knative.dev/')));
      const groups = workloads.filter((w) => w.kind !== 'ContainerSource' && w.metadata.name !== 'edge').map((w) => w.metadata.name);
      expect(groups.sort()).toEqual(['account', 'auth', 'payment', 'warehouse']);
      expect(workloads.some((w) => w.kind === 'Deployment' && w.metadata.name === 'edge')).toBe(true);
      const ips = new Map(workloads.map((w) => [w.metadata.name, podAddress()]));
      for (const g of groups) records.set(`${g}.${namespace}.svc.cluster.local`, [ips.get(g)!]);

      for (const w of workloads) {
        const name = w.metadata.name;
        const ip = ips.get(name)!;
        const container = w.spec!.template!.spec!.containers![0]!;
        // The ConfigMap as this pod reads it: its own address, this run's schemas and stream.
        const topology = YAML.parse(configMap.data!['evolith.yaml']!) as Record<string, any>;
        topology.host = ip;
        topology.internalHost = ip;
        topology.storage = { ...topology.storage, schemaPrefix };
        topology.events = { ...topology.events, stream };
        const etc = join(dir, `${arch}-${name}-etc`);
        const secretDir = join(dir, `${arch}-${name}-secret`);
        mkdirSync(etc, { recursive: true });
        mkdirSync(secretDir, { recursive: true });
        writeFileSync(join(etc, 'evolith.yaml'), YAML.stringify(topology));
        writeFileSync(join(secretDir, 'bundle.json'), secrets.get(`evolith-credentials-${name}`)!['bundle.json']!);
        const path = (arg: string) =>
          arg === '/etc/evolith/evolith.yaml' ? join(etc, 'evolith.yaml') : arg === '/var/run/evolith/bundle.json' ? join(secretDir, 'bundle.json') : arg.startsWith('/app/') ? join(image, arg.slice(5)) : arg;
        const env: Record<string, string> = { PATH: process.env.PATH ?? '', EVOLITH_LOG_FORMAT: 'json', EVOLITH_DNS_SERVER: dns.address };
        for (const e of container.env) {
          const field = e.valueFrom?.fieldRef?.fieldPath;
          const secret = e.valueFrom?.secretKeyRef;
          env[e.name] =
            e.value ??
            (field === 'metadata.namespace' ? namespace : field === 'metadata.name' ? `${name}-0` : field === 'status.podIP' ? ip : secret ? secrets.get(secret.name)![secret.key]! : '');
        }
        if (w.kind === 'Service') {
          // Knative tells the container its port, and routes the Service's port 80 to it.
          env.PORT = String(container.ports[0]!.containerPort);
          forwarders.push(await forwarder(ip, container.ports[0]!.containerPort));
        }
        // Knative Eventing gives a ContainerSource its sink: the function it wakes.
        if (w.kind === 'ContainerSource') env.K_SINK = `http://${ips.get(name.replace(/-wakeups$/, ''))!}`;
        expect(container.command).toEqual(['node', '/app/pod.mjs']);
        const child = spawn(process.execPath, [path(container.command[1]!), ...container.args.map(path)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
        children.push(child);
        let output = '';
        child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
        child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
        const probe = container.readinessProbe.httpGet;
        // A Knative container's probes name no port: Knative probes the one port it has.
        const port = probe.port === undefined ? container.ports[0]!.containerPort : typeof probe.port === 'number' ? probe.port : container.ports.find((p) => p.name === probe.port)!.containerPort;
        pods.push({ name, ip, child, output: () => output, ready: `http://${ip}:${port}${probe.path}` });
        if (name === 'edge') edgeUrl = `http://${ip}:${container.ports.find((p) => p.name === 'http')!.containerPort}`;
      }
      await eventually(
        async () => {
          for (const p of pods) {
            if (p.child.exitCode !== null) throw new Error(`${p.name} exited with ${p.child.exitCode}`);
            const res = await fetch(p.ready).catch(() => undefined);
            expect(res?.status, `${p.name} ready`).toBe(200);
          }
        },
        { timeoutMs: 60_000, intervalMs: 250 },
      ).catch((err: Error) => {
        throw new Error(`${err.message}\n${pods.map((p) => `--- ${p.name} ---\n${p.output()}`).join('\n')}`);
      });
    }, 120_000);

    afterAll(async () => {
      for (const p of pods) if (p.child.exitCode === null) p.child.kill('SIGTERM');
      await Promise.all(pods.map((p) => (p.child.exitCode === null ? new Promise((r) => p.child.once('exit', r)) : undefined)));
    }, 30_000);

    it('the edge answers from the warehouse, a login travels edge → auth → account, and a settlement crosses with the user’s assertion', async () => {
      const products = await fetch(`${edgeUrl}/restful/products`);
      expect(products.status).toBe(200);
      const list = (await products.json()) as { id: number; title: string }[];
      expect(list.length).toBeGreaterThan(0);
      const token = await fetch(
        `${edgeUrl}/oauth/token?grant_type=password&username=icyfenix&password=MFfTW3uNI4eqhwDkG7HP9p2mzEUu%2Fr2&client_id=bookstore_frontend&client_secret=bookstore_secret`,
      );
      expect(token.status).toBe(200);
      const { access_token } = (await token.json()) as { access_token: string };
      // A settlement needs ROLE_USER: the user the edge verified crosses to the payment pod as
      // an assertion signed with the edge's key, and prices and stock come from the warehouse pod.
      await expectSettled(edgeUrl, access_token, list[0]!.id);
    }, 30_000);

    it('every pod stops on SIGTERM with exit code 0', async () => {
      for (const p of pods) p.child.kill('SIGTERM');
      const codes = await Promise.all(pods.map((p) => new Promise<number | null>((r) => (p.child.exitCode !== null ? r(p.child.exitCode) : p.child.once('exit', (code) => r(code))))));
      expect(codes).toEqual(pods.map(() => 0));
    }, 30_000);
  });
}
