import { afterEach, describe, expect, test } from 'vitest';
import { silentLog } from '../../../test/fixtures/unit-kit.js';
import { DeploymentAuthority } from '../../auth/credentials.js';
import { InternalPlane } from '../../auth/internal-plane.js';
import { PolicyTable } from '../../kernel/policy-table.js';
import type { Envelope } from '../../worker/worker.js';
import { loadTopology } from '../topology.js';
import { kubernetesEnvelope, type ClusterArchitecture, type PodTransport } from './pod-envelope.js';

const envelopes: Envelope[] = [];
afterEach(async () => {
  for (const e of envelopes.splice(0)) await e.placement?.close?.();
});

const plane = new InternalPlane(new DeploymentAuthority('shop').issue({ sub: 'edge', edge: true }));

async function edgeEnvelope(architecture: ClusterArchitecture, transport: PodTransport, resolve4 = async (): Promise<string[]> => ['10.0.0.4', '10.0.0.2']): Promise<Envelope> {
  const e = await kubernetesEnvelope({
    topology: loadTopology(process.cwd()),
    plane,
    role: { kind: 'edge' },
    groups: { warehouse: ['warehouse', 'stock'], payment: ['payment'] },
    architecture,
    transport,
    namespace: 'shop',
    clusterDomain: 'cluster.test',
    rpcPort: 7000,
    probePort: 8081,
    resolve4,
  })({ policies: new PolicyTable(), log: silentLog });
  envelopes.push(e);
  return e;
}

describe('the Kubernetes envelope', () => {
  test('over TCP, callees are the pods their group’s name resolves to, with the client library’s resilience', async () => {
    const e = await edgeEnvelope('microservices', 'tcp');
    const placement = e.placement!.placement('stock');
    expect(placement.links.map((l) => l.name)).toEqual(['bulkhead', 'retry', 'choose endpoint', 'circuit']);
    expect(placement.terminal.name).toBe('tcp');
    expect(e.ready!('stock')).toBe(true);
    expect(e.unavailable!('stock')).toBeUndefined();
    expect(e.assertIdentity).toBeDefined();
  });

  test('over TCP, a group with no ready pod is not ready', async () => {
    const e = await edgeEnvelope('microservices', 'tcp', async () => {
      throw Object.assign(new Error('queryA ENOTFOUND'), { code: 'ENOTFOUND' });
    });
    expect(e.ready!('payment')).toBe(false);
    expect(e.unavailable!('payment')).toBe('no instance registered');
  });

  test('over HTTP in a mesh the app does not retry (Istio does); Knative functions keep the app’s retries', async () => {
    const mesh = await edgeEnvelope('mesh', 'http2');
    expect(mesh.placement!.placement('stock').links.map((l) => l.name)).not.toContain('retry');
    expect(mesh.ready!('stock')).toBe(true);
    const fn = await edgeEnvelope('serverless', 'http2');
    expect(fn.placement!.placement('stock').links.map((l) => l.name)).toContain('retry');
    // Over TCP the mesh sees connections only, and the app keeps retrying.
    const meshTcp = await edgeEnvelope('mesh', 'tcp');
    expect(meshTcp.placement!.placement('stock').links.map((l) => l.name)).toContain('retry');
  });
});
