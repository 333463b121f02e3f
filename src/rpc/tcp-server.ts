import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { MethodDef } from '../contract/define.js';
import { NotFoundError, NotSerializableError, TimeoutError, toEvolithError, UnavailableError, type EvolithError } from '../kernel/errors.js';
import type { ServiceHost } from '../kernel/host.js';
import type { CallMeta } from '../kernel/plugins.js';
import { newTrace, parseTraceparent } from '../kernel/trace.js';
import { BatchedWriter } from './batched-writer.js';
import { DEFAULT_MAX_FRAME_BYTES, encodeFrame, FrameDecoder, FrameEncodeError, type Message, type RequestMessage } from './frame.js';

/** What serves one method: the server half of the call pipeline (authorise → validate → handler → validate output). */
export interface RpcTarget {
  readonly method: MethodDef;
  readonly host: { handle(method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown> };
}

/** Finds the target of a call, or undefined when this instance does not serve it. */
export type RpcResolver = (service: string, method: string) => RpcTarget | undefined;

/**
 * A resolver over running service hosts, for callers on the other side of a wire: each host
 * parses the caller's input itself (nothing on this side checked it).
 */
export function hostResolver(hosts: Iterable<ServiceHost>): RpcResolver {
  // Maps, not the contract's method objects, so that "constructor" or "__proto__" find nothing.
  const table = new Map<string, Map<string, RpcTarget>>();
  for (const host of hosts) {
    const methods = new Map<string, RpcTarget>();
    const wire = { handle: (m: MethodDef, input: unknown, meta: CallMeta) => host.handle(m, input, meta, true) };
    for (const method of Object.values(host.definition.contract.methods)) methods.set(method.name, { method, host: wire });
    table.set(host.name, methods);
  }
  return (service, method) => table.get(service)?.get(method);
}

export interface RpcServerOptions {
  resolve: RpcResolver;
  log: Logger;
  /** Interface to listen on; default 127.0.0.1. */
  host?: string;
  /** Default 0: any free port (read it from `address` after `listen()`). */
  port?: number;
  /** Largest frame accepted or sent, in bytes; default 4 MiB. */
  maxFrameBytes?: number;
  /** Calls one connection may have in flight; beyond it calls are refused with EVOLITH_UNAVAILABLE. Default 1024. */
  maxInFlight?: number;
  /** Bytes of answers queued on a socket beyond which the connection stops reading requests; default 1 MiB. */
  highWaterMark?: number;
  /** How long `close()` lets calls in flight finish before cutting connections; default 10 s. */
  drainMs?: number;
}

export interface RpcServerStats {
  /** Connections open now. */
  connections: number;
  /** Connections accepted since start. */
  accepted: number;
  requests: number;
  /** Calls refused because their connection had `maxInFlight` calls already. */
  overloaded: number;
  /** Connections closed for sending something that is not a well-formed frame. */
  protocolErrors: number;
  /** Times a connection stopped reading because its peer did not read its answers. */
  pauses: number;
}

type Counter = 'accepted' | 'requests' | 'overloaded' | 'protocolErrors' | 'pauses';

/**
 * The server end of Evolith's TCP RPC: length-prefixed msgpack frames (see frame.ts), many calls
 * multiplexed per connection and answered in any order.
 *
 * Trust: the caller identity and calling service in a request are believed as sent, exactly as
 * the in-process pipeline believes them. Listen on loopback or a private network only; across
 * untrusted networks use mesh mode, whose sidecars add mTLS.
 */
export class RpcServer {
  private readonly server: Server;
  private readonly connections = new Set<ServerConnection>();
  private closing: Promise<void> | undefined;
  readonly log: Logger;
  readonly resolve: RpcResolver;
  readonly maxFrameBytes: number;
  readonly maxInFlight: number;
  readonly highWaterMark: number;
  private readonly drainMs: number;
  private readonly counters: Record<Counter, number> = { accepted: 0, requests: 0, overloaded: 0, protocolErrors: 0, pauses: 0 };
  private bound: string | undefined;

