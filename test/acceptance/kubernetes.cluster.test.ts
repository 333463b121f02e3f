/**
 * Against a real cluster, when there is one: with KUBECONFIG set, the generated manifests for
 * each architecture in EVOLITH_TEST_CLUSTER_ARCHS (default: microservices; mesh needs Istio's
 * CRDs, serverless Knative's) are applied with a server-side dry run, which runs the API
 * server's own validation and admission. With EVOLITH_TEST_IMAGE (an image built from the
 * generated Dockerfile and pushed where the cluster can pull it) they are applied for real, in
 * a namespace of their own with --with-backends: every Deployment must roll out and the
 * bookstore must answer through its edge Service; the namespace is deleted afterwards.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../support/bookstore-process.js';
import { sleep } from '../support/eventually.js';

const run = promisify(execFile);

async function clusterUnavailable(): Promise<string | undefined> {
  if (!process.env.KUBECONFIG) return 'KUBECONFIG is not set (no cluster to test against)';
  try {
    await run('kubectl', ['version', '--request-timeout=5s'], { timeout: 10_000 });
    return undefined;
  } catch (err) {
    return `the cluster in KUBECONFIG does not answer: ${(err as Error).message.split('\n')[0]}`;
  }
}

const unavailable = await clusterUnavailable();
const archs = (process.env.EVOLITH_TEST_CLUSTER_ARCHS ?? 'microservices').split(',').map((a) => a.trim()).filter(Boolean);
const image = process.env.EVOLITH_TEST_IMAGE;
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

async function generate(arch: string, namespace: string): Promise<string> {
  const out = mkdtempSync(join(tmpdir(), `evolith-k8s-${arch}-`));
  dirs.push(out);
  const args = [join(repoRoot, 'bin', 'evolith.mjs'), 'deploy', 'kubernetes', 'examples/bookstore', '--out', out, '--arch', arch, '--namespace', namespace, '--with-backends', '--new-authority'];
  if (image) args.push('--image', image);
  await run(process.execPath, args, { cwd: repoRoot, timeout: 60_000 });
  return out;
}

if (unavailable) {
  console.warn(`[kubernetes] skipping the real-cluster tests: ${unavailable}`);
  describe.skip('bookstore on a real cluster', () => {
    it(`needs a cluster: ${unavailable}`, () => {});
  });
} else {
  if (!image) console.warn('[kubernetes] EVOLITH_TEST_IMAGE is not set: the manifests are dry-run against the cluster, not rolled out');
  describe('bookstore on a real cluster', () => {
    for (const arch of archs) {
      it(`${arch}: the API server accepts every generated object (server-side dry run)`, async () => {
        const out = await generate(arch, `evolith-dry-${Date.now().toString(36)}`);
        const { stdout } = await run('kubectl', ['apply', '-k', out, '--dry-run=server', '-o', 'name'], { timeout: 120_000 });
        expect(stdout).toMatch(/deployment\.apps\/edge|service\.serving\.knative\.dev/);
      }, 180_000);

      it.skipIf(!image)(`${arch}: rolls out and serves the bookstore (EVOLITH_TEST_IMAGE)`, async () => {
        const namespace = `evolith-test-${Date.now().toString(36)}`;
        const out = await generate(arch, namespace);
        try {
          await run('kubectl', ['apply', '-k', out], { timeout: 120_000 });
          await run('kubectl', ['-n', namespace, 'wait', '--for=condition=Available', 'deployment', '--all', '--timeout=300s'], { timeout: 320_000 });
          const forward = spawn('kubectl', ['-n', namespace, 'port-forward', 'svc/edge', '18080:80'], { stdio: 'ignore' });
          try {
            let status = 0;
            for (let i = 0; i < 30 && status !== 200; i++) {
              await sleep(1_000);
              status = await fetch('http://127.0.0.1:18080/restful/products').then((r) => r.status, () => 0);
            }
            expect(status).toBe(200);
          } finally {
            forward.kill();
          }
        } finally {
          await run('kubectl', ['delete', 'namespace', namespace, '--wait=false'], { timeout: 60_000 }).catch(() => undefined);
        }
      }, 600_000);
    }
  });
}
