import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
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

function start(
  args: string[],
  options: { nodeArgs?: string[]; env?: Record<string, string> } = {},
): { child: ChildProcess; result: Promise<Result>; output: () => { stdout: string; stderr: string } } {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), bin, ...args], {
    cwd: root,
    env: { ...process.env, EVOLITH_LOG_LEVEL: 'warn', NO_COLOR: '1', ...options.env },
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

const cli = (args: string[], options?: Parameters<typeof start>[1]) => start(args, options).result;

// Records every module the CLI process resolves (the hooks run on their own thread and append
// to the file named by EVOLITH_TRACE_MODULES): proves what an argument error does not load.
const traceHook = `import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  appendFileSync(process.env.EVOLITH_TRACE_MODULES, r.url + '\\n');
  return r;
}`;
const traceModules = `data:text/javascript,${encodeURIComponent(`import { register } from 'node:module'; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(traceHook)}`)});`)}`;

async function loadedModules(args: string[]): Promise<{ result: Result; modules: string[] }> {
  const file = join(tmp(), 'modules.txt');
  writeFileSync(file, '');
  const result = await cli(args, { nodeArgs: ['--import', traceModules], env: { EVOLITH_TRACE_MODULES: file } });
  return { result, modules: readFileSync(file, 'utf8').split('\n').filter(Boolean) };
}

/** Modules a wrong argument must never wait for: the TypeScript loader, esbuild, Evolith's runtime. */
const HEAVY = /\/node_modules\/(tsx|esbuild|fastify|kysely|pino|better-sqlite3|zod)\/|\/src\//;

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

  test('--version prints the version of the package', async () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-v']) {
      const r = await cli([flag]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe(pkg.version);
    }
  });

  test('argument errors exit with 2 and a message, before the TypeScript loader or the runtime is loaded', async () => {
    const cases: [string[], RegExp][] = [
      [['--bogus'], /error: unknown option '--bogus'/],
      [['frobnicate'], /error: unknown command 'frobnicate'/],
      [['run'], /error: missing required argument 'appDir'/],
      [['run', greeter, '--port', 'eighty'], /option '-p, --port <n>' argument 'eighty' is invalid\. must be a port number/],
      [['run', 'no/such/app'], /evolith: app directory \S*no\/such\/app does not exist/],
      [['contracts', greeter, '--json', '--openapi'], /option '--json' cannot be used with option '--openapi'/],
    ];
    for (const [args, message] of cases) {
      const { result, modules } = await loadedModules(args);
      expect(result.code, `${args.join(' ')}: ${result.stderr}`).toBe(2);
      expect(result.stderr).toMatch(message);
      expect(result.stderr).not.toMatch(/\n\s+at /);
      // What is loaded, not how long it took, is what a test can check on a busy machine: the time is bench/cli.ts's.
      expect(modules.length, `${args.join(' ')} resolved nothing?`).toBeGreaterThan(0);
      expect(modules.filter((m) => HEAVY.test(m)), args.join(' ')).toEqual([]);
    }
  });

  test('an unsupported platform or Node gets one line naming what is supported, and exit code 1', async () => {
    const pretend = (code: string) => ['--import', `data:text/javascript,${encodeURIComponent(code)}`];
    const windows = await cli(['--version'], { nodeArgs: pretend("Object.defineProperty(process, 'platform', { value: 'win32' });") });
    expect(windows.code).toBe(1);
    expect(windows.stderr).toBe(
      'evolith: Windows is not supported: Evolith runs on Linux and macOS (on Windows, use WSL 2). Set EVOLITH_UNSUPPORTED_PLATFORM=1 to try anyway.\n',
    );
    expect(windows.stdout).toBe('');
    const oldNode = await cli(['--version'], { nodeArgs: pretend("Object.defineProperty(process.versions, 'node', { value: '20.9.0' });") });
    expect(oldNode.code).toBe(1);
    expect(oldNode.stderr).toBe('evolith: Node.js 20.9.0 is too old: Evolith needs Node.js 20.11 or newer.\n');
    const newer = await cli(['--version'], { nodeArgs: pretend("Object.defineProperty(process.versions, 'node', { value: '21.0.0' });") });
    expect(newer.code, newer.stderr).toBe(0);
    const anyway = await cli(['--version'], { nodeArgs: pretend("Object.defineProperty(process, 'platform', { value: 'win32' });"), env: { EVOLITH_UNSUPPORTED_PLATFORM: '1' } });
    expect(anyway.code, anyway.stderr).toBe(0);
    expect(anyway.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { os: string[]; engines: { node: string } };
    expect(pkg.os).toEqual(['linux', 'darwin']);
    expect(pkg.engines.node).toBe('>=20.11');
  });

  test('contracts prints a readable line per method and event', async () => {
    const r = await cli(['contracts', greeter]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.split('\n')).toEqual([
      'app mini: 1 service',
      '',
      'greeter 1.0.0',
      '  greeter.hello(name: string) → { text: string, n: number }  [idempotent]',
      '  greeter.slow(ms: number) → null  [timeout 200 ms]',
      '  greeter.boom() → null',
      '  event greeter.greeted(name: string)',
      '',
    ]);
  });

  test('contracts --openapi prints the edge as OpenAPI 3.1', async () => {
    const r = await cli(['contracts', greeter, '--openapi']);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.info.title).toBe('mini');
    expect(Object.keys(doc.paths).sort()).toEqual(['/boom', '/hello/{name}', '/slow']);
    expect(doc.paths['/hello/{name}'].get.operationId).toBe('greeter.hello');
  });

  test('build writes pod.mjs and its chunks, portable: packages by name, no path of this machine', async () => {
    const out = tmp();
    const r = await cli(['build', greeter, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`built ${join(out, 'pod.mjs')}`);
    const files = readdirSync(out).filter((f) => f.endsWith('.mjs'));
    expect(files).toContain('pod.mjs');
    for (const f of files) expect(readFileSync(join(out, f), 'utf8')).not.toContain(root);
    // With the packages beside it, as in the image, the bundle runs: without its arguments and
    // environment it names what is missing and exits with 2.
    symlinkSync(join(root, 'node_modules'), join(out, 'node_modules'));
    const run = await new Promise<Result>((done) => {
      const child = spawn(process.execPath, [join(out, 'pod.mjs')], { env: { PATH: process.env.PATH ?? '' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      child.on('exit', (code, signal) => done({ code, signal, stdout, stderr }));
    });
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('--app-dir is required');
    expect(run.stderr).toContain('EVOLITH_NAMESPACE is not set');
    const missing = await cli(['build', greeter]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("required option '-o, --out <dir>'");
  });

  test('contracts --json prints the JSON Schema of every method and event', async () => {
    const r = await cli(['contracts', greeter, '--json']);
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
