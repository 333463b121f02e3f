import { connect, type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { CredentialClaims } from '../auth/credentials.js';
import type { InternalPlane } from '../auth/internal-plane.js';
import { DeadlineEntry, unwatch, watch } from '../kernel/deadline.js';
import { ConfigError, UnavailableError } from '../kernel/errors.js';
import { BatchedWriter } from './batched-writer.js';
import { FrameDecoder, frameLimits, parseAddress, REFUSED_REASON, writeFrame, type AnswerHeader, type FrameHeader, type FrameLimits, type FrameSink } from './frame.js';
import { ClientHandshake } from './handshake.js';

/** How the connections to upstream servers behave; shared by the TCP client and the forwarder. */
export interface UpstreamOptions {
  /** Connections kept per address; default 2 (the second opens only under load, see `spilloverAt`). */
  maxConnectionsPerAddress?: number;
  /** Open another connection to an address once every open one carries this many calls; default 128. */
  spilloverAt?: number;
  /** Largest frame sent or accepted, in bytes; default 4 MiB. */
  maxFrameBytes?: number;
  /** Largest frame header sent or accepted, in bytes; default 16 KiB. */
  maxHeaderBytes?: number;
  /** A connection not established within this time is abandoned; default 3 s. */
  connectTimeoutMs?: number;
  /** How long `close()` lets calls in flight finish; default 5 s. */
  closeDrainMs?: number;
  /** Calls one connection carries before it takes no more and closes once they answered (0: no limit, the default). */
  maxRequestsPerConnection?: number;
  /**
   * Bytes of requests a connection may hold unsent (the server is not reading) before new calls
   * on it are refused with EVOLITH_UNAVAILABLE instead of piling up in memory; default 8 MiB.
   */
  maxQueuedBytes?: number;
  /**
   * This process's credentials on a deployment's internal plane: each connection then opens
   * with the handshake (see handshake.ts) and sends no call before the server proved itself.
   */
  plane?: InternalPlane;
  /**
   * Opens the socket to an address (default: plain TCP, or a Unix domain socket for
   * `unix:<path>`). A connector that returns a TLS socket makes every connection wait for its
   * TLS handshake (the mesh's mutual TLS): a call is counted as sent only once it completed.
   */
  connect?: (target: UpstreamTarget) => Socket | TLSSocket;
}

/** Where a connection goes: a TCP host and port, or a Unix domain socket. */
export type UpstreamTarget = { readonly address: string; readonly host: string; readonly port: number; readonly path?: undefined } | { readonly address: string; readonly path: string };

/** Plain TCP, or a Unix domain socket. */
export function connectPlain(target: UpstreamTarget): Socket {
  if (target.path !== undefined) return connect({ path: target.path });
  return connect({ host: target.host, port: target.port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 });
}

/** "host:port", "[::1]:port" or "unix:<absolute path>"; undefined when it is none of them. */
export function parseTarget(address: string): UpstreamTarget | undefined {
  if (address.startsWith('unix:')) {
    const path = address.slice(5);
    return path.startsWith('/') ? { address, path } : undefined;
  }
  const parsed = parseAddress(address);
  return parsed && { address, ...parsed };
}

/**
 * One call sent upstream and waiting for its answer. It is its own entry in the kernel's
 * deadline list (the mechanism `withDeadline` uses): no timer per call. The connection calls
 * exactly one of `answer`, `fail` or (through the deadline list) `expire`.
 */
export abstract class Exchange extends DeadlineEntry {
  /** The call's id on its upstream connection (set by `UpstreamConnection.start`). */
  id = 0;
  /** The connection carrying the call, once started. */
  conn: UpstreamConnection | undefined = undefined;

  /** "service.method", for error messages. */
  abstract readonly label: string;

  /**
   * The answer arrived; `frame` holds it whole, its payload from `payloadStart`. Returns a
   * reason when the answer breaks the protocol (the connection then closes), else undefined.
   */
  abstract answer(header: AnswerHeader, frame: Buffer, payloadStart: number): string | undefined;

  /** The call cannot be answered: its connection failed or closed. */
  abstract fail(err: UnavailableError): void;
}

/**
 * The connections to upstream servers, pooled per address: calls to one address share a few
 * persistent, multiplexed connections; a dropped connection fails its calls in flight with
 * EVOLITH_UNAVAILABLE and the next call opens a new one.
 *
 * An UnavailableError carries `details.maybeExecuted`: false when the request provably never
 * reached a server (not connected, refused, shutting down), so even a non-idempotent call may
 * be retried elsewhere.
 */
export class Upstreams {
  private readonly pools = new Map<string, AddressPool>();
  private closing: Promise<void> | undefined;
  /** @internal */ readonly log: Logger;
  /** @internal */ readonly limits: FrameLimits;
  /** @internal */ readonly connectTimeoutMs: number;
  readonly maxQueuedBytes: number;
  private readonly maxConnections: number;
  private readonly spilloverAt: number;
  private readonly closeDrainMs: number;
  /** @internal */ readonly maxRequestsPerConnection: number;
  readonly plane: InternalPlane | undefined;
  /** @internal */ readonly connect: (target: UpstreamTarget) => Socket | TLSSocket;

  constructor(options: UpstreamOptions, log: Logger) {
    this.log = log;
    this.plane = options.plane;
    this.connect = options.connect ?? connectPlain;
    this.limits = frameLimits(options.maxFrameBytes, options.maxHeaderBytes);
    this.connectTimeoutMs = options.connectTimeoutMs ?? 3_000;
    this.maxQueuedBytes = options.maxQueuedBytes ?? 8 * 1024 * 1024;
    this.maxConnections = Math.max(1, options.maxConnectionsPerAddress ?? 2);
    this.spilloverAt = options.spilloverAt ?? 128;
    this.closeDrainMs = options.closeDrainMs ?? 5_000;
    this.maxRequestsPerConnection = options.maxRequestsPerConnection ?? 0;
  }

  get isClosed(): boolean {
    return this.closing !== undefined;
  }

  /**
   * The least busy connection to `address` ("host:port" or "unix:<path>"), opening one when
   * there is none or all are busy. A ConfigError when the address is neither.
   */
  acquire(address: string): UpstreamConnection | ConfigError {
    let pool = this.pools.get(address);
    if (!pool) {
      const target = parseTarget(address);
      if (!target) return new ConfigError(`"${address}" is not a host:port address`);
      this.pools.set(address, (pool = new AddressPool(this, target, this.maxConnections, this.spilloverAt)));
    }
    return pool.acquire();
  }

  /** @internal A pool whose last connection closed is forgotten, so addresses that come and go leave nothing behind. */
  dropPool(pool: AddressPool): void {
    if (this.pools.get(pool.address) === pool) this.pools.delete(pool.address);
  }

  /** Connections open now, to `address` or in all. */
  connectionCount(address?: string): number {
    if (address !== undefined) return this.pools.get(address)?.size ?? 0;
    let n = 0;
    for (const p of this.pools.values()) n += p.size;
    return n;
  }

  /** Lets calls in flight answer (up to `closeDrainMs`), then closes every connection. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const pools = [...this.pools.values()];
      this.pools.clear();
      await Promise.all(pools.map((p) => p.close(this.closeDrainMs)));
    })();
    return this.closing;
  }
}

/** The connections to one address. */
class AddressPool {
  private readonly connections: UpstreamConnection[] = [];

  readonly address: string;

  constructor(
    private readonly upstreams: Upstreams,
    private readonly target: UpstreamTarget,
    private readonly max: number,
    private readonly spilloverAt: number,
  ) {
    this.address = target.address;
  }

  get size(): number {
    return this.connections.length;
  }

  acquire(): UpstreamConnection {
    const list = this.connections;
    let best: UpstreamConnection | undefined;
    for (let i = 0; i < list.length; i++) if (!best || list[i]!.load < best.load) best = list[i];
    if (best && (best.load < this.spilloverAt || list.length >= this.max)) return best;
    const conn = new UpstreamConnection(this.upstreams, this, this.target);
    list.push(conn);
    return conn;
  }

  /** A connection that takes no new calls (closed, or told to go away) leaves the pool. */
  remove(conn: UpstreamConnection): void {
    const i = this.connections.indexOf(conn);
    if (i >= 0) this.connections.splice(i, 1);
    if (this.connections.length === 0) this.upstreams.dropPool(this);
  }

  close(drainMs: number): Promise<void> {
    const all = this.connections.splice(0);
    return Promise.all(all.map((c) => c.drain(drainMs))).then(() => undefined);
  }
}

/** One connection to an upstream server: many calls in flight, answers matched by id. */
export class UpstreamConnection implements FrameSink {
  readonly address: string;
  private readonly socket: Socket;
  private readonly pending = new Map<number, Exchange>();
  private readonly pings = new Map<number, { started: number; resolve: (ms: number) => void; reject: (e: Error) => void }>();
  private readonly decoder: FrameDecoder;
  private lastId = 0;
  private started = 0;
  private connected = false;
  private closed = false;
  private draining = false;
  private readonly writer: BatchedWriter;
  private lastError: Error | undefined;
  /** The server refused this process after the handshake (its admission rule): it ran nothing sent here. */
  private refused = false;
  private onClosed: (() => void) | undefined;
  /** On a deployment's internal plane: the handshake, and what waits for it to complete. */
  private readonly handshake: ClientHandshake | undefined;
  private ready: boolean;
  private backlog: Buffer[] = [];
  private backlogBytes = 0;

  constructor(
    private readonly upstreams: Upstreams,
    private readonly pool: AddressPool,
    target: UpstreamTarget,
  ) {
    this.address = pool.address;
    this.decoder = new FrameDecoder(
      (header, frame, payloadStart) => this.onFrame(header, frame, payloadStart),
      (reason) => this.protocolError(reason),
      upstreams.limits,
    );
    const socket = upstreams.connect(target);
    this.socket = socket;
    this.writer = new BatchedWriter(socket);
    this.handshake = upstreams.plane ? new ClientHandshake(upstreams.plane) : undefined;
    this.ready = this.handshake === undefined;
    if (this.handshake) writeFrame(this.writer, this.handshake.hello(), undefined, upstreams.limits);
    const connectTimer = setTimeout(() => {
      if (!this.connected) socket.destroy(new Error(`no connection within ${upstreams.connectTimeoutMs} ms`));
      else if (!this.ready) socket.destroy(new Error(`no handshake within ${upstreams.connectTimeoutMs} ms`));
    }, upstreams.connectTimeoutMs);
    connectTimer.unref();
    // Over TLS the connection is up once its handshake completed: until then nothing of a
    // call has reached the server, and a refusal means it may be sent elsewhere.
    socket.once('encrypted' in socket ? 'secureConnect' : 'connect', () => {
      this.connected = true;
      clearTimeout(connectTimer);
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        this.decoder.push(chunk);
      } catch (err) {
        upstreams.log.error({ err, address: this.address }, 'rpc client failed while handling a frame');
        socket.destroy();
      }
    });
    socket.on('end', () => {
      if (this.decoder.partial) this.protocolError('server closed the connection in the middle of a frame');
    });
    socket.on('error', (err) => {
      this.lastError = err;
    });
    socket.on('close', () => {
      clearTimeout(connectTimer);
      this.onClose();
    });
  }

  /** Calls in flight: how busy the connection is. */
  get load(): number {
    return this.pending.size;
  }

  /** Request bytes written but not yet taken by the kernel (or waiting for the handshake). */
  get queuedBytes(): number {
    return this.socket.writableLength + this.backlogBytes;
  }

  /** The server, as its credential proved it (undefined off the internal plane, or until it has). */
  get peer(): CredentialClaims | undefined {
    return this.handshake?.peer;
  }

  get limits(): FrameLimits {
    return this.upstreams.limits;
  }

  /** An id for the next call on this connection: unique among its calls in flight. */
  nextId(): number {
    do this.lastId = (this.lastId + 1) >>> 0;
    while (this.pending.has(this.lastId) || this.pings.has(this.lastId));
    return this.lastId;
  }

  /**
   * Tracks `exchange` as call `id`, whose request was just written to this connection: it
   * will be answered, failed, or expire at its deadline.
   */
  start(exchange: Exchange, id: number): void {
    exchange.id = id;
    exchange.conn = this;
    if (this.closed) {
      exchange.fail(this.unavailable(exchange.label));
      return;
    }
    this.pending.set(id, exchange);
    watch(exchange);
    const limit = this.upstreams.maxRequestsPerConnection;
    if (limit > 0 && ++this.started >= limit && !this.draining) {
      // Its share of calls carried: the next call opens a new connection; this one closes once idle.
      this.draining = true;
      this.pool.remove(this);
    }
  }

  /** Writes one frame's bytes (a request, typically); held back until the server proved itself. */
  write(bytes: Buffer): void {
    if (this.ready) {
      this.writer.write(bytes);
      return;
    }
    this.backlog.push(bytes);
    this.backlogBytes += bytes.length;
  }

  ping(): Promise<number> {
    if (this.closed) return Promise.reject(new UnavailableError(`connection to ${this.address} is closed`));
    const id = this.nextId();
    return new Promise((resolve, reject) => {
      this.pings.set(id, { started: performance.now(), resolve, reject });
      writeFrame(this, { kind: 'ping', id }, undefined, this.upstreams.limits);
    });
  }

  /** A call gave up (deadline): its answer, if it ever comes, is dropped. */
  forget(id: number): void {
    this.pending.delete(id);
    if (this.draining) this.endIfIdle();
  }

  /** Takes no new calls; closes once calls in flight answered (or after `ms`). */
  drain(ms: number): Promise<void> {
    this.draining = true;
    this.pool.remove(this);
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.onClosed = resolve;
      const t = setTimeout(() => this.socket.destroy(), ms);
      t.unref();
      this.endIfIdle();
    });
  }

  private endIfIdle(): void {
    if (this.pending.size === 0 && this.pings.size === 0 && !this.socket.writableEnded) this.socket.end();
  }

  private onWelcome(header: FrameHeader): void {
    if (!this.handshake || this.ready) return this.protocolError(`the server sent a ${header.kind} frame`);
    let proof: FrameHeader;
    try {
      proof = this.handshake.welcome(header as Parameters<ClientHandshake['welcome']>[0]);
    } catch (err) {
      this.upstreams.log.warn({ address: this.address, reason: (err as Error).message }, 'rpc server refused: it did not prove itself');
      this.lastError = err as Error;
      this.socket.destroy();
      return;
    }
    writeFrame(this.writer, proof, undefined, this.upstreams.limits);
    this.ready = true;
    const held = this.backlog;
    this.backlog = [];
    this.backlogBytes = 0;
    for (const bytes of held) this.writer.write(bytes);
  }

  private onFrame(header: FrameHeader, frame: Buffer, payloadStart: number): void {
    if (!this.ready) {
      if (header.kind === 'welcome') return this.onWelcome(header);
      if (header.kind === 'goaway') {
        // The server refused the handshake; it says why.
        this.lastError = new Error(header.reason);
        this.socket.destroy();
        return;
      }
      return this.protocolError(`the server sent a ${header.kind} frame before proving itself`);
    }
    switch (header.kind) {
      case 'ok':
      case 'error': {
        const exchange = this.pending.get(header.id);
        if (!exchange) return; // its caller gave up already
        this.pending.delete(header.id);
        if (unwatch(exchange)) {
          const broken = exchange.answer(header, frame, payloadStart);
          if (broken !== undefined) return this.protocolError(broken);
        }
        if (this.draining) this.endIfIdle();
        return;
      }
      case 'pong': {
        const p = this.pings.get(header.id);
        if (!p) return;
        this.pings.delete(header.id);
        p.resolve(performance.now() - p.started);
        if (this.draining) this.endIfIdle();
        return;
      }
      case 'goaway':
        if (header.reason.startsWith(REFUSED_REASON)) {
          // Admission is checked once the client's proof arrives, after this side already sent
          // its calls: they were never run, and the reason is the caller's to read.
          this.upstreams.log.warn({ address: this.address, reason: header.reason }, 'rpc server refused this process');
          this.lastError = new Error(header.reason);
          this.refused = true;
          this.socket.destroy();
          return;
        }
        this.upstreams.log.debug({ address: this.address, reason: header.reason }, 'rpc server asked to go away');
        this.draining = true;
        this.pool.remove(this);
        this.endIfIdle();
        return;
      default:
        this.protocolError(`the server sent a ${header.kind} frame`);
    }
  }

  private protocolError(reason: string): void {
    if (this.closed) return;
    this.upstreams.log.warn({ address: this.address, reason }, 'rpc connection closed: protocol error');
    this.lastError = new Error(`protocol error: ${reason}`);
    this.socket.destroy();
  }

  /** Why a call on this connection cannot be answered, and whether it may have run. */
  unavailable(label: string): UnavailableError {
    const why = this.lastError ? `: ${(this.lastError as NodeJS.ErrnoException).code ?? this.lastError.message}` : '';
    if (this.refused) return new UnavailableError(`${this.address} did not run ${label}${why}`, { address: this.address, maybeExecuted: false });
    if (this.connected && !this.ready) {
      // Nothing of the call was sent: the handshake did not complete.
      return new UnavailableError(`${this.address} did not complete the handshake for ${label}${why}`, { address: this.address, maybeExecuted: false });
    }
    return this.connected
      ? new UnavailableError(`connection to ${this.address} closed before ${label} answered${why}`, { address: this.address, maybeExecuted: true })
      : new UnavailableError(`cannot connect to ${this.address} for ${label}${why}`, { address: this.address, maybeExecuted: false });
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.pool.remove(this);
    if (this.pending.size > 0) {
      this.upstreams.log.debug({ address: this.address, pending: this.pending.size, err: this.lastError }, 'rpc connection dropped with calls in flight');
    }
    const calls = [...this.pending.values()];
    this.pending.clear();
    for (const call of calls) if (unwatch(call)) call.fail(this.unavailable(call.label));
    for (const p of this.pings.values()) p.reject(new UnavailableError(`connection to ${this.address} closed`));
    this.pings.clear();
    this.onClosed?.();
  }
}
