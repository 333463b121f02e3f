/**
 * The wire format of Evolith's TCP RPC.
 *
 * A connection carries frames both ways. Each frame is a small header, which says what the
 * frame is and where a call goes, followed by an opaque payload, so that a proxy can read and
 * rewrite the header and pass the payload on as bytes without decoding it:
 *
 *   u32 length          big-endian: the bytes after this field (2 + header + payload)
 *   u16 header length   big-endian: the bytes of the header
 *   header              one msgpack array, [kind, id, ...]
 *   payload             the rest of the frame: one msgpack value, or nothing
 *
 *   kind  header                                                          payload
 *   0     [0, id, service, method, deadline, traceparent, caller, from    input              request
 *          (, baggage)]
 *   1     [1, id]                                                         output             answer: success
 *   2     [2, id]                                                         SerializedError    answer: failure
 *   3     [3, id]                                                         none               ping
 *   4     [4, id]                                                         none               pong
 *   5     [5, 0, reason]                                                  none               goaway: send no new requests here
 *   6     [6, 0, credential, nonce]                                       none               hello: a client proves itself…
 *   7     [7, 0, credential, nonce, proof]                                none               welcome: …the server proves itself…
 *   8     [8, 0, proof]                                                   none               proof: …and the client answers the challenge
 *
 * On a listener that belongs to a deployment (it holds an internal credential), a connection
 * opens with hello, welcome and proof before any other frame: each side presents its
 * credential and signs the other's fresh nonce with the key the credential names, once per
 * connection (see handshake.ts). A listener without credentials refuses a hello.
 * Both parts are plain msgpack (no msgpackr records), so any msgpack library can read them.
 * Tuples rather than maps: the header is a handful of small fields and keys would double it.
 *
 * `id` is chosen by the requester and unique among its calls in flight on that connection;
 * answers may come in any order. Writers here always encode it as a msgpack uint32 (0xce and
 * four bytes) right after the kind, so a proxy that only renumbers calls can patch four bytes
 * in place (`swapId`) and forward the frame as it came; readers accept any integer encoding.
 * `deadline` is absolute, in epoch milliseconds; `traceparent` is W3C trace context; `caller`
 * is who the call is made for as the caller claims it (identity-field.ts), checked by the
 * receiver against the peer's credential; `from` is the calling service. Absent optional
 * fields are nil.
 *
 * Limits, checked before anything is decoded: a frame's length is at most `maxFrameBytes`
 * (4 MiB by default) and its header at most `maxHeaderBytes` (16 KiB by default). A request or
 * an answer has a payload; a ping, pong or goaway has none.
 */
import { C1, Packr, RESERVE_START_SPACE, REUSE_BUFFER_MODE, Unpackr } from 'msgpackr';
import type { SerializedError } from '../kernel/errors.js';
import { identityFromWire, identityToWire } from './identity-field.js';

export const DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024;
export const DEFAULT_MAX_HEADER_BYTES = 16 * 1024;
/** Length field plus header-length field. */
const PREFIX_BYTES = 6;
/** The u16 header length cannot say more. */
const HEADER_LIMIT = 0xffff;
const MAX_NAME_LENGTH = 256;

export interface FrameLimits {
  /** Largest frame, counted without its 4-byte length field. */
  readonly maxFrameBytes: number;
  /** Largest header. */
  readonly maxHeaderBytes: number;
}

export const DEFAULT_LIMITS: FrameLimits = { maxFrameBytes: DEFAULT_MAX_FRAME_BYTES, maxHeaderBytes: DEFAULT_MAX_HEADER_BYTES };

/** Limits from optional settings, checked; the header limit defaults to 16 KiB, or less in a smaller frame. */
export function frameLimits(maxFrameBytes = DEFAULT_MAX_FRAME_BYTES, maxHeaderBytes = Math.min(DEFAULT_MAX_HEADER_BYTES, maxFrameBytes >>> 1)): FrameLimits {
  if (!(maxHeaderBytes >= 16 && maxHeaderBytes <= HEADER_LIMIT)) throw new RangeError(`maxHeaderBytes must be between 16 and ${HEADER_LIMIT}`);
  if (!(maxFrameBytes > maxHeaderBytes)) throw new RangeError('maxFrameBytes must be more than maxHeaderBytes');
  return { maxFrameBytes, maxHeaderBytes };
}