  constructor(private readonly options: RpcServerOptions) {
    this.log = options.log.child({ component: 'rpc-server' });
    this.resolve = options.resolve;
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.maxInFlight = options.maxInFlight ?? 1024;
    this.highWaterMark = options.highWaterMark ?? 1024 * 1024;
    this.drainMs = options.drainMs ?? 10_000;
    this.server = createServer({ noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 }, (socket) => this.accept(socket));
    this.server.on('error', (err) => this.log.error({ err }, 'rpc listener failed'));
  }

  /** Starts listening; resolves with the bound "host:port". */
  listen(): Promise<string> {
    const host = this.options.host ?? '127.0.0.1';
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      this.server.listen(this.options.port ?? 0, host, () => {
        this.server.off('error', onError);
        const a = this.server.address();
        this.bound = a && typeof a === 'object' ? (a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`) : String(a);
        this.log.info({ address: this.bound }, 'rpc listening');
        resolve(this.bound);
      });
    });
  }

  /** The bound "host:port" (after `listen()`). */
  get address(): string {
    if (!this.bound) throw new Error('RpcServer is not listening yet');
    return this.bound;
  }

  get isClosing(): boolean {
    return this.closing !== undefined;
  }

  get stats(): RpcServerStats {
    return { connections: this.connections.size, ...this.counters };
  }

  /**
   * Graceful close: stops accepting, tells every peer to send nothing new (goaway), lets calls
   * in flight answer, then closes. Connections still busy after `drainMs` are cut.
   */
  close(drainMs = this.drainMs): Promise<void> {
    this.closing ??= this.shutdown(drainMs);
    return this.closing;
  }

  private async shutdown(drainMs: number): Promise<void> {
    const listenerClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const drained = [...this.connections].map((c) => c.goAway('server is shutting down'));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), drainMs);
    });
    const late = await Promise.race([Promise.all(drained).then(() => false), timedOut]);
    clearTimeout(timer);
    if (late) {
      this.log.warn({ connections: this.connections.size, drainMs }, 'rpc drain timed out; cutting connections');
      for (const c of this.connections) c.destroy();
    }
    await listenerClosed;
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    this.counters.accepted++;
    const conn = new ServerConnection(this, socket);
    this.connections.add(conn);
    socket.once('close', () => this.connections.delete(conn));
  }

  /** @internal */
  count(what: Counter): void {
    this.counters[what]++;
  }
}

/** One accepted socket: decodes requests, runs them concurrently, writes answers as they settle. */
class ServerConnection {
  private readonly decoder: FrameDecoder;
  private readonly remote: string;
  private inflight = 0;
  private paused = false;
  private readonly writer: BatchedWriter;
  private closed = false;
  private draining = false;
  private onIdle: (() => void) | undefined;

  constructor(
    private readonly server: RpcServer,
    private readonly socket: Socket,
  ) {
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`;
    this.writer = new BatchedWriter(socket);
    this.decoder = new FrameDecoder(
      (m) => this.onMessage(m),
      (reason) => this.protocolError(reason),
      server.maxFrameBytes,
    );
    socket.on('data', (chunk: Buffer) => {
      // Nothing a peer sends may throw out of here: a bug in handling one message closes
      // this connection, never the process.
      try {
        this.decoder.push(chunk);
      } catch (err) {
        this.server.log.error({ err, remote: this.remote }, 'rpc connection failed while handling a frame');
        this.destroy();
      }
    });
    socket.on('end', () => {
      if (this.decoder.partial) this.protocolError('peer closed the connection in the middle of a frame');
    });
    socket.on('drain', () => {
      if (this.paused && !this.closed) {
        this.paused = false;
        socket.resume();
      }
    });
    socket.on('error', (err) => this.server.log.debug({ err, remote: this.remote }, 'rpc connection error'));
    socket.on('close', () => {
      this.closed = true;
      this.idle();
    });
  }

  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }

  /** Resolves once this connection is closed, after its calls in flight answered. */
  goAway(reason: string): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.draining = true;
    this.send({ kind: 'goaway', reason });
    return new Promise((resolve) => {
      this.onIdle = resolve;
      this.idle();
    });
  }

  private idle(): void {
    if (!this.onIdle) return;
    if (this.closed) {
      const done = this.onIdle;
      this.onIdle = undefined;
      done();
    } else if (this.draining && this.inflight === 0 && !this.socket.writableEnded) {
      this.socket.end();
      // 'close' follows once the peer hangs up too; destroy() ends a peer that never does.
      this.socket.setTimeout(1_000, () => this.destroy());
    }
  }

  private protocolError(reason: string): void {
    if (this.closed) return;
    this.server.count('protocolErrors');
    this.server.log.warn({ remote: this.remote, reason }, 'rpc connection closed: protocol error');
    this.destroy();
  }

  private onMessage(m: Message): void {
    switch (m.kind) {
      case 'request':
        return this.onRequest(m);
      case 'ping':
        return this.send({ kind: 'pong', id: m.id });
      case 'goaway':
        return; // a client that goes away just stops sending and hangs up
      default:
        return this.protocolError(`a client sent a ${m.kind}`);
    }
  }

  private onRequest(m: RequestMessage): void {
    const server = this.server;
    server.count('requests');
    if (this.draining || server.isClosing) {
      return this.fail(m.id, new UnavailableError(`${server.address} is shutting down; call another instance`, { maybeExecuted: false }));
    }
    if (this.inflight >= server.maxInFlight) {
      server.count('overloaded');
      return this.fail(
        m.id,
        new UnavailableError(`${server.address} refused ${m.service}.${m.method}: ${server.maxInFlight} calls already in flight on this connection`, {
          maybeExecuted: false,
        }),
      );
    }
    let target: RpcTarget | undefined;
    try {
      target = server.resolve(m.service, m.method);
    } catch (err) {
      return this.fail(m.id, toEvolithError(err));
    }
    if (!target) return this.fail(m.id, new NotFoundError(`${server.address} serves no method ${m.service}.${m.method}`));
    if (m.deadline <= Date.now()) {
      return this.fail(m.id, new TimeoutError(`${m.service}.${m.method} arrived after its deadline`, { deadline: new Date(m.deadline).toISOString() }));
    }
    const meta: CallMeta = { deadline: m.deadline, trace: parseTraceparent(m.traceparent) ?? newTrace(), caller: m.caller, from: m.from };
    const id = m.id;
    const method = target.method;
    let work: Promise<unknown>;
    try {
      work = target.host.handle(method, m.input, meta);
    } catch (err) {
      work = Promise.reject(err);
    }
    this.inflight++;
    work.then(
      (output) => {
        this.answer(id, method, output);
        this.settled();
      },
      (err) => {
        this.fail(id, toEvolithError(err));
        this.settled();
      },
    );
  }

  /** After the answer is written: a draining connection may end once its last call answered. */
  private settled(): void {
    this.inflight--;
    if (this.draining) this.idle();
  }

  private answer(id: number, method: MethodDef, output: unknown): void {
    if (this.closed) return;
    let frame: Buffer;
    try {
      frame = encodeFrame({ kind: 'response', id, ok: true, output }, this.server.maxFrameBytes);
    } catch (err) {
      const why = err instanceof FrameEncodeError ? err.message : String(err);
      return this.fail(id, new NotSerializableError(`the output of ${method.fullName} cannot travel over RPC: ${why}`));
    }
    this.write(frame);
  }

  private fail(id: number, err: EvolithError): void {
    if (this.closed) return;
    let frame: Buffer;
    try {
      frame = encodeFrame({ kind: 'response', id, ok: false, error: err.toJSON() }, this.server.maxFrameBytes);
    } catch {
      // Details that cannot be encoded (or are too large) are dropped; code and message survive.
      frame = encodeFrame({ kind: 'response', id, ok: false, error: { code: err.code, message: err.message.slice(0, 10_000), httpStatus: err.httpStatus, origin: err.origin } });
    }
    this.write(frame);
  }

  private send(m: Message): void {
    if (!this.closed) this.write(encodeFrame(m, this.server.maxFrameBytes));
  }

  private write(frame: Buffer): void {
    const socket = this.socket;
    if (socket.writableEnded) return;
    this.writer.write(frame);
    if (!this.paused && socket.writableLength > Math.max(this.server.highWaterMark, socket.writableHighWaterMark)) {
      // The peer is not reading its answers: stop reading its requests until it catches up.
      this.paused = true;
      this.server.count('pauses');
      socket.pause();
    }
  }
}
