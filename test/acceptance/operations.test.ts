/**
 * Operating a deployment as a user would: one deployment per data directory, `evolith status`
 * for every architecture (found without repeating --data), and start-up failures that fail
 * fast, once, with their cause.
 */
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeDataDir, repoRoot, startBookstore } from '../support/bookstore-process.js';

const bin = join(repoRoot, 'bin', 'evolith.mjs');
const servers: Server[] = [];
afterAll(() => {
  for (const s of servers) s.close();
});

/** Runs the CLI to its end (bounded); resolves its exit code, output and how long it took. */
function cli(args: string[], timeoutMs = 60_000): Promise<{ code: number | null; out: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin, ...args], {
      cwd: repoRoot,
      env: { ...process.env, EVOLITH_LOG_LEVEL: 'warn', NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => {
      out += `\n[killed after ${timeoutMs} ms]`;
      process.kill(-child.pid!, 'SIGKILL');
    }, timeoutMs);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, ms: Date.now() - started });
    });
  });
}

/** A copy of examples/hello outside the repository whose `evolith` is a link to this checkout. */
function linkedHello(): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'evolith-linked-')), 'hello');
  cpSync(join(repoRoot, 'examples', 'hello'), dir, {
    recursive: true,
    filter: (src) => !/[/\\](node_modules|data|\.evolith)$/.test(src),
  });
  mkdirSync(join(dir, 'node_modules'));
  symlinkSync(repoRoot, join(dir, 'node_modules', 'evolith'), 'dir');
  return dir;
}

function occupiedPort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    servers.push(s);
    s.listen(0, '127.0.0.1', () => resolve((s.address() as { port: number }).port));
  });
}

describe('operations', () => {
  it('one deployment per data directory: a second is refused, naming the running one; status finds it without --data', async () => {
    const app = await startBookstore({ arch: 'monolith' });
    const second = await cli(['run', 'examples/bookstore', '--arch', 'microservices', '--port', '0', '--data', app.dataDir]);
    expect(second.code, second.out).toBe(2);
    expect(second.out).toContain(`in use by a running monolith deployment (pid ${app.pid}`);
    expect(second.out).toContain(app.baseUrl);

    const status = await cli(['status', 'examples/bookstore']);
    expect(status.code, status.out).toBe(0);
    expect(status.out).toMatch(new RegExp(`monolith at ${app.baseUrl}, pid ${app.pid}, up .*, data ${app.dataDir}`));
    for (const service of ['account', 'auth', 'warehouse', 'payment']) expect(status.out).toMatch(new RegExp(`${service}\\s+\\S*${service}\\.sqlite`));
    expect(status.out).toContain('events: 0 waiting to be sent, 0 waiting to be handled');

    expect(await app.stop()).toBe(0);
    // Stopped, it holds nothing: the directory is free again and status no longer lists it.
    const after = await cli(['status', 'examples/bookstore', '--data', app.dataDir]);
    expect(after.code).toBe(2);
    expect(after.out).toMatch(/no running deployment/);
    const again = await startBookstore({ arch: 'monolith', dataDir: app.dataDir });
    expect(await again.stop()).toBe(0);
  });

  it('a record left by a deployment that was killed does not lock the directory', async () => {
    const app = await startBookstore({ arch: 'monolith' });
    app.kill('SIGKILL');
    await app.waitExit();
    const next = await startBookstore({ arch: 'monolith', dataDir: app.dataDir });
    expect(await next.stop()).toBe(0);
  });

  it('microservices with the edge port taken fails at once, naming the port, and starts nothing', async () => {
    const port = await occupiedPort();
    const r = await cli(['run', 'examples/bookstore', '--arch', 'microservices', '--port', String(port), '--data', makeDataDir()]);
    expect(r.code, r.out).toBe(2);
    expect(r.out).toContain(`port ${port} on 127.0.0.1 is already in use`);
    expect(r.out).not.toMatch(/restarting in/);
    expect(r.ms).toBeLessThan(15_000);
  });

  it('microservices whose database cannot be reached fails with the cause, without a restart loop', async () => {
    const r = await cli(['run', 'examples/bookstore', '--arch', 'microservices', '--port', '0', '--data', makeDataDir(), '--storage', 'postgres://127.0.0.1:1/nowhere'], 90_000);
    expect(r.code, r.out).toBe(2);
    expect(r.out).toMatch(/#0 could not start: .*(127\.0\.0\.1:1|ECONNREFUSED|database)/);
    expect(r.out).not.toMatch(/restarting in/);
    expect(r.out).not.toMatch(/ReferenceError|TypeError/);
  });

  it('microservices runs an app whose evolith is a link: evolith\'s own packages are found beside it, not in the app', async () => {
    // As with a file: dependency or npm link: the app's node_modules holds only the link.
    const app = await startBookstore({ app: linkedHello(), arch: 'microservices', readyTimeoutMs: 60_000 });
    try {
      const r = await fetch(`${app.baseUrl}/greetings`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'linked' }),
      });
      expect(r.status).toBe(200);
      expect(await r.json()).toMatchObject({ message: expect.stringContaining('linked'), count: 1 });
      expect(app.output()).not.toMatch(/restarting in/);
    } finally {
      await app.stop();
    }
  }, 90_000);

  it('a worker that cannot load the app exits at once with why; the start fails without a restart loop', async () => {
    const dir = linkedHello();
    // Loads in the control plane, throws in every worker (they are started with --group or --edge).
    writeFileSync(
      join(dir, 'contracts', 'broken-in-workers.ts'),
      "if (process.argv.includes('--app-dir')) throw new Error('this module refuses to load in a worker');\nexport {};\n",
    );
    const appFile = join(dir, 'app.ts');
    writeFileSync(appFile, `import './contracts/broken-in-workers.js';\n${readFileSync(appFile, 'utf8')}`);
    const r = await cli(['run', dir, '--arch', 'microservices', '--port', '0', '--data', makeDataDir()], 60_000);
    expect(r.code, r.out).toBe(2);
    expect(r.out).toMatch(/could not be loaded: .*this module refuses to load in a worker/);
    expect(r.out).not.toMatch(/restarting in/);
    expect(r.ms).toBeLessThan(30_000);
  }, 90_000);
});