export interface RequestHeader {
  readonly kind: 'request';
  readonly id: number;
  readonly service: string;
  readonly method: string;
  /** Absolute deadline, epoch milliseconds. */
  readonly deadline: number;
  readonly traceparent: string | undefined;
  /** Who the call is made for, as claimed: nothing is believed until the receiver checks it. */
  readonly caller: string | undefined;
  /** The calling service, if the call comes from a handler. */
  readonly from: string | undefined;
  /** W3C baggage the call carries on (absent from the header when there is none). */
  readonly baggage?: string | undefined;
}

/** An answer to the request with the same id: the payload is the output (`ok`) or a SerializedError (`error`). */
export interface AnswerHeader {
  readonly kind: 'ok' | 'error';
  readonly id: number;
}

export interface PingHeader {
  readonly kind: 'ping' | 'pong';
  readonly id: number;
}

export interface GoAwayHeader {
  readonly kind: 'goaway';
  readonly id: 0;
  readonly reason: string;
}

/**
 * How a goaway's reason starts when the server refused the peer itself (its credential, or its
 * admission) rather than asking it to drain: the connection ran none of the calls sent on it.
 */
export const REFUSED_REASON = 'refused: ';

/** The handshake of a connection on a deployment's internal plane (see handshake.ts). */
export type HandshakeHeader =
  | { readonly kind: 'hello'; readonly id: 0; readonly credential: string; readonly nonce: Uint8Array }
  | { readonly kind: 'welcome'; readonly id: 0; readonly credential: string; readonly nonce: Uint8Array; readonly proof: Uint8Array }
  | { readonly kind: 'proof'; readonly id: 0; readonly proof: Uint8Array };

export type FrameHeader = RequestHeader | AnswerHeader | PingHeader | GoAwayHeader | HandshakeHeader;

const REQUEST = 0;
const OK = 1;
const ERROR = 2;
const PING = 3;
const PONG = 4;
const GOAWAY = 5;
const HELLO = 6;
const WELCOME = 7;
const PROOF = 8;
const KIND_NAMES = ['request', 'ok', 'error', 'ping', 'pong', 'goaway', 'hello', 'welcome', 'proof'] as const;
/** Credentials are a few hundred bytes; nonces and proofs a few dozen. */
const MAX_CREDENTIAL_LENGTH = 4096;
const MAX_PROOF_LENGTH = 128;

/** Where frames go, typically a connection's socket writer. The parts of one frame are written back to back. */
export interface FrameSink {
  write(bytes: Buffer): void;
}

/** A value that cannot become a frame: something msgpack cannot hold, or too many bytes. */
export class FrameEncodeError extends Error {}

// ---------------------------------------------------------------------------------------------
// Encoding.

// All Packr instances write into one shared buffer (msgpackr keeps it per module), each pack
// after the last. A header is packed first and its bytes stay put while the payload is packed
// behind it; REUSE_BUFFER_MODE returns the shared buffer with start and end instead of
// allocating a view per header.
const packr = new Packr({ useRecords: false });
/** Packed in place of the id so that msgpackr writes a uint32 (0xce + 4 bytes); the real id replaces it. */
const ID_PLACEHOLDER = 0xffffffff;
/** Where the id's four bytes start in a header: after the fixarray byte, the kind and 0xce. */
const ID_OFFSET = 3;
/** RESERVE_START_SPACE takes the room to leave in front of the payload in one byte. */
const MAX_RESERVE = 0xff;

// Reused for every request header: msgpackr reads it synchronously and keeps no reference.
const requestTuple: unknown[] = [REQUEST, ID_PLACEHOLDER, '', '', 0, null, null, null];
const requestWithBaggage: unknown[] = [REQUEST, ID_PLACEHOLDER, '', '', 0, null, null, null, ''];
const goAwayTuple: unknown[] = [GOAWAY, ID_PLACEHOLDER, ''];
/** A header of kind and id only: fixarray(2), kind, 0xce, id. */
const shortHeader = Buffer.from([0x92, 0, 0xce, 0, 0, 0, 0]);

