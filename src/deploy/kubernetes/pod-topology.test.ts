import { mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { Kit, eventually } from '../../../test/fixtures/unit-kit.js';
import { ConfigError } from '../../kernel/errors.js';
import { watchTopology, withVersionConfig, type Topology } from '../topology.js';
import { loadPodTopology, podTopologySource } from './pod-topology.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

const backends = { postgresUrl: 'postgres://db.shop:5432/shop', natsUrl: 'nats://nats.shop:4222' };

/** A directory laid out as Kubernetes mounts a ConfigMap: `evolith.yaml` → `..data/evolith.yaml`, `..data` → a timestamped directory. */
function configMapMount(yaml: string): { dir: string; edit(next: string): void } {
  const dir = kit.tmp('configmap');
  let n = 0;
  const write = (text: string) => {
    const version = `..2026_${++n}`;
    mkdirSync(join(dir, version));
    writeFileSync(join(dir, version, 'evolith.yaml'), text);
    // The atomic swap: a new symlink renamed over `..data`.
    symlinkSync(version, join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    if (n > 1) rmSync(join(dir, `..2026_${n - 1}`), { recursive: true });
  };
  write(yaml);
  symlinkSync('..data/evolith.yaml', join(dir, 'evolith.yaml'));
  return { dir, edit: write };
}

const CLUSTER_YAML = `architecture: microservices
host: 0.0.0.0
internalHost: 0.0.0.0
storage: { driver: postgres, schemaPrefix: shop_, poolSize: 4 }
events: { driver: nats, stream: SHOP }
policies: { greeter: { timeoutMs: 1000 } }
`;

describe('the pod topology', () => {
  test('takes the backends’ URLs from the environment and keeps the file’s other settings', () => {
    const { dir } = configMapMount(CLUSTER_YAML);
    const t = loadPodTopology(kit.tmp('app'), join(dir, 'evolith.yaml'), backends);
    expect(t.storage).toEqual({ driver: 'postgres', url: backends.postgresUrl, schemaPrefix: 'shop_', poolSize: 4 });
    expect(t.events).toEqual({ driver: 'nats', url: backends.natsUrl, stream: 'SHOP' });
    expect(t.host).toBe('0.0.0.0');
  });

  test('a version of a group reads its own config over the group’s', () => {
    const { dir } = configMapMount(CLUSTER_YAML + 'config: { greeter: { greeting: hello, punctuation: "." } }\nmesh: { versions: { greeter: { v2: { config: { greeter: { greeting: hi } } } } } }\n');
    const t = loadPodTopology(kit.tmp('app'), join(dir, 'evolith.yaml'), backends);
    expect(withVersionConfig(t, 'greeter', 'v2').config.greeter).toEqual({ greeting: 'hi', punctuation: '.' });
    expect(withVersionConfig(t, 'greeter', 'v1').config.greeter).toEqual({ greeting: 'hello', punctuation: '.' });
  });

  test('refuses embedded SQLite and in-process events, naming both', () => {
    const { dir } = configMapMount('architecture: microservices\nevents: memory\n');
    let err: unknown;
    try {
      loadPodTopology(kit.tmp('app'), join(dir, 'evolith.yaml'), backends);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain('storage is sqlite: embedded SQLite cannot be shared by pods on different machines');
    expect((err as Error).message).toContain('events is memory');
  });

  test('a missing file is a ConfigError naming it', () => {
    expect(() => loadPodTopology(kit.tmp('app'), '/nonexistent/evolith.yaml', backends)).toThrow(/topology file \/nonexistent\/evolith.yaml does not exist/);
  });

  test('an edit of the ConfigMap (a swapped ..data symlink) is read again; an invalid one is reported and the old topology stays', async () => {
    const mount = configMapMount(CLUSTER_YAML);
    const seen: Topology[] = [];
    const errors: Error[] = [];
    const w = watchTopology(kit.tmp('app'), {}, (t) => seen.push(t), (e) => errors.push(e), 20, podTopologySource(join(mount.dir, 'evolith.yaml'), backends));
    try {
      mount.edit(CLUSTER_YAML.replace('timeoutMs: 1000', 'timeoutMs: 250'));
      await eventually(() => expect(seen).toHaveLength(1));
      expect(seen[0]!.policies.greeter).toEqual({ timeoutMs: 250 });
      expect(seen[0]!.storage).toMatchObject({ url: backends.postgresUrl });
      mount.edit('architecture: microservices\n');
      await eventually(() => expect(errors).toHaveLength(1));
      expect(errors[0]!.message).toContain('cannot run in a pod');
      expect(seen).toHaveLength(1);
    } finally {
      w.close();
    }
  });
});
