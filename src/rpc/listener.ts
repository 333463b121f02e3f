import { chmodSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type SecureContextOptions, type TLSSocket, type TlsOptions } from 'node:tls';
import type { Logger } from 'pino';
import type { CredentialClaims } from '../auth/credentials.js';
import type { InternalPlane } from '../auth/internal-plane.js';
import { TimeoutError, UnauthenticatedError, UnavailableError, type EvolithError } from '../kernel/errors.js';
import { BatchedWriter } from './batched-writer.js';
import { FrameDecoder, frameLimits, REFUSED_REASON, writeFrame, type FrameHeader, type FrameLimits, type FrameSink, type HandshakeHeader, type RequestHeader } from './frame.js';
import { ServerHandshake } from './handshake.js';

/** Settings every Evolith RPC listener shares (the RPC server and the forwarder). */
export interface ListenerOptions {
  log: Logger;
  /** Interface to listen on; default 127.0.0.1. */
  host?: string;
  /** Default 0: any free port (read it from `address` after `listen()`). */
  port?: number;
  /** Largest frame accepted or sent, in bytes; default 4 MiB. */
  maxFrameBytes?: number;
  /** Largest frame header accepted or sent, in bytes; default 16 KiB. */
  maxHeaderBytes?: number;
  /** Calls one connection may have in flight; beyond it calls are refused with EVOLITH_UNAVAILABLE. Default 1024. */
  maxInFlight?: number;
  /** Bytes of answers queued on a socket beyond which the connection stops reading requests; default 1 MiB. */
  highWaterMark?: number;
  /** How long `close()` lets calls in flight finish before cutting connections; default 10 s. */
  drainMs?: number;
  /**
   * This process's credentials on a deployment's internal plane: every connection must then
   * prove its peer (see handshake.ts) before anything else. Without it, the listener takes
   * anonymous calls only.
   */
  plane?: InternalPlane;
  /**
   * Listen on this Unix domain socket instead of TCP (`host` and `port` are then ignored). The
   * socket file is made readable and writable by its owner only; put it in a directory only
   * its owner can enter, too.
   */
  path?: string;
  /**
   * After a peer proved its credential, whether it may use this listener: a reason refuses the
   * connection (an app behind a mesh proxy takes calls from its own proxy alone).
   */
  admit?: (peer: CredentialClaims) => string | undefined;
  /**
   * Accept TLS only, with these options (a mesh sidecar's mutual TLS: its certificate, the
   * authority it trusts, `requestCert` and `rejectUnauthorized`). A connection whose handshake
   * fails (plaintext, a certificate from another authority, none) is counted as refused and
   * logged. `setSecureContext` rotates the certificate for new connections.
   */
  tls?: TlsOptions;
}

export interface ListenerStats {
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
  /** Connections refused because their peer did not prove itself. */
  refused: number;
}

type Counter = Exclude<keyof ListenerStats, 'connections'>;

/**
 * The accepting end of Evolith's TCP RPC (frames: see frame.ts): connections, limits,
 * backpressure, ping, goaway and graceful close. What a request leads to is up to the
 * subclass: the RPC server runs it, the forwarder passes it on.
 */
export abstract class RpcListener {
  private readonly server: Server;
  private readonly connections = new Set<InboundConnection>();
  private closing: Promise<void> | undefined;
  readonly log: Logger;
  readonly limits: FrameLimits;
  readonly maxInFlight: number;
  readonly highWaterMark: number;
  private readonly drainMs: number;
  private readonly counters: Record<Counter, number> = { accepted: 0, requests: 0, overloaded: 0, protocolErrors: 0, pauses: 0, refused: 0 };
  readonly plane: InternalPlane | undefined;
  /** @internal */ readonly admit: ((peer: CredentialClaims) => string | undefined) | undefined;
  private bound: string | undefined;

  constructor(
    private readonly options: ListenerOptions,
    component: string,
  ) {
    this.log = options.log.child({ component });
    this.limits = frameLimits(options.maxFrameBytes, options.maxHeaderBytes);
    this.maxInFlight = options.maxInFlight ?? 1024;
    this.highWaterMark = options.highWaterMark ?? 1024 * 1024;
    this.drainMs = options.drainMs ?? 10_000;
    this.plane = options.plane;
    this.admit = options.admit;
    const socketOptions = { noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 };
    if (options.tls) {
      const server = createTlsServer({ ...socketOptions, ...options.tls }, (socket) => this.accept(socket));
      server.on('tlsClientError', (err, socket) => {
        this.counters.refused++;
        this.log.warn({ remote: `${socket.remoteAddress}:${socket.remotePort}`, reason: err.message }, 'rpc connection refused: no valid mutual TLS');
      });
      this.server = server;
    } else {
      this.server = createServer(socketOptions, (socket) => this.accept(socket));
    }
    this.server.on('error', (err) => this.log.error({ err }, 'rpc listener failed'));
  }

