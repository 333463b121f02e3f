/**
 * The Kubernetes generator: golden files of the bookstore in each architecture, schema
 * validation and our own checks of every object, and the translations that carry meaning
 * (mesh policy to Istio, function settings to Knative, backends, credentials).
 *
 * Golden files live in test/golden/kubernetes/<architecture>/. After an intended change of the
 * output, regenerate them with
 *
 *   UPDATE_GOLDEN=1 npx vitest run src/deploy/kubernetes/manifests.test.ts
 *
 * and review the diff. Credential bundles differ on every run (fresh keys), so the golden
 * secrets.yaml shows a placeholder in their place; the bundles are checked by their claims.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { AppDefinition } from '../../app/define.js';
import { loadApp } from '../../app/load.js';
import { DeploymentAuthority, type CredentialBundle } from '../../auth/credentials.js';
import { ConfigError } from '../../kernel/errors.js';
import { loadTopology, type Topology } from '../topology.js';
import { kubernetesManifests, yamlText, type K8sObject, type KubernetesManifests, type KubernetesOptions } from './manifests.js';
import { checkWorkloads, validateObjects } from './validate.js';
import { checkOutputDirectory, outputAuthority, writeOutput } from './write.js';

const root = resolve(import.meta.dirname, '../../..');
const bookstoreDir = join(root, 'examples/bookstore');
const goldenDir = join(root, 'test/golden/kubernetes');
const URLS = { postgresUrl: 'postgres://evolith:secret@db.example.com:5432/bookstore', natsUrl: 'nats://nats.example.com:4222' };
const authority = DeploymentAuthority.fromKeys(new DeploymentAuthority('golden').exportKeys());
const dirs: string[] = [];
let bookstore: AppDefinition;

beforeAll(async () => {
  bookstore = await loadApp(bookstoreDir);
});

afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'evolith-k8s-'));
  dirs.push(d);
  return d;
}

/** A directory standing in for the bookstore's: its own evolith.yaml and mesh.yaml, and a package.json (the image's build context). */
function appDir(files: { 'evolith.yaml'?: string; 'mesh.yaml'?: string }): string {
  const d = tmp();
  writeFileSync(join(d, 'package.json'), JSON.stringify({ name: 'shop', private: true }));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(d, name), text);
  return d;
}

function generate(topology: Topology, options: Partial<KubernetesOptions> & { appDir?: string } = {}): KubernetesManifests {
  return kubernetesManifests(bookstore, topology, { appDir: bookstoreDir, authority, ...URLS, ...options });
}

const find = (m: KubernetesManifests, kind: string, name: string, apiVersion?: string): K8sObject => {
  const o = m.objects.find((x) => x.kind === kind && x.metadata.name === name && (apiVersion === undefined || x.apiVersion === apiVersion));
  if (o === undefined) throw new Error(`no ${kind}/${name} among ${m.objects.map((x) => `${x.kind}/${x.metadata.name}`).join(', ')}`);
  return o;
};

/**
 * The files with every credential bundle replaced by a placeholder: what the golden files hold.
 * A dot file is stored as `dot-<name>`: the generated .gitignore would hide its neighbours from git.
 */
function goldenFiles(m: KubernetesManifests): Record<string, string> {
  const files: Record<string, string> = {};
  for (const [name, text] of Object.entries(m.files)) files[name.startsWith('.') ? `dot-${name.slice(1)}` : name] = text;
  files['secrets.yaml'] = m.objects
    .filter((_, i) => m.fileOf[i] === 'secrets.yaml')
    .map((o) => (o.metadata.name.startsWith('evolith-credentials-') ? { ...o, stringData: { 'bundle.json': '<credential bundle: new keys on every run>' } } : o))
    .map(yamlText)
    .join('---\n');
  return files;
}

const bundleOf = (m: KubernetesManifests, workload: string): CredentialBundle =>
  JSON.parse((find(m, 'Secret', `evolith-credentials-${workload}`).stringData as Record<string, string>)['bundle.json']!) as CredentialBundle;

const podSpecOf = (o: K8sObject) => (o.spec as { template: { spec: Record<string, unknown> & { containers: Record<string, unknown>[] } } }).template.spec;

