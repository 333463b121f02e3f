/**
 * The pod runtime as a container runs it: `node <image>/pod.mjs` from an image directory laid
 * out as the image is (buildPodImage), with the arguments and environment the generated
 * manifests give, a credential bundle and a topology file mounted as Kubernetes mounts a Secret
 * and a ConfigMap, PostgreSQL and NATS as backends, and a small DNS server standing in for the
 * cluster's (the group's headless Service name answers with the group pod's address).
 *
 * The group pod listens on a loopback address of its own (127.0.0.0/8 is all loopback on
 * Linux), on the ports the manifests give it (rpc 7000, probes 8081), as a pod has its own IP.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect as http2Connect } from 'node:http2';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeploymentAuthority } from '../../src/auth/credentials.js';
import { buildPodImage } from '../../src/deploy/kubernetes/build.js';
import { eventually, sleep } from '../support/eventually.js';
import { deleteSharedStreams, SHARED_NATS, sharedNatsUnreachable } from '../support/nats-server.js';
import { dnsServer, podAddress } from '../support/pod-network.js';
import { dropSchemas, postgresAvailable, postgresUrl } from '../support/postgres.js';

const NAME = 'kubernetes pod runtime';
const NATS = SHARED_NATS;
const repoRoot = resolve(import.meta.dirname, '../..');

interface Pod {
  readonly child: ChildProcess;
  output(): string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const pods: Pod[] = [];

/**
 * Waits until the group pod (its readiness probe at `groupReady`) and the edge are ready; a pod
 * that exits meanwhile fails the wait at once. Either failure carries both pods' output.
 */
async function bothReady(group: Pod, edge: Pod, groupReady: string, edgePort: number): Promise<void> {
  await eventually(
    async () => {
      if (group.child.exitCode !== null || edge.child.exitCode !== null) throw new Error('a pod exited');
      expect((await get(groupReady)).status).toBe(200);
      expect((await get(`http://127.0.0.1:${edgePort}/ready`)).status).toBe(200);
    },
    { timeoutMs: 30_000, intervalMs: 200 },
  ).catch((err: Error) => {
    throw new Error(`${err.message}\n--- group ---\n${group.output()}\n--- edge ---\n${edge.output()}`);
  });
}

/** Kills every pod still running and removes what a block made: its DNS server, schemas, stream and directory. */
async function cleanUp(dns: { close(): void } | undefined, schemaPrefix: string, stream: string, dir: string): Promise<void> {
  for (const p of pods) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  dns?.close();
  await dropSchemas(schemaPrefix).catch(() => undefined);
  await deleteSharedStreams([stream]);
  rmSync(dir, { recursive: true, force: true });
}

/** Writes a credential bundle as Kubernetes mounts a workload's Secret (readable by its owner only); returns the file. */
function mountSecret(dir: string, workload: string, bundle: object): string {
  const d = join(dir, `secret-${workload}`);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, 'bundle.json'), JSON.stringify(bundle), { mode: 0o600 });
  return join(d, 'bundle.json');
}

/** The environment the manifests give every pod: where it runs, its backends, and the DNS server standing in for the cluster's. */
function podEnv(namespace: string, domain: string, dnsServerAddress: string): Record<string, string> {
  return {
    EVOLITH_NAMESPACE: namespace,
    EVOLITH_CLUSTER_DOMAIN: domain,
    EVOLITH_POSTGRES_URL: postgresUrl(),
    EVOLITH_NATS_URL: `nats://${NATS}`,
    EVOLITH_DNS_SERVER: dnsServerAddress,
  };
}

/** Writes a topology as Kubernetes updates a mounted ConfigMap: a new `..data` directory swapped in by a rename. */
function configMapWriter(configMap: string): (text: string) => void {
  let version = 0;
  return (text) => {
    const next = join(configMap, `..v${++version}`);
    mkdirSync(next, { recursive: true });
    writeFileSync(join(next, 'evolith.yaml'), text);
    symlinkSync(`..v${version}`, join(configMap, '..data_tmp'));
    renameSync(join(configMap, '..data_tmp'), join(configMap, '..data'));
    if (version === 1) symlinkSync('..data/evolith.yaml', join(configMap, 'evolith.yaml'));
  };
}

