/**
 * RPC over HTTP, for interop and debugging: `POST /rpc/<service>/<method>` with the caller's
 * input as the body, JSON or msgpack (`content-type: application/msgpack`), answered in kind
 * (or as `accept` asks). Call metadata travels in headers:
 *
 *   authorization         `Bearer <credential>`: the calling process's internal credential
 *   x-evolith-deadline    absolute deadline, epoch ms (or x-evolith-timeout-ms, relative)
 *   traceparent           W3C trace context
 *   baggage               W3C baggage the call carries on (a mesh routes on its entries)
 *   x-evolith-from        the calling service: one the credential names
 *   x-evolith-caller      `service` (the calling service acting as itself) or a user assertion
 *                         signed by the deployment's edge (see auth/internal-plane.ts)
 *
 * Nothing about the caller is believed unless a credential of this deployment vouches for it:
 * a listener given an InternalPlane refuses requests without a valid credential, and one
 * without it takes anonymous calls only. Either way it listens on the internal host, never on
 * the public edge.
 *
 * A failure answers with the error's `httpStatus`, an `x-evolith-error: <code>` header and
 * the SerializedError as the body; `HttpTransport` turns it back into the same typed error.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Packr, Unpackr } from 'msgpackr';
import type { MethodDef } from '../contract/define.js';
import { withDeadline } from '../kernel/deadline.js';
import {
  deserializeError,
  EvolithError,
  InternalError,
  NotFoundError,
  NotSerializableError,
  TimeoutError,
  toEvolithError,
  UnauthenticatedError,
  UnavailableError,
  ValidationError,
  type SerializedError,
} from '../kernel/errors.js';
import { DEFAULT_TIMEOUT_MS } from '../kernel/policy-table.js';
import type { CallMeta, Identity } from '../kernel/plugins.js';
import type { InternalPlane } from '../auth/internal-plane.js';
import type { Logger } from 'pino';
import { formatTraceparent, newTrace, parseTraceparent, withBaggage } from '../kernel/trace.js';
import type { RpcResolver } from './tcp-server.js';

export const MSGPACK_TYPE = 'application/msgpack';
export const JSON_TYPE = 'application/json; charset=utf-8';

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, structuredClone: false });

export interface RpcHttpOptions {
  resolve: RpcResolver;
  /** Checks callers' credentials and identities; without it only anonymous calls are taken. */
  plane?: InternalPlane;
  /** Where refused calls are logged. */
  log?: Logger;
  /** The deadline of a call that names none (the process's policy table); default the contract's timeout. */
  timeoutFor?: (method: MethodDef) => number;
  /** Largest request body in bytes; default 4 MiB (the TCP frame limit). */
  bodyLimit?: number;
}

/** The body format of RPC requests and answers over HTTP. */
export type RpcBodyFormat = 'json' | 'msgpack';
type Format = RpcBodyFormat;

function replyFormat(req: FastifyRequest): Format {
  const accept = req.headers.accept ?? '';
  if (accept.includes('msgpack')) return 'msgpack';
  if (accept.includes('json')) return 'json';
  return (req.headers['content-type'] ?? '').includes('msgpack') ? 'msgpack' : 'json';
}

function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function badHeader(name: string, message: string): ValidationError {
  return new ValidationError(`header ${name}: ${message}`, [{ path: name, message }]);
}

function deadlineFrom(req: FastifyRequest, method: MethodDef, now: number, timeoutMs: number): number {
  let deadline = now + timeoutMs;
  const absolute = header(req, 'x-evolith-deadline');
  if (absolute !== undefined) {
    const d = Number(absolute);
    if (!Number.isFinite(d) || d <= 0) throw badHeader('x-evolith-deadline', 'must be epoch milliseconds');
    deadline = d;
  }
  const relative = header(req, 'x-evolith-timeout-ms');
  if (relative !== undefined) {
    const t = Number(relative);
    if (!Number.isFinite(t) || t <= 0) throw badHeader('x-evolith-timeout-ms', 'must be a positive number of milliseconds');
    deadline = Math.min(deadline, now + t);
  }
  return deadline;
}

function send(reply: FastifyReply, format: Format, status: number, value: unknown): FastifyReply {
  reply.status(status);
  if (format === 'msgpack') return reply.header('content-type', MSGPACK_TYPE).send(packr.pack(value));
  return reply.header('content-type', JSON_TYPE).send(JSON.stringify(value));
}

function sendError(reply: FastifyReply, format: Format, err: EvolithError): FastifyReply {
  reply.header('x-evolith-error', err.code);
  try {
    return send(reply, format, err.httpStatus, err.toJSON());
  } catch {
    return send(reply, format, err.httpStatus, { code: err.code, message: err.message, httpStatus: err.httpStatus, origin: err.origin });
  }
}

/** Errors fastify raises itself (malformed body, too large, unsupported type) are input errors. */
function fromFastify(error: unknown): EvolithError {
  if (error instanceof EvolithError) return error;
  const e = error as { statusCode?: number; code?: string; message?: string };
  if (typeof e?.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    const message = e.code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? 'request body is larger than the limit' : String(e.message);
    return new ValidationError(`invalid request body: ${message}`, [{ path: '(body)', message }]);
  }
  return toEvolithError(error);
}

