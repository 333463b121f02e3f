import type { Logger } from 'pino';
import type { MethodDef } from '../contract/define.js';
import { NotFoundError, NotSerializableError, toEvolithError, UnauthenticatedError } from '../kernel/errors.js';
import type { ServiceHost } from '../kernel/host.js';
import type { CallMeta, Identity } from '../kernel/plugins.js';
import { decodePayload, FrameEncodeError, PayloadError, writeFrame, type RequestHeader } from './frame.js';
import { RpcListener, type InboundConnection, type ListenerOptions, type ListenerStats } from './listener.js';
import { WireTrace } from './wire-trace.js';

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

export interface RpcServerOptions extends ListenerOptions {
  resolve: RpcResolver;
  log: Logger;
}

export type RpcServerStats = ListenerStats;

/**
 * The server end of Evolith's TCP RPC: frames (see frame.ts) carrying many calls per
 * connection, run concurrently and answered in any order.
 *
 * Trust: given a deployment's credentials (`plane`), every connection proves its peer first
 * (see handshake.ts), and the calling service and identity of each call are checked against
 * that proof; without them the server takes anonymous calls only. Either way it belongs on the
 * internal host (loopback unless the deployment spans a private network).
 */
export class RpcServer extends RpcListener {
  readonly resolve: RpcResolver;

  constructor(options: RpcServerOptions) {
    super(options, 'rpc-server');
    this.resolve = options.resolve;
  }

  /** Largest frame accepted or sent, in bytes. */
  get maxFrameBytes(): number {
    return this.limits.maxFrameBytes;
  }

  protected onRequest(conn: InboundConnection, header: RequestHeader, frame: Buffer, payloadStart: number): void {
    let target: RpcTarget | undefined;
    try {
      target = this.resolve(header.service, header.method);
    } catch (err) {
      return conn.fail(header.id, toEvolithError(err));
    }
    if (!target) return conn.fail(header.id, new NotFoundError(`${this.address} serves no method ${header.service}.${header.method}`));
    let input: unknown;
    try {
      input = decodePayload(frame, payloadStart);
    } catch (err) {
      if (err instanceof PayloadError) return conn.protocolError(err.message);
      throw err;
    }
    let who: { caller: Identity | undefined; from: string | undefined };
    try {
      who = this.identify(conn, header);
    } catch (err) {
      this.log.warn({ remote: conn.remote, peer: conn.peer?.sub, call: `${header.service}.${header.method}`, reason: (err as Error).message }, 'rpc call refused');
      return conn.fail(header.id, toEvolithError(err));
    }
    const meta: CallMeta = { deadline: header.deadline, trace: new WireTrace(header.traceparent, header.baggage), caller: who.caller, from: who.from };
    const method = target.method;
    let work: Promise<unknown>;
    try {
      work = target.host.handle(method, input, meta);
    } catch (err) {
      work = Promise.reject(err);
    }
    conn.begin();
    work.then(
      (output) => {
        this.answer(conn, header.id, method, output);
        conn.end();
      },
      (err) => {
        conn.fail(header.id, toEvolithError(err));
        conn.end();
      },
    );
  }

  /** The calling service and identity of a request, from what its connection's peer proved. */
  private identify(conn: InboundConnection, header: RequestHeader): { caller: Identity | undefined; from: string | undefined } {
    const plane = this.plane;
    if (plane) return plane.identify(conn.peer!, header.caller, header.from);
    if (header.caller !== undefined || header.from !== undefined) {
      throw new UnauthenticatedError('this listener holds no credentials of a deployment: it takes anonymous calls only');
    }
    return { caller: undefined, from: undefined };
  }

  private answer(conn: InboundConnection, id: number, method: MethodDef, output: unknown): void {
    if (conn.isClosed) return;
    try {
      writeFrame(conn, { kind: 'ok', id }, output, this.limits);
    } catch (err) {
      const why = err instanceof FrameEncodeError ? err.message : String(err);
      conn.fail(id, new NotSerializableError(`the output of ${method.fullName} cannot travel over RPC: ${why}`));
    }
  }
}