/** The packed header: bytes [headerStart, headerEnd) of headerBytes, valid until the next packHeader (of a short header). */
let headerBytes: Buffer = shortHeader;
let headerStart = 0;
let headerEnd = 0;

function packHeader(header: FrameHeader): void {
  let tuple: unknown[];
  switch (header.kind) {
    case 'request':
      // Baggage is rare: a call without it keeps the eight-field header older peers read.
      tuple = header.baggage === undefined ? requestTuple : requestWithBaggage;
      if (header.baggage !== undefined) tuple[8] = header.baggage;
      tuple[2] = header.service;
      tuple[3] = header.method;
      tuple[4] = header.deadline;
      tuple[5] = header.traceparent ?? null;
      tuple[6] = identityToWire(header.caller);
      tuple[7] = header.from ?? null;
      break;
    case 'goaway':
      tuple = goAwayTuple;
      tuple[2] = header.reason;
      break;
    case 'hello':
      tuple = [HELLO, ID_PLACEHOLDER, header.credential, header.nonce];
      break;
    case 'welcome':
      tuple = [WELCOME, ID_PLACEHOLDER, header.credential, header.nonce, header.proof];
      break;
    case 'proof':
      tuple = [PROOF, ID_PLACEHOLDER, header.proof];
      break;
    default:
      shortHeader[1] = KIND_NAMES.indexOf(header.kind);
      shortHeader.writeUInt32BE(header.id, ID_OFFSET);
      headerBytes = shortHeader;
      headerStart = 0;
      headerEnd = shortHeader.length;
      return;
  }
  let packed: Buffer & { start?: number; end?: number };
  try {
    packed = packr.pack(tuple, REUSE_BUFFER_MODE) as Buffer & { start?: number; end?: number };
  } catch (err) {
    throw new FrameEncodeError(`header cannot be encoded as msgpack: ${(err as Error)?.message ?? String(err)}`);
  } finally {
    // Nothing of a call outlives its encoding.
    tuple.fill(null, 2);
  }
  headerBytes = packed;
  headerStart = packed.start!;
  headerEnd = packed.end!;
  packed.writeUInt32BE(header.id, headerStart + ID_OFFSET);
}

function headerTooLarge(limits: FrameLimits): FrameEncodeError | undefined {
  const length = headerEnd - headerStart;
  return length > limits.maxHeaderBytes ? new FrameEncodeError(`a header of ${length} bytes is more than the ${limits.maxHeaderBytes}-byte header limit`) : undefined;
}

function frameTooLarge(length: number, limits: FrameLimits): FrameEncodeError | undefined {
  return length > limits.maxFrameBytes ? new FrameEncodeError(`${length} bytes is more than the ${limits.maxFrameBytes}-byte frame limit`) : undefined;
}

/** Length field, header-length field and the packed header, at `at` in `into`. */
function putPrefix(into: Buffer, at: number, length: number): void {
  into.writeUInt32BE(length, at);
  into.writeUInt16BE(headerEnd - headerStart, at + 4);
  headerBytes.copy(into, at + PREFIX_BYTES, headerStart, headerEnd);
}

/** A buffer holding the frame's length, header length and header: what precedes a payload. */
function prefixBuffer(payloadLength: number, limits: FrameLimits): Buffer {
  const headerLength = headerEnd - headerStart;
  const length = 2 + headerLength + payloadLength;
  const err = headerTooLarge(limits) ?? frameTooLarge(length, limits);
  if (err) throw err;
  const head = Buffer.allocUnsafe(PREFIX_BYTES + headerLength);
  putPrefix(head, 0, length);
  return head;
}

/**
 * Encodes a frame and writes it to `sink`: `header`, then `payload` packed as msgpack (none for
 * ping, pong and goaway). Throws FrameEncodeError, having written nothing, when the payload
 * cannot be packed or the frame would break `limits`.
 *
 * The payload is packed once, behind room msgpackr leaves for the length fields and the header,
 * so a frame is one buffer and its payload is never copied. msgpackr can leave at most 255
 * bytes; a frame with a larger header is written as two buffers, header then payload, still
 * without copying the payload.
 */