const BEARER = /^bearer\s+(\S+)\s*$/i;

/** The calling service and identity of a request, from what its credential proves; a typed, logged refusal otherwise. */
function identify(req: FastifyRequest, options: RpcHttpOptions): { caller: Identity | undefined; from: string | undefined } {
  const fromHeader = header(req, 'x-evolith-from') || undefined;
  const callerHeader = header(req, 'x-evolith-caller') || undefined;
  try {
    const plane = options.plane;
    if (!plane) {
      if (fromHeader !== undefined || callerHeader !== undefined) {
        throw new UnauthenticatedError('this listener holds no credentials of a deployment: it takes anonymous calls only');
      }
      return { caller: undefined, from: undefined };
    }
    const m = BEARER.exec(header(req, 'authorization') ?? '');
    if (!m) throw new UnauthenticatedError('internal calls must present the calling process’s credential (authorization: Bearer <credential>)');
    return plane.identify(plane.peer(m[1]!), callerHeader, fromHeader);
  } catch (err) {
    options.log?.warn({ remote: req.ip, method: req.url, reason: (err as Error).message }, 'internal call refused');
    throw err;
  }
}

/**
 * The server side: a fastify plugin adding `POST /rpc/:service/:method`.
 * `app.register(rpcHttpPlugin, { resolve: hostResolver(hosts) })`.
 */
