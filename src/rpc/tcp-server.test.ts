import { connect, createServer, type Socket } from 'node:net';
import { pack } from 'msgpackr';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { eventually, Kit, silentLog } from '../../test/fixtures/unit-kit.js';
import { UnavailableError } from '../kernel/errors.js';
import { decodePayload, encodeFrame, FrameDecoder, type FrameHeader, type RequestHeader } from './frame.js';
import { RpcServer, type RpcServerOptions } from './tcp-server.js';
import { TcpTransport } from './tcp-transport.js';
import { callMeta, echoContract, echoService, prng, startHosts, type ServingHosts } from '../../test/fixtures/rpc-kit.js';

const kit = new Kit();
const m = echoContract.methods;
let serving: ServingHosts;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  serving = await startHosts([echoService], kit.tmp('rpc-server'), silentLog);
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});
afterAll(async () => {
  await serving.stop();
  await kit.cleanup();
});

/** A logger whose warnings are kept for inspection. */
function capturingLog(): { log: pino.Logger; lines: { msg: string; reason?: string }[] } {
  const lines: { msg: string; reason?: string }[] = [];
  const log = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

async function serve(options: Partial<RpcServerOptions> = {}): Promise<RpcServer> {
  const s = new RpcServer({ resolve: serving.resolve, log: silentLog, ...options });
  await s.listen();
  cleanups.push(() => s.close(100));
  return s;
}

function client(options: ConstructorParameters<typeof TcpTransport>[0] = {}): TcpTransport {
  const t = new TcpTransport({ log: silentLog, ...options });
  cleanups.push(() => t.close());
  return t;
}

function requestFrame(id: number, method: string, input: unknown, service = 'echo'): Buffer {
  const header: RequestHeader = { kind: 'request', id, service, method, deadline: Date.now() + 10_000, traceparent: undefined, caller: undefined, from: undefined };
  return encodeFrame(header, input);
}

function rawSocket(address: string): Promise<Socket> {
  const [host, port] = address.split(':');
  return new Promise((resolve, reject) => {
    const s = connect({ host, port: Number(port) }, () => resolve(s));
    s.once('error', reject);
  });
}

describe('TCP RPC server: limits', () => {
  test('beyond maxInFlight calls on one connection, calls are refused with a typed error, not dropped', async () => {
    const s = await serve({ maxInFlight: 5 });
    const t = client({ maxConnectionsPerAddress: 1 });
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => t.send(s.address, m.slow, { ms: 50 }, callMeta())));
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(ok).toHaveLength(5);
    expect(refused).toHaveLength(15);
    for (const r of refused) {
      expect(r.reason).toBeInstanceOf(UnavailableError);
      expect(r.reason.details).toMatchObject({ maybeExecuted: false });
    }
    expect(s.stats.overloaded).toBe(15);
    expect(await t.send(s.address, m.echo, { text: 'still fine' }, callMeta())).toEqual({ text: 'still fine', n: 0 });
  });

  test('a peer that does not read its answers is not read from until it catches up (backpressure)', async () => {
    const s = await serve({ highWaterMark: 64 * 1024, maxInFlight: 100_000 });
    const socket = await rawSocket(s.address);
    cleanups.push(async () => socket.destroy());
    socket.pause();
    const N = 2_000;
    socket.write(Buffer.concat(Array.from({ length: N }, (_, i) => requestFrame(i + 1, 'blob', { bytes: 8_192 }))));
    await eventually(() => expect(s.stats.pauses).toBeGreaterThan(0), 5_000);

    const answers = new Map<number, { header: FrameHeader; output: unknown }>();
    const decoder = new FrameDecoder(
      (header, frame, payloadStart) => answers.set(header.id, { header, output: decodePayload(frame, payloadStart) }),
      (reason) => {
        throw new Error(reason);
      },
    );
    socket.on('data', (chunk: Buffer) => decoder.push(chunk));
    socket.resume();
    await eventually(() => expect(answers.size).toBe(N), 10_000);
    for (const a of answers.values()) expect(a).toEqual({ header: { kind: 'ok', id: expect.any(Number) }, output: { data: 'x'.repeat(8_192) } });
  });

  test('a client whose server stops reading refuses new calls instead of queueing without bound', async () => {
    const accepted: Socket[] = [];
    const deaf = createServer((socket) => {
      socket.pause();
      accepted.push(socket);
    });
    await new Promise<void>((r) => deaf.listen(0, '127.0.0.1', r));
    cleanups.push(() => {
      for (const s of accepted) s.destroy(); // paused, they would never notice the client leave
      return new Promise((r) => deaf.close(r));
    });
    const address = `127.0.0.1:${(deaf.address() as { port: number }).port}`;
    const t = client({ maxQueuedBytes: 1024 * 1024, closeDrainMs: 10 });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 400 }, async (_, i) => {
        await new Promise((r) => setTimeout(r, i % 40)); // spread over a few ticks, so the socket buffer can fill
        return t.send(address, m.echo, { text: 'z'.repeat(100_000) }, callMeta(300));
      }),
    );
    const reasons = outcomes.map((o) => (o.status === 'rejected' ? o.reason : undefined));
    const refused = reasons.filter((r) => r instanceof UnavailableError && (r.details as { maybeExecuted?: boolean }).maybeExecuted === false);
    expect(refused.length).toBeGreaterThan(0);
    expect(refused[0].message).toContain('not reading its requests');
    // The rest were sent and timed out: nothing hangs.
    expect(reasons.every((r) => r !== undefined)).toBe(true);
  });

  test('a protocol error closes that connection with a logged reason; other connections carry on', async () => {
    const { log, lines } = capturingLog();
    const s = await serve({ log });
    const t = client();
    await t.send(s.address, m.echo, { text: 'before' }, callMeta());
    const bad = await rawSocket(s.address);
    const closed = new Promise((r) => bad.once('close', r));
    bad.on('error', () => undefined);
    bad.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
    await closed;
    expect(lines).toEqual([expect.objectContaining({ msg: 'rpc connection closed: protocol error', reason: expect.stringContaining('exceeds the 4194304-byte limit') })]);
    expect(await t.send(s.address, m.echo, { text: 'after' }, callMeta())).toEqual({ text: 'after', n: 0 });
    expect(s.stats.protocolErrors).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------
// Fuzzing: 10,000 frames in all. Each hostile frame goes on its own connection (the first one
// closes it), preceded by 0–2 well-formed requests with random content, written in random pieces.

function randomValue(rnd: () => number, depth = 0): unknown {
  const k = Math.floor(rnd() * (depth > 2 ? 6 : 9));
  switch (k) {
    case 0:
      return null;
    case 1:
      return Math.floor(rnd() * 2 ** 33) - 2 ** 32;
    case 2:
      return rnd() * 1e6;
    case 3:
      return 'x'.repeat(Math.floor(rnd() * 20));
    case 4:
      return rnd() < 0.5;
    case 5:
      return Buffer.from([Math.floor(rnd() * 256)]);
    case 6:
      return Array.from({ length: Math.floor(rnd() * 10) }, () => randomValue(rnd, depth + 1));
    case 7:
      return Object.fromEntries(Array.from({ length: Math.floor(rnd() * 5) }, (_, i) => [`k${i}`, randomValue(rnd, depth + 1)]));
    default:
      return undefined;
  }
}

function randomBytes(rnd: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

/** A frame as the wire has it: length, header length, then header and payload bytes as given. */
function rawFrame(header: Buffer, payload: Buffer = Buffer.alloc(0), headerLength = header.length): Buffer {
  const prefix = Buffer.alloc(6);
  prefix.writeUInt32BE(2 + header.length + payload.length);
  prefix.writeUInt16BE(headerLength, 4);
  return Buffer.concat([prefix, header, payload]);
}

const MAX_FRAME = 64 * 1024;
const MAX_HEADER = 1024;

/**
 * One bad frame: random bytes, a random msgpack header, a mangled request header, garbage for
 * the payload of a valid request, an oversized length, an empty frame or header, a header
 * length that lies, or a truncated frame.
 */
function badFrame(rnd: () => number, i: number): Buffer {
  switch (i % 8) {
    case 0: {
      if (rnd() < 0.5) return rawFrame(randomBytes(rnd, 1 + Math.floor(rnd() * 100)), randomBytes(rnd, Math.floor(rnd() * 100)));
      const body = randomBytes(rnd, 1 + Math.floor(rnd() * 200));
      const prefix = Buffer.alloc(4);
      prefix.writeUInt32BE(body.length);
      return Buffer.concat([prefix, body]);
    }
    case 1:
      return rawFrame(pack(randomValue(rnd)), rnd() < 0.5 ? Buffer.alloc(0) : pack(randomValue(rnd)));
    case 2: {
      // A request header with one field replaced by something random, or cut short.
      const tuple: unknown[] = [0, 1, 'echo', 'echo', Date.now() + 1000, null, null, null];
      tuple[Math.floor(rnd() * tuple.length)] = randomValue(rnd);
      if (rnd() < 0.3) tuple.length = Math.floor(rnd() * 8);
      return rawFrame(pack(tuple), pack({ text: 'x' }));
    }
    case 3: {
      const h = Buffer.alloc(4);
      h.writeUInt32BE(MAX_FRAME + 1 + Math.floor(rnd() * (0xffffffff - MAX_FRAME - 1)));
      return Buffer.concat([h, randomBytes(rnd, Math.floor(rnd() * 50))]);
    }
    case 4: {
      const r = rnd();
      if (r < 0.3) return Buffer.alloc(4); // length 0
      if (r < 0.6) return rawFrame(Buffer.alloc(0), randomBytes(rnd, 10)); // header length 0
      return Buffer.from([0, 0, 0, 1, 7]); // too short to hold a header length
    }
    case 5: {
      // A well-formed request header whose payload is not msgpack.
      const good = requestFrame(1, 'echo', { text: 'x' });
      const headerEnd = 6 + good.readUInt16BE(4);
      return rawFrame(good.subarray(6, headerEnd), Buffer.concat([Buffer.from([0xc1]), randomBytes(rnd, Math.floor(rnd() * 20))]));
    }
    case 6: {
      // A header length that lies: past the end of the frame, or beyond the header limit.
      const header = pack([0, 1, 'echo', 'echo', Date.now() + 1000, null, null, null]);
      return rnd() < 0.5
        ? rawFrame(header, Buffer.alloc(0), header.length + 1 + Math.floor(rnd() * 100))
        : rawFrame(Buffer.concat([header, randomBytes(rnd, MAX_HEADER)]), pack(1), header.length + MAX_HEADER);
    }
    default: {
      const whole = requestFrame(1, 'echo', { text: 'y'.repeat(Math.floor(rnd() * 500)) });
      return whole.subarray(0, 1 + Math.floor(rnd() * (whole.length - 1)));
    }
  }
}

const methodNames = [...Object.keys(echoContract.methods), 'nope', 'constructor', '__proto__', 'toString'];

/** A well-formed request with random content: random method (known or not), input, caller and deadline. */
function randomRequest(rnd: () => number, id: number): Buffer {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  return encodeFrame(
    {
      kind: 'request',
      id,
      service: rnd() < 0.8 ? 'echo' : pick(['ghost', 'constructor', '__proto__']),
      method: pick(methodNames),
      deadline: Date.now() + (rnd() < 0.1 ? -1_000 : 10_000),
      traceparent: rnd() < 0.5 ? undefined : pick(['00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', 'garbage']),
      caller: rnd() < 0.5 ? undefined : pick(['service', 'ua1.forged.sig', 'x'.repeat(1 + Math.floor(rnd() * 50))]),
      from: rnd() < 0.5 ? undefined : 'fuzzer',
    },
    rnd() < 0.3 ? { text: 'ok', n: 1 } : randomValue(rnd),
  );
}

/** Sends 0–2 random well-formed requests then one hostile frame on a fresh connection; returns the number of frames sent. */
async function fuzzConnection(address: string, rnd: () => number, i: number): Promise<number> {
  const socket = await rawSocket(address);
  socket.on('error', () => undefined); // resets are expected: the server cuts bad peers
  socket.resume(); // answers to the good requests are read and dropped, so 'close' can follow the server's FIN
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  const good = Math.floor(rnd() * 3);
  const parts: Buffer[] = [];
  for (let g = 0; g < good; g++) parts.push(randomRequest(rnd, g + 1));
  parts.push(badFrame(rnd, i));
  const bytes = Buffer.concat(parts);
  // Up to three random cuts, sometimes with a pause between pieces, so frames straddle chunks.
  const cuts = [0, ...Array.from({ length: Math.floor(rnd() * 4) }, () => Math.floor(rnd() * bytes.length)).sort((a, b) => a - b), bytes.length];
  for (let c = 1; c < cuts.length; c++) {
    if (cuts[c]! > cuts[c - 1]!) socket.write(bytes.subarray(cuts[c - 1], cuts[c]));
    if (rnd() < 0.2) await new Promise((r) => setImmediate(r));
  }
  socket.end();
  const timer = setTimeout(() => socket.destroy(), 2_000);
  await closed;
  clearTimeout(timer);
  return parts.length;
}

describe('TCP RPC server: hostile input', () => {
  test('10,000 random, truncated and oversized frames: no crash, every bad connection closed with a reason, and it still serves', async () => {
    const { log, lines } = capturingLog();
    const s = await serve({ log, maxFrameBytes: MAX_FRAME, maxHeaderBytes: MAX_HEADER });
    const t = client();

    // A well-behaved client keeps calling while the fuzzing goes on.
    let running = true;
    let goodCalls = 0;
    const steady = (async () => {
      while (running) {
        expect(await t.send(s.address, m.echo, { text: 'steady', n: goodCalls }, callMeta())).toEqual({ text: 'steady', n: goodCalls });
        goodCalls++;
        await new Promise((r) => setTimeout(r, 2));
      }
    })();

    const FRAMES = 10_000;
    const PARALLEL = 64;
    const rnd = prng(20240601);
    let sent = 0;
    let hostile = 0;
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (sent < FRAMES) {
          const n = Math.min(3, FRAMES - sent);
          sent += n; // reserved before the await, so the parallel senders stop at FRAMES exactly
          const used = await fuzzConnection(s.address, rnd, hostile++);
          sent -= n - used;
        }
      }),
    );
    running = false;
    await steady;

    expect(goodCalls).toBeGreaterThan(0);
    expect(await t.send(s.address, m.echo, { text: 'after the storm' }, callMeta())).toEqual({ text: 'after the storm', n: 0 });
    expect(sent).toBeGreaterThanOrEqual(FRAMES);
    expect(s.stats.accepted).toBe(hostile + 1);
    await eventually(() => expect(s.stats.connections).toBe(1));
    // Nearly every hostile frame is a protocol error; the few exceptions are mangled requests
    // whose mangling happened to leave a valid request (answered, not an error).
    expect(s.stats.protocolErrors).toBeGreaterThan(hostile * 0.9);
    const closed = lines.filter((l) => l.msg === 'rpc connection closed: protocol error');
    expect(closed.length).toBe(s.stats.protocolErrors);
    // Requests that claim a caller or a calling service are refused one by one (this listener
    // holds no credentials), each with a line saying so.
    expect(lines.filter((l) => l.msg === 'rpc call refused').length).toBeGreaterThan(0);
    const reasons = new Set(closed.map((l) => l.reason!.replace(/[\d:].*$/, '')));
    for (const r of [
      'frame of ',
      'empty frame',
      'empty header',
      'header of ',
      'header is not valid msgpack',
      'malformed header',
      'payload is not valid msgpack',
      'peer closed the connection in the middle of a frame',
    ]) {
      expect([...reasons].some((x) => x.startsWith(r)), `a reason starting "${r}" in ${[...reasons].join(' | ')}`).toBe(true);
    }
  }, 30_000);
});
