/**
 * One TCP port for RPC over HTTP/1.1 and over h2c (HTTP/2 without TLS, prior knowledge).
 *
 * A cluster reaches a pod on one port, and what comes in depends on who calls: an Istio
 * sidecar or Knative's queue proxy speaking HTTP/2, a kubelet probe or an operator's curl
 * speaking HTTP/1.1. So the listener is a plain TCP server that looks at the first bytes of
 * each connection: the HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) sends the
 * connection to an HTTP/2 server, anything else to an HTTP/1.1 server. Both are Fastify apps
 * set up the same way: `rpcHttpPlugin` and the caller's own routes (`/health`, `/ready`).
 */
import http from 'node:http';
import type { Http2Server, ServerHttp2Session } from 'node:http2';
import net, { type AddressInfo, type Socket } from 'node:net';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { MethodDef } from '../contract/define.js';
import type { InternalPlane } from '../auth/internal-plane.js';
import { UnavailableError } from '../kernel/errors.js';
import { rpcHttpPlugin } from './http-transport.js';
import type { RpcResolver } from './tcp-server.js';

/** The client preface every HTTP/2 connection starts with (RFC 9113, 3.4). */
export const HTTP2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/** How long a new connection may take to send enough bytes to tell its protocol. */
const SNIFF_TIMEOUT_MS = 10_000;

export interface RpcHttpListenerOptions {
  /** The address to listen on (the internal host; `0.0.0.0` in a pod). */
  host: string;
  /** The port; 0 picks a free one. */
  port: number;
  /** The methods this process serves. */
  resolve: RpcResolver;
  /** Checks callers' credentials and identities; without it only anonymous calls are taken. */
  plane?: InternalPlane;
  /** Where refused calls and dropped connections are logged. */
  log?: Logger;
  /** The deadline of a call that names none (the process's policy table); default the contract's timeout. */
  timeoutFor?: (method: MethodDef) => number;
  /** How long `close()` lets calls in flight finish before cutting connections; default 10 s. */
  drainMs?: number;
  /** Largest request body in bytes; default 4 MiB. */
  bodyLimit?: number;
  /**
   * More routes (and hooks) for both protocols, e.g. `/health` and `/ready`: called once for
   * the HTTP/1.1 app and once for the HTTP/2 one, before the RPC routes are added, so hooks it
   * adds apply to them too. On the HTTP/2 app, `req.raw` is an `Http2ServerRequest`.
   */
  extra?: (app: FastifyInstance) => void | Promise<void>;
}

export interface RpcHttpListener {
  /** Where it listens, "host:port" (IPv6 hosts in brackets). */
  readonly address: string;
  readonly port: number;
  /** True from the moment `close()` is called: a readiness route answers 503 from then on. */
  readonly closing: boolean;
  /**
   * Stops accepting connections, lets calls in flight finish within `drainMs` (HTTP/1.1
   * connections close after their current answer; HTTP/2 sessions get GOAWAY, so callers open
   * no new streams on them), then closes whatever is left.
   */
  close(): Promise<void>;
}

