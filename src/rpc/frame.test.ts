import { pack, unpack } from 'msgpackr';
import { describe, expect, test } from 'vitest';
import {
  decodePayload,
  encodeFrame,
  forwardFrame,
  FrameDecoder,
  FrameEncodeError,
  frameLimits,
  parseAddress,
  PayloadError,
  swapId,
  toHeader,
  toSerializedError,
  writeFrame,
  type FrameHeader,
  type FrameLimits,
  type RequestHeader,
} from './frame.js';
import { prng } from '../../test/fixtures/rpc-kit.js';

const request: RequestHeader = {
  kind: 'request',
  id: 7,
  service: 'echo',
  method: 'echo',
  deadline: 1_700_000_000_000,
  traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  caller: 'ua1.eyJzdWIiOiJpY3lmZW5peCJ9.c2ln',
  from: 'payment',
};

/** Every kind of frame with the payload it carries (undefined: none). */
const frames: [FrameHeader, unknown][] = [
  [request, { text: 'héllo', n: 3, nested: [1, { deep: true }] }],
  [{ ...request, id: 8, traceparent: undefined, caller: undefined, from: undefined }, null],
  [{ kind: 'ok', id: 7 }, { text: 'héllo', list: [1, 2, 3] }],
  [{ kind: 'error', id: 9 }, { code: 'NO_WAY', message: 'refused', details: { why: 'rules' }, httpStatus: 422, origin: 'echo.refuse' }],
  [{ kind: 'ping', id: 1 }, undefined],
  [{ kind: 'pong', id: 0xffffffff }, undefined],
  [{ kind: 'goaway', id: 0, reason: 'shutting down' }, undefined],
];

interface Got {
  header: FrameHeader;
  payload: unknown;
  /** The payload's bytes as received. */
  bytes: Buffer;
}

function collect(limits?: FrameLimits): { decoder: FrameDecoder; got: Got[]; errors: string[] } {
  const got: Got[] = [];
  const errors: string[] = [];
  const decoder = new FrameDecoder(
    (header, frame, payloadStart) =>
      got.push({ header, payload: payloadStart < frame.length ? decodePayload(frame, payloadStart) : undefined, bytes: Buffer.from(frame.subarray(payloadStart)) }),
    (r) => errors.push(r),
    limits,
  );
  return { decoder, got, errors };
}

const expected = frames.map(([header, payload]) => ({ header, payload }));
const withoutBytes = (got: Got[]) => got.map(({ header, payload }) => ({ header, payload }));

/** A frame assembled by hand: length, header length, header bytes, payload bytes. */
function rawFrame(header: Buffer, payload: Buffer = Buffer.alloc(0), headerLength = header.length): Buffer {
  const prefix = Buffer.alloc(6);
  prefix.writeUInt32BE(2 + header.length + payload.length);
  prefix.writeUInt16BE(headerLength, 4);
  return Buffer.concat([prefix, header, payload]);
}

/** The parts one writeFrame call writes. */
function parts(header: FrameHeader, payload: unknown, limits?: FrameLimits): Buffer[] {
  const out: Buffer[] = [];
  writeFrame({ write: (b) => void out.push(b) }, header, payload, limits);
  return out;
}

