import { connect, type Socket } from 'node:net';
import pino, { type Logger } from 'pino';
import type { MethodDef } from '../contract/define.js';
import { DeadlineEntry, unwatch, watch, withDeadline } from '../kernel/deadline.js';
import { ConfigError, deserializeError, NotSerializableError, TimeoutError, UnavailableError } from '../kernel/errors.js';
import type { CallMeta } from '../kernel/plugins.js';
import { formatTraceparent } from '../kernel/trace.js';
import { BatchedWriter } from './batched-writer.js';
import { DEFAULT_MAX_FRAME_BYTES, encodeFrame, FrameDecoder, FrameEncodeError, parseAddress, type Message } from './frame.js';

export interface TcpTransportOptions {
  /** The "host:port" addresses serving a service (later filled by discovery and a balancer). */
  addressesFor: (service: string) => readonly string[];
  log?: Logger;
  /** Connections kept per address; default 2 (the second opens only under load, see `spilloverAt`). */
  maxConnectionsPerAddress?: number;
  /** Open another connection to an address once every open one carries this many calls; default 128. */
  spilloverAt?: number;
  /** Largest frame sent or accepted, in bytes; default 4 MiB. */
  maxFrameBytes?: number;
  /** A connection not established within this time is abandoned; default 3 s. */
  connectTimeoutMs?: number;
  /** How long `close()` lets calls in flight finish; default 5 s. */
  closeDrainMs?: number;
  /**
   * Bytes of requests a connection may hold unsent (the server is not reading) before new calls
   * on it are refused with EVOLITH_UNAVAILABLE instead of piling up in memory; default 8 MiB.
   */
  maxQueuedBytes?: number;
}

/**
 * Client half of Evolith's TCP RPC. Calls to one address share a small pool of persistent,
 * multiplexed connections; a dropped connection fails its calls in flight with
 * EVOLITH_UNAVAILABLE and the next call opens a new one. Deadlines are enforced here too, so a
 * caller is answered on time even when the server or the network is not.
 *
 * An UnavailableError carries `details.maybeExecuted`: false when the request provably never
 * reached a server (not connected, refused, shutting down), so even a non-idempotent call may
 * be retried elsewhere.
 */
export class TcpTransport {
  readonly name = 'tcp';
  private readonly pools = new Map<string, AddressPool>();
  private readonly cursor = new Map<string, number>();
  private closing: Promise<void> | undefined;
  /** @internal */ readonly log: Logger;
  /** @internal */ readonly maxFrameBytes: number;
  /** @internal */ readonly connectTimeoutMs: number;
  /** @internal */ readonly maxQueuedBytes: number;
  private readonly maxConnections: number;
  private readonly spilloverAt: number;

  constructor(private readonly options: TcpTransportOptions) {
    this.log = (options.log ?? pino({ level: 'warn' })).child({ component: 'rpc-client' });
    this.maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 3_000;
    this.maxQueuedBytes = options.maxQueuedBytes ?? 8 * 1024 * 1024;
    this.maxConnections = Math.max(1, options.maxConnectionsPerAddress ?? 2);
    this.spilloverAt = options.spilloverAt ?? 128;
  }