describe.each(['microservices', 'mesh', 'serverless'] as const)('the bookstore as %s', (arch) => {
  test('matches its golden files', () => {
    const files = goldenFiles(generate(loadTopology(bookstoreDir), { architecture: arch }));
    const dir = join(goldenDir, arch);
    if (process.env.UPDATE_GOLDEN === '1') {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
    }
    expect(readdirSync(dir).sort()).toEqual(Object.keys(files).sort());
    for (const [name, text] of Object.entries(files)) expect(text, `${arch}/${name}`).toBe(readFileSync(join(dir, name), 'utf8'));
  });

  test('every object matches its schema and passes our checks', async () => {
    const m = generate(loadTopology(bookstoreDir), { architecture: arch });
    const result = await validateObjects(m.objects);
    expect(result).toEqual({ validated: true, missing: [], problems: [] });
    expect(checkWorkloads(m.objects)).toEqual([]);
    expect(m.warnings).toEqual([]);
  });

  test("each workload's credential is issued by the authority and names what it hosts", () => {
    const m = generate(loadTopology(bookstoreDir), { architecture: arch });
    const warehouse = bundleOf(m, 'warehouse');
    expect(warehouse.trust).toEqual(authority.trust);
    expect(authority.claimsOf(warehouse.token)).toMatchObject({ sub: 'warehouse', svc: ['warehouse'] });
    const edge = bundleOf(m, 'edge');
    expect(authority.claimsOf(edge.token)).toMatchObject({ sub: 'edge', edge: true });
    expect(edge.assertionKey).toBe(authority.exportKeys().assertionKey);
    const claims = authority.claimsOf(warehouse.token);
    expect(claims.exp - claims.iat).toBe(365 * 24 * 60 * 60 * 1000);
  });
});

describe('serverless', () => {
  test("each function's Knative annotations and limits are its settings", () => {
    const dir = appDir({
      'evolith.yaml': [
        'serverless:',
        '  initialInstances: 2',
        '  defaults: { memoryMb: 512 }',
        '  functions:',
        '    payment: { memoryMb: 64, maxConcurrency: 40, targetConcurrency: 12, timeoutMs: 4500, minInstances: 1, maxInstances: 5, scaleToZeroGraceMs: 1500, stableWindowMs: 20000, panicWindowMs: 5000, panicThreshold: 3 }',
      ].join('\n'),
    });
    const m = generate(loadTopology(dir), { appDir: dir, architecture: 'serverless' });
    const payment = find(m, 'Service', 'payment', 'serving.knative.dev/v1');
    const template = (payment.spec as { template: { metadata: { annotations: Record<string, string> }; spec: Record<string, unknown> } }).template;
    expect(template.metadata.annotations).toEqual({
      'autoscaling.knative.dev/metric': 'concurrency',
      'autoscaling.knative.dev/target': '12',
      'autoscaling.knative.dev/min-scale': '1',
      'autoscaling.knative.dev/max-scale': '5',
      'autoscaling.knative.dev/initial-scale': '2',
      'autoscaling.knative.dev/scale-to-zero-pod-retention-period': '1500ms',
      'autoscaling.knative.dev/window': '20s',
      'autoscaling.knative.dev/panic-window-percentage': '25',
      'autoscaling.knative.dev/panic-threshold-percentage': '300',
    });
    expect(template.spec.containerConcurrency).toBe(40);
    expect(template.spec.timeoutSeconds).toBe(5);
    const c = (template.spec.containers as { resources: { requests: Record<string, string>; limits: Record<string, string> } }[])[0]!;
    // A limit below the default request pulls the request down with it.
    expect(c.resources).toEqual({ requests: { cpu: '100m', memory: '64Mi' }, limits: { cpu: '1', memory: '64Mi' } });
    expect(payment.metadata.labels!['networking.knative.dev/visibility']).toBe('cluster-local');
    // Defaults elsewhere: 70 % of maxConcurrency, the default memory over serverless.defaults.
    const account = find(m, 'Service', 'account', 'serving.knative.dev/v1');
    const accountTemplate = (account.spec as { template: { metadata: { annotations: Record<string, string> }; spec: { containers: { resources: { limits: Record<string, string> } }[] } } }).template;
    expect(accountTemplate.metadata.annotations['autoscaling.knative.dev/target']).toBe('70');
    expect(accountTemplate.spec.containers[0]!.resources.limits.memory).toBe('512Mi');
  });

  test('wakers for the functions with events or timers only, each sinking into its function with its own credential', () => {
    const m = generate(loadTopology(bookstoreDir), { architecture: 'serverless' });
    const wakers = m.objects.filter((o) => o.kind === 'ContainerSource').map((o) => o.metadata.name);
    // warehouse handles payment's events; payment emits events and schedules its expiry timers.
    expect(wakers.sort()).toEqual(['payment-wakeups', 'warehouse-wakeups']);
    const waker = find(m, 'ContainerSource', 'warehouse-wakeups');
    expect((waker.spec as { sink: unknown }).sink).toEqual({ ref: { apiVersion: 'serving.knative.dev/v1', kind: 'Service', name: 'warehouse' } });
    expect(podSpecOf(waker).containers[0]!.args).toEqual(expect.arrayContaining(['--wakeups', 'warehouse']));
    expect(authority.claimsOf(bundleOf(m, 'warehouse-wakeups').token)).toMatchObject({ sub: 'warehouse-wakeups', svc: ['warehouse'] });
    expect(m.objects.some((o) => o.kind === 'Deployment' && o.metadata.name !== 'edge')).toBe(false);
  });

  test('the tcp transport is refused: Knative routes HTTP only', () => {
    expect(() => generate(loadTopology(bookstoreDir), { architecture: 'serverless', transport: 'tcp' })).toThrow(/serverless needs the http2 transport/);
  });
});

