import type { Logger } from 'pino';
import { ConfigError, NotSerializableError, TimeoutError, toEvolithError, UnavailableError, type EvolithError } from '../kernel/errors.js';
import { forwardFrame, swapId, type AnswerHeader, type FrameLimits, type FrameSink, type RequestHeader } from './frame.js';
import { RpcListener, type InboundConnection, type ListenerOptions, type ListenerStats } from './listener.js';
import { Exchange, Upstreams, type UpstreamOptions } from './upstream.js';

/**
 * Picks the upstream "host:port" for a request from its header (and the connection it came on:
 * its proven peer); undefined when none can take it. A thrown EvolithError is the answer.
 */
export type ForwardRoute = (header: RequestHeader, from: InboundConnection) => string | undefined;

/** How a forwarded call ended: answered (ok or error) upstream, or refused here with a code. */
export type ForwardOutcome = 'ok' | 'error' | string;

export interface ForwarderOptions extends ListenerOptions {
  route: ForwardRoute;
  log: Logger;
  /** The connections to upstream servers (pool size, timeouts, limits). */
  upstream?: UpstreamOptions;
  /** Told of every call once answered (telemetry): its header, its peer, the outcome and when it arrived (performance.now()). */
  observe?: (header: RequestHeader, from: InboundConnection, outcome: ForwardOutcome, startedAt: number) => void;
}

export interface ForwarderStats extends ListenerStats {
  /** Requests sent upstream. */
  forwarded: number;
  /** Requests answered here with EVOLITH_UNAVAILABLE: no route, upstream unreachable or gone. */
  unavailable: number;
  /** Requests answered here with EVOLITH_TIMEOUT: the upstream did not answer before the deadline. */
  timedOut: number;
}

/**
 * A TCP proxy for Evolith RPC: accepts connections as an RPC server would, routes each request
 * by its header to an upstream server, and relays the answer. It reads headers only: payloads
 * (inputs, outputs, errors) pass through as the bytes they are, never decoded. Ids are mapped
 * per upstream connection, so any number of clients share a few upstream connections.
 *
 * On its own it answers: EVOLITH_UNAVAILABLE when no route or upstream can take a call
 * (`maybeExecuted` false when the request surely never reached a server, true once it may
 * have), EVOLITH_TIMEOUT when the upstream does not answer before the call's deadline, and
 * pings. `close()` sends goaway downstream, lets calls in flight answer, then drains upstream.
 *
 * It does not retry, balance beyond `route`, or cancel upstream work whose caller went away
 * (the protocol has no cancel frame); the answer is then dropped.
 */
export class Forwarder extends RpcListener {
  private readonly route: ForwardRoute;
  private readonly upstreams: Upstreams;
  private readonly forwardCounters = { forwarded: 0, unavailable: 0, timedOut: 0 };
  /** @internal */ readonly observe: ForwarderOptions['observe'];

  constructor(options: ForwarderOptions) {
    super(options, 'rpc-forwarder');
    this.route = options.route;
    this.observe = options.observe;
    this.upstreams = new Upstreams(options.upstream ?? {}, this.log);
  }

  override get stats(): ForwarderStats {
    return { ...super.stats, ...this.forwardCounters };
  }

  /** Upstream connections open now, to `address` or in all. */
  upstreamConnections(address?: string): number {
    return this.upstreams.connectionCount(address);
  }

  protected override async afterClose(): Promise<void> {
    await this.upstreams.close();
  }

  protected onRequest(conn: InboundConnection, header: RequestHeader, frame: Buffer, payloadStart: number): void {
    let address: string | undefined;
    try {
      address = this.route(header, conn);
    } catch (err) {
      return this.refuse(conn, header, toEvolithError(err));
    }
    if (address === undefined) return this.refuse(conn, header, new UnavailableError(`no route for ${label(header)}`, { maybeExecuted: false }));
    if (this.upstreams.isClosed) return this.refuse(conn, header, new UnavailableError(`the forwarder is closing; ${label(header)} was not sent`, { maybeExecuted: false }));
    const upstream = this.upstreams.acquire(address);
    if (upstream instanceof ConfigError) return this.refuse(conn, header, new ConfigError(`route for ${label(header)}: ${upstream.message}`));
    if (upstream.queuedBytes > this.upstreams.maxQueuedBytes) {
      return this.refuse(
        conn,
        header,
        new UnavailableError(`${address} is not reading its requests (${upstream.queuedBytes} bytes waiting); ${label(header)} was not sent`, { address, maybeExecuted: false }),
      );
    }
    const id = upstream.nextId();
    if (!relay(upstream, upstream.limits, frame, id, header, payloadStart)) {
      return this.refuse(conn, header, new NotSerializableError(`${label(header)} cannot be forwarded: its frame is larger than ${address} accepts`));
    }
    this.forwardCounters.forwarded++;
    conn.begin();
    upstream.start(new ForwardedCall(this, conn, header, this.observe ? performance.now() : 0), id);
  }

  /** @internal Answers a call here instead of upstream. */
  refuse(conn: InboundConnection, header: RequestHeader, err: EvolithError, startedAt?: number): void {
    if (err instanceof TimeoutError) this.forwardCounters.timedOut++;
    else if (err instanceof UnavailableError) this.forwardCounters.unavailable++;
    conn.fail(header.id, err);
    this.observe?.(header, conn, err.code, startedAt ?? performance.now());
  }
}

const label = (h: RequestHeader) => `${h.service}.${h.method}`;

/**
 * Writes a received frame to `sink` as call `id`. The common case costs no encoding and no
 * copy: the id is patched in place and the frame passed on whole. A sender that encoded its id
 * some other way gets its header encoded anew, in front of the untouched payload bytes. False
 * when the frame breaks the sink's limits.
 */
function relay(sink: FrameSink, limits: FrameLimits, frame: Buffer, id: number, header: RequestHeader | AnswerHeader, payloadStart: number): boolean {
  if (frame.length - 4 <= limits.maxFrameBytes && swapId(frame, id)) {
    sink.write(frame);
    return true;
  }
  try {
    forwardFrame(sink, { ...header, id }, frame, payloadStart, limits);
    return true;
  } catch {
    return false;
  }
}

/** A downstream call in flight upstream: relays the answer, or answers itself on failure or timeout. */
class ForwardedCall extends Exchange {
  constructor(
    private readonly forwarder: Forwarder,
    private readonly downstream: InboundConnection,
    private readonly request: RequestHeader,
    private readonly startedAt: number,
  ) {
    super();
    this.deadline = request.deadline;
  }

  get label(): string {
    return label(this.request);
  }

  answer(header: AnswerHeader, frame: Buffer, payloadStart: number): string | undefined {
    const downstream = this.downstream;
    if (!downstream.isClosed && !relay(downstream, downstream.limits, frame, this.request.id, header, payloadStart)) {
      downstream.fail(this.request.id, new NotSerializableError(`the answer of ${this.label} is larger than a frame to this caller may be`));
    }
    downstream.end();
    this.forwarder.observe?.(this.request, downstream, header.kind, this.startedAt);
    return undefined;
  }

  fail(err: UnavailableError): void {
    this.forwarder.refuse(this.downstream, this.request, err, this.startedAt);
    this.downstream.end();
  }

  expire(): void {
    this.conn?.forget(this.id);
    this.forwarder.refuse(
      this.downstream,
      this.request,
      new TimeoutError(`${this.label} at ${this.conn?.address} did not answer before its deadline`, { deadline: new Date(this.deadline).toISOString() }),
      this.startedAt,
    );
    this.downstream.end();
  }
}