  /** Calls an instance of the method's service: the first address `addressesFor` gives, or the next in turn when it gives several. */
  invoke(method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown> {
    const addresses = this.options.addressesFor(method.service);
    if (addresses.length === 0) return Promise.reject(new UnavailableError(`no instance of ${method.service} is known`, { maybeExecuted: false }));
    let address = addresses[0]!;
    if (addresses.length > 1) {
      const n = this.cursor.get(method.service) ?? 0;
      this.cursor.set(method.service, n + 1);
      address = addresses[n % addresses.length]!;
    }
    return this.send(address, method, input, meta);
  }

  /** Calls the instance at `address` ("host:port"), for callers that pick endpoints themselves (balancers). */
  send(address: string, method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown> {
    if (this.closing) return Promise.reject(new UnavailableError(`cannot call ${method.fullName}: the TCP transport is closed`, { maybeExecuted: false }));
    if (meta.deadline <= Date.now()) return Promise.reject(new TimeoutError(`no time left to call ${method.fullName}: its deadline has passed`));
    let pool = this.pools.get(address);
    if (!pool) {
      const parsed = parseAddress(address);
      if (!parsed) return Promise.reject(new ConfigError(`"${address}" (an instance of ${method.service}) is not a host:port address`));
      this.pools.set(address, (pool = new AddressPool(this, address, parsed.host, parsed.port, this.maxConnections, this.spilloverAt)));
    }
    const conn = pool.acquire();
    if (conn.queuedBytes > this.maxQueuedBytes) {
      return Promise.reject(
        new UnavailableError(`${address} is not reading its requests (${conn.queuedBytes} bytes waiting); ${method.fullName} was not sent`, {
          address,
          maybeExecuted: false,
        }),
      );
    }
    const id = conn.nextId();
    let frame: Buffer;
    try {
      frame = encodeFrame(
        {
          kind: 'request',
          id,
          service: method.service,
          method: method.name,
          deadline: meta.deadline,
          traceparent: formatTraceparent(meta.trace),
          caller: meta.caller,
          from: meta.from,
          input,
        },
        this.maxFrameBytes,
      );
    } catch (err) {
      const why = err instanceof FrameEncodeError ? err.message : String(err);
      return Promise.reject(new NotSerializableError(`the input of ${method.fullName} cannot travel over RPC: ${why}`));
    }
    return new Promise((resolve, reject) => conn.call(new PendingCall(conn, id, method, meta.deadline, resolve, reject), frame));
  }

  /** Round-trip time to `address` in milliseconds (a health probe; opens a connection if needed). */
  ping(address: string, timeoutMs = 1_000): Promise<number> {
    const parsed = parseAddress(address);
    if (!parsed) return Promise.reject(new ConfigError(`"${address}" is not a host:port address`));
    let pool = this.pools.get(address);
    if (!pool) this.pools.set(address, (pool = new AddressPool(this, address, parsed.host, parsed.port, this.maxConnections, this.spilloverAt)));
    const conn = pool.acquire();
    return withDeadline(conn.ping(), Date.now() + timeoutMs, `ping ${address}`);
  }

  /** @internal A pool whose last connection closed is forgotten, so addresses that come and go leave nothing behind. */
  dropPool(pool: AddressPool): void {
    if (this.pools.get(pool.address) === pool) this.pools.delete(pool.address);
  }

  /** Connections open now, by address (for status pages and tests). */
  connectionCount(address?: string): number {
    if (address !== undefined) return this.pools.get(address)?.size ?? 0;
    let n = 0;
    for (const p of this.pools.values()) n += p.size;
    return n;
  }

  /** Stops new calls, lets calls in flight answer (up to `closeDrainMs`), then closes every connection. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const pools = [...this.pools.values()];
      this.pools.clear();
      await Promise.all(pools.map((p) => p.close(this.options.closeDrainMs ?? 5_000)));
    })();
    return this.closing;
  }
}

/** The connections to one address. */
class AddressPool {
  private readonly connections: Connection[] = [];

  constructor(
    private readonly transport: TcpTransport,
    readonly address: string,
    private readonly host: string,
    private readonly port: number,
    private readonly max: number,
    private readonly spilloverAt: number,
  ) {}

  get size(): number {
    return this.connections.length;
  }

  /** The least busy usable connection, opening one when there is none or all are busy. */
  acquire(): Connection {
    let best: Connection | undefined;
    for (const c of this.connections) if (!best || c.load < best.load) best = c;
    if (best && (best.load < this.spilloverAt || this.connections.length >= this.max)) return best;
    const conn = new Connection(this.transport, this, this.host, this.port);
    this.connections.push(conn);
    return conn;
  }

  /** A connection that takes no new calls (closed, or told to go away) leaves the pool. */
  remove(conn: Connection): void {
    const i = this.connections.indexOf(conn);
    if (i >= 0) this.connections.splice(i, 1);
    if (this.connections.length === 0) this.transport.dropPool(this);
  }

  close(drainMs: number): Promise<void> {
    const all = this.connections.splice(0);
    return Promise.all(all.map((c) => c.drain(drainMs))).then(() => undefined);
  }
}

/**
 * One call waiting for its answer. It is its own entry in the kernel's deadline list (the
 * mechanism `withDeadline` uses), so a call costs one promise rather than two, and no timer.
 */
class PendingCall extends DeadlineEntry {
  constructor(
    private readonly conn: Connection,
    readonly id: number,
    readonly method: MethodDef,
    deadline: number,
    private readonly resolve: (v: unknown) => void,
    private readonly reject: (e: unknown) => void,
  ) {
    super();
    this.deadline = deadline;
  }

  settle(m: Message & { kind: 'response' }): void {
    if (!unwatch(this)) return;
    if (m.ok) this.resolve(m.output);
    else this.reject(deserializeError(m.error));
  }

  fail(err: Error): void {
    if (unwatch(this)) this.reject(err);
  }

  expire(): void {
    this.conn.forget(this.id);
    this.reject(
      new TimeoutError(`${this.method.fullName} at ${this.conn.address} did not answer before its deadline`, {
        deadline: new Date(this.deadline).toISOString(),
      }),
    );
  }
}

class Connection {
  readonly address: string;
  private readonly socket: Socket;
  private readonly pending = new Map<number, PendingCall>();
  private readonly pings = new Map<number, { started: number; resolve: (ms: number) => void; reject: (e: Error) => void }>();
  private readonly decoder: FrameDecoder;
  private id = 0;
  private connected = false;
  private closed = false;
  private draining = false;
  private readonly writer: BatchedWriter;
  private lastError: Error | undefined;
  private onClosed: (() => void) | undefined;

  constructor(
    private readonly transport: TcpTransport,
    private readonly pool: AddressPool,
    host: string,
    port: number,
  ) {
    this.address = pool.address;
    this.decoder = new FrameDecoder(
      (m) => this.onMessage(m),
      (reason) => this.protocolError(reason),
      transport.maxFrameBytes,
    );
    const socket = connect({ host, port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 30_000 });
    this.socket = socket;
    this.writer = new BatchedWriter(socket);
    const connectTimer = setTimeout(() => {
      if (!this.connected) socket.destroy(new Error(`no connection within ${transport.connectTimeoutMs} ms`));
    }, transport.connectTimeoutMs);
    connectTimer.unref();
    socket.once('connect', () => {
      this.connected = true;
      clearTimeout(connectTimer);
    });
    socket.on('data', (chunk: Buffer) => {
      try {
        this.decoder.push(chunk);
      } catch (err) {
        transport.log.error({ err, address: this.address }, 'rpc client failed while handling a frame');
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

  /** Request bytes written but not yet taken by the kernel. */
  get queuedBytes(): number {
    return this.socket.writableLength;
  }

  nextId(): number {
    // Ids only need to be unique among this connection's calls in flight.
    do this.id = (this.id + 1) >>> 0;
    while (this.pending.has(this.id));
    return this.id;
  }

  call(pending: PendingCall, frame: Buffer): void {
    if (this.closed) {
      pending.fail(this.unavailable(pending.method));
      return;
    }
    this.pending.set(pending.id, pending);
    watch(pending);
    this.write(frame);
  }

  ping(): Promise<number> {
    if (this.closed) return Promise.reject(new UnavailableError(`connection to ${this.address} is closed`));
    const id = this.nextId();
    return new Promise((resolve, reject) => {
      this.pings.set(id, { started: performance.now(), resolve, reject });
      this.write(encodeFrame({ kind: 'ping', id }));
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

  private write(frame: Buffer): void {
    this.writer.write(frame);
  }

  private onMessage(m: Message): void {
    switch (m.kind) {
      case 'response': {
        const call = this.pending.get(m.id);
        if (!call) return; // its caller gave up already
        this.pending.delete(m.id);
        call.settle(m);
        if (this.draining) this.endIfIdle();
        return;
      }
      case 'pong': {
        const p = this.pings.get(m.id);
        if (!p) return;
        this.pings.delete(m.id);
        p.resolve(performance.now() - p.started);
        if (this.draining) this.endIfIdle();
        return;
      }
      case 'goaway':
        this.transport.log.debug({ address: this.address, reason: m.reason }, 'rpc server asked to go away');
        this.draining = true;
        this.pool.remove(this);
        this.endIfIdle();
        return;
      default:
        this.protocolError(`the server sent a ${m.kind}`);
    }
  }

  private protocolError(reason: string): void {
    if (this.closed) return;
    this.transport.log.warn({ address: this.address, reason }, 'rpc connection closed: protocol error');
    this.lastError = new Error(`protocol error: ${reason}`);
    this.socket.destroy();
  }

  private unavailable(method: MethodDef): UnavailableError {
    const why = this.lastError ? `: ${(this.lastError as NodeJS.ErrnoException).code ?? this.lastError.message}` : '';
    return this.connected
      ? new UnavailableError(`connection to ${this.address} closed before ${method.fullName} answered${why}`, { address: this.address, maybeExecuted: true })
      : new UnavailableError(`cannot connect to ${this.address} for ${method.fullName}${why}`, { address: this.address, maybeExecuted: false });
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.pool.remove(this);
    if (this.pending.size > 0) {
      this.transport.log.debug({ address: this.address, pending: this.pending.size, err: this.lastError }, 'rpc connection dropped with calls in flight');
    }
    const calls = [...this.pending.values()];
    this.pending.clear();
    for (const call of calls) call.fail(this.unavailable(call.method));
    for (const p of this.pings.values()) p.reject(new UnavailableError(`connection to ${this.address} closed`));
    this.pings.clear();
    this.onClosed?.();
  }
}
