import pino, { type Logger } from 'pino';
import type { MethodDef } from '../contract/define.js';
import { withDeadline } from '../kernel/deadline.js';
import { ConfigError, deserializeError, NotSerializableError, TimeoutError, UnauthenticatedError, UnavailableError } from '../kernel/errors.js';
import type { CallMeta } from '../kernel/plugins.js';
import { formatTraceparent } from '../kernel/trace.js';
import { decodePayload, FrameEncodeError, PayloadError, toSerializedError, writeFrame, type AnswerHeader } from './frame.js';
import { Exchange, Upstreams, type UpstreamOptions } from './upstream.js';

export interface TcpTransportOptions extends UpstreamOptions {
  log?: Logger;
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
  private readonly upstreams: Upstreams;

  constructor(options: TcpTransportOptions = {}) {
    this.upstreams = new Upstreams(options, (options.log ?? pino({ level: 'warn' })).child({ component: 'rpc-client' }));
  }

  /** Calls `method` on the instance at `address` ("host:port"); callers (balancers) pick the instance. */
  send(address: string, method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown> {
    const upstreams = this.upstreams;
    if (upstreams.isClosed) return Promise.reject(new UnavailableError(`cannot call ${method.fullName}: the TCP transport is closed`, { maybeExecuted: false }));
    if (meta.deadline <= Date.now()) return Promise.reject(new TimeoutError(`no time left to call ${method.fullName}: its deadline has passed`));
    // Who the call is for, in a form the callee can check: refused here when this process cannot vouch for it.
    const plane = upstreams.plane;
    let caller: string | undefined;
    if (plane) {
      try {
        caller = plane.callerField(meta);
      } catch (err) {
        return Promise.reject(err);
      }
    } else if (meta.caller || meta.from) {
      return Promise.reject(new UnauthenticatedError(`${method.fullName}: this process holds no internal credential to vouch for its caller`));
    }
    const conn = upstreams.acquire(address);
    if (conn instanceof ConfigError) return Promise.reject(new ConfigError(`${conn.message} (an instance of ${method.service})`));
    if (conn.queuedBytes > upstreams.maxQueuedBytes) {
      return Promise.reject(
        new UnavailableError(`${address} is not reading its requests (${conn.queuedBytes} bytes waiting); ${method.fullName} was not sent`, {
          address,
          maybeExecuted: false,
        }),
      );
    }
    const id = conn.nextId();
    try {
      writeFrame(
        conn,
        {
          kind: 'request',
          id,
          service: method.service,
          method: method.name,
          deadline: meta.deadline,
          traceparent: formatTraceparent(meta.trace),
          caller,
          from: meta.from,
          ...(meta.trace.baggage === undefined ? {} : { baggage: meta.trace.baggage }),
        },
        input,
        upstreams.limits,
      );
    } catch (err) {
      const why = err instanceof FrameEncodeError ? err.message : String(err);
      return Promise.reject(new NotSerializableError(`the input of ${method.fullName} cannot travel over RPC: ${why}`));
    }
    return new Promise((resolve, reject) => conn.start(new PendingCall(method, meta.deadline, resolve, reject), id));
  }

  /** Round-trip time to `address` in milliseconds (a health probe; opens a connection if needed). */
  ping(address: string, timeoutMs = 1_000): Promise<number> {
    const conn = this.upstreams.acquire(address);
    if (conn instanceof ConfigError) return Promise.reject(conn);
    return withDeadline(conn.ping(), Date.now() + timeoutMs, `ping ${address}`);
  }

  /** Connections open now, to `address` or in all (for status pages and tests). */
  connectionCount(address?: string): number {
    return this.upstreams.connectionCount(address);
  }

  /** Stops new calls, lets calls in flight answer (up to `closeDrainMs`), then closes every connection. */
  close(): Promise<void> {
    return this.upstreams.close();
  }
}

/** A call of this process waiting for its answer: decodes the payload and settles the caller's promise. */
class PendingCall extends Exchange {
  constructor(
    readonly method: MethodDef,
    deadline: number,
    private readonly resolve: (v: unknown) => void,
    private readonly reject: (e: unknown) => void,
  ) {
    super();
    this.deadline = deadline;
  }

  get label(): string {
    return this.method.fullName;
  }

  answer(header: AnswerHeader, frame: Buffer, payloadStart: number): string | undefined {
    let value: unknown;
    try {
      value = decodePayload(frame, payloadStart);
    } catch (err) {
      if (!(err instanceof PayloadError)) throw err;
      this.reject(this.broken(err.message));
      return err.message;
    }
    if (header.kind === 'ok') {
      this.resolve(value);
      return undefined;
    }
    const error = toSerializedError(value);
    if (typeof error === 'string') {
      this.reject(this.broken(error));
      return `malformed error answer: ${error}`;
    }
    this.reject(deserializeError(error));
    return undefined;
  }

  fail(err: UnavailableError): void {
    this.reject(err);
  }

  expire(): void {
    this.conn?.forget(this.id);
    this.reject(
      new TimeoutError(`${this.method.fullName} at ${this.conn?.address} did not answer before its deadline`, {
        deadline: new Date(this.deadline).toISOString(),
      }),
    );
  }

  /** The answer could not be read: the call may well have run. */
  private broken(reason: string): UnavailableError {
    return new UnavailableError(`${this.method.fullName} at ${this.conn?.address} answered with a broken frame: ${reason}`, {
      address: this.conn?.address,
      maybeExecuted: true,
    });
  }
}
