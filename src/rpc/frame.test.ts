import { pack } from 'msgpackr';
import { describe, expect, test } from 'vitest';
import { encodeFrame, FrameDecoder, FrameEncodeError, parseAddress, toMessage, type Message } from './frame.js';
import { prng } from '../../test/fixtures/rpc-kit.js';

const request: Message = {
  kind: 'request',
  id: 7,
  service: 'echo',
  method: 'echo',
  deadline: 1_700_000_000_000,
  traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  caller: { subject: 'icyfenix', roles: ['ROLE_USER'], claims: { tenant: 'a' } },
  from: 'payment',
  input: { text: 'héllo', n: 3, nested: [1, { deep: true }] },
};
const messages: Message[] = [
  request,
  { ...request, id: 8, traceparent: undefined, caller: undefined, from: undefined, input: undefined },
  { kind: 'response', id: 7, ok: true, output: { text: 'héllo', list: [1, 2, 3] } },
  { kind: 'response', id: 9, ok: false, error: { code: 'NO_WAY', message: 'refused', details: { why: 'rules' }, httpStatus: 422, origin: 'echo.refuse' } },
  { kind: 'ping', id: 1 },
  { kind: 'pong', id: 1 },
  { kind: 'goaway', reason: 'shutting down' },
];

function collect(max?: number): { decoder: FrameDecoder; got: Message[]; errors: string[] } {
  const got: Message[] = [];
  const errors: string[] = [];
  return { decoder: new FrameDecoder((m) => got.push(m), (r) => errors.push(r), max), got, errors };
}

function frameOf(payload: Buffer): Buffer {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(payload.length);
  return Buffer.concat([header, payload]);
}

describe('frames', () => {
  test('every message kind survives encoding and decoding', () => {
    const { decoder, got, errors } = collect();
    for (const m of messages) decoder.push(encodeFrame(m));
    expect(errors).toEqual([]);
    expect(got).toEqual(messages);
  });

  test('frames packed into one chunk and split at every byte boundary decode alike', () => {
    const stream = Buffer.concat(messages.map((m) => encodeFrame(m)));
    const packed = collect();
    packed.decoder.push(stream);
    expect(packed.got).toEqual(messages);
    for (let cut = 1; cut < stream.length; cut++) {
      const { decoder, got, errors } = collect();
      decoder.push(stream.subarray(0, cut));
      decoder.push(stream.subarray(cut));
      expect(errors).toEqual([]);
      expect(got).toEqual(messages);
    }
    const bytewise = collect();
    for (let i = 0; i < stream.length; i++) bytewise.decoder.push(stream.subarray(i, i + 1));
    expect(bytewise.got).toEqual(messages);
    expect(bytewise.decoder.partial).toBe(false);
  });

  test('random chunking of a long stream loses and invents nothing', () => {
    const rnd = prng(42);
    const many: Message[] = Array.from({ length: 500 }, (_, i) => ({ kind: 'response', id: i, ok: true, output: 'y'.repeat(Math.floor(rnd() * 3000)) }));
    const stream = Buffer.concat(many.map((m) => encodeFrame(m)));
    const { decoder, got } = collect();
    for (let at = 0; at < stream.length; ) {
      const size = 1 + Math.floor(rnd() * 9000);
      decoder.push(stream.subarray(at, at + size));
      at += size;
    }
    expect(got).toEqual(many);
  });

  test('an oversized length is refused before its body arrives', () => {
    const { decoder, got, errors } = collect(1024);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(1025);
    decoder.push(header);
    expect(errors).toEqual(['frame of 1025 bytes exceeds the 1024-byte limit']);
    decoder.push(encodeFrame({ kind: 'ping', id: 1 }));
    expect(got).toEqual([]);
    expect(errors).toHaveLength(1);
  });

  test('empty frames, bytes that are not msgpack and values of the wrong shape are protocol errors', () => {
    const cases: [Buffer, RegExp][] = [
      [Buffer.alloc(4), /empty frame/],
      [frameOf(Buffer.from([0xc1])), /not valid msgpack|malformed message/],
      [frameOf(Buffer.from([0x93, 0x01])), /not valid msgpack/],
      [frameOf(Buffer.concat([pack([3, 1]), Buffer.from([0x01])])), /not valid msgpack/],
      [frameOf(pack({ kind: 'request' })), /malformed message: not a non-empty array/],
      [frameOf(pack([9, 1])), /unknown message kind 9/],
      [frameOf(pack([0, 1, 'echo', 'echo', 1, null, null, null])), /request has 8 fields/],
      [frameOf(pack([0, -1, 'echo', 'echo', 1, null, null, null, {}])), /request id/],
      [frameOf(pack([0, 1, '', 'echo', 1, null, null, null, {}])), /service and method/],
      [frameOf(pack([0, 1, 'echo', 'echo', 'soon', null, null, null, {}])), /deadline/],
      [frameOf(pack([0, 1, 'echo', 'echo', 1, null, { subject: 'x', roles: 'admin' }, null, {}])), /caller.roles/],
      [frameOf(pack([2, 1, { code: 5 }])), /string code/],
      [frameOf(pack([1, 1])), /answer needs/],
    ];
    for (const [bytes, reason] of cases) {
      const { decoder, got, errors } = collect();
      decoder.push(bytes);
      expect(got, reason.source).toEqual([]);
      expect(errors, reason.source).toHaveLength(1);
      expect(errors[0]).toMatch(reason);
    }
  });

  test('decoded identities keep only what an identity holds', () => {
    const m = toMessage([0, 1, 'echo', 'echo', 1, null, { subject: 'a', roles: ['R'], extra: 'dropped' }, null, {}]);
    expect(typeof m).not.toBe('string');
    expect((m as Extract<Message, { kind: 'request' }>).caller).toEqual({ subject: 'a', roles: ['R'] });
  });

  test('a map key "__proto__" does not reach the prototype', () => {
    const { decoder, got } = collect();
    decoder.push(frameOf(Buffer.from([0x99, 0x00, 0x01, 0xa1, 0x65, 0xa1, 0x65, 0x01, 0xc0, 0xc0, 0xc0, 0x81, 0xa9, ...Buffer.from('__proto__'), 0x81, 0xa1, 0x78, 0x01])));
    const input = (got[0] as Extract<Message, { kind: 'request' }>).input as Record<string, unknown>;
    expect(Object.getPrototypeOf(input)).toBe(Object.prototype);
    expect((input as { x?: unknown }).x).toBeUndefined();
  });

  test('values msgpack cannot hold, or too large for a frame, fail to encode and leave the encoder usable', () => {
    const cyclic: unknown[] = [];
    cyclic.push(cyclic);
    expect(() => encodeFrame({ kind: 'response', id: 1, ok: true, output: cyclic })).toThrow(FrameEncodeError);
    expect(() => encodeFrame({ kind: 'response', id: 1, ok: true, output: Symbol('s') })).toThrow(FrameEncodeError);
    expect(() => encodeFrame({ kind: 'response', id: 1, ok: true, output: 'z'.repeat(2000) }, 1000)).toThrow(/frame limit/);
    const { decoder, got } = collect();
    decoder.push(encodeFrame(messages[0]!));
    expect(got).toEqual([messages[0]]);
  });

  test('addresses', () => {
    expect(parseAddress('127.0.0.1:4000')).toEqual({ host: '127.0.0.1', port: 4000 });
    expect(parseAddress('[::1]:80')).toEqual({ host: '::1', port: 80 });
    expect(parseAddress('localhost')).toBeUndefined();
    expect(parseAddress('h:70000')).toBeUndefined();
  });
});