describe('backends', () => {
  test('embedded SQLite is refused with how to give shared backends', () => {
    const refusal = () => kubernetesManifests(bookstore, loadTopology(bookstoreDir), { appDir: bookstoreDir, authority });
    expect(refusal).toThrow(ConfigError);
    expect(refusal).toThrow(/^embedded SQLite cannot be shared by pods on different machines: give --postgres-url and --nats-url, or --with-backends$/);
    expect(() => kubernetesManifests(bookstore, loadTopology(bookstoreDir), { appDir: bookstoreDir, authority, postgresUrl: URLS.postgresUrl })).toThrow(
      /embedded SQLite cannot be shared/,
    );
  });

  test('--with-backends runs PostgreSQL and NATS as StatefulSets and points the pods at them', async () => {
    const m = kubernetesManifests(bookstore, loadTopology(bookstoreDir), { appDir: bookstoreDir, authority, withBackends: true, backendPassword: 'pw-1', namespace: 'shop' });
    const postgres = find(m, 'StatefulSet', 'postgres');
    expect(podSpecOf(postgres).containers[0]!.image).toBe('postgres:16-alpine');
    expect(podSpecOf(find(m, 'StatefulSet', 'nats')).containers[0]!.args).toEqual(expect.arrayContaining(['-js']));
    expect((postgres.spec as { volumeClaimTemplates: unknown[] }).volumeClaimTemplates).toHaveLength(1);
    expect((find(m, 'Service', 'postgres').spec as { clusterIP: string }).clusterIP).toBe('None');
    expect(find(m, 'Secret', 'evolith-backends').stringData).toEqual({
      'postgres-url': 'postgres://evolith:pw-1@postgres.shop.svc.cluster.local:5432/evolith',
      'nats-url': 'nats://nats.shop.svc.cluster.local:4222',
      'postgres-password': 'pw-1',
    });
    expect(m.fileOf[m.objects.indexOf(postgres)]).toBe('backends.yaml');
    expect(await validateObjects(m.objects)).toEqual({ validated: true, missing: [], problems: [] });
    expect(checkWorkloads(m.objects)).toEqual([]);
  });

  test('the topology the pods read has the cluster architecture and no backend URL', () => {
    const dir = appDir({ 'evolith.yaml': 'storage: { driver: postgres, url: "postgres://a:b@h/db", schemaPrefix: shop_, poolSize: 4 }\nevents: { driver: nats, url: "nats://bus:4222", stream: SHOP }\n' });
    const m = kubernetesManifests(bookstore, loadTopology(dir), { appDir: dir, authority });
    const text = (find(m, 'ConfigMap', 'evolith-topology').data as Record<string, string>)['evolith.yaml']!;
    expect(text).not.toMatch(/postgres:\/\/|nats:\/\//);
    expect(text).toMatch(/architecture: microservices\n/);
    expect(text).toMatch(/storage:\n {2}driver: postgres\n {2}schemaPrefix: shop_\n {2}poolSize: 4\n/);
    expect(text).toMatch(/stream: SHOP/);
    // The topology's own URLs serve when no flag gives others.
    expect(find(m, 'Secret', 'evolith-backends').stringData).toEqual({ 'postgres-url': 'postgres://a:b@h/db', 'nats-url': 'nats://bus:4222' });
  });
});

describe('options', () => {
  test('http2 without a mesh is generated with a warning: nothing balances its calls', async () => {
    const m = generate(loadTopology(bookstoreDir), { transport: 'http2' });
    expect(m.warnings).toEqual(['transport http2 without a mesh: kube-proxy balances connections, not calls, so one caller keeps talking to one pod of a group']);
    expect((find(m, 'Service', 'warehouse').spec as { ports: unknown }).ports).toEqual([{ name: 'http2', port: 7000, targetPort: 'http2', protocol: 'TCP', appProtocol: 'http2' }]);
    expect(checkWorkloads(m.objects)).toEqual([]);
  });

  test('every bad option is named at once', () => {
    let error: unknown;
    try {
      generate(loadTopology(bookstoreDir), { architecture: 'lambda', namespace: 'Not_A_Label', transport: 'grpc', clusterDomain: '-x-', natsUrl: 'http://nats' });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    for (const part of ['--arch: "lambda"', '--namespace: "Not_A_Label"', '--transport: "grpc"', '--cluster-domain: "-x-"', '--nats-url: "http://nats"']) expect(message).toContain(part);
  });

  test('flags override the topology; a group with replicas 0 keeps a Deployment of 0 and gets no autoscaler', () => {
    const dir = appDir({
      'evolith.yaml': [
        'groups: { storefront: [account, auth] }',
        'replicas: { payment: 0, warehouse: 3 }',
        'kubernetes:',
        '  namespace: from-file',
        '  image: registry.example/shop:1',
        '  resources: { defaults: { limits: { memory: 1Gi } }, groups: { warehouse: { requests: { cpu: 250m } } } }',
        '  autoscaling: { maxReplicas: 6 }',
        '  ingress: { className: nginx, host: shop.example }',
      ].join('\n'),
    });
    const m = generate(loadTopology(dir), { appDir: dir, namespace: 'from-flag' });
    expect(m.namespace).toBe('from-flag');
    expect(m.objects.every((o) => o.kind === 'Namespace' || o.metadata.namespace === 'from-flag')).toBe(true);
    expect((find(m, 'Deployment', 'payment').spec as { replicas: number }).replicas).toBe(0);
    expect(m.objects.some((o) => o.kind === 'HorizontalPodAutoscaler' && o.metadata.name === 'payment')).toBe(false);
    expect(find(m, 'HorizontalPodAutoscaler', 'warehouse').spec).toMatchObject({ minReplicas: 3, maxReplicas: 6 });
    const storefront = podSpecOf(find(m, 'Deployment', 'storefront')).containers[0]!;
    expect(storefront.image).toBe('registry.example/shop:1');
    expect(storefront.resources).toEqual({ requests: { cpu: '100m', memory: '128Mi' }, limits: { cpu: '1', memory: '1Gi' } });
    expect((podSpecOf(find(m, 'Deployment', 'warehouse')).containers[0]!.resources as { requests: unknown }).requests).toEqual({ cpu: '250m', memory: '128Mi' });
    expect(authority.claimsOf(bundleOf(m, 'storefront').token).svc).toEqual(['account', 'auth']);
    expect(find(m, 'Ingress', 'edge').spec).toEqual({
      ingressClassName: 'nginx',
      rules: [{ host: 'shop.example', http: { paths: [{ path: '/', pathType: 'Prefix', backend: { service: { name: 'edge', port: { number: 80 } } } }] } }],
    });
    expect(checkWorkloads(m.objects)).toEqual([]);
  });

  test('the pre-stop pause is the topology\'s, and its grace period follows it; 0 writes no hook', () => {
    const paused = generate(loadTopology(appDir({ 'evolith.yaml': 'drainMs: 4000\nkubernetes: { preStopSeconds: 12 }' })));
    const spec = podSpecOf(find(paused, 'Deployment', 'warehouse')) as { terminationGracePeriodSeconds: number; containers: { lifecycle?: unknown }[] };
    expect(spec.containers[0]!.lifecycle).toEqual({ preStop: { exec: { command: ['sleep', '12'] } } });
    expect(spec.terminationGracePeriodSeconds).toBe(12 + 4 + 5);
    const none = generate(loadTopology(appDir({ 'evolith.yaml': 'drainMs: 4000\nkubernetes: { preStopSeconds: 0 }' })));
    for (const name of ['warehouse', 'edge']) {
      const s = podSpecOf(find(none, 'Deployment', name)) as { terminationGracePeriodSeconds: number; containers: { lifecycle?: unknown }[] };
      expect(s.containers[0]!.lifecycle).toBeUndefined();
      expect(s.terminationGracePeriodSeconds).toBe(4 + 5);
    }
    expect(checkWorkloads(none.objects)).toEqual([]);
  });
});

describe('mesh: the policy file as Istio resources', () => {
  const canary = [
    'destinationRules:',
    '  - host: warehouse',
    '    subsets:',
    '      - { name: v1, labels: { version: v1 } }',
    '      - { name: v2, labels: { version: v2 } }',
    'virtualServices:',
    '  - hosts: [warehouse]',
    '    routes:',
    '      - name: testers',
    '        match:',
    '          - headers: { canary: { exact: "1" } }',
    '        route:',
    '          - destination: { host: warehouse, subset: v2 }',
    '      - name: canary',
    '        route:',
    '          - { destination: { host: warehouse, subset: v1 }, weight: 90 }',
    '          - { destination: { host: warehouse, subset: v2 }, weight: 10 }',
    '  - hosts: [payment]',
    '    routes:',
    '      - name: failing-payments',
    '        match:',
    '          - method: { exact: updateState }',
    '            sourceService: edge',
    '        fault:',
    '          delay: { percentage: { value: 100 }, fixedDelay: 200ms }',
    '          abort: { percentage: { value: 50 }, code: UNAVAILABLE }',
    'authorizationPolicies:',
    '  - name: warehouse-callers',
    '    selector: warehouse',
    '    action: ALLOW',
    '    rules:',
    '      - from: [{ source: { services: [edge] } }]',
    '      - from: [{ source: { services: [payment, account] } }]',
    '        to: [{ operation: { methods: [freeze, release] } }]',
  ].join('\n');
  const versions = 'mesh:\n  versions:\n    warehouse:\n      v1: { replicas: 2 }\n      v2: { replicas: 1 }\n';

  test('a canary: one Deployment per version, subsets by version label, weights in the VirtualService', async () => {
    const dir = appDir({ 'evolith.yaml': versions, 'mesh.yaml': canary });
    const m = generate(loadTopology(dir), { appDir: dir, architecture: 'mesh' });
    const v1 = find(m, 'Deployment', 'warehouse-v1');
    const v2 = find(m, 'Deployment', 'warehouse-v2');
    expect((v1.spec as { replicas: number }).replicas).toBe(2);
    expect((v2.spec as { template: { metadata: { labels: Record<string, string> } } }).template.metadata.labels).toMatchObject({ app: 'warehouse', version: 'v2' });
    expect(find(m, 'DestinationRule', 'warehouse').spec).toMatchObject({
      host: 'warehouse.bookstore.svc.cluster.local',
      subsets: [
        { name: 'v1', labels: { version: 'v1' } },
        { name: 'v2', labels: { version: 'v2' } },
      ],
    });
    const http = (find(m, 'VirtualService', 'warehouse').spec as { http: Record<string, unknown>[] }).http;
    expect(http.map((r) => r.name)).toEqual(['testers', 'canary', 'default']);
    expect(http[0]!.match).toEqual([{ uri: { prefix: '/rpc/warehouse/' }, headers: { baggage: { regex: '(.*,)?\\s*canary\\s*=\\s*1\\s*([;,].*)?' } } }]);
    expect(http[1]!.route).toEqual([
      { destination: { host: 'warehouse.bookstore.svc.cluster.local', subset: 'v1' }, weight: 90 },
      { destination: { host: 'warehouse.bookstore.svc.cluster.local', subset: 'v2' }, weight: 10 },
    ]);
    // The one Service selects both versions; the budget covers the group.
    expect((find(m, 'Service', 'warehouse').spec as { selector: unknown }).selector).toEqual({ app: 'warehouse' });
    expect(await validateObjects(m.objects)).toEqual({ validated: true, missing: [], problems: [] });
    expect(checkWorkloads(m.objects)).toEqual([]);
  });

  test("the baggage regex matches the entry among others and nothing else (Istio's regex matches the whole header)", () => {
    const re = new RegExp(`^(?:${'(.*,)?\\s*canary\\s*=\\s*1\\s*([;,].*)?'})$`);
    for (const yes of ['canary=1', 'user=7, canary=1', 'canary=1;p=x,other=2', 'a=b,canary = 1']) expect(re.test(yes), yes).toBe(true);
    for (const no of ['canary=10', 'xcanary=1', 'canary=2,x=1', 'notcanary=1']) expect(re.test(no), no).toBe(false);
  });

  test('an ALLOW policy admits the principals of the callers’ service accounts, on their paths', () => {
    const dir = appDir({ 'evolith.yaml': `${versions}groups: { storefront: [account, auth] }\n`, 'mesh.yaml': canary });
    const m = generate(loadTopology(dir), { appDir: dir, architecture: 'mesh' });
    expect(find(m, 'AuthorizationPolicy', 'warehouse-callers').spec).toEqual({
      selector: { matchLabels: { app: 'warehouse' } },
      action: 'ALLOW',
      rules: [
        { from: [{ source: { principals: ['cluster.local/ns/bookstore/sa/edge'] } }], to: [{ operation: { paths: ['/rpc/warehouse/*'] } }] },
        {
          // account runs in group storefront: its calls carry that workload's identity.
          from: [{ source: { principals: ['cluster.local/ns/bookstore/sa/payment', 'cluster.local/ns/bookstore/sa/storefront'] } }],
          to: [{ operation: { paths: ['/rpc/warehouse/freeze', '/rpc/warehouse/release'] } }],
        },
      ],
    });
  });

  test('fault injection: delay and abort on the matched method and caller', () => {
    const dir = appDir({ 'evolith.yaml': versions, 'mesh.yaml': canary });
    const m = generate(loadTopology(dir), { appDir: dir, architecture: 'mesh' });
    const http = (find(m, 'VirtualService', 'payment').spec as { http: Record<string, unknown>[] }).http;
    expect(http[0]).toEqual({
      name: 'failing-payments',
      match: [{ uri: { exact: '/rpc/payment/updateState' }, sourceLabels: { app: 'edge' } }],
      route: [{ destination: { host: 'payment.bookstore.svc.cluster.local' }, weight: 100 }],
      fault: { delay: { percentage: { value: 100 }, fixedDelay: '200ms' }, abort: { percentage: { value: 50 }, httpStatus: 503 } },
      retries: { attempts: 2, retryOn: 'connect-failure,refused-stream' },
    });
  });

  test('retries go to idempotent methods only: a route is split by method', () => {
    const policy = ['virtualServices:', '  - hosts: [warehouse]', '    routes:', '      - name: all', '        retries: { attempts: 3, perTryTimeout: 1s, retryOn: "unavailable,timeout" }'].join('\n');
    const dir = appDir({ 'mesh.yaml': policy });
    const m = generate(loadTopology(dir), { appDir: dir, architecture: 'mesh' });
    const http = (find(m, 'VirtualService', 'warehouse').spec as { http: Record<string, unknown>[] }).http;
    const methods = Object.values(bookstore.services.find((s) => s.contract.name === 'warehouse')!.contract.methods);
    const idempotent = methods.filter((x) => x.idempotent).map((x) => ({ uri: { exact: `/rpc/warehouse/${x.name}` } }));
    // Both kinds exist, so the split is visible.
    expect(idempotent.length).toBeGreaterThan(0);
    expect(idempotent.length).toBeLessThan(methods.length);
    expect(http[0]).toMatchObject({ name: 'all-idempotent', match: idempotent, retries: { attempts: 3, perTryTimeout: '1s', retryOn: 'unavailable,connect-failure,refused-stream,503,deadline-exceeded,504' } });
    expect(http[1]).toMatchObject({ name: 'all', match: [{ uri: { prefix: '/rpc/warehouse/' } }], retries: { attempts: 2, retryOn: 'connect-failure,refused-stream' } });
  });

  test('over tcp only layer-4 parts apply: tcp routes by weight, and a warning for each part dropped', async () => {
    const dir = appDir({ 'evolith.yaml': versions, 'mesh.yaml': canary });
    const m = generate(loadTopology(dir), { appDir: dir, architecture: 'mesh', transport: 'tcp' });
    expect(find(m, 'VirtualService', 'warehouse').spec).toEqual({
      hosts: ['warehouse.bookstore.svc.cluster.local'],
      tcp: [
        {
          match: [{ port: 7000 }],
          route: [
            { destination: { host: 'warehouse.bookstore.svc.cluster.local', subset: 'v1', port: { number: 7000 } }, weight: 90 },
            { destination: { host: 'warehouse.bookstore.svc.cluster.local', subset: 'v2', port: { number: 7000 } }, weight: 10 },
          ],
        },
      ],
    });
    expect(m.objects.some((o) => o.kind === 'VirtualService' && o.metadata.name === 'payment')).toBe(false);
    expect(m.warnings).toEqual([
      'virtualServices (warehouse) routes[0] (testers): a tcp connection carries calls of every method and caller, so a route with a match cannot apply; dropped',
      'virtualServices (payment) routes[0] (failing-payments): a tcp connection carries calls of every method and caller, so a route with a match cannot apply; dropped',
      'authorizationPolicies[0] (warehouse-callers): methods need the http2 transport; over tcp the rule admits every method of warehouse',
    ]);
    const rules = (find(m, 'AuthorizationPolicy', 'warehouse-callers').spec as { rules: { to: unknown }[] }).rules;
    expect(rules.every((r) => JSON.stringify(r.to) === JSON.stringify([{ operation: { ports: ['7000'] } }]))).toBe(true);
    expect((find(m, 'Service', 'warehouse').spec as { clusterIP?: string }).clusterIP).toBe('None');
    expect(await validateObjects(m.objects)).toEqual({ validated: true, missing: [], problems: [] });
  });

  test('an ALLOW policy on one service of a group leaves the group’s other services open', () => {
    const policy = ['authorizationPolicies:', '  - name: auth-callers', '    selector: auth', '    rules:', '      - from: [{ source: { services: [edge] } }]'].join('\n');
    const dir = appDir({ 'evolith.yaml': 'groups: { storefront: [account, auth] }\n', 'mesh.yaml': policy });
    const m = generate(loadTopology(dir), { appDir: dir, architecture: 'mesh' });
    expect(find(m, 'AuthorizationPolicy', 'account-open').spec).toEqual({
      selector: { matchLabels: { app: 'storefront' } },
      action: 'ALLOW',
      rules: [{ to: [{ operation: { paths: ['/rpc/account/*'] } }] }],
    });
  });

  test('what Istio cannot express is refused with every reason', () => {
    const policy = [
      'destinationRules:',
      '  - host: account',
      '  - host: auth',
      'virtualServices:',
      '  - hosts: [account]',
      '    routes:',
      '      - match: [{ headers: { a: { exact: "1" }, b: { exact: "2" } } }]',
    ].join('\n');
    const dir = appDir({ 'evolith.yaml': 'groups: { storefront: [account, auth] }\n', 'mesh.yaml': policy });
    expect(() => generate(loadTopology(dir), { appDir: dir, architecture: 'mesh' })).toThrow(
      /destination rules for account and auth: both run in group storefront[\s\S]*matches 2 baggage entries \(a, b\)/,
    );
  });
});

describe('checkWorkloads', () => {
  const base = () => structuredClone(generate(loadTopology(bookstoreDir)).objects);
  const container = (objects: K8sObject[], name: string) => podSpecOf(objects.find((o) => o.kind === 'Deployment' && o.metadata.name === name)!).containers[0]!;

  test('a container without probes or resources', () => {
    const objects = base();
    const c = container(objects, 'warehouse');
    delete c.livenessProbe;
    delete c.readinessProbe;
    delete c.resources;
    expect(checkWorkloads(objects)).toEqual([
      'Deployment/warehouse: container app has no liveness probe',
      'Deployment/warehouse: container app has no readiness probe',
      'Deployment/warehouse: container app has no cpu and memory requests',
      'Deployment/warehouse: container app has no cpu and memory limits',
    ]);
  });

  test('a container that may run as root, writes its root filesystem or escalates', () => {
    const objects = base();
    const pod = podSpecOf(objects.find((o) => o.metadata.name === 'payment' && o.kind === 'Deployment')!);
    (pod.securityContext as Record<string, unknown>).runAsNonRoot = false;
    pod.containers[0]!.securityContext = { allowPrivilegeEscalation: true };
    expect(checkWorkloads(objects)).toEqual([
      'Deployment/payment: container app may run as root (runAsNonRoot is not true)',
      'Deployment/payment: container app has a writable root filesystem (readOnlyRootFilesystem is not true)',
      'Deployment/payment: container app allows privilege escalation (allowPrivilegeEscalation is not false)',
    ]);
  });

  test('a Service selecting nothing, a missing Secret, a probe on a port the container lacks', () => {
    const objects = base().filter((o) => o.metadata.name !== 'evolith-credentials-account');
    const svc = objects.find((o) => o.kind === 'Service' && o.metadata.name === 'auth')!;
    (svc.spec as { selector: Record<string, string> }).selector = { app: 'nobody' };
    (container(objects, 'payment').readinessProbe as { httpGet: { port: string } }).httpGet.port = 'metrics';
    expect(checkWorkloads(objects)).toEqual([
      'Deployment/account: volume credentials mounts Secret evolith-credentials-account, which is not generated',
      'Deployment/payment: container app: readinessProbe targets port metrics, which the container does not declare',
      'Service/auth: its selector app=nobody matches no pod template',
    ]);
  });
});

describe('validateObjects', () => {
  test('a field of the wrong type is reported with its path', async () => {
    const objects = structuredClone(generate(loadTopology(bookstoreDir)).objects);
    const d = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'account')!;
    (d.spec as Record<string, unknown>).replicas = 'two';
    const result = await validateObjects(objects);
    expect(result.validated).toBe(true);
    expect(result.problems).toEqual(['Deployment/account: spec.replicas must be integer']);
  });

  test('an Istio field of the wrong type, and a kind without a schema, fail', async () => {
    const dr: K8sObject = { apiVersion: 'networking.istio.io/v1beta1', kind: 'DestinationRule', metadata: { name: 'x' }, spec: { host: 'x', trafficPolicy: { outlierDetection: { maxEjectionPercent: 'half' } } } };
    const unknown: K8sObject = { apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } };
    const result = await validateObjects([dr, unknown]);
    expect(result.problems).toEqual([
      'DestinationRule/x: spec.trafficPolicy.outlierDetection.maxEjectionPercent must be integer',
      'Widget/w: no schema is known for Widget of example.com/v1, so it cannot be validated',
    ]);
  });

  test('without the model packages nothing is validated, and the missing packages are named', async () => {
    const objects = generate(loadTopology(bookstoreDir), { architecture: 'mesh' }).objects;
    const absent = async (specifier: string) => {
      if (specifier.startsWith('@kubernetes-models/istio/')) throw Object.assign(new Error(`Cannot find package '${specifier}'`), { code: 'ERR_MODULE_NOT_FOUND' });
      return (await import(specifier)) as Record<string, unknown>;
    };
    const result = await validateObjects(objects, absent);
    expect(result.validated).toBe(false);
    expect(result.missing).toEqual(['@kubernetes-models/istio']);
  });
});

