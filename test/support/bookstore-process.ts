/**
 * Starts the bookstore as a real process through the CLI, exactly as a user would:
 * `node bin/evolith.mjs run examples/bookstore --arch <a> --port 0 --data <dir> ...`.
 * Every process started here is killed (with its whole process group) when the test
 * file ends, even if a test forgot to stop it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll } from 'vitest';
import { sleep } from './eventually.js';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

export interface BookstoreOptions {
  /** `--arch`; default `monolith`. */
  arch?: string;
  /** The app directory, relative to the repository; default `examples/bookstore`. */
  app?: string;
  /** `--port`; default 0 (a free port). */
  port?: number;
  /** `--host`: the address the edge listens on (default loopback). */
  host?: string;
  /** `--data`; default a fresh temporary directory (fresh demo data). */
  dataDir?: string;
  /** `--storage`: `sqlite` or a `postgres://` URL. */
  storage?: string;
  /** `--schema-prefix` (PostgreSQL). */
  schemaPrefix?: string;
  /** `--set path=value` topology overrides, e.g. `{ 'config.payment.paymentExpiresMs': 1500 }`. */
  set?: Record<string, string | number | boolean>;
  /** Extra environment variables for the process. */
  env?: Record<string, string>;
  /** How long to wait for readiness; default 30 s. */
  readyTimeoutMs?: number;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Bookstore {
  readonly baseUrl: string;
  readonly pid: number;
  readonly dataDir: string;
  readonly options: BookstoreOptions & { dataDir: string };
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** Whether the process has exited. */
  exited(): boolean;
  /** Resolves when the process exits. */
  waitExit(): Promise<ExitInfo>;
  /** SIGTERM, then waits; resolves the exit code (null if it had to be killed after `timeoutMs`). */
  stop(timeoutMs?: number): Promise<number | null>;
  /** Sends a signal; by default to the whole process group (a crash takes the children too). */
  kill(signal?: NodeJS.Signals, options?: { group?: boolean }): void;
  /** Stops the process if it still runs, then starts it again on the same data dir / storage. */
  restart(overrides?: Partial<BookstoreOptions>): Promise<Bookstore>;
}

const live = new Set<ChildProcess>();
const ownedDirs = new Set<string>();

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      /* already gone */
    }
  }
}

/** Kills every process this module started and removes the temporary data dirs it made. */
export async function stopAllBookstores(): Promise<void> {
  const children = [...live];
  for (const child of children) killGroup(child, 'SIGKILL');
  await Promise.all(
    children.map((c) => (c.exitCode !== null || c.signalCode !== null ? undefined : new Promise((r) => c.once('exit', r)))),
  );
  live.clear();
  for (const dir of ownedDirs) rmSync(dir, { recursive: true, force: true });
  ownedDirs.clear();
}

process.once('exit', () => {
  for (const child of live) killGroup(child, 'SIGKILL');
});

try {
  afterAll(stopAllBookstores, 30_000);
} catch {
  /* imported outside a vitest collection phase: the exit hook still cleans up */
}

const MAX_OUTPUT = 4 * 1024 * 1024;
const LISTENING = /listening on http:\/\/(\[[^\]]+\]|[\d.]+):(\d+)/;

export function makeDataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'evolith-acceptance-'));
  ownedDirs.add(dir);
  return dir;
}