export async function rpcHttpPlugin(app: FastifyInstance, options: RpcHttpOptions): Promise<void> {
  const bodyLimit = options.bodyLimit ?? 4 * 1024 * 1024;
  app.addContentTypeParser([MSGPACK_TYPE, 'application/x-msgpack'], { parseAs: 'buffer', bodyLimit }, (_req, body, done) => {
    try {
      done(null, unpackr.unpack(body as Buffer));
    } catch (err) {
      done(new ValidationError(`request body is not valid msgpack: ${(err as Error).message}`, [{ path: '(body)', message: 'not valid msgpack' }]), undefined);
    }
  });
  app.setErrorHandler((error, req, reply) => {
    const err = fromFastify(error);
    if (err.httpStatus >= 500 && !(error instanceof EvolithError)) req.log.error({ err: error }, 'rpc over http failed');
    return sendError(reply, replyFormat(req), err);
  });
  app.post<{ Params: { service: string; method: string } }>('/rpc/:service/:method', { bodyLimit }, async (req, reply) => {
    const { service, method: name } = req.params;
    const target = options.resolve(service, name);
    if (!target) throw new NotFoundError(`this instance serves no method ${service}.${name}`);
    const now = Date.now();
    const deadline = deadlineFrom(req, target.method, now, options.timeoutFor?.(target.method) ?? target.method.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    if (deadline <= now) throw new TimeoutError(`${service}.${name} arrived after its deadline`, { deadline: new Date(deadline).toISOString() });
    const { caller, from } = identify(req, options);
    const trace = withBaggage(parseTraceparent(header(req, 'traceparent')), header(req, 'baggage')) ?? newTrace();
    const meta: CallMeta = { deadline, trace, caller, from };
    const output = await target.host.handle(target.method, req.body, meta);
    if (output === undefined) return reply.status(204).send();
    try {
      return send(reply, replyFormat(req), 200, output);
    } catch (err) {
      throw new NotSerializableError(`the output of ${target.method.fullName} cannot be encoded: ${(err as Error).message}`);
    }
  });
}

export interface HttpTransportOptions {
  /** Body format of requests and answers; default json. */
  format?: RpcBodyFormat;
  /** This process's credentials: without them, calls go out anonymous (and a call that names a caller is refused). */
  plane?: InternalPlane;
}

function isSerializedError(v: unknown): v is SerializedError {
  return typeof v === 'object' && v !== null && typeof (v as SerializedError).code === 'string' && typeof (v as SerializedError).message === 'string';
}

/** What an HTTP header value may hold: visible ASCII, spaces and tabs. */
const HEADER_VALUE = /^[\t\x20-\x7e]*$/;

/** A call ready to go out over HTTP (either version): where, which headers, which body. */
export interface RpcHttpRequest {
  /** The base URL of the callee, without a trailing slash: `http://host:port`. */
  readonly base: string;
  /** `/rpc/<service>/<method>`, each part URL-encoded. */
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body: string | Uint8Array | undefined;
}

/** The base URL of an RPC address, which is either a URL or "host:port". */
export function rpcBaseUrl(address: string): string {
  return address.includes('://') ? address.replace(/\/+$/, '') : `http://${address}`;
}

/**
 * The request for one call, as both HTTP transports send it. Throws the typed error the call
 * must fail with when it cannot go out: no time left, a caller this process cannot vouch
 * for, an input that does not encode.
 */
export function rpcHttpRequest(address: string, method: MethodDef, input: unknown, meta: CallMeta, format: RpcBodyFormat, plane: InternalPlane | undefined): RpcHttpRequest {
  if (meta.deadline <= Date.now()) throw new TimeoutError(`no time left to call ${method.fullName}: its deadline has passed`);
  const base = rpcBaseUrl(address);
  const path = `/rpc/${encodeURIComponent(method.service)}/${encodeURIComponent(method.name)}`;
  const type = format === 'msgpack' ? MSGPACK_TYPE : JSON_TYPE;
  const headers: Record<string, string> = {
    accept: type,
    'x-evolith-deadline': String(meta.deadline),
    traceparent: formatTraceparent(meta.trace),
  };
  // Baggage is percent-encoded ASCII by definition; one that is not (it can arrive over TCP,
  // which carries any string) is dropped rather than fail the call as an invalid header.
  const baggage = meta.trace.baggage;
  if (baggage !== undefined && HEADER_VALUE.test(baggage)) headers.baggage = baggage;
  if (plane) {
    const caller = plane.callerField(meta);
    headers.authorization = `Bearer ${plane.credential.token}`;
    if (caller !== undefined) headers['x-evolith-caller'] = caller;
    if (meta.from) headers['x-evolith-from'] = meta.from;
  } else if (meta.caller || meta.from) {
    throw new UnauthenticatedError(`${method.fullName}: this process holds no internal credential to vouch for its caller`);
  }
  let body: string | Uint8Array | undefined;
  if (input !== undefined) {
    headers['content-type'] = type;
    try {
      body = format === 'msgpack' ? packr.pack(input) : JSON.stringify(input);
    } catch (err) {
      throw new NotSerializableError(`the input of ${method.fullName} cannot be encoded: ${(err as Error).message}`);
    }
  }
  return { base, path, headers, body };
}

/**
 * The outcome of an answer to an RPC request, for both HTTP transports: the decoded value of
 * a success (undefined for 204), or the typed error an error answer carries.
 * `header(name)` reads a response header (lower-case name).
 */
export function rpcHttpAnswer(status: number, header: (name: string) => string | undefined, bytes: Uint8Array, url: string): unknown {
  const type = header('content-type') ?? '';
  let value: unknown;
  if (bytes.length > 0) {
    try {
      value = type.includes('msgpack') ? unpackr.unpack(bytes) : type.includes('json') ? JSON.parse(new TextDecoder().decode(bytes)) : new TextDecoder().decode(bytes);
    } catch (err) {
      throw new InternalError(`${url} answered ${status} with a body that does not decode as ${type}: ${(err as Error).message}`);
    }
  }
  if (header('x-evolith-error') !== undefined || status >= 400) {
    if (isSerializedError(value)) throw deserializeError(value);
    const text = typeof value === 'string' ? value.slice(0, 200) : JSON.stringify(value)?.slice(0, 200);
    if (status === 404) throw new NotFoundError(`${url} answered 404: ${text}`);
    if (status === 503) throw new UnavailableError(`${url} answered 503: ${text}`);
    throw new InternalError(`${url} answered ${status}: ${text}`);
  }
  return status === 204 ? undefined : value;
}

/**
 * Builds the request for one call with a transport's options (json unless told otherwise) and
 * hands it to `go`, which sends it. A call that cannot go out fails as a rejected promise, as
 * a call that went out and failed does, so that callers of either HTTP transport handle one kind
 * of failure.
 */
export function sendRpcHttp(
  options: HttpTransportOptions,
  call: { address: string; method: MethodDef; input: unknown; meta: CallMeta },
  go: (request: RpcHttpRequest) => Promise<unknown>,
): Promise<unknown> {
  let request: RpcHttpRequest;
  try {
    request = rpcHttpRequest(call.address, call.method, call.input, call.meta, options.format ?? 'json', options.plane);
  } catch (err) {
    return Promise.reject(err);
  }
  return go(request);
}

/** The client side of RPC over HTTP, on the global fetch (undici, keep-alive). */
export class HttpTransport {
  readonly name = 'http';

  constructor(private readonly options: HttpTransportOptions = {}) {}

  /** Calls the instance at `address` (a base URL or "host:port"). */
  send(address: string, method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown> {
    return sendRpcHttp(this.options, { address, method, input, meta }, ({ base, path, headers, body }) => {
      const abort = new AbortController();
      return withDeadline(this.post(base + path, base, { method: 'POST', headers, body, signal: abort.signal }), meta.deadline, `${method.fullName} at ${base}`, () => abort.abort());
    });
  }

  /** Nothing to release: the global fetch owns its connections. */
  async close(): Promise<void> {}

  private async post(url: string, base: string, init: RequestInit): Promise<unknown> {
    let res: Response;
    try {
      res = await fetch(url, init);
    } catch (err) {
      const code = ((err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message) || 'fetch failed';
      throw new UnavailableError(`cannot reach ${base}: ${code}`, { address: base, maybeExecuted: code !== 'ECONNREFUSED' });
    }
    const bytes = new Uint8Array(await res.arrayBuffer());
    return rpcHttpAnswer(res.status, (name) => res.headers.get(name) ?? undefined, bytes, url);
  }
}
