import http2 from 'node:http2';
import net from 'node:net';
import { pack, unpack } from 'msgpackr';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Kit, rejection, silentLog } from '../../test/fixtures/unit-kit.js';
import type { MethodDef } from '../contract/define.js';
import { BusinessError, ForbiddenError, NotFoundError, TimeoutError, UnauthenticatedError, UnavailableError, ValidationError } from '../kernel/errors.js';
import { Call } from '../kernel/placement.js';
import { newTrace } from '../kernel/trace.js';
import { HttpTransport, MSGPACK_TYPE } from './http-transport.js';
import { Http2Transport } from './http2-transport.js';
import { HTTP2_PREFACE, listenRpcHttp, type RpcHttpListener } from './http-listener.js';
import { Http2Terminal } from './terminals.js';
import { callMeta, echoContract, echoService, startHosts, type ServingHosts } from '../../test/fixtures/rpc-kit.js';
import { planeFor, verifiedUser } from '../../test/fixtures/plane-kit.js';

/** The processes of the test deployment: the echo server, a payment worker calling it, an operator with curl. */
const serverPlane = planeFor('echo#0', { svc: ['echo'] });
const paymentPlane = planeFor('payment#0', { svc: ['payment'] });
const operator = planeFor('operator', { op: true });
const curlAuth = { authorization: `Bearer ${operator.credential.token}` };

const kit = new Kit();
const m = echoContract.methods;
let serving: ServingHosts;
let listener: RpcHttpListener;

/** What the listener saw of the requests it took: which connections they came on, and how HTTP/2 streams ended. */
const seen = { ports: new Set<number>(), resets: [] as { url: string; rstCode: number | undefined }[] };

/** `/health` and `/ready`, and a hook recording each request's connection and stream, on both protocols. */
function probes(app: FastifyInstance): void {
  app.addHook('onRequest', async (req) => {
    seen.ports.add(req.socket.remotePort ?? 0);
    const stream = (req.raw as unknown as { stream?: http2.ServerHttp2Stream }).stream;
    stream?.once('close', () => seen.resets.push({ url: req.url, rstCode: stream.rstCode }));
  });
  app.get('/health', async () => ({ ok: true, protocol: req2protocol(app) }));
  app.get('/ready', async (_req, reply) => reply.status(503).send({ ready: false }));
}
const req2protocol = (app: FastifyInstance): string => ((app.initialConfig as { http2?: boolean }).http2 ? 'h2' : 'http/1.1');

function listen(port = 0, drainMs = 2_000): Promise<RpcHttpListener> {
  return listenRpcHttp({ host: '127.0.0.1', port, resolve: serving.resolve, plane: serverPlane, log: silentLog, drainMs, extra: probes });
}

beforeAll(async () => {
  serving = await startHosts([echoService], kit.tmp('rpc-http2'), silentLog);
  listener = await listen();
});
afterAll(async () => {
  await listener.close();
  await serving.stop();
  await kit.cleanup();
});

/** A raw h2c request on a fresh session: status, headers and body. */
async function h2request(address: string, headers: http2.OutgoingHttpHeaders, body?: string | Uint8Array): Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: Buffer }> {
  const session = http2.connect(`http://${address}`);
  try {
    return await new Promise((resolve, reject) => {
      session.on('error', reject);
      const stream = session.request(headers, { endStream: body === undefined });
      const chunks: Buffer[] = [];
      let head: http2.IncomingHttpHeaders = {};
      stream.on('response', (h) => (head = h));
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => resolve({ status: Number(head[':status']), headers: head, body: Buffer.concat(chunks) }));
      stream.on('error', reject);
      if (body !== undefined) stream.end(body);
    });
  } finally {
    session.close();
  }
}

/** Bytes written on a raw connection; resolves with what came back once the listener closed it. */
function rawExchange(address: string, bytes: Buffer | string, endAfterWrite = false): Promise<Buffer> {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, host, () => {
      socket.write(bytes);
      if (endAfterWrite) socket.end();
    });
    const chunks: Buffer[] = [];
    socket.on('data', (c) => chunks.push(c));
    socket.on('error', () => {}); // a reset is an acceptable way to be dropped
    socket.on('close', () => resolve(Buffer.concat(chunks)));
    setTimeout(() => {
      socket.destroy();
      reject(new Error(`the listener kept the connection open after ${JSON.stringify(String(bytes).slice(0, 40))}`));
    }, 5_000).unref();
  });
}

