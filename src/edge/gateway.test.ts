import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { z } from 'zod';
import greeterApp from '../../test/fixtures/greeter/app.js';
import { Kit, silentLog } from '../../test/fixtures/unit-kit.js';
import { defineApp, route } from '../app/define.js';
import { defineContract } from '../contract/define.js';
import { BusinessError, UnauthenticatedError, UnavailableError } from '../kernel/errors.js';
import { connect } from 'node:net';
import type { Authenticator } from '../kernel/plugins.js';
import type { Runtime } from '../kernel/runtime.js';
import { implement } from '../kernel/service.js';
import { createGateway } from './gateway.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const kit = new Kit();

async function gatewayFor(rt: Runtime, app: typeof greeterApp, extra: { bodyLimit?: number; authenticator?: Authenticator } = {}) {
  return createGateway({
    app,
    appDir: '/nonexistent',
    invoke: (method, input, root) => rt.invoke(method, input, undefined, root),
    log: silentLog,
    ...extra,
  });
}

describe('gateway with the greeter fixture', () => {
  let server: FastifyInstance;
  beforeAll(async () => {
    const rt = await kit.start(greeterApp.services);
    server = await gatewayFor(rt, greeterApp, { bodyLimit: 256 });
  });
  afterAll(async () => {
    await server?.close();
    await kit.cleanup();
  });

  test('a route answers with the method output as JSON', async () => {
    const res = await server.inject({ method: 'GET', url: '/hello/bob' });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/application\/json/);
    expect(res.json()).toEqual({ text: 'hello bob', n: 1 });
  });

  test('every answer carries a request id', async () => {
    for (const url of ['/hello/bob', '/nope', '/health']) {
      const res = await server.inject({ method: 'GET', url });
      expect(res.headers['x-request-id'], url).toMatch(UUID);
    }
    const a = await server.inject({ method: 'GET', url: '/health' });
    const b = await server.inject({ method: 'GET', url: '/health' });
    expect(a.headers['x-request-id']).not.toBe(b.headers['x-request-id']);
  });

  test('a sane x-request-id from the client is kept', async () => {
    const res = await server.inject({ method: 'GET', url: '/hello/bob', headers: { 'x-request-id': 'client-req_42.a' } });
    expect(res.headers['x-request-id']).toBe('client-req_42.a');
  });

  test.each(['has spaces in it', 'semi;colon', 'x'.repeat(129), '<script>'])('an insane x-request-id (%j) is replaced', async (given) => {
    const res = await server.inject({ method: 'GET', url: '/health', headers: { 'x-request-id': given } });
    expect(res.headers['x-request-id']).toMatch(UUID);
  });

  test('malformed JSON is a 400 with {code: 1}', async () => {
    const res = await server.inject({ method: 'POST', url: '/boom', headers: { 'content-type': 'application/json' }, payload: '{"a":' });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({ code: 1, message: expect.stringMatching(/malformed JSON/) });
    expect(res.headers['x-request-id']).toMatch(UUID);
  });

  test('a body over the limit is a 413 with {code: 1}', async () => {
    const res = await server.inject({
      method: 'POST',
      url: '/boom',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ pad: 'x'.repeat(1_000) }),
    });
    expect(res.statusCode).toBe(413);
    expect(res.json()).toEqual({ code: 1, message: 'request body is larger than the limit' });
  });

  test('a client still sending an oversized body reads its 413: the edge drains the body before it closes', async () => {
    // The client is still writing when the edge answers; a connection closed with its request
    // unread is reset, and the client sees EPIPE or ECONNRESET instead of the answer (on
    // loopback from a few MB on, over a real network much sooner).
    await server.listen({ port: 0, host: '127.0.0.1' });
    const { port } = server.server.address() as { port: number };
    const size = 10_000_000;
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(port, '127.0.0.1');
      let text = '';
      socket.on('data', (d) => (text += d.toString('utf8')));
      socket.on('error', (err) => reject(new Error(`${err.message} after ${JSON.stringify(text)}`)));
      socket.on('close', () => resolve(text));
      socket.write(`POST /boom HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${size}\r\n\r\n`);
      socket.write(Buffer.alloc(size, 'x'));
    });
    expect(answer).toMatch(/^HTTP\/1\.1 413 /);
    expect(answer).toContain('request body is larger than the limit');
  });

  test('an unknown route is a 404 with {code: 1}', async () => {
    const res = await server.inject({ method: 'GET', url: '/nope?x=1' });
    expect(res.statusCode).toBe(404);
    expect(res.json()).toEqual({ code: 1, message: 'no route for GET /nope' });
    const wrongVerb = await server.inject({ method: 'DELETE', url: '/hello/bob' });
    expect(wrongVerb.statusCode).toBe(404);
  });

  test("a business error's own status passes through", async () => {
    const res = await server.inject({ method: 'POST', url: '/boom', payload: {} });
    expect(res.statusCode).toBe(418);
    expect(res.json()).toEqual({ code: 1, message: 'it went boom' });
  });

  test('invalid input is a 400 that lists the violations', async () => {
    const res = await server.inject({ method: 'GET', url: '/slow?ms=abc' });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({ code: 1, message: expect.stringContaining('ms') });
  });

  test('a call past its deadline is a 504 on time', async () => {
    const t0 = Date.now();
    const res = await server.inject({ method: 'GET', url: '/slow?ms=1000' });
    expect(res.statusCode).toBe(504);
    expect(Date.now() - t0).toBeLessThan(200 + 150);
  });

  test('null output is a 204 without a body', async () => {
    const res = await server.inject({ method: 'GET', url: '/slow?ms=1' });
    expect(res.statusCode).toBe(204);
    expect(res.body).toBe('');
  });
});

