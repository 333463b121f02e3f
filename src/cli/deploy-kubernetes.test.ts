/** `evolith deploy kubernetes` as a user runs it: the command, its output, its exit codes. */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { afterAll, describe, expect, test } from 'vitest';

const root = resolve(import.meta.dirname, '../..');
const bin = join(root, 'bin/evolith.mjs');
const dirs: string[] = [];

afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'evolith-deploy-'));
  dirs.push(d);
  return d;
}

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [bin, ...args], { cwd: root, env: { ...process.env, EVOLITH_LOG_LEVEL: 'warn', NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  return new Promise((done) => child.on('close', (code) => done({ code, stdout, stderr })));
}

const backends = ['--postgres-url', 'postgres://evolith:pw@db.example.com:5432/shop', '--nats-url', 'nats://nats.example.com:4222'];

describe('evolith deploy kubernetes', () => {
  test('writes the bookstore for the mesh, says what it wrote, that it validates, and what to run next', async () => {
    const out = join(tmp(), 'k8s');
    const r = await cli(['deploy', 'kubernetes', 'examples/bookstore', '--out', out, '--arch', 'mesh', ...backends]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`evolith: bookstore as mesh on Kubernetes (namespace bookstore, transport http2); wrote 15 files to ${out}/`);
    expect(r.stdout).toMatch(/├── \.authority\.json {3}\(new authority: keep it private, never apply it\)\n/);
    expect(r.stdout).toMatch(/└── warehouse\.yaml\n/);
    expect(r.stdout).toMatch(/^ {4}5 Deployment$/m);
    expect(r.stdout).toMatch(/^ {4}4 AuthorizationPolicy$/m);
    expect(r.stdout).toContain('validation: every object matches its schema (Kubernetes, Istio, Knative)');
    expect(r.stdout).toContain('checks: every container has probes, resources and a locked-down security context; every reference resolves');
    expect(r.stdout).toContain(`  docker build -f ${out}/Dockerfile -t bookstore:latest .\n`);
    expect(r.stdout).toContain(`  kubectl apply -k ${out}\n`);

    const kustomization = YAML.parse(readFileSync(join(out, 'kustomization.yaml'), 'utf8')) as { namespace: string; resources: string[] };
    expect(kustomization.namespace).toBe('bookstore');
    expect(kustomization.resources).toContain('istio.yaml');
    for (const f of kustomization.resources) expect(existsSync(join(out, f)), f).toBe(true);
    expect(kustomization.resources).not.toContain('.authority.json');
    expect(statSync(join(out, '.authority.json')).mode & 0o077).toBe(0);
    expect(statSync(join(out, 'secrets.yaml')).mode & 0o077).toBe(0);

    // Again into the same directory: the same authority, so running pods keep trusting new credentials.
    const before = JSON.parse(readFileSync(join(out, '.authority.json'), 'utf8')) as { authorityKey: string };
    const again = await cli(['deploy', 'kubernetes', 'examples/bookstore', '--out', out, '--arch', 'mesh', ...backends]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('(authority kept from the earlier run)');
    expect((JSON.parse(readFileSync(join(out, '.authority.json'), 'utf8')) as { authorityKey: string }).authorityKey).toBe(before.authorityKey);
  });

  test('refuses embedded SQLite and bad options with exit code 2, writing nothing', async () => {
    const out = join(tmp(), 'k8s');
    const sqlite = await cli(['deploy', 'kubernetes', 'examples/bookstore', '--out', out]);
    expect(sqlite.code).toBe(2);
    expect(sqlite.stderr).toBe('evolith: embedded SQLite cannot be shared by pods on different machines: give --postgres-url and --nats-url, or --with-backends\n');
    const bad = await cli(['deploy', 'kubernetes', 'examples/bookstore', '--out', out, '--arch', 'monolith', '--transport', 'udp', '--with-backends']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--arch: "monolith" is not a cluster architecture; choose one of: microservices, mesh, serverless');
    expect(bad.stderr).toContain('--transport: "udp" is neither tcp nor http2');
    expect(existsSync(out)).toBe(false);
  });

  test('evolith run --arch kubernetes points at the deployment command', async () => {
    const r = await cli(['run', 'test/fixtures/greeter', '--arch', 'kubernetes']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      'evolith: kubernetes is a deployment target, not a local architecture: use evolith deploy kubernetes <app> --out <dir> --arch microservices|mesh|serverless\n',
    );
  });
});
