import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { Kit } from '../../../test/fixtures/unit-kit.js';
import { parsePodArgs } from './pod-args.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

function files(): { app: string; topology: string; credentials: string } {
  const dir = kit.tmp('pod-args');
  writeFileSync(join(dir, 'evolith.yaml'), 'architecture: microservices\n');
  writeFileSync(join(dir, 'bundle.json'), '{}');
  return { app: dir, topology: join(dir, 'evolith.yaml'), credentials: join(dir, 'bundle.json') };
}

const env = { EVOLITH_NAMESPACE: 'shop', EVOLITH_POSTGRES_URL: 'postgres://db/shop', EVOLITH_NATS_URL: 'nats://nats:4222', EVOLITH_POD_NAME: 'warehouse-abc', EVOLITH_POD_IP: '10.0.0.3' };

describe('a pod’s arguments', () => {
  test('a group pod', () => {
    const f = files();
    const r = parsePodArgs(['--app-dir', f.app, '--topology', f.topology, '--credentials', f.credentials, '--group', 'warehouse', '--transport', 'tcp', '--rpc-port', '7000', '--probe-port', '8081'], env);
    expect(r).toEqual({
      ok: true,
      args: expect.objectContaining({
        appDir: f.app,
        role: { kind: 'group', group: 'warehouse' },
        transport: 'tcp',
        rpcPort: 7000,
        probePort: 8081,
        namespace: 'shop',
        clusterDomain: undefined,
        podName: 'warehouse-abc',
        podIp: '10.0.0.3',
      }),
    });
  });

  test('EVOLITH_VERSION names the pod’s version (a canary), and must be a version label', () => {
    const f = files();
    const base = ['--app-dir', f.app, '--topology', f.topology, '--credentials', f.credentials, '--group', 'payment'];
    const v2 = parsePodArgs(base, { ...env, EVOLITH_VERSION: 'v2' });
    expect(v2.ok && v2.args.version).toBe('v2');
    const bad = parsePodArgs(base, { ...env, EVOLITH_VERSION: 'V 2' });
    expect(bad.ok ? [] : bad.problems).toEqual(['EVOLITH_VERSION "V 2" is not a version label (e.g. v2)']);
  });

  test('Knative’s PORT is the rpc port when --rpc-port is not given', () => {
    const f = files();
    const r = parsePodArgs(['--app-dir', f.app, '--topology', f.topology, '--credentials', f.credentials, '--group', 'payment', '--transport', 'http2'], { ...env, PORT: '8080' });
    expect(r.ok && r.args.rpcPort).toBe(8080);
  });

  test('every problem is named at once', () => {
    const r = parsePodArgs(['--app-dir', '/nonexistent', '--group', 'Warehouse', '--edge', '--transport', 'udp', '--rpc-port', '70000', '--bogus'], { EVOLITH_POSTGRES_URL: 'mysql://x' });
    expect(r.ok).toBe(false);
    const problems = r.ok ? [] : r.problems;
    expect(problems).toEqual(
      expect.arrayContaining([
        'unknown option --bogus',
        '--app-dir /nonexistent does not exist',
        '--topology is required',
        '--credentials is required',
        '--group and --edge exclude each other: a pod runs one of them',
        '--group "Warehouse" is not a group name',
        '--transport must be tcp or http2, got "udp"',
        '--rpc-port must be a port number (1-65535), got "70000"',
        'the edge takes --port; --rpc-port and --probe-port are for groups',
        'EVOLITH_NAMESPACE is not set',
        'EVOLITH_NATS_URL is not set',
        'EVOLITH_POSTGRES_URL must be a postgres:// URL',
      ]),
    );
  });

  test('a waker needs K_SINK; http2 answers probes on the rpc port', () => {
    const f = files();
    const base = ['--app-dir', f.app, '--topology', f.topology, '--credentials', f.credentials];
    const waker = parsePodArgs([...base, '--wakeups', 'payment'], env);
    expect(waker.ok ? [] : waker.problems).toEqual(['K_SINK is not set: a waker posts to the function Knative names in it']);
    const ok = parsePodArgs([...base, '--wakeups', 'payment'], { ...env, K_SINK: 'http://payment.shop.svc.cluster.local' });
    expect(ok.ok && ok.args.role).toEqual({ kind: 'wakeups', group: 'payment' });
    const h2 = parsePodArgs([...base, '--group', 'payment', '--transport', 'http2', '--rpc-port', '7000', '--probe-port', '8081'], env);
    expect(h2.ok ? [] : h2.problems).toEqual(['with --transport http2 the probes are answered on the rpc port: --probe-port (8081) must equal --rpc-port (7000)']);
    const none = parsePodArgs(base, env);
    expect(none.ok ? [] : none.problems).toEqual(['one of --group <name>, --edge or --wakeups <group> is required']);
  });
});