export function writeFrame(sink: FrameSink, header: FrameHeader, payload: unknown, limits: FrameLimits = DEFAULT_LIMITS): void {
  packHeader(header);
  if (header.kind !== 'request' && header.kind !== 'ok' && header.kind !== 'error') {
    sink.write(prefixBuffer(0, limits));
    return;
  }
  const headerLength = headerEnd - headerStart;
  const reserve = PREFIX_BYTES + headerLength;
  const fits = reserve <= MAX_RESERVE;
  let packed: Buffer;
  try {
    packed = packr.pack(payload, fits ? RESERVE_START_SPACE | reserve : 0);
  } catch (err) {
    throw new FrameEncodeError(`cannot encode as msgpack: ${(err as Error)?.message ?? String(err)}`);
  }
  if (!fits) {
    const head = prefixBuffer(packed.length, limits);
    sink.write(head);
    sink.write(packed);
    return;
  }
  const err = headerTooLarge(limits) ?? frameTooLarge(packed.length - 4, limits);
  if (err) throw err;
  putPrefix(packed, 0, packed.length - 4);
  sink.write(packed);
}

/**
 * Writes `header` followed by the payload of a received frame, passed on as the bytes it is
 * (never decoded). For proxies that rewrite more than the id; see `swapId` for the cheaper case.
 */
export function forwardFrame(sink: FrameSink, header: FrameHeader, frame: Buffer, payloadStart: number, limits: FrameLimits = DEFAULT_LIMITS): void {
  packHeader(header);
  const head = prefixBuffer(frame.length - payloadStart, limits);
  sink.write(head);
  if (payloadStart < frame.length) sink.write(frame.subarray(payloadStart));
}

/**
 * Renumbers a received frame in place: the id becomes `id` and nothing else changes, so the
 * frame can be forwarded whole. False (and nothing changed) when the sender did not encode the
 * id as a uint32 right after the kind; re-encode the header with `forwardFrame` then.
 */
export function swapId(frame: Buffer, id: number): boolean {
  const at = PREFIX_BYTES;
  if (frame.length < at + 7 || frame.readUInt16BE(4) < 7) return false;
  const array = frame[at]!;
  if (array < 0x92 || array > 0x9f || frame[at + 1]! > 0x7f || frame[at + 2] !== 0xce) return false;
  frame.writeUInt32BE(id, at + ID_OFFSET);
  return true;
}

/** One frame as a single buffer (tests, tools, control frames). Throws FrameEncodeError. */
export function encodeFrame(header: FrameHeader, payload?: unknown, limits: FrameLimits = DEFAULT_LIMITS): Buffer {
  const parts: Buffer[] = [];
  writeFrame({ write: (b) => void parts.push(b) }, header, payload, limits);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

// ---------------------------------------------------------------------------------------------
// Decoding.

// Peers are not trusted: no cyclic references (structured clone), and record definitions a
// message declares are dropped after it (msgpackr does that for untrusted unpackers).
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, structuredClone: false });
const range = { start: 0, end: 0 };

/** A payload that is not one well-formed msgpack value. */
export class PayloadError extends Error {}

/**
 * The payload of a received frame, decoded. Throws PayloadError when the bytes are not one
 * msgpack value; the sender then broke the protocol, and the connection should close.
 */
export function decodePayload(frame: Buffer, payloadStart: number): unknown {
  range.start = payloadStart;
  range.end = frame.length;
  let value: unknown;
  try {
    value = unpackr.unpack(frame, range);
  } catch (err) {
    throw new PayloadError(`payload is not valid msgpack: ${(err as Error)?.message ?? String(err)}`.slice(0, 300));
  }
  // msgpackr hands back a marker for 0xc1, a byte msgpack never uses, instead of failing.
  if (value === C1) throw new PayloadError('payload is not valid msgpack: 0xc1');
  return value;
}

/** Receives a frame: its checked header, and the frame's bytes (length field included) with where its payload starts. */
export type FrameHandler = (header: FrameHeader, frame: Buffer, payloadStart: number) => void;

/**
 * Turns a byte stream into frames, whatever the chunking: a frame split over many chunks, or
 * many frames in one. Only headers are decoded; payloads are handed on as bytes. After the
 * first protocol error (an oversized or empty frame, a header that is too large, not msgpack
 * or of the wrong shape) it reports the reason once and ignores the rest: the owner closes the
 * connection.
 */