describe.each(['json', 'msgpack'] as const)('HTTP/2 RPC transport (%s)', (format) => {
  const client = () => new Http2Transport({ format, plane: paymentPlane });

  test('a call returns the handler output, by address and by URL', async () => {
    const t = client();
    try {
      expect(await t.send(listener.address, m.echo, { text: 'héllo' }, callMeta())).toEqual({ text: 'héllo', n: 0 });
      expect(await t.send(listener.address, m.add, { a: 1.5, b: 2, label: 'sum' }, callMeta())).toEqual({ sum: 3.5, label: 'sum' });
      expect(await t.send(listener.address, m.nothing, undefined, callMeta())).toBeUndefined();
      expect(await t.send(`http://${listener.address}/`, m.echo, { text: 'by url' }, callMeta())).toEqual({ text: 'by url', n: 0 });
      expect(t.sessionCount()).toBe(1);
    } finally {
      await t.close();
    }
  });

  test('deadline, trace context, baggage, caller identity and calling service cross the hop', async () => {
    const t = client();
    try {
      const meta = { ...callMeta(4_000, verifiedUser('José 李', ['ROLE_USER']), 'payment'), trace: newTrace('canary=1,user=ann%20b') };
      const out = await t.send(listener.address, m.meta, {}, meta);
      expect(out).toEqual({ deadline: meta.deadline, traceId: meta.trace.traceId, spanId: meta.trace.spanId, caller: { subject: 'José 李', roles: ['ROLE_USER'] } });
      expect(serving.lastMeta?.from).toBe('payment');
      expect(serving.lastMeta?.trace.baggage).toBe('canary=1,user=ann%20b');
      // Baggage that cannot be a header value (it may come over TCP, which carries any string) stays behind; the call goes.
      const odd = { ...callMeta(4_000), trace: newTrace('canary=1\r\nx-evolith-from: account') };
      expect(await t.send(listener.address, m.echo, { text: 'odd' }, odd)).toEqual({ text: 'odd', n: 0 });
      expect(serving.lastMeta?.trace.baggage).toBeUndefined();
      expect(t.sessionCount()).toBe(1);
    } finally {
      await t.close();
    }
  });

  test('typed errors arrive as the same classes, codes, statuses and details', async () => {
    const t = client();
    try {
      const v = await rejection(t.send(listener.address, m.add, { a: 'one', b: 1.5, label: 'x' }, callMeta()));
      expect(v).toBeInstanceOf(ValidationError);
      expect((v as ValidationError).issues.map((i) => i.path).sort()).toEqual(['a', 'b', 'label']);
      const b = await rejection(t.send(listener.address, m.refuse, {}, callMeta()));
      expect(b).toBeInstanceOf(BusinessError);
      expect(b).toMatchObject({ code: 'NO_WAY', httpStatus: 422, details: { why: 'rules' }, origin: 'echo.refuse' });
      expect(await rejection(t.send(listener.address, m.admin, {}, callMeta()))).toBeInstanceOf(ForbiddenError);
      const unknown: MethodDef = { ...m.echo, name: 'nope', fullName: 'echo.nope' };
      expect(await rejection(t.send(listener.address, unknown, {}, callMeta()))).toBeInstanceOf(NotFoundError);
    } finally {
      await t.close();
    }
  });
});