// A small app for what the fixture does not exercise: hidden internal errors, auth, custom
// input/reply/error mapping, forms, trace context.
const desk = defineContract({
  name: 'desk',
  version: '1',
  methods: {
    crash: { input: z.object({}), output: z.null() },
    down: { input: z.object({}), output: z.null() },
    whoami: { input: z.object({}), output: z.object({ subject: z.string() }), roles: ['ROLE_USER'] },
    echo: { input: z.object({ id: z.string(), name: z.string(), qty: z.coerce.number() }), output: z.object({ id: z.string(), name: z.string(), qty: z.number(), traceId: z.string() }) },
    create: { input: z.object({ title: z.string() }), output: z.object({ id: z.number() }) },
    taken: { input: z.object({}), output: z.null() },
    sweep: { input: z.object({}), output: z.null(), internal: true },
  },
});
const deskService = implement(desk, {
  handlers: {
    async crash() {
      throw new Error('connection string postgres://admin:hunter2@db');
    },
    async down() {
      throw new UnavailableError('desk: the database is down');
    },
    async whoami(_i, ctx) {
      return { subject: ctx.caller!.subject };
    },
    async echo(input, ctx) {
      return { ...input, traceId: ctx.trace.traceId };
    },
    async create() {
      return { id: 7 };
    },
    async taken() {
      throw new BusinessError('TAKEN', 'that name is taken');
    },
    async sweep() {
      return null;
    },
  },
});
const deskApp = defineApp({
  name: 'desk',
  services: [deskService],
  edge: {
    routes: [
      route('POST /crash', desk.methods.crash),
      route('POST /down', desk.methods.down),
      route('GET /me', desk.methods.whoami),
      route('PUT /echo/:id', desk.methods.echo),
      route('POST /sweep', desk.methods.sweep),
      route('POST /things', desk.methods.create, {
        input: (req) => ({ title: String((req.body as { name?: unknown }).name ?? '') }),
        reply: (out) => ({ status: 201, body: { code: 0, data: out }, headers: { location: `/things/${out.id}` } }),
      }),
      route('POST /taken', desk.methods.taken, {
        error: (err) => (err.code === 'TAKEN' ? { status: 409, body: { code: 2, reason: err.message } } : undefined),
      }),
    ],
  },
});

