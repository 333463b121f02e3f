/**
 * What `kubectl apply -k` does first: kustomize builds the directory. This runs the kustomize
 * built into kubectl (no cluster needed) on the generated bookstore in each architecture and
 * checks that it renders every generated object, each in the app's namespace. Skipped, saying
 * so, where kubectl is not installed.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { afterAll, describe, expect, test } from 'vitest';

const root = resolve(import.meta.dirname, '../../..');
const kubectl = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' });
const missing = kubectl.error ? `kubectl is not installed (${kubectl.error.message})` : kubectl.status !== 0 ? `kubectl version --client failed: ${kubectl.stderr}` : undefined;
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

if (missing) console.warn(`[kubernetes] skipping the kustomize build checks: ${missing}`);

describe.skipIf(missing !== undefined)('kubectl kustomize accepts the generated directory', () => {
  for (const arch of ['microservices', 'mesh', 'serverless']) {
    test(arch, () => {
      const out = mkdtempSync(join(tmpdir(), `evolith-kustomize-${arch}-`));
      dirs.push(out);
      const flags = ['--postgres-url', 'postgres://evolith:pw@db.example.com:5432/bookstore', '--nats-url', 'nats://nats.example.com:4222'];
      execFileSync(process.execPath, ['bin/evolith.mjs', 'deploy', 'kubernetes', 'examples/bookstore', '--out', out, '--arch', arch, ...flags], { cwd: root, encoding: 'utf8' });
      const rendered = YAML.parseAllDocuments(execFileSync('kubectl', ['kustomize', out], { encoding: 'utf8' })).map((d) => d.toJS() as { kind: string; metadata: { name: string; namespace?: string } });
      const written = readdirSync(out)
        .filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml')
        .flatMap((f) => YAML.parseAllDocuments(readFileSync(join(out, f), 'utf8')))
        .map((d) => d.toJS() as { kind?: string; metadata?: { name: string } } | null)
        .filter((o): o is { kind: string; metadata: { name: string } } => o?.kind !== undefined);
      const ids = (list: { kind: string; metadata: { name: string } }[]) => list.map((o) => `${o.kind}/${o.metadata.name}`).sort();
      expect(ids(rendered)).toEqual(ids(written));
      const namespaced = rendered.filter((o) => o.kind !== 'Namespace');
      expect(namespaced.filter((o) => o.metadata.namespace !== 'bookstore').map((o) => `${o.kind}/${o.metadata.name}`)).toEqual([]);
    }, 60_000);
  }
});
