import { connect, createServer, type Server, type Socket } from 'node:net';
import { pack } from 'msgpackr';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { eventually, Kit, rejection, silentLog } from '../../test/fixtures/unit-kit.js';
import { BusinessError, ForbiddenError, NotFoundError, TimeoutError, UnavailableError, ValidationError } from '../kernel/errors.js';
import { formatTraceparent } from '../kernel/trace.js';
import { Forwarder, type ForwarderOptions } from './forwarder.js';
import { decodePayload, encodeFrame, FrameDecoder, type FrameHeader, type RequestHeader } from './frame.js';
import { RpcServer, type RpcServerOptions } from './tcp-server.js';
import { TcpTransport } from './tcp-transport.js';
import { callMeta, echoContract, echoService, startHosts, type ServingHosts } from '../../test/fixtures/rpc-kit.js';
import { planeFor, verifiedUser } from '../../test/fixtures/plane-kit.js';

const kit = new Kit();
const m = echoContract.methods;
let serving: ServingHosts;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  serving = await startHosts([echoService], kit.tmp('rpc-forwarder'), silentLog);
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});
afterAll(async () => {
  await serving.stop();
  await kit.cleanup();
});

async function serve(options: Partial<RpcServerOptions> = {}): Promise<RpcServer> {
  const s = new RpcServer({ resolve: serving.resolve, log: silentLog, ...options });
  await s.listen();
  cleanups.push(() => s.close(100));
  return s;
}

/** A forwarder sending service "echo" to `upstream` (a fixed address or one looked up per call). */
async function forward(upstream: string | (() => string), options: Partial<ForwarderOptions> = {}): Promise<Forwarder> {
  const address = typeof upstream === 'string' ? () => upstream : upstream;
  const f = new Forwarder({ route: (h) => (h.service === 'echo' ? address() : undefined), log: silentLog, ...options });
  await f.listen();
  cleanups.push(() => f.close(100));
  return f;
}

function client(options: ConstructorParameters<typeof TcpTransport>[0] = {}): TcpTransport {
  const t = new TcpTransport({ log: silentLog, ...options });
  cleanups.push(() => t.close());
  return t;
}

function rawSocket(address: string): Promise<Socket> {
  const [host, port] = address.split(':');
  return new Promise((resolve, reject) => {
    const s = connect({ host, port: Number(port) }, () => resolve(s));
    s.once('error', reject);
    cleanups.push(async () => s.destroy());
  });
}

interface Received {
  header: FrameHeader;
  /** The payload's bytes as they arrived. */
  payload: Buffer;
}

/** Collects the frames arriving on `socket`. */
function frames(socket: Socket): Received[] {
  const got: Received[] = [];
  const decoder = new FrameDecoder(
    (header, frame, payloadStart) => got.push({ header, payload: Buffer.from(frame.subarray(payloadStart)) }),
    (reason) => {
      throw new Error(reason);
    },
  );
  socket.on('data', (chunk: Buffer) => decoder.push(chunk));
  return got;
}

/** A stand-in upstream server that shows exactly what arrives and lets the test answer (or not). */
async function fakeUpstream(): Promise<{ address: string; received: Received[]; sockets: Socket[]; server: Server }> {
  const sockets: Socket[] = [];
  const received: Received[] = [];
  const server = createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => undefined);
    const decoder = new FrameDecoder(
      (header, frame, payloadStart) => received.push({ header, payload: Buffer.from(frame.subarray(payloadStart)) }),
      () => socket.destroy(),
    );
    socket.on('data', (chunk: Buffer) => decoder.push(chunk));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => {
    for (const s of sockets) s.destroy();
    return new Promise((r) => server.close(r));
  });
  return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, received, sockets, server };
}

/** A request frame with the payload bytes given as they are. */
function requestWithPayload(header: RequestHeader, payload: Buffer): Buffer {
  const template = encodeFrame(header, null);
  const headerEnd = 6 + template.readUInt16BE(4);
  const frame = Buffer.concat([template.subarray(0, headerEnd), payload]);
  frame.writeUInt32BE(frame.length - 4, 0);
  return frame;
}

