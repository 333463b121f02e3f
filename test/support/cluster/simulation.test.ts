/**
 * The cluster simulation, tested with hand-written manifests whose containers run a small Node
 * server (test/fixtures/cluster-image stands for an image's `/app/`). Needs root and network
 * namespaces; without them the suite is skipped with the reason printed.
 */
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { resolve4 } from 'node:dns/promises';
import { createServer, type Server } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import dnsPacket from 'dns-packet';
import { stringify } from 'yaml';
import { eventually } from '../eventually.js';
import { NATS_SERVER_BIN } from '../nats-server.js';
import { ClusterSimulation } from './simulation.js';

const IMAGE = 'example.test/fixture:1';
const imageDir = fileURLToPath(new URL('../../fixtures/cluster-image', import.meta.url));
const unavailable = await ClusterSimulation.unavailable();
if (unavailable) console.warn(`[cluster-sim] skipping the cluster simulation tests: ${unavailable}`);

const written: string[] = [];
afterAll(() => {
  for (const dir of written) rmSync(dir, { recursive: true, force: true });
});

/** Writes objects as a kustomize directory (one multi-document file) and returns its path. */
function manifests(namespace: string, objects: object[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'cluster-sim-manifests-'));
  written.push(dir);
  writeFileSync(join(dir, 'kustomization.yaml'), stringify({ apiVersion: 'kustomize.config.k8s.io/v1beta1', kind: 'Kustomization', namespace, resources: ['objects.yaml'] }));
  writeFileSync(join(dir, 'objects.yaml'), objects.map((o) => stringify(o)).join('---\n'));
  return dir;
}

interface DeploymentOptions {
  replicas?: number;
  args?: string[];
  env?: object[];
  readinessPath?: string;
  liveness?: boolean;
  extra?: Record<string, unknown>;
  pod?: Record<string, unknown>;
}

function deployment(name: string, o: DeploymentOptions = {}): object {
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name, labels: { 'app.kubernetes.io/name': name } },
    spec: {
      replicas: o.replicas ?? 1,
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name } },
        spec: {
          terminationGracePeriodSeconds: 5,
          ...o.pod,
          containers: [
            {
              name: 'main',
              image: IMAGE,
              command: ['node', '/app/server.mjs'],
              args: o.args ?? ['--port', '8080'],
              env: [{ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }, ...(o.env ?? [])],
              ports: [
                { name: 'http', containerPort: 8080 },
                { name: 'rpc', containerPort: 8080 },
              ],
              readinessProbe: { httpGet: { path: o.readinessPath ?? '/ready', port: 'http' }, periodSeconds: 2, failureThreshold: 1 },
              ...(o.liveness ? { livenessProbe: { httpGet: { path: '/alive', port: 8080 }, periodSeconds: 2, failureThreshold: 2 } } : {}),
              startupProbe: { httpGet: { path: '/health', port: 'http' }, periodSeconds: 1, failureThreshold: 60 },
              ...o.extra,
            },
          ],
        },
      },
    },
  };
}

function service(name: string, selector: string, headless = false, port = 80, targetPort: number | string = 'http'): object {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name },
    spec: { ...(headless ? { clusterIP: 'None' } : {}), selector: { app: selector }, ports: [{ name: 'http', port, targetPort }] },
  };
}

async function getJson<T = any>(url: string): Promise<T> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  return (await res.json()) as T;
}

/** Asks the `client` pod (through its ClusterIP Service) to resolve a name. */
function resolveFromPod(sim: ClusterSimulation, ns: string, name: string, via?: 'lookup'): Promise<{ addresses?: string[]; error?: string }> {
  return getJson(`${sim.url('client', 80, ns)}/resolve?name=${encodeURIComponent(name)}${via ? `&via=${via}` : ''}`);
}