describe('the output directory', () => {
  test('generating again keeps the authority and the backend password; --new-authority replaces them', () => {
    const out = join(tmp(), 'out');
    const first = outputAuthority(out);
    expect(first.created).toBe(true);
    const m1 = kubernetesManifests(bookstore, loadTopology(bookstoreDir), { appDir: bookstoreDir, authority: first.authority, ...URLS, outDir: out });
    writeOutput(out, m1, first);
    const again = outputAuthority(out);
    expect(again.created).toBe(false);
    expect(again.authority.trust).toEqual(first.authority.trust);
    expect(again.backendPassword).toBe(first.backendPassword);
    // A credential issued on the second run is trusted by what the first run's pods hold.
    const m2 = kubernetesManifests(bookstore, loadTopology(bookstoreDir), { appDir: bookstoreDir, authority: again.authority, ...URLS, outDir: out });
    expect(first.authority.claimsOf(bundleOf(m2, 'warehouse').token).sub).toBe('warehouse');
    const fresh = outputAuthority(out, true);
    expect(fresh.authority.trust.authority).not.toBe(first.authority.trust.authority);
  });

  test('a foreign directory is refused; our own is rewritten, leaving nothing stale', () => {
    const foreign = tmp();
    writeFileSync(join(foreign, 'notes.txt'), 'mine');
    expect(() => checkOutputDirectory(foreign)).toThrow(/is not empty and holds no output of evolith deploy kubernetes/);

    const out = join(tmp(), 'out');
    const a = outputAuthority(out);
    const dir = appDir({ 'evolith.yaml': 'groups: { storefront: [account, auth] }\n' });
    writeOutput(out, kubernetesManifests(bookstore, loadTopology(dir), { appDir: dir, authority: a.authority, ...URLS }), a);
    expect(existsSync(join(out, 'storefront.yaml'))).toBe(true);
    writeFileSync(join(out, 'my-notes.md'), 'kept');
    const written = writeOutput(out, kubernetesManifests(bookstore, loadTopology(bookstoreDir), { appDir: bookstoreDir, authority: a.authority, ...URLS }), a);
    expect(existsSync(join(out, 'storefront.yaml'))).toBe(false);
    expect(existsSync(join(out, 'my-notes.md'))).toBe(true);
    expect(written).toContain('account.yaml');
    expect(readFileSync(join(out, '.gitignore'), 'utf8')).toMatch(/^\.authority\.json$/m);
  });
});
