/**
 * A private nats-server with JetStream for tests that stop and start the broker (the shared one
 * on 4222 is never touched). `natsServerMissing()` says why none can be started here.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The shared JetStream server the NATS tests use (NATS_URL to choose another). */
export const SHARED_NATS = process.env.NATS_URL ?? '127.0.0.1:4222';

/** Why the shared JetStream server cannot be used here, or undefined when it can. */
export async function sharedNatsUnreachable(): Promise<string | undefined> {
  const { connect } = await import('@nats-io/transport-node');
  const { jetstreamManager } = await import('@nats-io/jetstream');
  let nc: Awaited<ReturnType<typeof connect>> | undefined;
  try {
    nc = await connect({ servers: SHARED_NATS, timeout: 2_000, maxReconnectAttempts: 0 });
    await (await jetstreamManager(nc)).getAccountInfo();
    return undefined;
  } catch (err) {
    return `no JetStream server at ${SHARED_NATS} (${(err as Error).message}); start one with \`nats-server -js\` or set NATS_URL`;
  } finally {
    await nc?.close().catch(() => undefined);
  }
}

/** Deletes streams a test made on the shared server; one that is already gone is not an error. */
export async function deleteSharedStreams(streams: Iterable<string>): Promise<void> {
  const { connect } = await import('@nats-io/transport-node');
  const { jetstreamManager } = await import('@nats-io/jetstream');
  const nc = await connect({ servers: SHARED_NATS });
  try {
    const jsm = await jetstreamManager(nc);
    for (const stream of streams) await jsm.streams.delete(stream).catch(() => undefined);
  } finally {
    await nc.close();
  }
}

export const NATS_SERVER_BIN = process.env.EVOLITH_TEST_NATS_SERVER ?? '/usr/sbin/nats-server';

export function natsServerMissing(): string | undefined {
  return existsSync(NATS_SERVER_BIN) ? undefined : `no nats-server binary at ${NATS_SERVER_BIN} (set EVOLITH_TEST_NATS_SERVER)`;
}

export interface PrivateNats {
  readonly port: number;
  /** host:port, as NatsEventBus takes `servers`. */
  readonly servers: string;
  readonly running: boolean;
  /** Stops the server (SIGKILL: no goodbye to clients), keeping its store. */
  stop(): Promise<void>;
  /** Starts it again on the same port and store. */
  start(): Promise<void>;
  /** Stops it and removes its store. */
  dispose(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = tcpConnect(port, '127.0.0.1');
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export async function startPrivateNats(): Promise<PrivateNats> {
  const port = await freePort();
  const store = mkdtempSync(join(tmpdir(), 'evolith-nats-'));
  let child: ChildProcess | undefined;
  let output = '';

  const start = async (): Promise<void> => {
    if (child) return;
    output = '';
    const c = spawn(NATS_SERVER_BIN, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', store], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    c.stdout!.on('data', (d) => (output += String(d)));
    c.stderr!.on('data', (d) => (output += String(d)));
    const deadline = Date.now() + 10_000;
    // Listening is not enough: JetStream must have recovered its store.
    while (!/Server is ready/.test(output)) {
      if (c.exitCode !== null) throw new Error(`nats-server exited (${c.exitCode}): ${output}`);
      if (Date.now() > deadline) throw new Error(`nats-server did not start within 10 s: ${output}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    if (!(await accepts(port))) throw new Error(`nats-server says ready but port ${port} refuses connections`);
  };

  const stop = async (): Promise<void> => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  };

  process.once('exit', () => child?.kill('SIGKILL'));
  await start();
  return {
    port,
    servers: `127.0.0.1:${port}`,
    get running() {
      return child !== undefined;
    },
    start,
    stop,
    dispose: async () => {
      await stop();
      rmSync(store, { recursive: true, force: true });
    },
  };
}