/** Asks the simulation's name server for A records over TCP (2-byte length-prefixed messages). */
async function queryTcp(host: string, name: string): Promise<string[]> {
  const socket = connect(53, host);
  const query = dnsPacket.streamEncode({ type: 'query', id: 7, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] });
  socket.write(query);
  let buffered = Buffer.alloc(0);
  const answer = await new Promise<Buffer>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0)) resolve(buffered);
    });
    socket.on('error', reject);
  });
  socket.destroy();
  const packet = dnsPacket.streamDecode(answer);
  return (packet.answers ?? []).map((a) => (a as { data: string }).data).sort();
}

describe.skipIf(unavailable !== undefined)('cluster simulation', () => {
  let sim: ClusterSimulation;
  let outside: Server;
  const EXTERNAL_PORT = 15_432;
  let eventsDir: string;

  beforeAll(async () => {
    eventsDir = mkdtempSync(join(tmpdir(), 'cluster-sim-events-'));
    chmodSync(eventsDir, 0o777);
    outside = createServer((_req, res) => res.end('from the host loopback'));
    await new Promise<void>((resolve) => outside.listen(0, '127.0.0.1', () => resolve()));
    const port = (outside.address() as { port: number }).port;
    sim = await ClusterSimulation.start({
      appImages: ['example.test/fixture'],
      imageDir,
      foreignImages: { 'nats:2.10-alpine': { entrypoint: [NATS_SERVER_BIN] } },
      externals: [{ port: EXTERNAL_PORT, target: `127.0.0.1:${port}` }],
      timeScale: 0.1,
    });
  });

  afterAll(async () => {
    await sim?.stop();
    outside?.close();
    rmSync(eventsDir, { recursive: true, force: true });
  });

  it('a headless Service resolves to its ready pods, and readiness takes a pod out of DNS and back', async () => {
    const ns = 'dns';
    await sim.apply(
      manifests(ns, [
        { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } },
        deployment('web', { replicas: 2 }),
        service('web', 'web', true, 7000, 'rpc'),
        deployment('client'),
        service('client', 'client'),
      ]),
    );
    await sim.waitReady(30_000);
    const web = sim.pods().filter((p) => p.workload === 'web');
    expect(web).toHaveLength(2);
    const ips = web.map((p) => p.ip).sort();
    expect(new Set(ips).size).toBe(2);

    expect(await resolveFromPod(sim, ns, `web.${ns}.svc.cluster.local`)).toEqual({ addresses: ips });
    // The search path of the pod's resolv.conf: the short name, through getaddrinfo.
    expect(await resolveFromPod(sim, ns, 'web', 'lookup')).toEqual({ addresses: ips });
    const [a, b] = web;
    expect(await resolveFromPod(sim, ns, `${a!.ip.replace(/\./g, '-')}.${ns}.pod.cluster.local`)).toEqual({ addresses: [a!.ip] });
    expect(await resolveFromPod(sim, ns, `nothing.${ns}.svc.cluster.local`)).toEqual({ error: 'ENOTFOUND' });
    // Names outside the cluster's domain get the machine's own answer.
    expect(await resolveFromPod(sim, ns, 'nothing.invalid')).toEqual({ error: 'ENOTFOUND' });
    const outsideName = 'registry.npmjs.org';
    const fromHost = await resolve4(outsideName).then(
      (a) => a.sort(),
      () => undefined,
    );
    if (fromHost) expect(await resolveFromPod(sim, ns, outsideName)).toEqual({ addresses: fromHost });
    else console.warn(`[cluster-sim] this machine cannot resolve ${outsideName}: forwarding of outside names checked with a failing name only`);
    // The name server over TCP too (what a resolver falls back to on a truncated answer).
    expect(await queryTcp(sim.hostAddress, `web.${ns}.svc.cluster.local`)).toEqual(ips);
    // A headless Service's URL is a ready pod's address at the target port.
    expect(sim.url('web', 7000, ns)).toMatch(/^http:\/\/[\d.]+:8080$/);

    await getJson(`http://${a!.ip}:8080/control?ready=false`);
    await eventually(async () => expect(await resolveFromPod(sim, ns, `web.${ns}.svc.cluster.local`)).toEqual({ addresses: [b!.ip] }), { timeoutMs: 5000 });
    expect(sim.pods().find((p) => p.name === a!.name)?.ready).toBe(false);

    await getJson(`http://${a!.ip}:8080/control?ready=true`);
    await eventually(async () => expect(await resolveFromPod(sim, ns, `web.${ns}.svc.cluster.local`)).toEqual({ addresses: ips }), { timeoutMs: 5000 });

    // Scaling: a third pod joins the answer once ready; scaling back removes the newest.
    sim.scale('web', 3, ns);
    await sim.waitReady(30_000);
    const three = sim.pods().filter((p) => p.namespace === ns && p.workload === 'web');
    expect(three).toHaveLength(3);
    expect(await resolveFromPod(sim, ns, `web.${ns}.svc.cluster.local`)).toEqual({ addresses: three.map((p) => p.ip).sort() });
    sim.scale('web', 2, ns);
    await eventually(async () => expect(await resolveFromPod(sim, ns, `web.${ns}.svc.cluster.local`)).toEqual({ addresses: ips }), { timeoutMs: 5000 });
    await eventually(() => expect(sim.pods().filter((p) => p.namespace === ns && p.workload === 'web').map((p) => p.ip).sort()).toEqual(ips), { timeoutMs: 10_000 });
  });

  it('a ClusterIP Service forwards to ready endpoints, round robin, from the host and from a pod', async () => {
    const ns = 'proxy';
    await sim.apply(manifests(ns, [deployment('web', { replicas: 2 }), service('web', 'web'), deployment('client'), service('client', 'client')]));
    await sim.waitReady(30_000);
    const web = sim.pods().filter((p) => p.namespace === ns && p.workload === 'web');
    const names = web.map((p) => p.name).sort();

    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) seen.add((await getJson(`${sim.url('web', 80, ns)}/whoami`)).pod);
    expect([...seen].sort()).toEqual(names);

    const fromPod = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const r = await getJson(`${sim.url('client', 80, ns)}/fetch?url=${encodeURIComponent(`http://web.${ns}.svc.cluster.local/whoami`)}`);
      expect(r.status).toBe(200);
      fromPod.add(JSON.parse(r.body).pod);
    }
    expect([...fromPod].sort()).toEqual(names);

    // An unready pod takes no new connections.
    await getJson(`http://${web[0]!.ip}:8080/control?ready=false`);
    await eventually(() => expect(sim.pods().find((p) => p.name === web[0]!.name)?.ready).toBe(false), { timeoutMs: 5000 });
    for (let i = 0; i < 4; i++) expect((await getJson(`${sim.url('web', 80, ns)}/whoami`)).pod).toBe(web[1]!.name);
    await getJson(`http://${web[0]!.ip}:8080/control?ready=true`);
  });

  it('env from a Secret, a ConfigMap and fieldRefs arrives, and a ConfigMap update reaches the pod through ..data', async () => {
    const ns = 'config';
    await sim.apply(
      manifests(ns, [
        { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'settings' }, data: { 'settings.json': '{"v":1}', mode: 'blue' } },
        {
          apiVersion: 'v1',
          kind: 'Secret',
          metadata: { name: 'backends' },
          data: { 'postgres-url': Buffer.from('postgres://db/one').toString('base64') },
          stringData: { 'nats-url': 'nats://bus:4222' },
        },
        deployment('reader', {
          env: [
            { name: 'DB', valueFrom: { secretKeyRef: { name: 'backends', key: 'postgres-url' } } },
            { name: 'BUS', valueFrom: { secretKeyRef: { name: 'backends', key: 'nats-url' } } },
            { name: 'MODE', valueFrom: { configMapKeyRef: { name: 'settings', key: 'mode' } } },
            { name: 'NS', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
            { name: 'IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
            { name: 'GREETING', value: 'mode $(MODE)' },
            { name: 'CONFIG_FILE', value: '/etc/config/settings.json' },
          ],
          extra: { volumeMounts: [{ name: 'config', mountPath: '/etc/config', readOnly: true }, { name: 'tmp', mountPath: '/tmp' }] },
          pod: { volumes: [{ name: 'config', configMap: { name: 'settings' } }, { name: 'tmp', emptyDir: {} }] },
        }),
        service('reader', 'reader'),
      ]),
    );
    await sim.waitReady(30_000);
    const pod = sim.pods().find((p) => p.namespace === ns)!;
    const env = await getJson<Record<string, string>>(`${sim.url('reader', 80, ns)}/env`);
    expect(env).toMatchObject({ DB: 'postgres://db/one', BUS: 'nats://bus:4222', MODE: 'blue', NS: ns, IP: pod.ip, POD_NAME: pod.name, GREETING: 'mode blue' });
    // The mount path is mapped to the pod's volume, laid out as the kubelet does.
    const volume = join(sim.stateDir, 'pods', pod.name, 'volumes', 'config');
    expect(env['CONFIG_FILE']).toBe(join(volume, 'settings.json'));
    expect(env['TMPDIR']).toBe(join(sim.stateDir, 'pods', pod.name, 'volumes', 'tmp'));
    expect(lstatSync(join(volume, '..data')).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(volume, 'settings.json'))).toBe('..data/settings.json');
    const before = readlinkSync(join(volume, '..data'));

    expect(await getJson(`${sim.url('reader', 80, ns)}/config`)).toEqual({ content: '{"v":1}', events: 0 });
    sim.updateConfigMap('settings', { 'settings.json': '{"v":2}', mode: 'green' }, ns);
    await eventually(async () => {
      const r = await getJson(`${sim.url('reader', 80, ns)}/config`);
      expect(r.content).toBe('{"v":2}');
      expect(r.events).toBeGreaterThan(0);
    });
    expect(readlinkSync(join(volume, '..data'))).not.toBe(before);
    expect(readdirSync(volume).filter((n) => n.startsWith('..')).sort()).toEqual(['..data', readlinkSync(join(volume, '..data'))].sort());
    // Env taken at start does not change.
    expect((await getJson(`${sim.url('reader', 80, ns)}/env`)).MODE).toBe('blue');
  });

  it('a liveness failure restarts the container in the same pod', async () => {
    const ns = 'liveness';
    await sim.apply(manifests(ns, [deployment('flaky', { liveness: true })]));
    await sim.waitReady(30_000);
    const before = sim.pods().find((p) => p.namespace === ns)!;
    expect(before.restarts).toBe(0);
    await getJson(`http://${before.ip}:8080/control?alive=false`);
    await eventually(
      () => {
        const now = sim.pods().find((p) => p.namespace === ns)!;
        expect(now.name).toBe(before.name);
        expect(now.restarts).toBe(1);
        expect(now.ready).toBe(true);
        expect(now.pid).not.toBe(before.pid);
      },
      { timeoutMs: 15_000 },
    );
    expect(sim.logs(before.name).join('\n')).toMatch(/liveness probe failed 2 times/);
  });

  it('deleting a pod runs preStop before SIGTERM, and its Deployment replaces it', async () => {
    const ns = 'graceful';
    const events = join(eventsDir, 'events.log');
    await sim.apply(
      manifests(ns, [
        deployment('graceful', {
          env: [{ name: 'EVENTS_FILE', value: events }],
          extra: { lifecycle: { preStop: { exec: { command: ['node', '/app/prestop.mjs'] } } } },
        }),
      ]),
    );
    await sim.waitReady(30_000);
    const pod = sim.pods().find((p) => p.namespace === ns)!;
    await sim.deletePod(pod.name);
    expect(readFileSync(events, 'utf8').trim().split('\n')).toEqual([`prestop ${pod.name}`, `sigterm ${pod.name}`]);
    expect(sim.pods().some((p) => p.name === pod.name)).toBe(false);
    await sim.waitReady(30_000);
    const replacement = sim.pods().filter((p) => p.namespace === ns);
    expect(replacement).toHaveLength(1);
    expect(replacement[0]!.name).not.toBe(pod.name);
  });

  it('pods reach a server on the host loopback through an external forwarder, and run as their runAsUser', async () => {
    const ns = 'outside';
    await sim.apply(
      manifests(ns, [
        deployment('client', { pod: { securityContext: { runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001 } } }),
        service('client', 'client'),
      ]),
    );
    await sim.waitReady(30_000);
    const r = await getJson(`${sim.url('client', 80, ns)}/fetch?url=${encodeURIComponent(`http://${sim.hostAddress}:${EXTERNAL_PORT}/`)}`);
    expect(r).toEqual({ status: 200, body: 'from the host loopback' });
    const pod = sim.pods().find((p) => p.namespace === ns)!;
    const who = await getJson(`${sim.url('client', 80, ns)}/whoami`);
    if (pod.containers[0]!.runAs.startsWith('root')) {
      console.warn(`[cluster-sim] the container could not drop to its user: ${pod.containers[0]!.runAs}`);
      expect(who.uid).toBe(0);
    } else expect(who.uid).toBe(10001);
  });

  it('Knative Services get PORT and a name on port 80; a ContainerSource gets K_SINK; other kinds are listed as not run', async () => {
    const ns = 'knative';
    const container = (port: number) => ({
      name: 'user-container',
      image: IMAGE,
      command: ['node', '/app/server.mjs'],
      env: [{ name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }],
      ports: [{ name: 'h2c', containerPort: port }],
      readinessProbe: { httpGet: { path: '/ready' }, periodSeconds: 1 },
    });
    await sim.apply(
      manifests(ns, [
        {
          apiVersion: 'serving.knative.dev/v1',
          kind: 'Service',
          metadata: { name: 'fn', labels: { 'networking.knative.dev/visibility': 'cluster-local' } },
          spec: { template: { metadata: { annotations: { 'autoscaling.knative.dev/initial-scale': '2' } }, spec: { containers: [container(8090)] } } },
        },
        {
          apiVersion: 'sources.knative.dev/v1',
          kind: 'ContainerSource',
          metadata: { name: 'fn-wakeups' },
          spec: {
            template: { spec: { containers: [{ ...container(8081), ports: [], readinessProbe: { httpGet: { path: '/health', port: 8081 } }, args: ['--port', '8081'] }] } },
            sink: { ref: { apiVersion: 'serving.knative.dev/v1', kind: 'Service', name: 'fn' } },
          },
        },
        { apiVersion: 'autoscaling/v2', kind: 'HorizontalPodAutoscaler', metadata: { name: 'fn' }, spec: {} },
      ]),
    );
    await sim.waitReady(30_000);
    const pods = sim.pods().filter((p) => p.namespace === ns);
    expect(pods.filter((p) => p.workload === 'fn')).toHaveLength(2);
    const env = await getJson(`${sim.url('fn', 80, ns)}/env`);
    expect(env).toMatchObject({ PORT: '8090', K_SERVICE: 'fn' });
    const source = pods.find((p) => p.workload === 'fn-wakeups')!;
    const sourceEnv = await getJson(`http://${source.ip}:8081/env`);
    expect(sourceEnv.K_SINK).toBe(`http://fn.${ns}.svc.cluster.local`);
    // The sink's URL answers from inside the source's pod.
    const viaSink = await getJson(`http://${source.ip}:8081/fetch?url=${encodeURIComponent(`${sourceEnv.K_SINK}/whoami`)}`);
    expect(viaSink.status).toBe(200);
    expect(sim.ignored()).toContainEqual({ apiVersion: 'autoscaling/v2', kind: 'HorizontalPodAutoscaler', namespace: ns, name: 'fn' });
  });

  it.skipIf(!existsSync(NATS_SERVER_BIN))('a StatefulSet of a mapped image: ordinal pods, their DNS names, and a volume claim that outlives the pod', async () => {
    const ns = 'stateful';
    await sim.apply(
      manifests(ns, [
        {
          apiVersion: 'apps/v1',
          kind: 'StatefulSet',
          metadata: { name: 'nats' },
          spec: {
            serviceName: 'nats',
            replicas: 1,
            selector: { matchLabels: { app: 'nats' } },
            template: {
              metadata: { labels: { app: 'nats' } },
              spec: {
                securityContext: { runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000 },
                containers: [
                  {
                    name: 'nats',
                    image: 'nats:2.10-alpine',
                    args: ['-js', '-sd', '/data', '-m', '8222'],
                    ports: [
                      { name: 'client', containerPort: 4222 },
                      { name: 'monitor', containerPort: 8222 },
                    ],
                    readinessProbe: { httpGet: { path: '/healthz?js-enabled-only=true', port: 'monitor' }, periodSeconds: 2 },
                    volumeMounts: [{ name: 'data', mountPath: '/data' }],
                  },
                ],
              },
            },
            volumeClaimTemplates: [{ metadata: { name: 'data' }, spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } } }],
          },
        },
        service('nats', 'nats', true, 4222, 'client'),
        deployment('client'),
        service('client', 'client'),
      ]),
    );
    await sim.waitReady(30_000);
    const nats = sim.pods().find((p) => p.namespace === ns && p.workload === 'nats')!;
    expect(nats.name).toBe('nats-0');
    expect(await resolveFromPod(sim, ns, `nats-0.nats.${ns}.svc.cluster.local`)).toEqual({ addresses: [nats.ip] });
    expect(await resolveFromPod(sim, ns, `nats.${ns}.svc.cluster.local`)).toEqual({ addresses: [nats.ip] });
    const claim = join(sim.stateDir, 'claims', 'data-nats-0');
    await eventually(() => expect(readdirSync(claim)).toContain('jetstream'));

    await sim.deletePod('nats-0');
    await sim.waitReady(30_000);
    const again = sim.pods().find((p) => p.namespace === ns && p.workload === 'nats')!;
    expect(again.name).toBe('nats-0');
    expect(again.pid).not.toBe(nats.pid);
    expect(readdirSync(claim)).toContain('jetstream');
  });

  it('refuses images that are neither the app\'s nor mapped, naming them', async () => {
    await expect(
      sim.apply(
        manifests('backends', [
          {
            apiVersion: 'apps/v1',
            kind: 'StatefulSet',
            metadata: { name: 'postgres' },
            spec: { selector: { matchLabels: { app: 'postgres' } }, template: { metadata: { labels: { app: 'postgres' } }, spec: { containers: [{ name: 'postgres', image: 'postgres:16-alpine' }] } } },
          },
        ]),
      ),
    ).rejects.toThrow(/StatefulSet postgres container postgres uses image postgres:16-alpine, which is not the app's/);
  });
});