async function freePort(): Promise<number> {
  return new Promise<number>((r) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => r(p));
    });
  });
}

function startPod(image: string, args: string[], env: Record<string, string>): Pod {
  const child = spawn(process.execPath, [join(image, 'pod.mjs'), ...args], {
    // Only what a container has: no inherited variables that could help it along.
    env: { PATH: process.env.PATH ?? '', NODE_ENV: 'production', EVOLITH_LOG_FORMAT: 'json', EVOLITH_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
  const pod = { child, output: () => out, exit };
  pods.push(pod);
  return pod;
}

async function get(url: string): Promise<{ status: number; body: string }> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
    return { status: res.status, body: await res.text() };
  } catch (err) {
    return { status: 0, body: (err as Error).message };
  }
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
  describe(NAME, () => {
    const run = randomBytes(4).toString('hex');
    const namespace = `shop-${run}`;
    const domain = 'cluster.test';
    const stream = `EVOK8S_${run}`;
    const schemaPrefix = `k8s_${run}_`;
    const groupIp = podAddress();
    const dir = mkdtempSync(join(tmpdir(), 'evolith-k8s-pod-'));
    const image = join(dir, 'image');
    const configMap = join(dir, 'etc-evolith');
    const records = new Map<string, string[]>();
    let dns: { address: string; close(): void };
    let edgePort = 0;

    const writeTopology = configMapWriter(configMap);
    const topology = (slowTimeoutMs?: number) =>
      [
        'architecture: microservices',
        'host: 127.0.0.1',
        `internalHost: ${groupIp}`,
        `storage: { driver: postgres, schemaPrefix: ${schemaPrefix} }`,
        `events: { driver: nats, stream: ${stream} }`,
        'drainMs: 5000',
        ...(slowTimeoutMs ? [`policies: { greeter.slow: { timeoutMs: ${slowTimeoutMs} } }`] : []),
        '',
      ].join('\n');

    const authority = new DeploymentAuthority(namespace);
    const secret = (workload: string, bundle: object): string => mountSecret(dir, workload, bundle);
    // Read when a pod starts: the DNS server is only up by then.
    const env = () => podEnv(namespace, domain, dns.address);
    const common = (credentials: string) => ['--app-dir', join(image, 'app'), '--topology', join(configMap, 'evolith.yaml'), '--credentials', credentials];

    let group: Pod;
    let edge: Pod;

    beforeAll(async () => {
      await buildPodImage(join(repoRoot, 'test/fixtures/greeter'), image);
      writeTopology(topology());
      dns = await dnsServer(records);
      records.set(`greeter.${namespace}.svc.${domain}`, [groupIp]);
      const groupCredentials = secret('greeter', authority.issue({ sub: 'greeter', svc: ['greeter'] }, 365 * 24 * 3600_000));
      const edgeCredentials = secret('edge', authority.issue({ sub: 'edge', edge: true }, 365 * 24 * 3600_000));
      group = startPod(image, [...common(groupCredentials), '--group', 'greeter', '--transport', 'tcp', '--rpc-port', '7000', '--probe-port', '8081'], {
        ...env(),
        EVOLITH_POD_NAME: 'greeter-0',
        EVOLITH_POD_IP: groupIp,
      });
      edgePort = await freePort();
      edge = startPod(image, [...common(edgeCredentials), '--edge', '--port', String(edgePort)], { ...env(), EVOLITH_POD_NAME: 'edge-0', EVOLITH_POD_IP: '127.0.0.1' });
      await bothReady(group, edge, `http://${groupIp}:8081/ready`, edgePort);
    }, 60_000);

    afterAll(() => cleanUp(dns, schemaPrefix, stream, dir), 30_000);

    it('probes answer: /health and /ready of the group, /ready of the edge', async () => {
      expect(await get(`http://${groupIp}:8081/health`)).toMatchObject({ status: 200 });
      const ready = await get(`http://${groupIp}:8081/ready`);
      expect(ready.status).toBe(200);
      expect(JSON.parse(ready.body)).toEqual({ status: 'ready' });
      expect((await get(`http://127.0.0.1:${edgePort}/health`)).status).toBe(200);
      expect((await get(`http://${groupIp}:8081/nothing`)).status).toBe(404);
    });

    it('a call through the edge reaches the group pod found by DNS, over TCP RPC with the pods’ credentials', async () => {
      const r = await get(`http://127.0.0.1:${edgePort}/hello/kube`);
      expect(r.status, r.body).toBe(200);
      expect(JSON.parse(r.body)).toEqual({ text: 'hello kube', n: 1 });
      // Its event went out through the outbox and NATS, and came back to the group's subscriber.
      await eventually(() => expect(group.output()).toContain('"msg":"greeted event"'), { timeoutMs: 10_000 });
    });

    it('an edit of the mounted topology applies live', async () => {
      // The contract gives slow 200 ms: a 400 ms call times out until the topology allows more.
      expect((await get(`http://127.0.0.1:${edgePort}/slow?ms=400`)).status).toBe(504);
      writeTopology(topology(3_000));
      await eventually(async () => expect((await get(`http://127.0.0.1:${edgePort}/slow?ms=400`)).status).toBeLessThan(300), { timeoutMs: 10_000, intervalMs: 200 });
      expect(edge.output()).toContain('policies updated from the topology');
      expect(group.output()).toContain('policies updated from the topology');
    });

    it('SIGTERM: the group pod stops being ready at once, finishes the call in flight, and exits 0', async () => {
      const inFlight = get(`http://127.0.0.1:${edgePort}/slow?ms=1500`);
      await sleep(300);
      group.child.kill('SIGTERM');
      await eventually(async () => expect((await get(`http://${groupIp}:8081/ready`)).status).toBe(503), { timeoutMs: 1_000, intervalMs: 20 });
      const answered = await inFlight;
      expect(answered.status, answered.body).toBeLessThan(300);
      expect(await group.exit).toEqual({ code: 0, signal: null });
      // With its only pod gone from DNS, the edge is no longer ready.
      records.set(`greeter.${namespace}.svc.${domain}`, []);
      await eventually(async () => expect((await get(`http://127.0.0.1:${edgePort}/ready`)).status).toBe(503), { timeoutMs: 10_000, intervalMs: 200 });
      edge.child.kill('SIGTERM');
      expect(await edge.exit).toEqual({ code: 0, signal: null });
    }, 30_000);

    it('wrong arguments and a missing environment: exit 2, every problem named on one line', async () => {
      const pod = startPod(image, ['--app-dir', join(image, 'app'), '--group', 'greeter', '--edge', '--transport', 'udp', '--probe-port', 'x'], { EVOLITH_POSTGRES_URL: postgresUrl() });
      expect((await pod.exit).code).toBe(2);
      const lines = pod.output().trim().split('\n');
      expect(lines).toHaveLength(1);
      for (const problem of [
        '--topology is required',
        '--credentials is required',
        '--group and --edge exclude each other',
        '--transport must be tcp or http2, got "udp"',
        '--probe-port must be a port number',
        'EVOLITH_NAMESPACE is not set',
        'EVOLITH_NATS_URL is not set',
      ]) {
        expect(lines[0]).toContain(problem);
      }
    });

    it('a topology a pod cannot run (embedded SQLite) and an unknown group: exit 2 saying why', async () => {
      const sqlite = join(dir, 'sqlite-topology');
      mkdirSync(sqlite);
      writeFileSync(join(sqlite, 'evolith.yaml'), 'architecture: microservices\n');
      const credentials = secret('other', authority.issue({ sub: 'greeter', svc: ['greeter'] }));
      const refused = startPod(image, ['--app-dir', join(image, 'app'), '--topology', join(sqlite, 'evolith.yaml'), '--credentials', credentials, '--group', 'greeter'], env());
      expect((await refused.exit).code).toBe(2);
      expect(refused.output()).toContain('embedded SQLite cannot be shared by pods on different machines');
      const unknown = startPod(image, [...common(credentials), '--group', 'warehouse'], env());
      expect((await unknown.exit).code).toBe(2);
      expect(unknown.output()).toContain('mini has no service group named warehouse; its groups: greeter');
    });
  });

  describe(`${NAME}: RPC over HTTP (Istio, Knative)`, () => {
    const run = randomBytes(4).toString('hex');
    const namespace = `mesh-${run}`;
    const domain = 'cluster.test';
    const stream = `EVOK8SH_${run}`;
    const schemaPrefix = `k8sh_${run}_`;
    const groupIp = podAddress();
    const functionIp = podAddress();
    const dir = mkdtempSync(join(tmpdir(), 'evolith-k8s-pod-http-'));
    const image = join(dir, 'image');
    const records = new Map<string, string[]>();
    let dns: { address: string; close(): void };
    let edgePort = 0;
    let group: Pod;
    let edge: Pod;
    const authority = new DeploymentAuthority(namespace);

    const configMap = (name: string, architecture: string, internalHost: string): string => {
      const mount = join(dir, name);
      configMapWriter(mount)(
        [`architecture: ${architecture}`, 'host: 127.0.0.1', `internalHost: ${internalHost}`, `storage: { driver: postgres, schemaPrefix: ${schemaPrefix} }`, `events: { driver: nats, stream: ${stream} }`, 'drainMs: 5000', ''].join('\n'),
      );
      return join(mount, 'evolith.yaml');
    };
    const secret = (workload: string, bundle: object): string => mountSecret(dir, workload, bundle);
    // Read when a pod starts: the DNS server is only up by then.
    const env = () => podEnv(namespace, domain, dns.address);

    beforeAll(async () => {
      await buildPodImage(join(repoRoot, 'test/fixtures/greeter'), image);
      dns = await dnsServer(records);
      records.set(`greeter.${namespace}.svc.${domain}`, [groupIp]);
      const topology = configMap('etc-mesh', 'mesh', groupIp);
      const groupCredentials = secret('greeter', authority.issue({ sub: 'greeter', svc: ['greeter'] }));
      const edgeCredentials = secret('edge', authority.issue({ sub: 'edge', edge: true }));
      const common = (credentials: string) => ['--app-dir', join(image, 'app'), '--topology', topology, '--credentials', credentials];
      group = startPod(image, [...common(groupCredentials), '--group', 'greeter', '--transport', 'http2', '--rpc-port', '7000', '--probe-port', '7000'], { ...env(), EVOLITH_POD_IP: groupIp });
      edgePort = await freePort();
      edge = startPod(image, [...common(edgeCredentials), '--edge', '--port', String(edgePort)], env());
      await bothReady(group, edge, `http://${groupIp}:7000/ready`, edgePort);
    }, 60_000);

    afterAll(() => cleanUp(dns, schemaPrefix, stream, dir), 30_000);

    it('one port answers the probes and RPC over HTTP; a call without a credential is refused', async () => {
      expect((await get(`http://${groupIp}:7000/health`)).status).toBe(200);
      const anonymous = await fetch(`http://${groupIp}:7000/rpc/greeter/hello`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":"x"}' });
      expect(anonymous.status).toBe(401);
      // The same port speaks h2c (HTTP/2 with prior knowledge), as a sidecar or Knative's queue proxy does.
      const session = http2Connect(`http://${groupIp}:7000`);
      try {
        const status = await new Promise<number>((done, fail) => {
          session.once('error', fail);
          const stream = session.request({ ':method': 'GET', ':path': '/ready' });
          stream.once('response', (headers) => done(Number(headers[':status'])));
          stream.once('error', fail);
          stream.resume();
          stream.end();
        });
        expect(status).toBe(200);
      } finally {
        session.close();
      }
    });

    it('a call through the edge reaches the group through its Service’s name', async () => {
      const r = await get(`http://127.0.0.1:${edgePort}/hello/mesh`);
      expect(r.status, r.body).toBe(200);
      expect(JSON.parse(r.body)).toEqual({ text: 'hello mesh', n: 1 });
    });

    it('a function answers the waker’s POST /evolith/wake with 202', async () => {
      const topology = configMap('etc-serverless', 'serverless', functionIp);
      const credentials = secret('function', authority.issue({ sub: 'greeter', svc: ['greeter'] }));
      // Knative gives the port in PORT.
      const fn = startPod(image, ['--app-dir', join(image, 'app'), '--topology', topology, '--credentials', credentials, '--group', 'greeter', '--transport', 'http2'], { ...env(), PORT: '8080' });
      await eventually(async () => expect((await get(`http://${functionIp}:8080/ready`)).status).toBe(200), { timeoutMs: 30_000, intervalMs: 200 }).catch((err: Error) => {
        throw new Error(`${err.message}\n${fn.output()}`);
      });
      const res = await fetch(`http://${functionIp}:8080/evolith/wake`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'ce-specversion': '1.0', 'ce-type': 'dev.evolith.wakeup', 'ce-source': '/evolith/mini/greeter', 'ce-id': '1' },
        body: JSON.stringify({ function: 'greeter', reasons: [{ service: 'greeter', why: 'event', waiting: 1 }] }),
      });
      expect(res.status).toBe(202);
      fn.child.kill('SIGTERM');
      expect(await fn.exit).toEqual({ code: 0, signal: null });
    }, 45_000);

    it('SIGTERM: not ready at once, the call in flight finishes, exit 0', async () => {
      const inFlight = get(`http://127.0.0.1:${edgePort}/slow?ms=150`);
      await sleep(50);
      group.child.kill('SIGTERM');
      await eventually(async () => expect((await get(`http://${groupIp}:7000/ready`)).status).toBe(503), { timeoutMs: 1_000, intervalMs: 10 });
      expect((await inFlight).status).toBeLessThan(300);
      expect(await group.exit).toEqual({ code: 0, signal: null });
      edge.child.kill('SIGTERM');
      expect(await edge.exit).toEqual({ code: 0, signal: null });
    }, 30_000);

    it('a waker finds work waiting for a function at zero in its store and posts a wake-up CloudEvent to K_SINK', async () => {
      // Every pod hosting greeter has stopped (the function is at zero), with an event committed and not sent.
      const client = new pg.Client({ connectionString: postgresUrl() });
      await client.connect();
      try {
        const now = Date.now();
        await client.query(
          `insert into "${schemaPrefix}greeter".evolith_outbox (id, topic, payload, deliver_at, created_at, attempts) values ($1, 'greeter.greeted', '{"name":"zero"}', $2, $3, 0)`,
          [`wake-${run}`, now - 1_000, now * 1000],
        );
      } finally {
        await client.end();
      }
      const received: { headers: Record<string, unknown>; body: unknown; url: string }[] = [];
      const sink = createHttpServer((req, res) => {
        let text = '';
        req.on('data', (c: Buffer) => (text += c.toString()));
        req.on('end', () => {
          received.push({ url: req.url ?? '', headers: req.headers, body: JSON.parse(text) });
          res.writeHead(202).end();
        });
      });
      await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
      const wakerIp = podAddress();
      const topology = configMap('etc-waker', 'serverless', wakerIp);
      const credentials = secret('greeter-wakeups', authority.issue({ sub: 'greeter-wakeups', svc: ['greeter'] }));
      const waker = startPod(image, ['--app-dir', join(image, 'app'), '--topology', topology, '--credentials', credentials, '--wakeups', 'greeter'], {
        ...env(),
        K_SINK: `http://127.0.0.1:${(sink.address() as AddressInfo).port}`,
      });
      try {
        await eventually(() => expect(received.length).toBeGreaterThan(0), { timeoutMs: 15_000 }).catch((err: Error) => {
          throw new Error(`${err.message}\n${waker.output()}`);
        });
        expect(received[0]).toMatchObject({
          url: '/evolith/wake',
          headers: { 'ce-specversion': '1.0', 'ce-type': 'dev.evolith.wakeup', 'ce-source': '/evolith/mini/greeter' },
          body: { function: 'greeter', reasons: [{ service: 'greeter', why: 'outbox', waiting: 1 }] },
        });
        expect((await get(`http://${wakerIp}:8081/health`)).status).toBe(200);
        expect((await get(`http://${wakerIp}:8081/ready`)).status).toBe(200);
        waker.child.kill('SIGTERM');
        expect(await waker.exit).toEqual({ code: 0, signal: null });
      } finally {
        sink.close();
      }
    }, 45_000);
  });
}
