import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';

const root = resolve(import.meta.dirname, '../..');
const bin = join(root, 'bin/evolith.mjs');
const greeter = 'test/fixtures/greeter';
const dirs: string[] = [];
const children: ChildProcess[] = [];

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'evolith-cli-'));
  dirs.push(d);
  return d;
}

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function start(args: string[]): { child: ChildProcess; result: Promise<Result>; output: () => { stdout: string; stderr: string } } {
  const child = spawn(process.execPath, [bin, ...args], {
    cwd: root,
    env: { ...process.env, EVOLITH_LOG_LEVEL: 'warn', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const result = new Promise<Result>((resolveResult) => child.on('close', (code, signal) => resolveResult({ code, signal, stdout, stderr })));
  return { child, result, output: () => ({ stdout, stderr }) };
}

const cli = (args: string[]) => start(args).result;

async function waitFor(pattern: RegExp, output: () => { stdout: string }, result: Promise<Result>, timeoutMs = 50_000): Promise<RegExpExecArray> {
  const end = Date.now() + timeoutMs;
  let exited: Result | undefined;
  void result.then((r) => (exited = r));
  for (;;) {
    const m = pattern.exec(output().stdout);
    if (m) return m;
    if (exited) throw new Error(`process exited (${exited.code}) before printing ${pattern}:\n${exited.stdout}\n${exited.stderr}`);
    if (Date.now() > end) throw new Error(`timed out waiting for ${pattern}; stdout so far:\n${output().stdout}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.concurrent('evolith CLI', () => {
  test('an unknown architecture exits with code 2 and names the available ones', async () => {
    const r = await cli(['run', greeter, '--arch', 'nonsense', '--port', '0', '--data', tmp()]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('evolith: unknown architecture "nonsense"; choose one of: monolith');
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  test('a busy port gives a clear message and exit code 2', async () => {
    const blocker: Server = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as { port: number }).port;
    try {
      const r = await cli(['run', greeter, '--port', String(port), '--data', tmp()]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`port ${port} on 127.0.0.1 is already in use`);
      expect(r.stderr).toContain('--port');
      expect(r.stdout).not.toContain('listening');
    } finally {
      await new Promise((r) => blocker.close(r));
    }
  });

  test('contracts prints the JSON Schema of every method and event', async () => {
    const r = await cli(['contracts', greeter]);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.app).toBe('mini');
    expect(doc.contracts).toHaveLength(1);
    const [c] = doc.contracts;
    expect(c).toMatchObject({ name: 'greeter', version: '1.0.0' });
    expect(Object.keys(c.methods).sort()).toEqual(['boom', 'hello', 'slow']);
    expect(c.methods.hello).toMatchObject({
      idempotent: true,
      input: { type: 'object', properties: { name: { type: 'string', minLength: 1 } }, required: ['name'] },
      output: { type: 'object', properties: { text: { type: 'string' }, n: { type: 'number' } } },
    });
    expect(c.methods.slow.timeoutMs).toBe(200);
    expect(c.events.greeted).toMatchObject({ topic: 'greeter.greeted', payload: { type: 'object', required: ['name'] } });
  });

  test('run serves the app, prints where, and exits 0 on SIGTERM', async () => {
    const data = tmp();
    const p = start(['run', greeter, '--port', '0', '--data', data]);
    const [, url] = await waitFor(/evolith: listening on (http:\/\/127\.0\.0\.1:\d+)/, p.output, p.result);
    expect(p.output().stdout).toContain('evolith: 1 services running as monolith');
    expect(p.output().stdout).toContain(join(data, 'greeter.sqlite'));
    const hello = await fetch(`${url}/hello/ada`);
    expect(hello.status).toBe(200);
    expect(await hello.json()).toEqual({ text: 'hello ada', n: 1 });
    expect(hello.headers.get('x-request-id')).toBeTruthy();
    const boom = await fetch(`${url}/boom`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(boom.status).toBe(418);
    expect((await fetch(`${url}/metrics`)).status).toBe(200);
    expect(readdirSync(data)).toContain('greeter.sqlite');
    p.child.kill('SIGTERM');
    const r = await p.result;
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('evolith: stopped');
    // Starting a CLI process compiles TypeScript: allow for a machine busy with the rest of the suite.
  }, 90_000);
});