export async function startBookstore(options: BookstoreOptions = {}): Promise<Bookstore> {
  const dataDir = options.dataDir ?? makeDataDir();
  const opts = { ...options, dataDir };
  const args = [
    // EVOLITH_TEST_CLI points the suite at another build of the CLI.
    process.env.EVOLITH_TEST_CLI ?? join(repoRoot, 'bin', 'evolith.mjs'),
    'run',
    opts.app ?? 'examples/bookstore',
    '--arch',
    opts.arch ?? 'monolith',
    '--port',
    String(opts.port ?? 0),
    '--data',
    dataDir,
  ];
  if (opts.host !== undefined) args.push('--host', opts.host);
  if (opts.storage !== undefined) args.push('--storage', opts.storage);
  if (opts.schemaPrefix !== undefined) args.push('--schema-prefix', opts.schemaPrefix);
  // Tests run with serialisability checks on, so a call that would break across a wire fails here first.
  const set = { checkSerializable: true, ...opts.set };
  for (const [path, value] of Object.entries(set)) args.push('--set', `${path}=${value}`);

  // The child is a plain process, not part of the test runner.
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('VITEST')) env[k] = v;
  Object.assign(env, opts.env);

  const child = spawn(process.execPath, args, {
    cwd: repoRoot,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // own process group: a crash (SIGKILL) can take the whole tree
  });
  live.add(child);

  let out = '';
  const append = (chunk: Buffer) => {
    out += chunk.toString('utf8');
    if (out.length > MAX_OUTPUT) out = out.slice(out.length - MAX_OUTPUT);
    if (process.env.EVOLITH_TEST_VERBOSE) process.stderr.write(chunk);
  };
  child.stdout!.on('data', append);
  child.stderr!.on('data', append);

  let exitInfo: ExitInfo | undefined;
  const exitPromise = new Promise<ExitInfo>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      live.delete(child);
      resolve(exitInfo);
    });
    child.once('error', (err) => {
      out += `\n[spawn error] ${err.message}\n`;
      exitInfo = { code: null, signal: null };
      live.delete(child);
      resolve(exitInfo);
    });
  });

  const describeFailure = (why: string) =>
    new Error(
      `bookstore (${args.slice(1).join(' ')}) ${why}\n--- process output (tail) ---\n${out.slice(-12_000)}\n--- end of output ---`,
    );

  const timeoutMs = opts.readyTimeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  let baseUrl: string;
  try {
    baseUrl = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(describeFailure(`printed no "listening on" line within ${timeoutMs} ms`)), timeoutMs);
      const onData = () => {
        const m = LISTENING.exec(out);
        if (m) {
          clearTimeout(timer);
          child.stdout!.off('data', onData);
          // An edge on every interface is reached, like any other, on loopback.
          const host = m[1] === '0.0.0.0' || m[1] === '[::]' ? '127.0.0.1' : m[1]!;
          resolve(`http://${host}:${m[2]}`);
        }
      };
      child.stdout!.on('data', onData);
      onData();
      void exitPromise.then((e) => {
        clearTimeout(timer);
        reject(describeFailure(`exited before it was ready (code ${e.code}, signal ${e.signal})`));
      });
    });
    for (;;) {
      if (exitInfo) throw describeFailure(`exited before /health answered (code ${exitInfo.code}, signal ${exitInfo.signal})`);
      try {
        const res = await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(2_000) });
        const body = (await res.json().catch(() => undefined)) as { status?: unknown } | undefined;
        if (res.status === 200 && body?.status === 'ok') break;
      } catch {
        /* not ready yet */
      }
      if (Date.now() >= deadline) throw describeFailure(`/health did not answer 200 {status:'ok'} within ${timeoutMs} ms`);
      await sleep(100);
    }
  } catch (err) {
    killGroup(child, 'SIGKILL');
    await exitPromise;
    throw err;
  }

  const handle: Bookstore = {
    baseUrl,
    pid: child.pid!,
    dataDir,
    options: opts,
    output: () => out,
    exited: () => exitInfo !== undefined,
    waitExit: () => exitPromise,
    async stop(stopTimeoutMs = 20_000) {
      if (exitInfo) return exitInfo.code;
      try {
        process.kill(child.pid!, 'SIGTERM');
      } catch {
        /* exited meanwhile */
      }
      const result = await Promise.race([exitPromise, sleep(stopTimeoutMs).then(() => undefined)]);
      killGroup(child, 'SIGKILL'); // leftovers of the tree, or the process itself after the timeout
      if (!result) {
        await exitPromise;
        return null;
      }
      return result.code;
    },
    kill(signal = 'SIGKILL', { group = true } = {}) {
      if (group) killGroup(child, signal);
      else child.kill(signal);
    },
    async restart(overrides = {}) {
      if (!exitInfo) await handle.stop();
      else killGroup(child, 'SIGKILL');
      return startBookstore({ ...opts, ...overrides, dataDir });
    },
  };
  return handle;
}