const requestHeader = (id: number, method = 'echo', deadline = Date.now() + 10_000): RequestHeader => ({
  kind: 'request',
  id,
  service: 'echo',
  method,
  deadline,
  traceparent: undefined,
  caller: undefined,
  from: undefined,
});

describe('forwarder: calls pass through', () => {
  test('calls and typed errors arrive end to end, with deadline, trace, caller and calling service', async () => {
    // On a deployment's internal plane: the client (payment), the forwarder beside it (a proxy
    // holding payment's credentials) and the server (echo) each prove who they are.
    const payment = planeFor('payment#0', { svc: ['payment'] });
    const s = await serve({ plane: planeFor('echo#0', { svc: ['echo'] }) });
    const f = await forward(s.address, { plane: planeFor('payment#0 proxy', { svc: ['payment'] }), upstream: { plane: planeFor('payment#0 proxy', { svc: ['payment'] }) } });
    const t = client({ plane: payment });
    expect(await t.send(f.address, m.echo, { text: 'héllo' }, callMeta())).toEqual({ text: 'héllo', n: 0 });
    expect(await t.send(f.address, m.nothing, undefined, callMeta())).toBeUndefined();

    const meta = callMeta(4_000, verifiedUser('icyfenix', ['ROLE_USER']), 'payment');
    const out = (await t.send(f.address, m.meta, {}, meta)) as { deadline: number; traceId: string; caller: unknown };
    expect(out).toMatchObject({ deadline: meta.deadline, traceId: meta.trace.traceId, caller: { subject: 'icyfenix', roles: ['ROLE_USER'] } });
    expect(serving.lastMeta?.from).toBe('payment');
    expect(formatTraceparent(serving.lastMeta!.trace)).toBe(formatTraceparent(meta.trace));

    const v = await rejection(t.send(f.address, m.add, { a: 'one', b: 1.5, label: 'x' }, callMeta()));
    expect(v).toBeInstanceOf(ValidationError);
    expect((v as ValidationError).issues.map((i) => i.path).sort()).toEqual(['a', 'b', 'label']);
    expect(await rejection(t.send(f.address, m.refuse, {}, callMeta()))).toMatchObject({ code: 'NO_WAY', httpStatus: 422, details: { why: 'rules' }, origin: 'echo.refuse' });
    expect(await rejection(t.send(f.address, m.refuse, {}, callMeta()))).toBeInstanceOf(BusinessError);
    expect(await rejection(t.send(f.address, m.admin, {}, callMeta(1_000, verifiedUser('bob', ['ROLE_USER']))))).toBeInstanceOf(ForbiddenError);
    expect(await t.send(f.address, m.admin, {}, callMeta(1_000, verifiedUser('root', ['ROLE_ADMIN'])))).toEqual({ subject: 'root' });
    expect(await rejection(t.send(f.address, { ...m.echo, name: 'nope', fullName: 'echo.nope' }, {}, callMeta()))).toBeInstanceOf(NotFoundError);

    // No route: answered by the forwarder, and the call surely never ran.
    const noRoute = await rejection(t.send(f.address, { ...m.echo, service: 'ghost', fullName: 'ghost.echo' }, {}, callMeta()));
    expect(noRoute).toBeInstanceOf(UnavailableError);
    expect(noRoute.details).toMatchObject({ maybeExecuted: false });
    expect(noRoute.message).toContain('no route for ghost.echo');
    expect(f.stats).toMatchObject({ forwarded: 9, unavailable: 1, timedOut: 0, protocolErrors: 0 });
    expect(await t.ping(f.address)).toBeLessThan(1_000);
  });

  test('payload bytes pass untouched, never decoded, and ids are mapped per upstream connection', async () => {
    const up = await fakeUpstream();
    const f = await forward(up.address);
    const a = await rawSocket(f.address);
    const b = await rawSocket(f.address);
    const answersA = frames(a);
    const answersB = frames(b);
    // Not msgpack at all: a forwarder that decoded payloads would have to refuse it.
    const opaque = Buffer.from([0xc1, 0xde, 0xad, 0xbe, 0xef]);
    const valid = pack({ text: 'x'.repeat(3_000), list: [1, 2, 3] });
    a.write(requestWithPayload(requestHeader(7), opaque));
    b.write(requestWithPayload(requestHeader(7), valid));
    await eventually(() => expect(up.received).toHaveLength(2));
    expect(up.sockets).toHaveLength(1); // both clients share one upstream connection
    const ids = up.received.map((r) => r.header.id);
    expect(new Set(ids).size).toBe(2); // same client id, different upstream ids
    const byPayload = new Map(up.received.map((r) => [r.payload.toString('hex'), r]));
    expect(byPayload.get(opaque.toString('hex'))?.header).toEqual({ ...requestHeader(7), id: expect.any(Number), deadline: expect.any(Number) });
    expect(byPayload.has(valid.toString('hex'))).toBe(true);

    // Answers come back to the right client, with its own id and the same bytes.
    const answerFor = (payload: Buffer) => byPayload.get(payload.toString('hex'))!.header.id;
    const reply = Buffer.from([0xc1, 0x01, 0x02]);
    const errorReply = pack({ code: 'NO_WAY', message: 'no' });
    up.sockets[0]!.write(Buffer.concat([answerFrame('ok', answerFor(opaque), reply), answerFrame('error', answerFor(valid), errorReply)]));
    await eventually(() => expect(answersA.length + answersB.length).toBe(2));
    expect(answersA).toEqual([{ header: { kind: 'ok', id: 7 }, payload: reply }]);
    expect(answersB).toEqual([{ header: { kind: 'error', id: 7 }, payload: errorReply }]);
  });

  test('a header whose id was encoded another way is rewritten; the payload still passes untouched', async () => {
    const up = await fakeUpstream();
    const f = await forward(up.address);
    const socket = await rawSocket(f.address);
    const answers = frames(socket);
    const header = pack([0, 5, 'echo', 'echo', Date.now() + 10_000, null, null, 'payment']); // id as a one-byte fixint
    const payload = pack({ text: 'minimal' });
    const prefix = Buffer.alloc(6);
    prefix.writeUInt32BE(2 + header.length + payload.length);
    prefix.writeUInt16BE(header.length, 4);
    socket.write(Buffer.concat([prefix, header, payload]));
    await eventually(() => expect(up.received).toHaveLength(1));
    expect(up.received[0]!.header).toMatchObject({ kind: 'request', service: 'echo', method: 'echo', from: 'payment' });
    expect(up.received[0]!.payload).toEqual(payload);
    up.sockets[0]!.write(answerFrame('ok', up.received[0]!.header.id, pack('done')));
    await eventually(() => expect(answers).toEqual([{ header: { kind: 'ok', id: 5 }, payload: pack('done') }]));
  });
});