const authenticator: Authenticator = {
  async authenticate(header) {
    if (header === undefined) return undefined;
    if (header === 'bearer good') return { subject: 'alice', roles: ['ROLE_USER'] };
    throw new UnauthenticatedError('invalid token');
  },
};

describe('gateway with a small app', () => {
  let server: FastifyInstance;
  beforeAll(async () => {
    const rt = await kit.start([deskService]);
    server = await gatewayFor(rt, deskApp, { authenticator });
  });
  afterAll(async () => {
    await server?.close();
    await kit.cleanup();
  });

  test('an internal fault is a 500 that does not leak its message', async () => {
    const res = await server.inject({ method: 'POST', url: '/crash', payload: {} });
    expect(res.statusCode).toBe(500);
    // The request id ties the answer to the log line that has the details.
    expect(res.json()).toEqual({ code: 1, message: `internal error (request ${res.headers['x-request-id']})` });
    expect(res.body).not.toContain('hunter2');
  });

  test('a refused credential is a 401; no credential on a role-protected route is a 403', async () => {
    const bad = await server.inject({ method: 'GET', url: '/me', headers: { authorization: 'bearer bad' } });
    expect(bad.statusCode).toBe(401);
    expect(bad.json()).toEqual({ code: 1, message: 'invalid token' });
    const anonymous = await server.inject({ method: 'GET', url: '/me' });
    expect(anonymous.statusCode).toBe(403);
    const good = await server.inject({ method: 'GET', url: '/me', headers: { authorization: 'bearer good' } });
    expect(good.statusCode).toBe(200);
    expect(good.json()).toEqual({ subject: 'alice' });
  });

  test('a route to an internal method is refused with 403, even for an authenticated caller', async () => {
    const res = await server.inject({ method: 'POST', url: '/sweep', headers: { authorization: 'bearer good' }, payload: {} });
    expect(res.statusCode).toBe(403);
    expect(res.json()).toMatchObject({ code: 1, message: expect.stringContaining('internal') });
  });

  test('body and path parameters are merged into the input (JSON and forms)', async () => {
    const json = await server.inject({ method: 'PUT', url: '/echo/x1', payload: { id: 'ignored', name: 'pen', qty: 3 } });
    expect(json.statusCode).toBe(200);
    expect(json.json()).toMatchObject({ id: 'x1', name: 'pen', qty: 3 });
    const form = await server.inject({
      method: 'PUT',
      url: '/echo/x2',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      payload: 'name=ink&qty=5',
    });
    expect(form.statusCode).toBe(200);
    expect(form.json()).toMatchObject({ id: 'x2', name: 'ink', qty: 5 });
  });

  test('a W3C traceparent header continues the trace', async () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const res = await server.inject({
      method: 'PUT',
      url: '/echo/t',
      headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-01` },
      payload: { name: 'n', qty: 1 },
    });
    expect(res.json().traceId).toBe(traceId);
    const fresh = await server.inject({ method: 'PUT', url: '/echo/t', headers: { traceparent: 'garbage' }, payload: { name: 'n', qty: 1 } });
    expect(fresh.statusCode).toBe(200);
    expect(fresh.json().traceId).not.toBe(traceId);
  });

  test('routes may shape their input, reply and errors', async () => {
    const created = await server.inject({ method: 'POST', url: '/things', payload: { name: 'lamp' } });
    expect(created.statusCode).toBe(201);
    expect(created.headers.location).toBe('/things/7');
    expect(created.json()).toEqual({ code: 0, data: { id: 7 } });
    const taken = await server.inject({ method: 'POST', url: '/taken', payload: {} });
    expect(taken.statusCode).toBe(409);
    expect(taken.json()).toEqual({ code: 2, reason: 'that name is taken' });
  });

  test('an unsupported content type is a 415 with {code: 1}', async () => {
    const res = await server.inject({ method: 'POST', url: '/things', headers: { 'content-type': 'application/xml' }, payload: '<a/>' });
    expect(res.statusCode).toBe(415);
    expect(res.json()).toMatchObject({ code: 1 });
  });

  test('/health answers ok', async () => {
    const res = await server.inject({ method: 'GET', url: '/health' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ status: 'ok' });
  });
});

describe('gateway logging', () => {
  test('a failed call is logged once, bound to its request id; a request that goes well logs nothing', async () => {
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
    const rt = await kit.start([deskService]);
    const server = await createGateway({ app: deskApp, appDir: '/nonexistent', invoke: (method, input, root) => rt.invoke(method, input, undefined, root), log, authenticator });
    try {
      const fine = await server.inject({ method: 'PUT', url: '/echo/1', payload: { name: 'n', qty: 1 } });
      expect(fine.statusCode).toBe(200);
      expect(lines.filter((l) => l.component === 'edge')).toEqual([]);
      const res = await server.inject({ method: 'POST', url: '/crash', payload: {}, headers: { 'x-request-id': 'req-crash-1' } });
      expect(res.statusCode).toBe(500);
      const failed = lines.filter((l) => l.msg === 'call failed');
      expect(failed).toHaveLength(1);
      expect(failed[0]).toMatchObject({ component: 'edge', reqId: 'req-crash-1', level: 50 });
      expect((failed[0]!.err as { stack?: string }).stack).toEqual(expect.any(String));
      // Unavailable: one warning line with the reason, no stack.
      lines.length = 0;
      const down = await server.inject({ method: 'POST', url: '/down', payload: {}, headers: { 'x-request-id': 'req-down-1' } });
      expect(down.statusCode).toBe(503);
      const warned = lines.filter((l) => l.msg === 'call failed');
      expect(warned).toHaveLength(1);
      expect(warned[0]).toMatchObject({ component: 'edge', reqId: 'req-down-1', level: 40, code: 'EVOLITH_UNAVAILABLE', reason: expect.stringContaining('database is down') });
      expect(warned[0]!.err).toBeUndefined();
    } finally {
      await server.close();
      await kit.cleanup();
    }
  });
});

describe('gateway: what a user sees of trouble, and of a service not ready yet', () => {
  const late = defineContract({
    name: 'late',
    version: '1',
    methods: {
      ping: { input: z.object({ n: z.coerce.number().optional() }), output: z.object({ got: z.boolean() }) },
      far: { input: z.object({}), output: z.null() },
    },
  });
  let readyNow = false;
  let server: FastifyInstance;
  const lateService = implement(late, {
    handlers: {
      ping: async (input) => ({ got: input.n !== undefined }),
      far: async () => {
        throw new UnavailableError('late.far: all 1 endpoints unavailable (127.0.0.1:40591 refused connection; circuit open on 10.0.0.7:7001)');
      },
    },
  });
  const lateApp = defineApp({
    name: 'late',
    services: [lateService],
    edge: { routes: [route('PATCH /ping', late.methods.ping, { input: (req) => ({ n: (req.query as { n?: string }).n }) }), route('POST /far', late.methods.far)] },
  });
  beforeAll(async () => {
    const rt = await kit.start([lateService]);
    server = await createGateway({
      app: lateApp,
      appDir: '/nonexistent',
      invoke: (method, input, root) => rt.invoke(method, input, undefined, root),
      log: silentLog,
      ready: () => readyNow,
      health: async () => ({
        architecture: 'test',
        dependencies: { late: { ready: readyNow }, 'late database': { ready: readyNow, detail: readyNow ? undefined : 'connect ECONNREFUSED 10.1.2.3:5432' } },
      }),
    });
  });
  afterAll(async () => {
    await server?.close();
    await kit.cleanup();
  });

  test('until the service a route needs is ready, the route answers 503 with Retry-After; /ready says what it waits for', async () => {
    readyNow = false;
    const res = await server.inject({ method: 'PATCH', url: '/ping?n=1' });
    expect(res.statusCode).toBe(503);
    expect(res.headers['retry-after']).toBe('1');
    expect(res.json().message).toMatch(/late has no instance ready/);
    const ready = await server.inject({ method: 'GET', url: '/ready' });
    expect(ready.statusCode).toBe(503);
    expect(ready.json()).toMatchObject({ ready: false, architecture: 'test', waitingFor: ['late', 'late database'] });
    const health = await server.inject({ method: 'GET', url: '/health' });
    expect(health.statusCode).toBe(200);
    expect(health.json()).toMatchObject({ status: 'degraded', dependencies: { late: { ready: false } } });
    // Why a dependency is down, but not where it is: addresses stay in the log.
    expect(health.json().dependencies['late database'].detail).toBe('connect ECONNREFUSED an instance');
    expect(ready.body).not.toContain('10.1.2.3');
    readyNow = true;
    expect((await server.inject({ method: 'PATCH', url: '/ping?n=1' })).statusCode).toBe(200);
    expect((await server.inject({ method: 'GET', url: '/ready' })).json()).toMatchObject({ ready: true });
    expect((await server.inject({ method: 'GET', url: '/health' })).json()).toMatchObject({ status: 'ok' });
  });

  test('a JSON request with an empty body is a request without a body (as Spring takes it)', async () => {
    readyNow = true;
    for (const payload of ['', '  ']) {
      const res = await server.inject({ method: 'PATCH', url: '/ping?n=2', headers: { 'content-type': 'application/json' }, payload });
      expect(res.statusCode, JSON.stringify(payload)).toBe(200);
      expect(res.json()).toEqual({ got: true });
    }
    // Still JSON's own checks for a body that is there.
    const poisoned = await server.inject({ method: 'PATCH', url: '/ping', headers: { 'content-type': 'application/json' }, payload: '{"__proto__":{"x":1}}' });
    expect(poisoned.statusCode).toBe(400);
  });

  test('a 5xx answer names what failed and the request id, never an internal address', async () => {
    readyNow = true;
    const res = await server.inject({ method: 'POST', url: '/far', payload: {} });
    expect(res.statusCode).toBe(503);
    expect(res.headers['retry-after']).toBe('1');
    const message = res.json().message as string;
    expect(message).toContain(`(request ${res.headers['x-request-id']})`);
    expect(message).toMatch(/late\.far: all 1 endpoints unavailable/);
    expect(message).toMatch(/circuit open/);
    expect(message).not.toMatch(/127\.0\.0\.1|10\.0\.0\.7|40591|7001/);
  });

  test('a client that sends headers and part of a body is cut off after the request timeout', async () => {
    const rt = await kit.start([]);
    const slow = await createGateway({ app: lateApp, appDir: '/nonexistent', invoke: (m, i, r) => rt.invoke(m, i, undefined, r), log: silentLog, requestTimeoutMs: 300, headersTimeoutMs: 200 });
    const url = await slow.listen({ port: 0, host: '127.0.0.1' });
    try {
      const { port } = new URL(url);
      const started = Date.now();
      const closedAfter = await new Promise<number>((resolve) => {
        const socket = connect({ host: '127.0.0.1', port: Number(port) }, () => {
          socket.write('PATCH /ping HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"n":');
        });
        socket.on('data', () => undefined);
        socket.on('error', () => undefined);
        socket.on('close', () => resolve(Date.now() - started));
        setTimeout(() => socket.destroy(), 5_000);
      });
      expect(closedAfter).toBeLessThan(3_000);
      const headersOnly = await new Promise<number>((resolve) => {
        const t0 = Date.now();
        const socket = connect({ host: '127.0.0.1', port: Number(port) }, () => socket.write('GET /ready HTTP/1.1\r\nhost: x\r\n'));
        socket.on('data', () => undefined);
        socket.on('error', () => undefined);
        socket.on('close', () => resolve(Date.now() - t0));
        setTimeout(() => socket.destroy(), 5_000);
      });
      expect(headersOnly).toBeLessThan(3_000);
    } finally {
      await slow.close();
    }
  });
});
