/**
 * The wire format of Evolith's TCP RPC.
 *
 * A connection carries frames both ways: a 4-byte big-endian length, then that many bytes
 * holding one msgpack value. Values are written as plain msgpack (no msgpackr records), so any
 * msgpack library can read them. Each value is an array whose first element says what it is:
 *
 *   [0, id, service, method, deadline, traceparent, caller, from, input]   request
 *   [1, id, output]                                                        answer: success
 *   [2, id, error]                                                         answer: a SerializedError
 *   [3, id]                                                                ping
 *   [4, id]                                                                pong
 *   [5, reason]                                                            goaway: send no new requests here
 *
 * Tuples rather than maps: the header is a handful of small fields and keys would double it.
 * `id` is chosen by the requester and unique among its calls in flight on that connection;
 * answers may come in any order. `deadline` is epoch milliseconds; absent optional fields are nil.
 */
import { Packr, RESERVE_START_SPACE, Unpackr } from 'msgpackr';
import type { SerializedError } from '../kernel/errors.js';
import type { Identity } from '../kernel/plugins.js';

export const DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024;
const HEADER_BYTES = 4;
const MAX_NAME_LENGTH = 256;

export interface RequestMessage {
  readonly kind: 'request';
  readonly id: number;
  readonly service: string;
  readonly method: string;
  /** Absolute deadline, epoch milliseconds. */
  readonly deadline: number;
  readonly traceparent: string | undefined;
  /** Believed as sent: RPC listeners belong on trusted networks only (mesh mode adds mTLS). */
  readonly caller: Identity | undefined;
  /** The calling service, if the call comes from a handler. */
  readonly from: string | undefined;
  readonly input: unknown;
}

export type ResponseMessage =
  | { readonly kind: 'response'; readonly id: number; readonly ok: true; readonly output: unknown }
  | { readonly kind: 'response'; readonly id: number; readonly ok: false; readonly error: SerializedError };

export interface PingMessage {
  readonly kind: 'ping' | 'pong';
  readonly id: number;
}

export interface GoAwayMessage {
  readonly kind: 'goaway';
  readonly reason: string;
}

export type Message = RequestMessage | ResponseMessage | PingMessage | GoAwayMessage;

const REQUEST = 0;
const OK = 1;
const ERROR = 2;
const PING = 3;
const PONG = 4;
const GOAWAY = 5;

const packr = new Packr({ useRecords: false });
// Peers are not trusted: no cyclic references (structured clone), and record definitions a
// message declares are dropped after it (msgpackr does that for untrusted unpackers).
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, structuredClone: false });

/** A message that cannot become a frame: a value msgpack cannot hold, or too many bytes. */
export class FrameEncodeError extends Error {}

function tupleOf(m: Message): unknown[] {
  switch (m.kind) {
    case 'request':
      return [REQUEST, m.id, m.service, m.method, m.deadline, m.traceparent ?? null, m.caller ?? null, m.from ?? null, m.input];
    case 'response':
      return m.ok ? [OK, m.id, m.output] : [ERROR, m.id, m.error];
    case 'ping':
      return [PING, m.id];
    case 'pong':
      return [PONG, m.id];
    case 'goaway':
      return [GOAWAY, m.reason];
  }
}