/** An answer frame with the payload bytes given as they are. */
function answerFrame(kind: 'ok' | 'error', id: number, payload: Buffer): Buffer {
  const template = encodeFrame({ kind, id }, null);
  const frame = Buffer.concat([template.subarray(0, template.length - 1), payload]);
  frame.writeUInt32BE(frame.length - 4, 0);
  return frame;
}

describe('forwarder: failures', () => {
  test('an upstream killed mid-call: the call fails as maybe executed; while it is down calls fail as never run; then it recovers', async () => {
    const first = await serve();
    const address = first.address;
    const port = Number(address.split(':').pop());
    const f = await forward(address);
    const t = client();
    expect(await t.send(f.address, m.echo, { text: 'before' }, callMeta())).toEqual({ text: 'before', n: 0 });

    const inFlight = rejection(t.send(f.address, m.slow, { ms: 3_000 }, callMeta()));
    await eventually(() => expect(f.stats.forwarded).toBe(2));
    await first.close(0); // no drain: the connection is cut under the call
    const dropped = await inFlight;
    expect(dropped).toBeInstanceOf(UnavailableError);
    expect(dropped.details).toMatchObject({ maybeExecuted: true, address });

    const down = await rejection(t.send(f.address, m.echo, { text: 'down' }, callMeta()));
    expect(down).toBeInstanceOf(UnavailableError);
    expect(down.details).toMatchObject({ maybeExecuted: false });
    expect(down.message).toContain('ECONNREFUSED');

    await serve({ port });
    expect(await t.send(f.address, m.echo, { text: 'after' }, callMeta())).toEqual({ text: 'after', n: 0 });
    // The client's own connection to the forwarder survived all of it.
    expect(f.stats.accepted).toBe(1);
  });

  test('an upstream that never answers: the forwarder itself answers with a timeout at the deadline, and drops a late answer', async () => {
    const up = await fakeUpstream();
    const f = await forward(up.address);
    const socket = await rawSocket(f.address);
    const answers = frames(socket);
    const started = Date.now();
    socket.write(requestWithPayload(requestHeader(3, 'echo', started + 150), pack({ text: 'x' })));
    await eventually(() => expect(answers).toHaveLength(1), 2_000);
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(145);
    expect(took).toBeLessThan(1_000);
    expect(answers[0]!.header).toEqual({ kind: 'error', id: 3 });
    const error = decodePayload(Buffer.concat([Buffer.alloc(6), answers[0]!.payload]), 6) as { code: string; message: string };
    expect(error.code).toBe('EVOLITH_TIMEOUT');
    expect(error.message).toContain('echo.echo');
    expect(f.stats.timedOut).toBe(1);

    // The upstream answers after all: nobody is waiting, so nothing more reaches the client.
    up.sockets[0]!.write(answerFrame('ok', up.received[0]!.header.id, pack('late')));
    await new Promise((r) => setTimeout(r, 50));
    expect(answers).toHaveLength(1);
  });

  test('through a client: a slow upstream makes the call time out on time', async () => {
    const s = await serve();
    const f = await forward(s.address);
    const t = client();
    const started = Date.now();
    const err = await rejection(t.send(f.address, m.slow, { ms: 2_000 }, callMeta(150)));
    expect(err).toBeInstanceOf(TimeoutError);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(await t.send(f.address, m.echo, { text: 'after' }, callMeta())).toEqual({ text: 'after', n: 0 });
  });

  test('an upstream that does not read its requests: new calls are refused as never run instead of piling up', async () => {
    const accepted: Socket[] = [];
    const deaf = createServer((socket) => {
      socket.pause();
      accepted.push(socket);
    });
    await new Promise<void>((r) => deaf.listen(0, '127.0.0.1', r));
    cleanups.push(() => {
      for (const s of accepted) s.destroy();
      return new Promise((r) => deaf.close(r));
    });
    const address = `127.0.0.1:${(deaf.address() as { port: number }).port}`;
    const f = await forward(address, { upstream: { maxQueuedBytes: 1024 * 1024, closeDrainMs: 10 } });
    const t = client();
    const outcomes = await Promise.allSettled(
      Array.from({ length: 300 }, async (_, i) => {
        await new Promise((r) => setTimeout(r, i % 30));
        return t.send(f.address, m.echo, { text: 'z'.repeat(100_000) }, callMeta(500));
      }),
    );
    const reasons = outcomes.map((o) => (o.status === 'rejected' ? o.reason : undefined));
    const refused = reasons.filter((r) => r instanceof UnavailableError && (r.details as { maybeExecuted?: boolean }).maybeExecuted === false);
    expect(refused.length).toBeGreaterThan(0);
    expect(refused[0].message).toContain('not reading its requests');
    expect(reasons.every((r) => r !== undefined)).toBe(true);
  });

  test('a caller that does not read its answers is not read from until it catches up (backpressure)', async () => {
    const s = await serve({ maxInFlight: 100_000 });
    const f = await forward(s.address, { highWaterMark: 64 * 1024, maxInFlight: 100_000 });
    const socket = await rawSocket(f.address);
    socket.pause();
    const N = 2_000;
    socket.write(Buffer.concat(Array.from({ length: N }, (_, i) => encodeFrame(requestHeader(i + 1, 'blob'), { bytes: 8_192 }))));
    await eventually(() => expect(f.stats.pauses).toBeGreaterThan(0), 5_000);
    const answers = frames(socket);
    socket.resume();
    await eventually(() => expect(answers).toHaveLength(N), 15_000);
    expect(new Set(answers.map((a) => a.header.id)).size).toBe(N);
    expect(answers.every((a) => a.header.kind === 'ok')).toBe(true);
  }, 30_000);

  test('a caller that breaks the protocol is cut off with a logged reason; others carry on', async () => {
    const s = await serve();
    const lines: { msg: string; reason?: string }[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const f = await forward(s.address, { log });
    const t = client();
    const bad = await rawSocket(f.address);
    bad.on('error', () => undefined);
    const closed = new Promise((r) => bad.once('close', r));
    bad.write(Buffer.from([0, 0, 0, 3, 0, 1, 0xc1]));
    await closed;
    expect(lines).toEqual([expect.objectContaining({ msg: 'rpc connection closed: protocol error', reason: expect.stringContaining('malformed header') })]);
    expect(await t.send(f.address, m.echo, { text: 'fine' }, callMeta())).toEqual({ text: 'fine', n: 0 });
  });
});

describe('forwarder: load and lifecycle', () => {
  test('many concurrent calls from several clients share a few upstream connections and each gets its own answer', async () => {
    const s = await serve();
    const f = await forward(s.address, { upstream: { maxConnectionsPerAddress: 2, spilloverAt: 64 } });
    const clients = [1, 2, 3].map(() => client({ maxConnectionsPerAddress: 1 }));
    const outs = await Promise.all(
      Array.from({ length: 900 }, (_, i) => clients[i % 3]!.send(f.address, m.echo, { text: `call ${i}`, n: i }, callMeta(10_000))),
    );
    outs.forEach((o, i) => expect(o).toEqual({ text: `call ${i}`, n: i }));
    expect(f.stats.accepted).toBe(3);
    expect(f.stats.forwarded).toBe(900);
    expect(s.stats.requests).toBe(900);
    expect(s.stats.accepted).toBeLessThanOrEqual(2);
    expect(f.upstreamConnections(s.address)).toBeLessThanOrEqual(2);
  });

  test('close sends goaway, lets calls in flight answer, refuses new ones, then closes its upstream connections', async () => {
    const s = await serve();
    const f = new Forwarder({ route: () => s.address, log: silentLog });
    await f.listen();
    const t = client();
    const slow = t.send(f.address, m.slow, { ms: 150 }, callMeta());
    await eventually(() => expect(s.stats.requests).toBe(1));
    const closing = f.close();
    expect(await slow).toEqual({ slept: 150 });
    await closing;
    expect(f.stats.connections).toBe(0);
    expect(f.upstreamConnections()).toBe(0);
    await eventually(() => expect(s.stats.connections).toBe(0));
    const refused = await rejection(t.send(f.address, m.echo, { text: 'x' }, callMeta()));
    expect(refused).toBeInstanceOf(UnavailableError);
    expect(refused.details).toMatchObject({ maybeExecuted: false });
  });

  test('an upstream that goes away gracefully: calls in flight finish, then calls go to its replacement', async () => {
    const first = await serve();
    let current = first.address;
    const f = await forward(() => current);
    const t = client();
    const slow = t.send(f.address, m.slow, { ms: 150 }, callMeta());
    await eventually(() => expect(first.stats.requests).toBe(1));
    const second = await serve();
    current = second.address;
    await Promise.all([first.close(), expect(slow).resolves.toEqual({ slept: 150 })]);
    expect(await t.send(f.address, m.echo, { text: 'next' }, callMeta())).toEqual({ text: 'next', n: 0 });
    expect(second.stats.requests).toBe(1);
  });
});