export class FrameDecoder {
  private readonly lengthField = Buffer.alloc(4);
  private lengthFill = 0;
  /** Length of the frame being collected; -1 while reading a length field. */
  private frameLength = -1;
  private parts: Buffer[] = [];
  private received = 0;
  private failed = false;

  constructor(
    private readonly onFrame: FrameHandler,
    private readonly onError: (reason: string) => void,
    private readonly limits: FrameLimits = DEFAULT_LIMITS,
  ) {}

  /** True when bytes of an unfinished frame are buffered (a peer that hangs up now truncated it). */
  get partial(): boolean {
    return this.lengthFill > 0 || this.frameLength >= 0;
  }

  push(chunk: Buffer): void {
    const n = chunk.length;
    let offset = 0;
    while (offset < n && !this.failed) {
      if (this.frameLength < 0) {
        let length: number;
        if (this.lengthFill === 0 && n - offset >= 4) {
          length = chunk.readUInt32BE(offset);
          if (!this.lengthOk(length)) return;
          if (n - offset - 4 >= length) {
            // The common case: the whole frame is in this chunk, hand it on in place.
            this.deliver(chunk.subarray(offset, offset + 4 + length));
            offset += 4 + length;
            continue;
          }
          this.parts.push(chunk.subarray(offset, offset + 4));
          offset += 4;
        } else {
          const take = Math.min(4 - this.lengthFill, n - offset);
          chunk.copy(this.lengthField, this.lengthFill, offset, offset + take);
          this.lengthFill += take;
          offset += take;
          if (this.lengthFill < 4) return;
          this.lengthFill = 0;
          length = this.lengthField.readUInt32BE(0);
          if (!this.lengthOk(length)) return;
          this.parts.push(Buffer.from(this.lengthField));
        }
        // Collect the frame as it arrives; memory grows with bytes received, not bytes promised.
        this.frameLength = length;
        this.received = 0;
        continue;
      }
      const take = Math.min(this.frameLength - this.received, n - offset);
      this.parts.push(chunk.subarray(offset, offset + take));
      this.received += take;
      offset += take;
      if (this.received === this.frameLength) {
        const frame = Buffer.concat(this.parts, 4 + this.frameLength);
        this.parts = [];
        this.received = 0;
        this.frameLength = -1;
        this.deliver(frame);
      }
    }
  }

  private lengthOk(length: number): boolean {
    if (length === 0) this.fail('empty frame');
    else if (length > this.limits.maxFrameBytes) this.fail(`frame of ${length} bytes exceeds the ${this.limits.maxFrameBytes}-byte limit`);
    else if (length < 2) this.fail(`frame of ${length} byte cannot hold a header length`);
    else return true;
    return false;
  }