describe.skipIf(unavailable !== undefined)('cluster simulation: failures and cleanup', () => {
  it('a pod whose readiness probe path is wrong never turns ready, and waitReady names it with the probe failure', async () => {
    const sim = await ClusterSimulation.start({ appImages: [IMAGE], imageDir, timeScale: 0.1 });
    try {
      await sim.apply(manifests('broken', [deployment('fine'), deployment('broken', { readinessPath: '/nope' })]));
      const error = await sim.waitReady(3000).then(
        () => undefined,
        (err: Error) => err,
      );
      expect(error?.message).toMatch(/pod broken\/broken-[a-z0-9]+-[a-z0-9]+ not ready: main: not ready \(readiness probe: GET http:\/\/[\d.]+:8080\/nope answered 404\)/);
      expect(error?.message).toContain('listening on 8080');
      expect(error?.message).not.toMatch(/pod broken\/fine-/);

      // A pod the simulation cannot start says why in its status and in waitReady's report.
      await sim.apply(manifests('broken', [deployment('odd', { env: [{ name: 'NODE', valueFrom: { fieldRef: { fieldPath: 'spec.hostUsers' } } }] })]));
      await eventually(() => expect(sim.pods().find((p) => p.workload === 'odd')?.waiting).toMatch(/fieldRef spec.hostUsers is not simulated/));
      await expect(sim.waitReady(500)).rejects.toThrow(/pod broken\/odd-[a-z0-9-]+ not ready: pod odd-[a-z0-9-]+: fieldRef spec.hostUsers is not simulated/);
    } finally {
      await sim.stop();
    }
  });

  it('a container that exits is restarted with the kubelet\'s growing backoff', async () => {
    const sim = await ClusterSimulation.start({ appImages: [IMAGE], imageDir, timeScale: 0.1 });
    try {
      // Exits at once: restarts at 0, 1 s, 2 s (10 s, 20 s scaled by 0.1).
      await sim.apply(manifests('crash', [deployment('crash', { args: ['--port', 'not-a-port'] })]));
      const started = Date.now();
      await eventually(() => expect(sim.pods()[0]?.restarts).toBeGreaterThanOrEqual(3), { timeoutMs: 10_000 });
      expect(Date.now() - started).toBeGreaterThanOrEqual(2500);
      expect(sim.pods()[0]!.ready).toBe(false);
      expect(sim.logs(sim.pods()[0]!.name).join('\n')).toMatch(/exited \(code 1\)/);
    } finally {
      await sim.stop();
    }
  });

  it.each([
    { mode: 'exit', how: 'exits (its exit handler cleans up)' },
    { mode: 'hang', how: 'is killed (the next start cleans up)' },
  ] as const)('what a simulation leaves when its process $how is removed', async ({ mode }) => {
    const dir = manifests('owner', [deployment('web', { replicas: 2 })]);
    const root = fileURLToPath(new URL('../../..', import.meta.url));
    const child = spawn(process.execPath, ['bin/run-ts.mjs', 'test/support/cluster/owner-process.ts', mode, dir, imageDir, IMAGE], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    const report = await eventually(
      () => {
        const line = output.split('\n').find((l) => l.startsWith('{'));
        if (!line) throw new Error(`no report yet: ${output}`);
        return JSON.parse(line) as { stateDir: string; pids: number[] };
      },
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    const prefix = `evs${report.stateDir.split('/').pop()}`;
    if (mode === 'hang') child.kill('SIGKILL');
    await new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(undefined) : child.once('exit', resolve)));
    if (mode === 'hang') {
      // Killed outright: its pods still run in their namespaces until someone cleans up.
      expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).toContain(prefix);
      const removed = ClusterSimulation.removeLeftovers();
      expect(removed.some((r) => r.includes(prefix))).toBe(true);
    }
    expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).not.toContain(prefix);
    expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.toContain(prefix);
    expect(existsSync('/etc/netns') ? readdirSync('/etc/netns').filter((n) => n.startsWith(prefix)) : []).toEqual([]);
    expect(existsSync(report.stateDir)).toBe(false);
    await eventually(() => {
      for (const pid of report.pids) expect(() => process.kill(pid, 0)).toThrow();
    });
  });

  it('stop() leaves no network namespace, link, /etc/netns entry or file behind', async () => {
    const sim = await ClusterSimulation.start({ appImages: [IMAGE], imageDir, timeScale: 0.1 });
    const prefix = `evs${sim.stateDir.split('/').pop()}`;
    await sim.apply(manifests('cleanup', [deployment('web', { replicas: 2 }), service('web', 'web'), service('web-headless', 'web', true)]));
    await sim.waitReady(30_000);
    const pids = sim.pods().map((p) => p.pid!);
    expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).toContain(prefix);
    await sim.stop();
    expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).not.toContain(prefix);
    expect(execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })).not.toContain(prefix);
    expect(existsSync('/etc/netns') ? readdirSync('/etc/netns').filter((n) => n.startsWith(prefix)) : []).toEqual([]);
    expect(existsSync(sim.stateDir)).toBe(false);
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
  });
});

