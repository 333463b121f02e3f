/**
 * Testing an app built on Evolith: `import { startServices, startApp } from 'evolith/testing'`.
 *
 * - `startServices(services)` runs services in this process (SQLite in a temporary directory,
 *   events in memory) and gives typed clients: unit tests of handlers, no HTTP.
 * - `startApp(appDir, { architecture })` runs the app exactly as `evolith run` does, in its own
 *   process (and, for microservices, the processes it starts), on a free port and a temporary
 *   data directory: tests through the HTTP edge, in every architecture.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino, { type Logger } from 'pino';
import type { AnyContract } from '../contract/define.js';
import { MemoryEventBus } from '../events/memory-bus.js';
import { Runtime } from '../kernel/runtime.js';
import type { Identity } from '../kernel/plugins.js';
import type { Client, ServiceDefinition } from '../kernel/service.js';
import { SqliteStorage } from '../storage/sqlite.js';
import { dataPlugins } from '../worker/backends.js';

/** The architectures `evolith run` can start in this version. */
export const availableArchitectures: readonly string[] = ['monolith', 'microservices', 'mesh', 'serverless'];

const cli = fileURLToPath(new URL('../../bin/evolith.mjs', import.meta.url));

function temporaryDirectory(tag: string): string {
  return mkdtempSync(join(tmpdir(), `evolith-${tag}-`));
}

// ---------------------------------------------------------------------------------------------
// Services in this process

export interface StartServicesOptions {
  /** Where the services' SQLite files go; default a temporary directory, removed by stop(). */
  dataDir?: string;
  /** Per-service configuration, as `config:` in evolith.yaml (handlers read it as `ctx.config`). */
  config?: Record<string, Record<string, unknown>>;
  /** Default: silent (EVOLITH_LOG_LEVEL overrides). */
  log?: Logger;
}

export interface LocalServices {
  /** A typed client of a hosted service; `caller` is the identity the callee sees (default: anonymous). */
  client<C extends AnyContract>(contract: C, caller?: Identity): Client<C>;
  readonly dataDir: string;
  /** Stops the services (in-flight calls finish first) and removes a temporary data directory. */
  stop(): Promise<void>;
}

/** Starts services in this process: migrations applied, events delivered in memory. */
export async function startServices(services: readonly ServiceDefinition[], options: StartServicesOptions = {}): Promise<LocalServices> {
  const dataDir = options.dataDir ?? temporaryDirectory('services');
  const runtime = new Runtime({
    services,
    storage: new SqliteStorage(dataDir),
    bus: new MemoryEventBus(),
    ...dataPlugins,
    config: options.config,
    checkSerializable: true,
    log: options.log ?? pino({ level: process.env.EVOLITH_LOG_LEVEL ?? 'silent' }),
  });
  try {
    await runtime.start();
  } catch (err) {
    if (options.dataDir === undefined) rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
  return {
    dataDir,
    client: (contract, caller) => runtime.client(contract, undefined, caller ? { caller } : undefined),
    async stop() {
      await runtime.stop();
      if (options.dataDir === undefined) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The app as `evolith run` runs it

export interface StartAppOptions {
  /** Default: the topology's (evolith.yaml), else monolith. */
  architecture?: string;
  /** The edge's port; default 0 (a free one). */
  port?: number;
  /** Data directory; default a temporary one, removed by stop(). */
  dataDir?: string;
  /** Topology overrides, as `--set path=value`. */
  set?: Record<string, string | number | boolean>;
  /** Extra environment for the process (EVOLITH_LOG_LEVEL defaults to warn). */
  env?: Record<string, string>;
  /** How long to wait for the app to be ready; default 60 s. */
  readyTimeoutMs?: number;
}

export interface StartedApp {
  /** The edge's URL, e.g. http://127.0.0.1:38211. */
  readonly url: string;
  readonly dataDir: string;
  /** Everything the process wrote so far (stdout and stderr). */
  output(): string;
  /** Stops the app (SIGTERM to its processes, SIGKILL after 15 s) and removes a temporary data directory. */
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();

function signalGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-child.pid!, signal);
  } catch {
    /* already gone */
  }
}

process.once('exit', () => {
  for (const child of running) signalGroup(child, 'SIGKILL');
});

const LISTENING = /evolith: listening on (http:\/\/\S+)/;

/** Starts the app in `appDir` with `evolith run` and resolves once it serves. */
export async function startApp(appDir: string, options: StartAppOptions = {}): Promise<StartedApp> {
  const dataDir = options.dataDir ?? temporaryDirectory('app');
  const args = [cli, 'run', resolve(appDir), '--port', String(options.port ?? 0), '--data', dataDir];
  if (options.architecture) args.push('--arch', options.architecture);
  for (const [path, value] of Object.entries(options.set ?? {})) args.push('--set', `${path}=${value}`);
  // Its own process group: stop() reaches the processes a microservices deployment starts.
  const child = spawn(process.execPath, args, {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, EVOLITH_LOG_LEVEL: 'warn', EVOLITH_LOG_FORMAT: 'json', ...options.env },
  });
  running.add(child);
  let output = '';
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  void exited.then(() => running.delete(child));
  const removeData = () => {
    if (options.dataDir === undefined) rmSync(dataDir, { recursive: true, force: true });
  };

  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      signalGroup(child, 'SIGTERM');
      const force = setTimeout(() => signalGroup(child, 'SIGKILL'), 15_000);
      await exited;
      clearTimeout(force);
    }
    removeData();
  };

  const url = await new Promise<string>((ready, fail) => {
    const timer = setTimeout(() => fail(new Error(`${appDir} did not start within ${options.readyTimeoutMs ?? 60_000} ms:\n${output}`)), options.readyTimeoutMs ?? 60_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const m = LISTENING.exec(output);
      if (m) {
        clearTimeout(timer);
        ready(m[1]!);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    void exited.then(() => {
      clearTimeout(timer);
      fail(new Error(`evolith run ${appDir} exited (code ${child.exitCode}) before it served:\n${output}`));
    });
  }).catch(async (err: unknown) => {
    await stop();
    throw err;
  });
  return { url, dataDir, output: () => output, stop };
}