/** One frame, length prefix included, ready for `socket.write`. Throws FrameEncodeError. */
export function encodeFrame(message: Message, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Buffer {
  let frame: Buffer;
  try {
    // msgpackr leaves room for the length prefix in front of the payload: no second copy.
    frame = packr.pack(tupleOf(message), RESERVE_START_SPACE | HEADER_BYTES);
  } catch (err) {
    throw new FrameEncodeError(`cannot encode as msgpack: ${(err as Error)?.message ?? String(err)}`);
  }
  const length = frame.length - HEADER_BYTES;
  if (length > maxFrameBytes) throw new FrameEncodeError(`${length} bytes is more than the ${maxFrameBytes}-byte frame limit`);
  frame.writeUInt32BE(length, 0);
  return frame;
}

/**
 * Turns a byte stream into messages, whatever the chunking: a frame split over many chunks, or
 * many frames in one. After the first protocol error (oversized or empty frame, bytes that are
 * not msgpack, a value of the wrong shape) it reports the reason once and ignores the rest:
 * the owner closes the connection.
 */
export class FrameDecoder {
  private readonly header = Buffer.alloc(HEADER_BYTES);
  private headerFill = 0;
  /** Length of the frame whose body is being collected; -1 while reading a header. */
  private bodyLength = -1;
  private parts: Buffer[] = [];
  private received = 0;
  private failed = false;

  constructor(
    private readonly onMessage: (message: Message) => void,
    private readonly onError: (reason: string) => void,
    private readonly maxFrameBytes = DEFAULT_MAX_FRAME_BYTES,
  ) {}

  /** True when bytes of an unfinished frame are buffered (a peer that hangs up now truncated it). */
  get partial(): boolean {
    return this.headerFill > 0 || this.bodyLength >= 0;
  }

  push(chunk: Buffer): void {
    const n = chunk.length;
    let offset = 0;
    while (offset < n && !this.failed) {
      if (this.bodyLength < 0) {
        let length: number;
        if (this.headerFill === 0 && n - offset >= HEADER_BYTES) {
          length = chunk.readUInt32BE(offset);
          offset += HEADER_BYTES;
        } else {
          const take = Math.min(HEADER_BYTES - this.headerFill, n - offset);
          chunk.copy(this.header, this.headerFill, offset, offset + take);
          this.headerFill += take;
          offset += take;
          if (this.headerFill < HEADER_BYTES) return;
          this.headerFill = 0;
          length = this.header.readUInt32BE(0);
        }
        if (length === 0) return this.fail('empty frame');
        if (length > this.maxFrameBytes) return this.fail(`frame of ${length} bytes exceeds the ${this.maxFrameBytes}-byte limit`);
        if (n - offset >= length) {
          // The common case: the whole frame is in this chunk, decode it in place.
          this.deliver(chunk.subarray(offset, offset + length));
          offset += length;
          continue;
        }
        // Collect the body as it arrives; memory grows with bytes received, not bytes promised.
        this.bodyLength = length;
        this.parts.push(chunk.subarray(offset));
        this.received = n - offset;
        return;
      }
      const take = Math.min(this.bodyLength - this.received, n - offset);
      this.parts.push(chunk.subarray(offset, offset + take));
      this.received += take;
      offset += take;
      if (this.received === this.bodyLength) {
        const body = Buffer.concat(this.parts, this.bodyLength);
        this.parts = [];
        this.received = 0;
        this.bodyLength = -1;
        this.deliver(body);
      }
    }
  }

  private deliver(payload: Buffer): void {
    let value: unknown;
    try {
      value = unpackr.unpack(payload);
    } catch (err) {
      return this.fail(`payload is not valid msgpack: ${(err as Error)?.message ?? String(err)}`.slice(0, 300));
    }
    const message = toMessage(value);
    if (typeof message === 'string') return this.fail(`malformed message: ${message}`);
    this.onMessage(message);
  }

  private fail(reason: string): void {
    this.failed = true;
    this.parts = [];
    this.onError(reason);
  }
}

const isId = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
const isName = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= MAX_NAME_LENGTH;
const isOptionalName = (v: unknown): v is string | null | undefined => v == null || isName(v);
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function toIdentity(v: unknown): Identity | undefined | string {
  if (v == null) return undefined;
  if (!isRecord(v)) return 'caller is not a map';
  const { subject, roles, claims } = v;
  if (typeof subject !== 'string') return 'caller.subject is not a string';
  if (!Array.isArray(roles) || !roles.every((r) => typeof r === 'string')) return 'caller.roles is not a list of strings';
  if (claims != null && !isRecord(claims)) return 'caller.claims is not a map';
  return claims == null ? { subject, roles } : { subject, roles, claims };
}

function toError(v: unknown): SerializedError | string {
  if (!isRecord(v)) return 'error is not a map';
  const { code, message, details, httpStatus, origin } = v;
  if (typeof code !== 'string' || typeof message !== 'string') return 'error needs a string code and message';
  if (httpStatus != null && !(Number.isInteger(httpStatus) && (httpStatus as number) >= 100 && (httpStatus as number) <= 599)) return 'error.httpStatus is not a status code';
  if (origin != null && typeof origin !== 'string') return 'error.origin is not a string';
  const out: SerializedError = { code, message };
  if (details !== undefined) out.details = details;
  if (httpStatus != null) out.httpStatus = httpStatus as number;
  if (origin != null) out.origin = origin;
  return out;
}

/** Checks a decoded value against the message shapes; a string says what is wrong. */
export function toMessage(v: unknown): Message | string {
  if (!Array.isArray(v) || v.length === 0) return 'not a non-empty array';
  switch (v[0]) {
    case REQUEST: {
      if (v.length !== 9) return `request has ${v.length} fields, not 9`;
      const [, id, service, method, deadline, traceparent, caller, from, input] = v;
      if (!isId(id)) return 'request id is not a 32-bit unsigned integer';
      if (!isName(service) || !isName(method)) return 'request service and method must be non-empty strings';
      if (typeof deadline !== 'number' || Number.isNaN(deadline)) return 'request deadline is not a number';
      if (traceparent != null && (typeof traceparent !== 'string' || traceparent.length > 128)) return 'request traceparent is not a string';
      const identity = toIdentity(caller);
      if (typeof identity === 'string') return `request ${identity}`;
      if (!isOptionalName(from)) return 'request from is not a service name';
      return { kind: 'request', id, service, method, deadline, traceparent: traceparent ?? undefined, caller: identity, from: from ?? undefined, input };
    }
    case OK:
      if (v.length !== 3 || !isId(v[1])) return 'answer needs [1, id, output]';
      return { kind: 'response', id: v[1], ok: true, output: v[2] };
    case ERROR: {
      if (v.length !== 3 || !isId(v[1])) return 'error answer needs [2, id, error]';
      const error = toError(v[2]);
      if (typeof error === 'string') return error;
      return { kind: 'response', id: v[1], ok: false, error };
    }
    case PING:
    case PONG:
      if (v.length !== 2 || !isId(v[1])) return 'ping and pong need [kind, id]';
      return { kind: v[0] === PING ? 'ping' : 'pong', id: v[1] };
    case GOAWAY:
      if (v.length !== 2 || typeof v[1] !== 'string') return 'goaway needs [5, reason]';
      return { kind: 'goaway', reason: v[1].slice(0, 500) };
    default:
      return `unknown message kind ${JSON.stringify(v[0])?.slice(0, 40)}`;
  }
}

/** Splits "host:port" (or "[::1]:port"); undefined when it is not one. */
export function parseAddress(address: string): { host: string; port: number } | undefined {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(address.trim());
  if (!m) return undefined;
  const port = Number(m[2]);
  return port > 0 && port < 65536 ? { host: m[1]!, port } : undefined;
}