  /** `frame` is whole: length field, header length, header, payload. */
  private deliver(frame: Buffer): void {
    const headerLength = frame.readUInt16BE(4);
    const payloadStart = PREFIX_BYTES + headerLength;
    if (headerLength === 0) return this.fail('empty header');
    if (headerLength > this.limits.maxHeaderBytes) return this.fail(`header of ${headerLength} bytes exceeds the ${this.limits.maxHeaderBytes}-byte limit`);
    if (payloadStart > frame.length) return this.fail(`header of ${headerLength} bytes overruns its ${frame.length - 4}-byte frame`);
    const hasPayload = payloadStart < frame.length;
    // Answers, pings and pongs, half of all frames, are [kind, id] as this module writes them:
    // read those seven bytes directly rather than through msgpackr.
    if (headerLength === 7 && frame[PREFIX_BYTES] === 0x92 && frame[PREFIX_BYTES + 2] === 0xce) {
      const kind = frame[PREFIX_BYTES + 1]!;
      if (kind >= OK && kind <= PONG) {
        const header = toHeader([kind, frame.readUInt32BE(PREFIX_BYTES + ID_OFFSET)], hasPayload);
        if (typeof header === 'string') return this.fail(`malformed header: ${header}`);
        return this.onFrame(header, frame, payloadStart);
      }
    }
    let value: unknown;
    range.start = PREFIX_BYTES;
    range.end = payloadStart;
    try {
      value = unpackr.unpack(frame, range);
    } catch (err) {
      return this.fail(`header is not valid msgpack: ${(err as Error)?.message ?? String(err)}`.slice(0, 300));
    }
    const header = toHeader(value, hasPayload);
    if (typeof header === 'string') return this.fail(`malformed header: ${header}`);
    this.onFrame(header, frame, payloadStart);
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
const isCredential = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= MAX_CREDENTIAL_LENGTH;
const isBytes = (v: unknown, min: number, max: number): v is Uint8Array => v instanceof Uint8Array && v.length >= min && v.length <= max;

/** Checks a decoded header against the header shapes; a string says what is wrong. */
export function toHeader(v: unknown, hasPayload: boolean): FrameHeader | string {
  if (!Array.isArray(v) || v.length < 2) return 'not an array of at least kind and id';
  const kind = v[0];
  const id = v[1];
  if (!isId(id)) return 'id is not a 32-bit unsigned integer';
  switch (kind) {
    case REQUEST: {
      if (v.length !== 8 && v.length !== 9) return `request header has ${v.length} fields, not 8 or 9`;
      if (!hasPayload) return 'request without a payload';
      const [, , service, method, deadline, traceparent, caller, from, baggage] = v;
      if (baggage !== undefined && (typeof baggage !== 'string' || baggage.length > 8192)) return 'request baggage is not a string of at most 8192 characters';
      if (!isName(service) || !isName(method)) return 'request service and method must be non-empty strings';
      if (typeof deadline !== 'number' || Number.isNaN(deadline)) return 'request deadline is not a number';
      if (traceparent != null && (typeof traceparent !== 'string' || traceparent.length > 128)) return 'request traceparent is not a string';
      const claim = identityFromWire(caller);
      if (typeof claim === 'object') return `request ${claim.problem}`;
      if (!isOptionalName(from)) return 'request from is not a service name';
      const header: RequestHeader = { kind: 'request', id, service, method, deadline, traceparent: traceparent ?? undefined, caller: claim, from: from ?? undefined };
      return baggage === undefined ? header : { ...header, baggage };
    }
    case OK:
    case ERROR:
      if (v.length !== 2) return 'answer header needs [kind, id]';
      if (!hasPayload) return 'answer without a payload';
      return { kind: kind === OK ? 'ok' : 'error', id };
    case PING:
    case PONG:
      if (v.length !== 2) return 'ping and pong headers need [kind, id]';
      if (hasPayload) return 'ping or pong with a payload';
      return { kind: kind === PING ? 'ping' : 'pong', id };
    case GOAWAY:
      if (v.length !== 3 || typeof v[2] !== 'string') return 'goaway header needs [5, 0, reason]';
      if (hasPayload) return 'goaway with a payload';
      return { kind: 'goaway', id: 0, reason: v[2].slice(0, 500) };
    case HELLO:
    case WELCOME: {
      const n = kind === HELLO ? 4 : 5;
      if (v.length !== n || hasPayload) return `${kind === HELLO ? 'hello' : 'welcome'} header needs ${n} fields and no payload`;
      if (!isCredential(v[2]) || !isBytes(v[3], 16, 64)) return 'handshake credential or nonce malformed';
      if (kind === HELLO) return { kind: 'hello', id: 0, credential: v[2], nonce: v[3] };
      if (!isBytes(v[4], 1, MAX_PROOF_LENGTH)) return 'welcome proof malformed';
      return { kind: 'welcome', id: 0, credential: v[2], nonce: v[3], proof: v[4] };
    }
    case PROOF:
      if (v.length !== 3 || hasPayload || !isBytes(v[2], 1, MAX_PROOF_LENGTH)) return 'proof header needs [8, 0, proof] and no payload';
      return { kind: 'proof', id: 0, proof: v[2] };
    default:
      return `unknown frame kind ${JSON.stringify(kind)?.slice(0, 40)}`;
  }
}

/** Checks a decoded error payload; a string says what is wrong. */
export function toSerializedError(v: unknown): SerializedError | string {
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

/** Splits "host:port" (or "[::1]:port"); undefined when it is not one. */
export function parseAddress(address: string): { host: string; port: number } | undefined {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(address.trim());
  if (!m) return undefined;
  const port = Number(m[2]);
  return port > 0 && port < 65536 ? { host: m[1]!, port } : undefined;
}