describe.skipIf(unavailable !== undefined)('cluster simulation: the generator\'s manifests', () => {
  // What `evolith deploy kubernetes` writes for the bookstore, run with a stand-in pod entry
  // (test/fixtures/cluster-image/pod.mjs): every object the generator writes must be one the
  // simulation understands, and every container must find the files and env the contract promises.
  const root = fileURLToPath(new URL('../../..', import.meta.url));
  for (const arch of ['microservices', 'mesh', 'serverless'] as const) {
    it(`runs the ${arch} manifests`, async () => {
      const out = mkdtempSync(join(tmpdir(), 'cluster-sim-generated-'));
      const sim = await ClusterSimulation.start({ appImages: ['bookstore'], imageDir, timeScale: 0.1 });
      try {
        execFileSync(
          process.execPath,
          ['bin/evolith.mjs', 'deploy', 'kubernetes', 'examples/bookstore', '--out', join(out, 'k8s'), '--arch', arch, '--postgres-url', `postgres://test@${sim.hostAddress}:5432/test`, '--nats-url', `nats://${sim.hostAddress}:4222`],
          { cwd: root, encoding: 'utf8' },
        );
        await sim.apply(join(out, 'k8s'));
        await sim.waitReady(30_000);
        const pods = sim.pods();
        const workloads = new Set(pods.map((p) => p.workload));
        expect(workloads).toContain('edge');
        expect(workloads).toContain('warehouse');
        if (arch === 'serverless') expect(workloads).toContain('warehouse-wakeups');
        for (const p of pods) expect(p.containers[0]!.runAs).toBe('uid 10001 gid 10001');

        const edge = await getJson(`${sim.url('edge', 80, 'bookstore')}/whoami`);
        expect(edge.role).toBe('edge');
        expect(edge.uid).toBe(10001);
        expect(edge.env.EVOLITH_NAMESPACE).toBe('bookstore');
        expect(edge.env.EVOLITH_POSTGRES_URL).toBe(`postgres://test@${sim.hostAddress}:5432/test`);
        expect(edge.bundleKeys.length).toBeGreaterThan(0);

        // The group's name as the pod runtime resolves it, from the edge's pod.
        const warehouse = pods.filter((p) => p.workload.startsWith('warehouse') && !p.workload.endsWith('wakeups'));
        const resolved = await getJson(`${sim.url('edge', 80, 'bookstore')}/resolve?name=warehouse.bookstore.svc.cluster.local`);
        if (arch === 'microservices') expect(resolved.addresses).toEqual(warehouse.map((p) => p.ip).sort());
        else expect(resolved.addresses).toHaveLength(1); // a ClusterIP (mesh Service, Knative Service)

        const ignoredKinds = new Set(sim.ignored().map((o) => o.kind));
        expect(ignoredKinds).toContain('NetworkPolicy');
        if (arch === 'mesh') expect(ignoredKinds).toContain('AuthorizationPolicy');
        if (arch === 'serverless') {
          const waker = pods.find((p) => p.workload === 'warehouse-wakeups')!;
          const seen = await getJson(`http://${waker.ip}:8081/whoami`);
          expect(seen.env.K_SINK).toBe('http://warehouse.bookstore.svc.cluster.local');
        }
      } finally {
        await sim.stop();
        rmSync(out, { recursive: true, force: true });
      }
    });
  }
});