  /**
   * Takes a well-formed request that may run: the connection is not draining, below its
   * in-flight limit, and the deadline has not passed. Answer it exactly once, through `conn`.
   */
  protected abstract onRequest(conn: InboundConnection, header: RequestHeader, frame: Buffer, payloadStart: number): void;

  /** Starts listening; resolves with the bound "host:port" (or "unix:<path>"). */
  listen(): Promise<string> {
    const host = this.options.host ?? '127.0.0.1';
    const path = this.options.path;
    // A socket file left by a process that died would refuse the bind.
    if (path !== undefined) rmSync(path, { force: true });
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      const bound = () => {
        this.server.off('error', onError);
        const a = this.server.address();
        if (path !== undefined) chmodSync(path, 0o600);
        this.bound =
          path !== undefined ? `unix:${path}` : a && typeof a === 'object' ? (a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`) : String(a);
        this.log.info({ address: this.bound }, 'rpc listening');
        resolve(this.bound);
      };
      if (path !== undefined) this.server.listen(path, bound);
      else this.server.listen(this.options.port ?? 0, host, bound);
    });
  }

  /** A TLS listener's new certificate (rotation): new connections get it; open ones keep theirs. */
  setSecureContext(options: SecureContextOptions): void {
    if (!this.options.tls) throw new Error('this RPC listener does not use TLS');
    (this.server as ReturnType<typeof createTlsServer>).setSecureContext(options);
  }

  /** The bound "host:port" (after `listen()`). */
  get address(): string {
    if (!this.bound) throw new Error('the RPC listener is not listening yet');
    return this.bound;
  }

  get isClosing(): boolean {
    return this.closing !== undefined;
  }

  get stats(): ListenerStats {
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

  /** Runs after the connections are closed or cut (the forwarder closes its upstreams here). */
  protected async afterClose(): Promise<void> {}

  private async shutdown(drainMs: number): Promise<void> {
    const listenerClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const drained = [...this.connections].map((c) => c.goAway('shutting down'));
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
    await this.afterClose();
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    this.counters.accepted++;
    // The server option does not reach every kind of socket (a TLS server's, say): answers leave at once.
    if (this.options.path === undefined) socket.setNoDelay(true);
    const conn = new InboundConnection(this, socket);
    this.connections.add(conn);
    socket.once('close', () => this.connections.delete(conn));
  }

  /** @internal */
  count(what: Counter): void {
    this.counters[what]++;
  }

  /** @internal Checks that apply to every request, then hands it to the subclass. */
  dispatch(conn: InboundConnection, header: RequestHeader, frame: Buffer, payloadStart: number): void {
    this.counters.requests++;
    if (conn.isDraining || this.closing) {
      return conn.fail(header.id, new UnavailableError(`${this.address} is shutting down; call another instance`, { maybeExecuted: false }));
    }
    if (conn.inFlight >= this.maxInFlight) {
      this.counters.overloaded++;
      return conn.fail(
        header.id,
        new UnavailableError(`${this.address} refused ${header.service}.${header.method}: ${this.maxInFlight} calls already in flight on this connection`, {
          maybeExecuted: false,
        }),
      );
    }
    if (header.deadline <= Date.now()) {
      return conn.fail(header.id, new TimeoutError(`${header.service}.${header.method} arrived after its deadline`, { deadline: new Date(header.deadline).toISOString() }));
    }
    this.onRequest(conn, header, frame, payloadStart);
  }
}

/** One accepted socket: reads frames, hands requests on, writes answers as they come. */
export class InboundConnection implements FrameSink {
  private readonly decoder: FrameDecoder;
  readonly remote: string;
  private inflight = 0;
  private draining = false;
  private paused = false;
  private readonly writer: BatchedWriter;
  private closed = false;
  private onIdle: (() => void) | undefined;
  /** Present on a deployment's internal plane until the peer has proven itself. */
  private readonly handshake: ServerHandshake | undefined;

  constructor(
    private readonly listener: RpcListener,
    private readonly socket: Socket,
  ) {
    this.remote = `${socket.remoteAddress}:${socket.remotePort}`;
    this.handshake = listener.plane ? new ServerHandshake(listener.plane) : undefined;
    if (this.handshake) {
      // A peer that never completes the handshake holds a connection for nothing.
      socket.setTimeout(5_000, () => {
        if (!this.handshake!.peer) this.refuse('no handshake within 5 s');
      });
    }
    this.writer = new BatchedWriter(socket);
    this.decoder = new FrameDecoder(
      (header, frame, payloadStart) => this.onFrame(header, frame, payloadStart),
      (reason) => this.protocolError(reason),
      listener.limits,
    );
    socket.on('data', (chunk: Buffer) => {
      // Nothing a peer sends may throw out of here: a bug in handling one frame closes
      // this connection, never the process.
      try {
        this.decoder.push(chunk);
      } catch (err) {
        listener.log.error({ err, remote: this.remote }, 'rpc connection failed while handling a frame');
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
    socket.on('error', (err) => listener.log.debug({ err, remote: this.remote }, 'rpc connection error'));
    socket.on('close', () => {
      this.closed = true;
      this.idle();
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** A TLS connection's socket (the peer's certificate), for listeners that use TLS. */
  get tlsSocket(): TLSSocket | undefined {
    return 'encrypted' in this.socket ? (this.socket as TLSSocket) : undefined;
  }

  /** The process on the other end, as its credential proved it (undefined off the internal plane). */
  get peer(): CredentialClaims | undefined {
    return this.handshake?.peer;
  }

  /** Told to go away: takes no new calls. */
  get isDraining(): boolean {
    return this.draining;
  }

  /** Calls taken (`begin`) and not yet answered (`end`). */
  get inFlight(): number {
    return this.inflight;
  }

  get limits(): FrameLimits {
    return this.listener.limits;
  }

  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }

  /** A request was taken: it counts against the in-flight limit until `end()`. */
  begin(): void {
    this.inflight++;
  }

  /** The request's answer was written: a draining connection may end once its last call answered. */
  end(): void {
    this.inflight--;
    if (this.draining) this.idle();
  }

  /** Resolves once this connection is closed, after its calls in flight answered. */
  goAway(reason: string): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.draining = true;
    this.send({ kind: 'goaway', id: 0, reason });
    return new Promise((resolve) => {
      this.onIdle = resolve;
      this.idle();
    });
  }

  /** Writes one frame's bytes; a peer that does not read its answers stops being read from. */
  write(bytes: Buffer): void {
    const socket = this.socket;
    if (this.closed || socket.writableEnded) return;
    this.writer.write(bytes);
    if (!this.paused && socket.writableLength > Math.max(this.listener.highWaterMark, socket.writableHighWaterMark)) {
      // The peer is not reading its answers: stop reading its requests until it catches up.
      this.paused = true;
      this.listener.count('pauses');
      socket.pause();
    }
  }

  /** Answers call `id` with an error. */
  fail(id: number, err: EvolithError): void {
    if (this.closed) return;
    const limits = this.listener.limits;
    try {
      writeFrame(this, { kind: 'error', id }, err.toJSON(), limits);
    } catch {
      // Details that cannot be encoded (or are too large) are dropped; code and message survive.
      const message = err.message.slice(0, Math.min(10_000, limits.maxFrameBytes >> 3));
      try {
        writeFrame(this, { kind: 'error', id }, { code: err.code, message, httpStatus: err.httpStatus, origin: err.origin }, limits);
      } catch (last) {
        // Not even that fits: the caller would wait for an answer that cannot come.
        this.listener.log.error({ err: last, remote: this.remote, code: err.code }, 'rpc error answer cannot be encoded; closing the connection');
        this.destroy();
      }
    }
  }

  /** The peer broke the protocol: log why and close this connection only. */
  protocolError(reason: string): void {
    if (this.closed) return;
    this.listener.count('protocolErrors');
    this.listener.log.warn({ remote: this.remote, reason }, 'rpc connection closed: protocol error');
    this.destroy();
  }

  private send(header: FrameHeader): void {
    if (!this.closed) writeFrame(this, header, undefined, this.listener.limits);
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

  /** The peer did not prove itself: log why, tell it, and close. */
  refuse(reason: string): void {
    if (this.closed) return;
    this.listener.count('refused');
    this.listener.log.warn({ remote: this.remote, reason }, 'rpc connection refused');
    this.send({ kind: 'goaway', id: 0, reason: `${REFUSED_REASON}${reason}` });
    this.closed = true;
    this.socket.end();
    this.socket.setTimeout(1_000, () => this.socket.destroy());
  }

  private onHandshake(header: HandshakeHeader): void {
    if (!this.handshake) return this.refuse('this listener belongs to no deployment and takes no credentials');
    try {
      const answer = this.handshake.step(header);
      if (answer) this.send(answer);
      const peer = this.handshake.peer;
      if (peer) {
        const refused = this.listener.admit?.(peer);
        if (refused !== undefined) return this.refuse(`${peer.sub}: ${refused}`);
        this.socket.setTimeout(0);
      }
    } catch (err) {
      this.refuse((err as Error).message);
    }
  }

  private onFrame(header: FrameHeader, frame: Buffer, payloadStart: number): void {
    // A refused or closed connection runs nothing more, whatever is still in its buffer.
    if (this.closed) return;
    if (header.kind === 'hello' || header.kind === 'welcome' || header.kind === 'proof') return this.onHandshake(header);
    if (this.handshake && !this.handshake.peer) {
      // A caller that did not prove itself learns why, in the answer to its call, before the hang-up.
      if (header.kind === 'request') this.fail(header.id, new UnauthenticatedError('this listener takes calls only from processes of its deployment that prove who they are'));
      return this.refuse(`a ${header.kind} frame before the peer proved itself`);
    }
    switch (header.kind) {
      case 'request':
        return this.listener.dispatch(this, header, frame, payloadStart);
      case 'ping':
        return this.send({ kind: 'pong', id: header.id });
      case 'goaway':
        return; // a client that goes away just stops sending and hangs up
      default:
        return this.protocolError(`a client sent a ${header.kind} frame`);
    }
  }
}