function hostForAddress(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** Starts the listener; resolves once it accepts connections. */
export async function listenRpcHttp(options: RpcHttpListenerOptions): Promise<RpcHttpListener> {
  const log = options.log?.child({ component: 'rpc-http-listener' });
  const drainMs = options.drainMs ?? 10_000;
  let closing: Promise<void> | undefined;

  const setup = async (app: FastifyInstance): Promise<void> => {
    if (options.extra) await options.extra(app);
    await app.register(rpcHttpPlugin, { resolve: options.resolve, plane: options.plane, log: options.log, timeoutFor: options.timeoutFor, bodyLimit: options.bodyLimit });
    await app.ready();
  };

  // Neither app ever listens: connections reach their servers through 'connection' events.
  const h1 = Fastify({ logger: false });
  // While draining, an HTTP/1.1 connection closes after the answer it is giving.
  h1.addHook('onSend', async (_req, reply) => {
    if (closing) reply.header('connection', 'close');
  });
  await setup(h1);
  // Fastify types an HTTP/2 app with other request and reply classes; the routes `extra` and
  // the RPC plugin add use only what both have.
  const h2app = Fastify({ logger: false, http2: true });
  await setup(h2app as unknown as FastifyInstance);
  const h1server = h1.server as http.Server;
  const h2server = h2app.server as Http2Server;
  // Node's HTTP/1.1 server starts tracking its connections when it starts listening: that is
  // what enforces its header and request timeouts and lets it tell idle connections from busy
  // ones on close. This one never listens itself, so it is told it does.
  h1server.emit('listening');

  const sessions = new Set<ServerHttp2Session>();
  h2server.on('session', (session: ServerHttp2Session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
    if (closing) session.close();
  });
  h2server.on('sessionError', (err: Error) => log?.debug({ err: err.message }, 'an HTTP/2 connection failed'));

  const sockets = new Set<Socket>();
  /** Connections that have not yet sent enough to tell their protocol: no call of theirs is in flight. */
  const undecided = new Set<Socket>();
  const accept = (socket: Socket): void => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    if (closing) {
      socket.destroy();
      return;
    }
    undecided.add(socket);
    let seen: Buffer = Buffer.alloc(0);
    const give = (): void => {
      undecided.delete(socket);
      socket.removeListener('data', onData);
      socket.removeListener('end', onEnd);
      socket.removeListener('error', onError);
      clearTimeout(timer);
    };
    const drop = (reason: string): void => {
      give();
      log?.debug({ remote: socket.remoteAddress, reason }, 'connection dropped before it said its protocol');
      socket.destroy();
    };
    const onData = (chunk: Buffer): void => {
      seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
      const n = Math.min(seen.length, HTTP2_PREFACE.length);
      const h2 = seen.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n));
      if (h2 && seen.length < HTTP2_PREFACE.length) return; // a preface so far: wait for the rest
      give();
      socket.pause();
      socket.unshift(seen);
      // The HTTP/2 session reads what was put back itself (and a flowing socket would hand it
      // to nobody); the HTTP/1.1 server reads 'data' events, which need the socket flowing.
      if (h2) h2server.emit('connection', socket);
      else {
        h1server.emit('connection', socket);
        socket.resume();
      }
    };
    const onEnd = (): void => drop('closed');
    const onError = (err: Error): void => drop(err.message);
    const timer = setTimeout(() => drop(`sent ${seen.length} bytes in ${SNIFF_TIMEOUT_MS} ms`), SNIFF_TIMEOUT_MS);
    timer.unref();
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onError);
  };

  const server = net.createServer(accept);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, options.host, () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
  } catch (err) {
    h1server.close(() => {});
    await Promise.all([h1.close(), h2app.close()]);
    throw new UnavailableError(`the RPC listener cannot listen on ${hostForAddress(options.host)}:${options.port}: ${(err as Error).message}`, { maybeExecuted: false });
  }
  server.on('error', (err) => log?.error({ err }, 'the RPC listener failed'));
  const bound = server.address() as AddressInfo;

  const drain = async (): Promise<void> => {
    // Its callback would wait for every connection to end; new ones are refused from now on.
    const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of sessions) s.close();
    for (const s of undecided) s.destroy();
    const until = Date.now() + drainMs;
    while (sockets.size > 0 && Date.now() < until) {
      h1server.closeIdleConnections();
      await new Promise((r) => setTimeout(r, 20));
    }
    for (const s of sessions) s.destroy();
    for (const s of sockets) s.destroy();
    // Stops the HTTP/1.1 server's connection checks (it reports that it was not listening).
    h1server.close(() => {});
    await Promise.all([stopped, h1.close(), h2app.close()]);
  };

  return {
    address: `${hostForAddress(bound.address)}:${bound.port}`,
    port: bound.port,
    get closing() {
      return closing !== undefined;
    },
    close: () => (closing ??= drain()),
  };
}