describe('HTTP/2 RPC transport, on the wire', () => {
  test('a call past its deadline fails with a TimeoutError on time, and the server sees its stream cancelled', async () => {
    const t = new Http2Transport({ plane: paymentPlane });
    try {
      const before = seen.resets.length;
      const started = Date.now();
      const err = await rejection(t.send(listener.address, m.slow, { ms: 3_000 }, callMeta(150)));
      expect(err).toBeInstanceOf(TimeoutError);
      expect(Date.now() - started).toBeLessThan(1_000);
      await expect.poll(() => seen.resets.slice(before).find((r) => r.url === '/rpc/echo/slow'), { timeout: 2_000 }).toBeDefined();
      expect(seen.resets.slice(before).find((r) => r.url === '/rpc/echo/slow')?.rstCode).toBe(http2.constants.NGHTTP2_CANCEL);
      // The session survives a cancelled stream.
      expect(await t.send(listener.address, m.echo, { text: 'after' }, callMeta())).toEqual({ text: 'after', n: 0 });
      expect(t.sessionCount(listener.address)).toBe(1);
    } finally {
      await t.close();
    }
  });

  test('200 concurrent calls share one session and one connection', async () => {
    const t = new Http2Transport({ plane: paymentPlane, format: 'msgpack' });
    try {
      seen.ports.clear();
      const calls = Array.from({ length: 200 }, (_, i) => t.send(listener.address, m.add, { a: i, b: 1, label: `n${i}` }, callMeta()));
      const out = (await Promise.all(calls)) as { sum: number; label: string }[];
      expect(out.map((o) => o.sum)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
      expect(t.sessionCount()).toBe(1);
      expect(seen.ports.size).toBe(1);
    } finally {
      await t.close();
    }
  });

  test('after the server restarts, the next call succeeds on a new session', async () => {
    const first = await listen();
    const t = new Http2Transport({ plane: paymentPlane });
    try {
      seen.ports.clear();
      expect(await t.send(first.address, m.echo, { text: 'one' }, callMeta())).toEqual({ text: 'one', n: 0 });
      await first.close();
      const second = await listen(first.port);
      try {
        expect(await t.send(first.address, m.echo, { text: 'two' }, callMeta())).toEqual({ text: 'two', n: 0 });
        expect(seen.ports.size).toBe(2);
        expect(t.sessionCount()).toBe(1);
      } finally {
        await second.close();
      }
    } finally {
      await t.close();
    }
  });

  test('nobody listening: UnavailableError that says the call never ran', async () => {
    const spare = await listen();
    await spare.close();
    const t = new Http2Transport({ plane: paymentPlane });
    try {
      const err = await rejection(t.send(spare.address, m.echo, { text: 'x' }, callMeta()));
      expect(err).toBeInstanceOf(UnavailableError);
      expect(err.details).toMatchObject({ maybeExecuted: false });
      expect(err.message).toContain('ECONNREFUSED');
      expect(t.sessionCount()).toBe(0);
    } finally {
      await t.close();
    }
  });

  test('a connection lost with the call in flight: UnavailableError that says it may have run', async () => {
    const doomed = await listen(0, 100);
    const t = new Http2Transport({ plane: paymentPlane });
    try {
      const handled = serving.calls;
      const call = rejection(t.send(doomed.address, m.slow, { ms: 3_000 }, callMeta(5_000)));
      await expect.poll(() => serving.calls).toBeGreaterThan(handled);
      const closed = doomed.close();
      const err = await call;
      expect(err).toBeInstanceOf(UnavailableError);
      expect(err.details).toMatchObject({ maybeExecuted: true });
      await closed;
    } finally {
      await t.close();
    }
  });

  test('closing the listener lets a call in flight finish, and refuses new connections', async () => {
    const draining = await listen(0, 3_000);
    expect(draining.closing).toBe(false);
    const t = new Http2Transport({ plane: paymentPlane });
    try {
      const call = t.send(draining.address, m.slow, { ms: 300 }, callMeta(5_000));
      await new Promise((r) => setTimeout(r, 100));
      const closed = draining.close();
      expect(draining.closing).toBe(true);
      expect(await call).toEqual({ slept: 300 });
      await closed;
      const late = await rejection(t.send(draining.address, m.echo, { text: 'late' }, callMeta()));
      expect(late).toBeInstanceOf(UnavailableError);
      expect(late.details).toMatchObject({ maybeExecuted: false });
    } finally {
      await t.close();
    }
  });

  describe('against a bare HTTP/2 server that misbehaves on purpose', () => {
    let server: http2.Http2Server;
    let address: string;
    let sessions = 0;
    const open = new Set<http2.ServerHttp2Session>();
    let behave: (stream: http2.ServerHttp2Stream) => void = () => {};
    beforeAll(async () => {
      server = http2.createServer();
      server.on('session', (session) => {
        sessions++;
        open.add(session);
        session.on('close', () => open.delete(session));
      });
      server.on('stream', (stream) => {
        stream.on('error', () => {}); // the resets this server makes itself
        behave(stream);
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      address = `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    });
    afterAll(async () => {
      for (const s of open) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    });
    const answer = (stream: http2.ServerHttp2Stream) => {
      stream.respond({ ':status': 200, 'content-type': 'application/json' });
      stream.end(JSON.stringify({ text: 'fine', n: 1 }));
    };

    test('a stream the callee refuses never ran', async () => {
      behave = (stream) => stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      const t = new Http2Transport();
      try {
        const err = await rejection(t.send(address, m.echo, { text: 'x' }, callMeta()));
        expect(err).toBeInstanceOf(UnavailableError);
        expect(err.details).toMatchObject({ maybeExecuted: false });
      } finally {
        await t.close();
      }
    });

    test('a stream reset after the request went out may have run', async () => {
      behave = (stream) => stream.on('data', () => stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR));
      const t = new Http2Transport();
      try {
        const err = await rejection(t.send(address, m.echo, { text: 'x' }, callMeta()));
        expect(err).toBeInstanceOf(UnavailableError);
        expect(err.details).toMatchObject({ maybeExecuted: true });
      } finally {
        await t.close();
      }
    });

    test('after a GOAWAY the next call opens a new session', async () => {
      behave = (stream) => {
        answer(stream);
        stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR, stream.id);
      };
      const t = new Http2Transport();
      try {
        const before = sessions;
        expect(await t.send(address, m.echo, { text: 'x' }, callMeta())).toEqual({ text: 'fine', n: 1 });
        await expect.poll(() => t.sessionCount(address)).toBe(0);
        behave = answer;
        expect(await t.send(address, m.echo, { text: 'x' }, callMeta())).toEqual({ text: 'fine', n: 1 });
        expect(sessions - before).toBe(2);
        expect(t.sessionCount(address)).toBe(1);
      } finally {
        await t.close();
      }
    });

    test('an answer that is not an Evolith answer is a typed error, not a crash', async () => {
      behave = (stream) => {
        stream.respond({ ':status': 502, 'content-type': 'text/plain' });
        stream.end('bad gateway');
      };
      const t = new Http2Transport();
      try {
        const err = await rejection(t.send(address, m.echo, { text: 'x' }, callMeta()));
        expect(err.code).toBe('EVOLITH_INTERNAL');
        expect(err.message).toContain('502: bad gateway');
      } finally {
        await t.close();
      }
    });
  });

  test('closing the listener closes idle HTTP/1.1 keep-alive connections and idle HTTP/2 sessions at once', async () => {
    const idle = await listen(0, 5_000);
    const t = new Http2Transport({ plane: paymentPlane });
    try {
      const r = await fetch(`http://${idle.address}/health`); // undici keeps the connection open
      expect(r.status).toBe(200);
      await r.arrayBuffer();
      expect(await t.send(idle.address, m.echo, { text: 'x' }, callMeta())).toEqual({ text: 'x', n: 0 });
      const started = Date.now();
      await idle.close();
      expect(Date.now() - started).toBeLessThan(1_000);
      await expect.poll(() => t.sessionCount(idle.address)).toBe(0);
    } finally {
      await t.close();
    }
  });

  test('a port already taken is a typed error, and closing does not wait for connections that never spoke', async () => {
    const err = await rejection(listen(listener.port));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toContain('EADDRINUSE');
    const quiet = await listen(0, 5_000);
    const socket = net.connect(quiet.port, '127.0.0.1');
    socket.on('error', () => {});
    await new Promise((r) => socket.once('connect', r));
    const closedByPeer = new Promise((r) => socket.once('close', r));
    const started = Date.now();
    await quiet.close();
    await closedByPeer;
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  test('a closed transport refuses calls without sending them', async () => {
    const t = new Http2Transport({ plane: paymentPlane });
    await t.close();
    const err = await rejection(t.send(listener.address, m.echo, { text: 'x' }, callMeta()));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.details).toMatchObject({ maybeExecuted: false });
  });

  test('the terminal sends to the endpoint its chain chose', async () => {
    const t = new Http2Transport({ plane: paymentPlane });
    try {
      const meta = callMeta();
      const call = new Call(m.echo, { text: 'chain' }, { text: 'chain', n: 0 }, meta.deadline, meta.trace, undefined, undefined);
      call.endpoint = { service: 'echo', id: 'echo-0', address: listener.address };
      expect(await new Http2Terminal(t).send(call)).toEqual({ text: 'chain', n: 0 });
      const fixed = new Call(m.echo, { text: 'fixed' }, { text: 'fixed', n: 0 }, meta.deadline, meta.trace, undefined, undefined);
      expect(await new Http2Terminal(t, listener.address).send(fixed)).toEqual({ text: 'fixed', n: 0 });
    } finally {
      await t.close();
    }
  });
});

describe('one port for HTTP/1.1 and h2c', () => {
  test('RPC over HTTP/1.1 (fetch and HttpTransport) and over h2c on the same port', async () => {
    const r = await fetch(`http://${listener.address}/rpc/echo/echo`, { method: 'POST', headers: { ...curlAuth, 'content-type': 'application/json' }, body: '{"text":"h1"}' });
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ text: 'h1', n: 0 });

    const h1 = new HttpTransport({ plane: paymentPlane, format: 'msgpack' });
    const meta = { ...callMeta(), trace: newTrace('canary=1') };
    expect(await h1.send(listener.address, m.echo, { text: 'http' }, meta)).toEqual({ text: 'http', n: 0 });
    expect(serving.lastMeta?.trace.baggage).toBe('canary=1');

    const h2 = await h2request(listener.address, { ':method': 'POST', ':path': '/rpc/echo/echo', ...curlAuth, 'content-type': MSGPACK_TYPE }, pack({ text: 'h2', n: 2 }));
    expect(h2.status).toBe(200);
    expect(h2.headers['content-type']).toBe(MSGPACK_TYPE);
    expect(unpack(h2.body)).toEqual({ text: 'h2', n: 2 });
  });

  test('the caller’s own routes answer on both protocols', async () => {
    const h1 = await fetch(`http://${listener.address}/health`);
    expect(await h1.json()).toEqual({ ok: true, protocol: 'http/1.1' });
    const h2 = await h2request(listener.address, { ':path': '/health' });
    expect(JSON.parse(h2.body.toString())).toEqual({ ok: true, protocol: 'h2' });
    expect((await fetch(`http://${listener.address}/ready`)).status).toBe(503);
    expect((await h2request(listener.address, { ':path': '/ready' })).status).toBe(503);
  });

  test('garbage, half prefaces and oversized headers are dropped without harm', async () => {
    const garbage = await rawExchange(listener.address, Buffer.from([0x00, 0xff, 0x13, 0x37, 0x0d, 0x0a, 0x0d, 0x0a, 0x99]));
    expect(garbage.toString('latin1')).toMatch(/^HTTP\/1\.1 400 /);
    // A preface cut short, then the connection closed.
    await rawExchange(listener.address, HTTP2_PREFACE.subarray(0, 10), true);
    // A preface that turns into something else halfway: an HTTP/1.1 request that makes no sense.
    const diverged = await rawExchange(listener.address, Buffer.concat([HTTP2_PREFACE.subarray(0, 16), Buffer.from('nonsense\r\n\r\n')]));
    expect(diverged.toString('latin1')).toMatch(/^HTTP\/1\.1 400 /);
    // A full preface followed by bytes that are no HTTP/2 frames: the session ends with GOAWAY.
    await rawExchange(listener.address, Buffer.concat([HTTP2_PREFACE, Buffer.from('this is not a settings frame, not at all'.repeat(4))]));
    // Headers larger than either server takes.
    const big = 'x'.repeat(100_000);
    const h1 = await rawExchange(listener.address, `GET /health HTTP/1.1\r\nhost: x\r\nx-big: ${big}\r\n\r\n`);
    expect(h1.toString('latin1')).toMatch(/^HTTP\/1\.1 431/);
    const h2 = await h2request(listener.address, { ':path': '/health', 'x-big': big }).catch((e: Error) => e);
    expect(h2).toMatchObject({ code: 'ERR_HTTP2_STREAM_ERROR', message: expect.stringContaining('REFUSED_STREAM') });
    // And the listener still serves both protocols.
    expect((await fetch(`http://${listener.address}/health`)).status).toBe(200);
    expect((await h2request(listener.address, { ':path': '/health' })).status).toBe(200);
  });

  test('calls without a valid credential are refused 401, over both protocols', async () => {
    const anonymous = new Http2Transport();
    try {
      const err = await rejection(anonymous.send(listener.address, m.echo, { text: 'x' }, callMeta()));
      expect(err).toBeInstanceOf(UnauthenticatedError);
      expect(err.httpStatus).toBe(401);
    } finally {
      await anonymous.close();
    }
    const forged = await h2request(listener.address, { ':method': 'POST', ':path': '/rpc/echo/meta', authorization: 'Bearer ev1.forged.token', 'content-type': 'application/json', 'x-evolith-caller': '{"subject":"icyfenix","roles":["ROLE_ADMIN"]}' }, '{}');
    expect(forged.status).toBe(401);
    expect(forged.headers['x-evolith-error']).toBe('EVOLITH_UNAUTHENTICATED');
    const h1 = await fetch(`http://${listener.address}/rpc/echo/meta`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(h1.status).toBe(401);
  });
});
