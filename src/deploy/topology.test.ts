import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { Kit } from '../../test/fixtures/unit-kit.js';
import { ConfigError } from '../kernel/errors.js';
import { loadTopology, watchTopology, type Topology } from './topology.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

function appDir(yaml?: string): string {
  const dir = kit.tmp('topology');
  if (yaml !== undefined) writeFileSync(join(dir, 'evolith.yaml'), yaml);
  return dir;
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('loadTopology', () => {
  test('without a file, every value has its default', () => {
    const dir = appDir();
    expect(loadTopology(dir)).toEqual({
      architecture: 'monolith',
      host: '127.0.0.1',
      internalHost: '127.0.0.1',
      port: 8080,
      data: join(dir, 'data'),
      storage: 'sqlite',
      policies: {},
      config: {},
      edge: { bodyLimit: 1024 * 1024, requestTimeoutMs: 30_000, headersTimeoutMs: 10_000 },
      checkSerializable: false,
      drainMs: 10_000,
      groups: {},
      replicas: {},
      events: 'sqlite',
      affinity: {},
      mesh: { mode: 'sidecar', policy: 'mesh.yaml', certificateTtlMs: 3_600_000, versions: {} },
      serverless: { pool: 2, initialInstances: 1, wakeupPollMs: 1000, defaults: {}, functions: {} },
      kubernetes: { clusterDomain: 'cluster.local', dnsRefreshMs: 2000, preStopSeconds: 5, resources: { groups: {} }, autoscaling: { maxReplicas: 10, cpuUtilization: 70 }, ingress: {} },
    });
  });

  test('kubernetes: settings checked, each bad value named with its path', () => {
    const t = loadTopology(appDir(['kubernetes:', '  namespace: shop', '  transport: http2', '  resources: { groups: { warehouse: { limits: { memory: 1Gi } } } }'].join('\n')));
    expect(t.kubernetes.namespace).toBe('shop');
    expect(t.kubernetes.transport).toBe('http2');
    expect(t.kubernetes.resources.groups.warehouse).toEqual({ limits: { memory: '1Gi' } });
    expect(() => loadTopology(appDir(['kubernetes:', '  namespace: Shop_1', '  transport: grpc', '  resources: { defaults: { limits: { memory: lots } } }'].join('\n')))).toThrow(
      /kubernetes\.namespace: a namespace[\s\S]*kubernetes\.transport[\s\S]*kubernetes\.resources\.defaults\.limits\.memory: a Kubernetes quantity/,
    );
  });

  test('serverless: function settings over the defaults; bad values named with their paths', () => {
    const t = loadTopology(
      appDir(['architecture: serverless', 'serverless:', '  pool: 0', '  defaults: { memoryMb: 512, maxInstances: 3 }', '  functions:', '    payment: { memoryMb: 128, minInstances: 1 }'].join('\n')),
    );
    expect(t.serverless.pool).toBe(0);
    expect(t.serverless.defaults).toEqual({ memoryMb: 512, maxInstances: 3 });
    expect(t.serverless.functions.payment).toEqual({ memoryMb: 128, minInstances: 1 });
    const bad = () => loadTopology(appDir(['serverless:', '  pool: -1', '  defaults: { memoryMb: 8, cpu: 2 }', '  functions: { Payment: {} }'].join('\n')));
    expect(bad).toThrow(/serverless\.pool/);
    expect(bad).toThrow(/serverless\.defaults\.memoryMb/);
    expect(bad).toThrow(/serverless\.defaults: Unrecognized key.*cpu/);
    expect(bad).toThrow(/serverless\.functions\.Payment/);
  });

  test('mesh: proxies per instance or per machine, versions side by side; bad values named with their paths', () => {
    const t = loadTopology(
      appDir(['architecture: mesh', 'mesh:', '  mode: node', '  versions:', '    warehouse:', '      v1: {}', '      v2: { replicas: 2, config: { warehouse: { x: 1 } } }'].join('\n')),
    );
    expect(t.mesh.mode).toBe('node');
    expect(t.mesh.versions).toEqual({ warehouse: { v1: { replicas: 1, config: {} }, v2: { replicas: 2, config: { warehouse: { x: 1 } } } } });
    const bad = () => loadTopology(appDir(['mesh:', '  mode: ambient', '  certificateTtlMs: 10', '  versions: { warehouse: { V2: {} } }'].join('\n')));
    expect(bad).toThrow(/mesh\.mode/);
    expect(bad).toThrow(/mesh\.certificateTtlMs/);
    expect(bad).toThrow(/mesh\.versions\.warehouse\.V2/);
  });

  test('an empty file is the defaults too', () => {
    expect(loadTopology(appDir('')).architecture).toBe('monolith');
    expect(loadTopology(appDir('# only a comment\n')).port).toBe(8080);
  });

  test('reads the file; data is resolved against the app directory unless absolute', () => {
    const dir = appDir(
      [
        'architecture: microservices',
        'port: 9000',
        'data: var/db',
        'storage: { driver: postgres, url: "postgres://db:5432/shop", schemaPrefix: shop_, poolSize: 4 }',
        'policies:',
        '  "*": { timeoutMs: 2000 }',
        '  orders.place: { timeoutMs: 500 }',
        'config:',
        '  payment: { expiresMs: 60000, currency: EUR }',
        'edge: { bodyLimit: 2048 }',
        'checkSerializable: true',
        'drainMs: 250',
      ].join('\n'),
    );
    const t = loadTopology(dir);
    expect(t).toMatchObject({
      architecture: 'microservices',
      port: 9000,
      data: join(dir, 'var/db'),
      storage: { driver: 'postgres', url: 'postgres://db:5432/shop', schemaPrefix: 'shop_', poolSize: 4 },
      policies: { '*': { timeoutMs: 2000 }, 'orders.place': { timeoutMs: 500 } },
      config: { payment: { expiresMs: 60000, currency: 'EUR' } },
      edge: { bodyLimit: 2048 },
      checkSerializable: true,
      drainMs: 250,
    });
    expect(loadTopology(appDir('data: /srv/evolith')).data).toBe('/srv/evolith');
  });

  test('command-line overrides win over the file', () => {
    const dir = appDir('architecture: mesh\nport: 9000\nhost: 0.0.0.0\n');
    const t = loadTopology(dir, { architecture: 'monolith', port: 0, host: '::1', data: '/tmp/x' });
    expect(t).toMatchObject({ architecture: 'monolith', port: 0, host: '::1', data: '/tmp/x' });
  });

  test('--storage takes sqlite or a postgres URL, and --schema-prefix needs PostgreSQL', () => {
    const dir = appDir();
    expect(loadTopology(dir, { storage: 'sqlite' }).storage).toBe('sqlite');
    expect(loadTopology(dir, { storage: 'postgres://127.0.0.1/db', schemaPrefix: 'p_' }).storage).toEqual({
      driver: 'postgres',
      url: 'postgres://127.0.0.1/db',
      schemaPrefix: 'p_',
    });
    expect(configError(() => loadTopology(dir, { schemaPrefix: 'p_' })).message).toContain('--schema-prefix needs PostgreSQL');
    expect(configError(() => loadTopology(dir, { storage: 'mysql://db/x' })).message).toContain('must be a postgres:// URL');
  });

  test('--set writes dotted paths, creating mappings and parsing values as YAML', () => {
    const dir = appDir('config:\n  payment: { currency: EUR }\n');
    const t = loadTopology(dir, {
      set: ['config.payment.expiresMs=5000', 'config.mail.enabled=false', 'policies.orders.timeoutMs=250', 'edge.bodyLimit=4096', 'port=1234', 'host=localhost'],
    });
    expect(t.config).toEqual({ payment: { currency: 'EUR', expiresMs: 5000 }, mail: { enabled: false } });
    expect(t.policies).toEqual({ orders: { timeoutMs: 250 } });
    expect(t.edge.bodyLimit).toBe(4096);
    expect(t.port).toBe(1234);
    expect(t.host).toBe('localhost');
    // A later --set wins; "=" may appear in the value.
    const u = loadTopology(dir, { set: ['config.a.b=1', 'config.a.b=2', 'config.a.url=x=y'] });
    expect(u.config.a).toEqual({ b: 2, url: 'x=y' });
  });

  // Policies are keyed by `service.method` (see RuntimeOptions.policies), and that key holds a dot:
  // splitting the whole path on dots makes a per-method policy impossible to set from the command line.
  test('--set can set a per-method policy, whose key is service.method', () => {
    const t = loadTopology(appDir(), { set: ['policies.orders.place.timeoutMs=250'] });
    expect(t.policies).toEqual({ 'orders.place': { timeoutMs: 250 } });
  });

  test('--set refuses a malformed pair and a path through a scalar', () => {
    const dir = appDir('port: 80\n');
    expect(configError(() => loadTopology(dir, { set: ['novalue'] })).message).toContain('--set expects path=value');
    expect(configError(() => loadTopology(dir, { set: ['=5'] })).message).toContain('--set expects path=value');
    expect(configError(() => loadTopology(dir, { set: ['port.x=1'] })).message).toContain('port is not a mapping');
  });

  test('invalid YAML is a ConfigError naming the file and the problem', () => {
    const dir = appDir('port: [1, 2\narchitecture: : :\n');
    const err = configError(() => loadTopology(dir));
    expect(err.message).toContain(join(dir, 'evolith.yaml'));
    expect(err.message).toContain('not valid YAML');
  });

  test('microservices settings: groups, replicas, event backend, affinity', () => {
    const t = loadTopology(
      appDir(
        [
          'architecture: microservices',
          'groups: { storefront: [account, auth] }',
          'replicas: { warehouse: 2 }',
          'events: { driver: nats }',
          "affinity: { 'warehouse.getProduct': id }",
          "policies: { 'payment.settle': { timeoutMs: 5000, retries: 0, maxConcurrent: 64 } }",
        ].join('\n'),
      ),
    );
    expect(t.groups).toEqual({ storefront: ['account', 'auth'] });
    expect(t.replicas).toEqual({ warehouse: 2 });
    expect(t.events).toEqual({ driver: 'nats', url: 'nats://127.0.0.1:4222', stream: 'EVOLITH' });
    expect(t.affinity).toEqual({ 'warehouse.getProduct': 'id' });
    expect(t.policies['payment.settle']).toEqual({ timeoutMs: 5000, retries: 0, maxConcurrent: 64 });
    const err = configError(() => loadTopology(appDir('replicas: { warehouse: -1 }\nevents: { driver: nats, url: "http://x" }\ngroups: { Bad: [] }\n')));
    for (const path of ['replicas.warehouse', 'events', 'groups']) expect(err.message).toContain(`  ${path}`);
  });

  test('a top level that is not a mapping is a ConfigError', () => {
    expect(configError(() => loadTopology(appDir('- a\n- b\n'))).message).toContain('must hold a mapping');
    expect(configError(() => loadTopology(appDir('just a string\n'))).message).toContain('must hold a mapping');
  });

  test('invalid values are one ConfigError listing every problem with its path', () => {
    const dir = appDir(
      [
        'port: 70000',
        'host: 42',
        'drainMs: -1',
        'checkSerializable: maybe',
        'storage: { driver: postgres, url: "http://db" }',
        'policies: { orders: { timeoutMs: 0, attempts: 3 } }',
        'edge: { bodyLimit: 1.5 }',
        'colour: blue',
      ].join('\n'),
    );
    const err = configError(() => loadTopology(dir));
    const msg = err.message;
    expect(msg).toContain('invalid topology');
    expect(msg).toContain(join(dir, 'evolith.yaml'));
    for (const path of ['port:', 'host:', 'drainMs:', 'checkSerializable:', 'storage', 'policies.orders', 'edge.bodyLimit:']) {
      expect(msg, `missing ${path}`).toContain(`  ${path}`);
    }
    expect(msg).toContain('colour');
    expect(msg).toContain('attempts');
  });

  test('overrides are validated as well', () => {
    const err = configError(() => loadTopology(appDir(), { port: -1, set: ['drainMs=soon'] }));
    expect(err.message).toContain('port:');
    expect(err.message).toContain('drainMs:');
    expect(err.message).toContain('(defaults)');
  });
});

describe('watchTopology', () => {
  test('hands over each new valid topology and keeps the old one on an invalid edit', async () => {
    const dir = appDir('architecture: monolith\npolicies: { warehouse: { timeoutMs: 1000 } }\n');
    const seen: Topology[] = [];
    const errors: Error[] = [];
    const w = watchTopology(dir, {}, (t) => seen.push(t), (e) => errors.push(e), 20);
    try {
      writeFileSync(join(dir, 'evolith.yaml'), 'architecture: monolith\npolicies: { warehouse: { timeoutMs: 250 } }\n');
      await until(() => seen.length === 1);
      expect(seen[0]!.policies.warehouse).toEqual({ timeoutMs: 250 });
      writeFileSync(join(dir, 'evolith.yaml'), 'port: nope\n');
      await until(() => errors.length === 1);
      expect(errors[0]).toBeInstanceOf(ConfigError);
      // Editors often save by renaming a new file over the old one.
      writeFileSync(join(dir, 'evolith.yaml.tmp'), 'replicas: { warehouse: 3 }\n');
      renameSync(join(dir, 'evolith.yaml.tmp'), join(dir, 'evolith.yaml'));
      await until(() => seen.length === 2);
      expect(seen[1]!.replicas).toEqual({ warehouse: 3 });
    } finally {
      w.close();
    }
  });
});

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