describe('frames', () => {
  test('every kind of frame survives encoding and decoding', () => {
    const { decoder, got, errors } = collect();
    for (const [h, p] of frames) decoder.push(encodeFrame(h, p));
    expect(errors).toEqual([]);
    expect(withoutBytes(got)).toEqual(expected);
  });

  test('the layout is as documented, and both parts are plain msgpack any library reads', () => {
    const input = { text: 'héllo', n: 3 };
    const frame = encodeFrame(request, input);
    const headerLength = frame.readUInt16BE(4);
    expect(frame.readUInt32BE(0)).toBe(frame.length - 4);
    const header = unpack(frame.subarray(6, 6 + headerLength));
    expect(header).toEqual([0, 7, 'echo', 'echo', request.deadline, request.traceparent, request.caller, 'payment']);
    // The id is a uint32 right after the kind, whatever its value, so proxies can patch it in place.
    expect([...frame.subarray(6, 9)]).toEqual([0x98, 0x00, 0xce]);
    expect(frame.readUInt32BE(9)).toBe(7);
    expect(unpack(frame.subarray(6 + headerLength))).toEqual(input);
    expect(frame.subarray(6 + headerLength)).toEqual(pack(input));
    const answer = encodeFrame({ kind: 'ok', id: 3 }, 'out');
    expect([...answer]).toEqual([0, 0, 0, 13, 0, 7, 0x92, 0x01, 0xce, 0, 0, 0, 3, ...pack('out')]);
    expect([...encodeFrame({ kind: 'pong', id: 2 })]).toEqual([0, 0, 0, 9, 0, 7, 0x92, 0x04, 0xce, 0, 0, 0, 2]);
  });

  test('a request that carries baggage has a ninth header field; one without keeps the eight older peers read', () => {
    const withBaggage = encodeFrame({ ...request, baggage: 'canary=1' }, {});
    const header = unpack(withBaggage.subarray(6, 6 + withBaggage.readUInt16BE(4)));
    expect(header).toHaveLength(9);
    expect(header[8]).toBe('canary=1');
    const { decoder, got, errors } = collect();
    decoder.push(withBaggage);
    decoder.push(encodeFrame(request, {}));
    decoder.push(rawFrame(pack([0, 1, 'echo', 'echo', 5, null, null, null, 7]), pack({})));
    expect(got.map((g) => (g.header as { baggage?: string }).baggage)).toEqual(['canary=1', undefined]);
    expect('baggage' in got[1]!.header).toBe(false);
    expect(errors).toEqual(['malformed header: request baggage is not a string of at most 8192 characters']);
  });

  test('headers written by other encoders (ids in any integer width) are read alike', () => {
    const { decoder, got, errors } = collect();
    decoder.push(rawFrame(pack([1, 5]), pack('x')));
    decoder.push(rawFrame(pack([0, 70_000, 'echo', 'echo', 5, null, null, null]), pack({})));
    expect(errors).toEqual([]);
    expect(got.map((g) => g.header)).toEqual([
      { kind: 'ok', id: 5 },
      { kind: 'request', id: 70_000, service: 'echo', method: 'echo', deadline: 5, traceparent: undefined, caller: undefined, from: undefined },
    ]);
  });

  test('frames packed into one chunk and split at every byte boundary decode alike', () => {
    const stream = Buffer.concat(frames.map(([h, p]) => encodeFrame(h, p)));
    const packed = collect();
    packed.decoder.push(stream);
    expect(withoutBytes(packed.got)).toEqual(expected);
    for (let cut = 1; cut < stream.length; cut++) {
      const { decoder, got, errors } = collect();
      decoder.push(stream.subarray(0, cut));
      decoder.push(stream.subarray(cut));
      expect(errors).toEqual([]);
      expect(withoutBytes(got)).toEqual(expected);
    }
    const bytewise = collect();
    for (let i = 0; i < stream.length; i++) bytewise.decoder.push(stream.subarray(i, i + 1));
    expect(withoutBytes(bytewise.got)).toEqual(expected);
    expect(bytewise.decoder.partial).toBe(false);
  });

  test('random chunking of a long stream loses and invents nothing', () => {
    const rnd = prng(42);
    const many = Array.from({ length: 500 }, (_, i) => ({ header: { kind: 'ok', id: i } as FrameHeader, payload: 'y'.repeat(Math.floor(rnd() * 3000)) }));
    const stream = Buffer.concat(many.map((m) => encodeFrame(m.header, m.payload)));
    const { decoder, got } = collect();
    for (let at = 0; at < stream.length; ) {
      const size = 1 + Math.floor(rnd() * 9000);
      decoder.push(stream.subarray(at, at + size));
      at += size;
    }
    expect(withoutBytes(got)).toEqual(many);
  });

  test('a header too large to sit in front of the payload is written as two parts, the payload still packed once', () => {
    const big: RequestHeader = { ...request, caller: `ua1.${'a'.repeat(400)}.sig` };
    const written = parts(big, { text: 'x' });
    expect(written).toHaveLength(2);
    expect(written[1]).toEqual(pack({ text: 'x' }));
    const small = parts(request, { text: 'x' });
    expect(small).toHaveLength(1);
    const { decoder, got, errors } = collect();
    for (const p of written) decoder.push(p);
    expect(errors).toEqual([]);
    expect(got[0]).toMatchObject({ header: big, payload: { text: 'x' } });
  });

  test('a proxy can renumber a frame in place, or rewrite its header, and the payload bytes pass untouched', () => {
    const payload = { text: 'héllo', list: [1, 2, 3], blob: Buffer.from([1, 2, 3]) };
    const frame = encodeFrame(request, payload);
    const payloadBytes = Buffer.from(frame.subarray(6 + frame.readUInt16BE(4)));
    expect(swapId(frame, 0xdeadbeef)).toBe(true);
    const rewritten: Buffer[] = [];
    forwardFrame({ write: (b) => void rewritten.push(b) }, { ...request, id: 12, from: 'gateway', caller: undefined }, frame, 6 + frame.readUInt16BE(4));
    const { decoder, got, errors } = collect();
    decoder.push(frame);
    for (const b of rewritten) decoder.push(b);
    expect(errors).toEqual([]);
    expect(got.map((g) => g.header)).toEqual([
      { ...request, id: 0xdeadbeef },
      { ...request, id: 12, from: 'gateway', caller: undefined },
    ]);
    for (const g of got) expect(g.bytes).toEqual(payloadBytes);
    // Ids encoded minimally by another writer cannot be patched: the frame is left alone.
    const foreign = rawFrame(pack([1, 5]), pack('x'));
    expect(swapId(foreign, 9)).toBe(false);
    expect(foreign).toEqual(rawFrame(pack([1, 5]), pack('x')));
  });

  test('an oversized length is refused before its body arrives', () => {
    const { decoder, got, errors } = collect(frameLimits(1024, 64));
    const header = Buffer.alloc(4);
    header.writeUInt32BE(1025);
    decoder.push(header);
    expect(errors).toEqual(['frame of 1025 bytes exceeds the 1024-byte limit']);
    decoder.push(encodeFrame({ kind: 'ping', id: 1 }));
    expect(got).toEqual([]);
    expect(errors).toHaveLength(1);
  });

  test('empty frames, lying header lengths, headers that are not msgpack or of the wrong shape are protocol errors', () => {
    const okHeader = pack([1, 1]);
    const cases: [Buffer, RegExp][] = [
      [Buffer.alloc(4), /^empty frame$/],
      [Buffer.from([0, 0, 0, 1, 9]), /cannot hold a header length/],
      [rawFrame(Buffer.alloc(0), pack('x')), /^empty header$/],
      [rawFrame(okHeader, pack('x'), 50), /header of 50 bytes overruns its \d+-byte frame/],
      [rawFrame(Buffer.alloc(100, 0x90), pack('x')), /header of 100 bytes exceeds the 64-byte limit/],
      [rawFrame(Buffer.from([0xc1]), pack('x')), /header is not valid msgpack|malformed header/],
      [rawFrame(Buffer.from([0x92, 0x01]), pack('x')), /header is not valid msgpack/],
      [rawFrame(Buffer.concat([okHeader, Buffer.from([0x01])]), pack('x'), okHeader.length + 1), /header is not valid msgpack/],
      [rawFrame(pack({ kind: 'request' }), pack('x')), /malformed header: not an array/],
      [rawFrame(pack([9, 1])), /unknown frame kind 9/],
      [rawFrame(pack([0, 1, 'echo', 'echo', 1, null, null]), pack({})), /request header has 7 fields/],
      [rawFrame(pack([0, -1, 'echo', 'echo', 1, null, null, null]), pack({})), /id is not/],
      [rawFrame(pack([0, 1, '', 'echo', 1, null, null, null]), pack({})), /service and method/],
      [rawFrame(pack([0, 1, 'echo', 'echo', 'soon', null, null, null]), pack({})), /deadline/],
      [rawFrame(pack([0, 1, 'echo', 'echo', 1, null, { subject: 'x', roles: ['ROLE_ADMIN'] }, null]), pack({})), /caller is not a string/],
      [rawFrame(pack([0, 1, 'echo', 'echo', 1, null, '', null]), pack({})), /caller must be/],
      [rawFrame(pack([0, 1, 'echo', 'echo', 1, null, null, null])), /request without a payload/],
      [rawFrame(okHeader), /answer without a payload/],
      [rawFrame(pack([3, 1]), pack(1)), /ping or pong with a payload/],
      [rawFrame(pack([5, 0])), /goaway header needs/],
      // The same checks hold for [kind, id] headers read without msgpackr.
      [rawFrame(Buffer.from([0x92, 0x01, 0xce, 0, 0, 0, 1])), /answer without a payload/],
      [rawFrame(Buffer.from([0x92, 0x03, 0xce, 0, 0, 0, 1]), pack(1)), /ping or pong with a payload/],
      [rawFrame(Buffer.from([0x92, 0x09, 0xce, 0, 0, 0, 1])), /unknown frame kind 9/],
    ];
    for (const [bytes, reason] of cases) {
      const { decoder, got, errors } = collect(frameLimits(4096, 64));
      decoder.push(bytes);
      expect(got, reason.source).toEqual([]);
      expect(errors, reason.source).toHaveLength(1);
      expect(errors[0]).toMatch(reason);
    }
  });

  test('decodePayload throws PayloadError for bytes that are not one msgpack value', () => {
    for (const payload of [Buffer.from([0x93, 0x01]), Buffer.concat([pack(1), Buffer.from([0x01])]), Buffer.from([0xc1])]) {
      const frame = rawFrame(pack([1, 1]), payload);
      expect(() => decodePayload(frame, 6 + 3)).toThrow(PayloadError);
    }
  });

  test('the caller field is a claim to check, never an identity to believe: a string or nil, of bounded length', () => {
    const h = toHeader([0, 1, 'echo', 'echo', 1, null, 'service', null], true);
    expect((h as RequestHeader).caller).toBe('service');
    expect((toHeader([0, 1, 'echo', 'echo', 1, null, null, null], true) as RequestHeader).caller).toBeUndefined();
    // An identity map (what the wire used to carry, believed as sent) is a malformed header now.
    expect(toHeader([0, 1, 'echo', 'echo', 1, null, { subject: 'root', roles: ['ROLE_SERVICE'] }, null], true)).toMatch(/caller is not a string/);
    expect(toHeader([0, 1, 'echo', 'echo', 1, null, 'x'.repeat(20_000), null], true)).toMatch(/caller must be/);
  });

  test('handshake frames carry a credential, nonces and proofs, and nothing else', () => {
    const nonce = new Uint8Array(32).fill(7);
    const proof = new Uint8Array(64).fill(9);
    const { decoder, got, errors } = collect();
    decoder.push(encodeFrame({ kind: 'hello', id: 0, credential: 'ev1.c.s', nonce }));
    decoder.push(encodeFrame({ kind: 'welcome', id: 0, credential: 'ev1.d.s', nonce, proof }));
    decoder.push(encodeFrame({ kind: 'proof', id: 0, proof }));
    expect(errors).toEqual([]);
    expect(withoutBytes(got).map((g) => g.header.kind)).toEqual(['hello', 'welcome', 'proof']);
    expect(toHeader([6, 0, 'ev1.c.s', new Uint8Array(4)], false)).toMatch(/nonce malformed/);
    expect(toHeader([8, 0, 'not bytes'], false)).toMatch(/proof header/);
    expect(toHeader([6, 0, 'ev1.c.s', nonce], true)).toMatch(/no payload/);
  });

  test('error payloads are checked', () => {
    expect(toSerializedError({ code: 'X', message: 'm', httpStatus: 404, extra: 1 })).toEqual({ code: 'X', message: 'm', httpStatus: 404 });
    expect(toSerializedError({ code: 5 })).toMatch(/string code/);
    expect(toSerializedError({ code: 'X', message: 'm', httpStatus: 99 })).toMatch(/httpStatus/);
    expect(toSerializedError('nope')).toMatch(/not a map/);
  });

  test('a map key "__proto__" in a payload does not reach the prototype', () => {
    const payload = Buffer.from([0x81, 0xa9, ...Buffer.from('__proto__'), 0x81, 0xa1, 0x78, 0x01]);
    const input = decodePayload(rawFrame(pack([1, 1]), payload), 6 + 3) as Record<string, unknown>;
    expect(Object.getPrototypeOf(input)).toBe(Object.prototype);
    expect((input as { x?: unknown }).x).toBeUndefined();
  });

  test('values msgpack cannot hold, or too large for a frame or a header, fail to encode, write nothing and leave the encoder usable', () => {
    const cyclic: unknown[] = [];
    cyclic.push(cyclic);
    expect(parts({ kind: 'ok', id: 1 }, 'fine')).toHaveLength(1);
    expect(() => parts({ kind: 'ok', id: 1 }, cyclic)).toThrow(FrameEncodeError);
    expect(() => parts({ kind: 'ok', id: 1 }, Symbol('s'))).toThrow(FrameEncodeError);
    expect(() => parts({ kind: 'ok', id: 1 }, 'z'.repeat(2000), frameLimits(1000, 64))).toThrow(/frame limit/);
    expect(() => parts({ ...request, caller: 's'.repeat(100) }, 1, frameLimits(1000, 64))).toThrow(/header limit/);
    expect(() => parts({ ...request, caller: 's'.repeat(400) }, 1, frameLimits(1000, 64))).toThrow(/header limit/);
    const written: Buffer[] = [];
    expect(() => writeFrame({ write: (b) => void written.push(b) }, { kind: 'ok', id: 1 }, 'z'.repeat(2000), frameLimits(1000, 64))).toThrow();
    expect(written).toEqual([]);
    const { decoder, got } = collect();
    decoder.push(encodeFrame(request, 'after'));
    expect(withoutBytes(got)).toEqual([{ header: request, payload: 'after' }]);
  });

  test('limits must make sense', () => {
    expect(() => frameLimits(1024, 70_000)).toThrow(RangeError);
    expect(() => frameLimits(100, 200)).toThrow(RangeError);
  });

  test('addresses', () => {
    expect(parseAddress('127.0.0.1:4000')).toEqual({ host: '127.0.0.1', port: 4000 });
    expect(parseAddress('[::1]:80')).toEqual({ host: '::1', port: 80 });
    expect(parseAddress('localhost')).toBeUndefined();
    expect(parseAddress('h:70000')).toBeUndefined();
  });
});
