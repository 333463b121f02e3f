import Fastify, { type FastifyInstance } from 'fastify';
import { pack, unpack } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Kit, rejection, silentLog } from '../../test/fixtures/unit-kit.js';
import type { MethodDef } from '../contract/define.js';
import { BusinessError, ForbiddenError, NotFoundError, TimeoutError, UnavailableError, ValidationError } from '../kernel/errors.js';
import { HttpTransport, MSGPACK_TYPE, rpcHttpPlugin } from './http-transport.js';
import { callMeta, echoContract, echoService, startHosts, type ServingHosts } from '../../test/fixtures/rpc-kit.js';
import { planeFor, verifiedUser } from '../../test/fixtures/plane-kit.js';
import { DeploymentAuthority } from '../auth/credentials.js';
import { InternalPlane } from '../auth/internal-plane.js';
import { AssertionSigner } from '../auth/assertions.js';

/** The processes of the test deployment: the echo server, a payment worker calling it, an operator with curl. */
const serverPlane = planeFor('echo#0', { svc: ['echo'] });
const paymentPlane = planeFor('payment#0', { svc: ['payment'] });
const operator = planeFor('operator', { op: true });
const curlAuth = { authorization: `Bearer ${operator.credential.token}` };

const kit = new Kit();
const m = echoContract.methods;
let serving: ServingHosts;
let app: FastifyInstance;
let base: string;

beforeAll(async () => {
  serving = await startHosts([echoService], kit.tmp('rpc-http'), silentLog);
  app = Fastify();
  await app.register(rpcHttpPlugin, { resolve: serving.resolve, plane: serverPlane });
  base = await app.listen({ host: '127.0.0.1', port: 0 });
});
afterAll(async () => {
  await app.close();
  await serving.stop();
  await kit.cleanup();
});

describe.each(['json', 'msgpack'] as const)('HTTP RPC transport (%s)', (format) => {
  const client = () => new HttpTransport({ format, plane: paymentPlane });
  const transport = () => {
    const c = client();
    return { invoke: (method: MethodDef, input: unknown, meta: ReturnType<typeof callMeta>) => c.send(base, method, input, meta) };
  };

  test('a call returns the handler output', async () => {
    const t = transport();
    expect(await t.invoke(m.echo, { text: 'héllo' }, callMeta())).toEqual({ text: 'héllo', n: 0 });
    expect(await t.invoke(m.add, { a: 1.5, b: 2, label: 'sum' }, callMeta())).toEqual({ sum: 3.5, label: 'sum' });
    expect(await t.invoke(m.nothing, undefined, callMeta())).toBeUndefined();
    const host = base.replace('http://', '');
    expect(await client().send(host, m.echo, { text: 'by address' }, callMeta())).toEqual({ text: 'by address', n: 0 });
  });

  test('deadline, trace context, caller identity (even non-ASCII) and calling service cross the hop', async () => {
    const meta = callMeta(4_000, verifiedUser('José 李', ['ROLE_USER']), 'payment');
    const out = (await transport().invoke(m.meta, {}, meta)) as { deadline: number; traceId: string; spanId: string; caller: unknown };
    expect(out).toEqual({ deadline: meta.deadline, traceId: meta.trace.traceId, spanId: meta.trace.spanId, caller: { subject: 'José 李', roles: ['ROLE_USER'] } });
    expect(serving.lastMeta?.from).toBe('payment');
  });

  test('typed errors arrive as the same classes, codes, statuses and details', async () => {
    const t = transport();
    const v = await rejection(t.invoke(m.add, { a: 'one', b: 1.5, label: 'x' }, callMeta()));
    expect(v).toBeInstanceOf(ValidationError);
    expect((v as ValidationError).issues.map((i) => i.path).sort()).toEqual(['a', 'b', 'label']);
    const b = await rejection(t.invoke(m.refuse, {}, callMeta()));
    expect(b).toBeInstanceOf(BusinessError);
    expect(b).toMatchObject({ code: 'NO_WAY', httpStatus: 422, details: { why: 'rules' }, origin: 'echo.refuse' });
    expect(await rejection(t.invoke(m.admin, {}, callMeta()))).toBeInstanceOf(ForbiddenError);
    expect(await t.invoke(m.admin, {}, callMeta(1_000, verifiedUser('root', ['ROLE_ADMIN'])))).toEqual({ subject: 'root' });
    const unknown: MethodDef = { ...m.echo, name: 'nope', fullName: 'echo.nope' };
    expect(await rejection(t.invoke(unknown, {}, callMeta()))).toBeInstanceOf(NotFoundError);
  });

  test('the deadline is honoured: the caller gets a TimeoutError on time', async () => {
    const started = Date.now();
    const err = await rejection(transport().invoke(m.slow, { ms: 2_000 }, callMeta(150)));
    expect(err).toBeInstanceOf(TimeoutError);
    expect(Date.now() - started).toBeLessThan(1_000);
  });
});

describe('HTTP RPC endpoint, called by hand (curl-style)', () => {
  test('JSON in, JSON out; msgpack in, msgpack out; accept decides', async () => {
    const json = await fetch(`${base}/rpc/echo/echo`, { method: 'POST', headers: { ...curlAuth, 'content-type': 'application/json' }, body: '{"text":"a"}' });
    expect(json.status).toBe(200);
    expect(json.headers.get('content-type')).toContain('application/json');
    expect(await json.json()).toEqual({ text: 'a', n: 0 });

    const mp = await fetch(`${base}/rpc/echo/echo`, { method: 'POST', headers: { ...curlAuth, 'content-type': MSGPACK_TYPE }, body: pack({ text: 'b', n: 2 }) });
    expect(mp.headers.get('content-type')).toBe(MSGPACK_TYPE);
    expect(unpack(new Uint8Array(await mp.arrayBuffer()))).toEqual({ text: 'b', n: 2 });

    const mixed = await fetch(`${base}/rpc/echo/echo`, { method: 'POST', headers: { ...curlAuth, 'content-type': 'application/json', accept: MSGPACK_TYPE }, body: '{"text":"c"}' });
    expect(unpack(new Uint8Array(await mixed.arrayBuffer()))).toEqual({ text: 'c', n: 0 });
  });

  test('errors answer with their status, an x-evolith-error header and the SerializedError body', async () => {
    const r = await fetch(`${base}/rpc/echo/refuse`, { method: 'POST', headers: { ...curlAuth, 'content-type': 'application/json' }, body: '{}' });
    expect(r.status).toBe(422);
    expect(r.headers.get('x-evolith-error')).toBe('NO_WAY');
    expect(await r.json()).toEqual({ code: 'NO_WAY', message: 'refused by the rules', details: { why: 'rules' }, httpStatus: 422, origin: 'echo.refuse' });

    const nf = await fetch(`${base}/rpc/constructor/toString`, { method: 'POST', headers: { ...curlAuth, 'content-type': 'application/json' }, body: '{}' });
    expect(nf.status).toBe(404);
    expect(((await nf.json()) as { code: string }).code).toBe('EVOLITH_NOT_FOUND');
  });

  test('a relative timeout header works for hand-made calls, and an expired deadline is refused', async () => {
    const slow = await fetch(`${base}/rpc/echo/slow`, { method: 'POST', headers: { ...curlAuth, 'content-type': 'application/json', 'x-evolith-timeout-ms': '50' }, body: '{"ms":2000}' });
    expect(slow.status).toBe(504);
    expect(((await slow.json()) as { code: string }).code).toBe('EVOLITH_TIMEOUT');
    const late = await fetch(`${base}/rpc/echo/echo`, { method: 'POST', headers: { ...curlAuth, 'content-type': 'application/json', 'x-evolith-deadline': String(Date.now() - 10) }, body: '{"text":"x"}' });
    expect(late.status).toBe(504);
  });

  test('malformed headers and bodies are validation errors, not crashes', async () => {
    const cases: [Record<string, string>, string | Uint8Array][] = [
      [{ ...curlAuth, 'content-type': 'application/json', 'x-evolith-deadline': 'soon' }, '{"text":"x"}'],
      [{ ...curlAuth, 'content-type': 'application/json' }, '{"text":'],
      [{ ...curlAuth, 'content-type': MSGPACK_TYPE }, new Uint8Array([0x93, 0x01])],
    ];
    for (const [headers, body] of cases) {
      const r = await fetch(`${base}/rpc/echo/echo`, { method: 'POST', headers, body });
      expect(r.status, JSON.stringify(headers)).toBe(400);
      expect(r.headers.get('x-evolith-error')).toBe('EVOLITH_VALIDATION');
      const parsed = (headers['content-type'] === MSGPACK_TYPE ? unpack(new Uint8Array(await r.arrayBuffer())) : await r.json()) as { code: string };
      expect(parsed.code).toBe('EVOLITH_VALIDATION');
    }
  });

  test('nobody listening: UnavailableError that says the call never ran', async () => {
    const spare = Fastify();
    const addr = await spare.listen({ host: '127.0.0.1', port: 0 });
    await spare.close();
    const err = await rejection(new HttpTransport().send(addr, m.echo, { text: 'x' }, callMeta()));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.details).toMatchObject({ maybeExecuted: false });
  });
});

describe('HTTP RPC endpoint, attacked', () => {
  const call = (headers: Record<string, string>, method = 'meta') =>
    fetch(`${base}/rpc/echo/${method}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: '{}' });
  const refused = async (r: Response, status: number, code: string) => {
    expect(r.status).toBe(status);
    expect(((await r.json()) as { code: string }).code).toBe(code);
  };

  test('a request without a credential is refused, whatever it claims', async () => {
    await refused(await call({}), 401, 'EVOLITH_UNAUTHENTICATED');
    // The attack that used to work: a forged caller identity in a header.
    await refused(await call({ 'x-evolith-caller': '{"subject":"icyfenix","roles":["ROLE_USER"]}', 'x-evolith-from': 'account' }), 401, 'EVOLITH_UNAUTHENTICATED');
    await refused(await call({ authorization: 'Bearer ev1.forged.token' }), 401, 'EVOLITH_UNAUTHENTICATED');
  });

  test('a forged identity header is refused even with a valid credential', async () => {
    const forged = { ...curlAuth, 'x-evolith-caller': '{"subject":"icyfenix","roles":["ROLE_SERVICE"]}' };
    await refused(await call(forged), 401, 'EVOLITH_UNAUTHENTICATED');
    expect(serving.lastMeta?.caller?.subject).not.toBe('icyfenix');
  });

  test('a credential of another deployment is refused', async () => {
    const stranger = new InternalPlane(new DeploymentAuthority('elsewhere').issue({ sub: 'echo#0', svc: ['echo', 'payment'] }));
    await refused(await call({ authorization: `Bearer ${stranger.credential.token}` }), 401, 'EVOLITH_UNAUTHENTICATED');
  });

  test('a process may only call as a service it hosts, and act as itself only by naming it', async () => {
    const asPayment = { authorization: `Bearer ${paymentPlane.credential.token}` };
    await refused(await call({ ...asPayment, 'x-evolith-from': 'account' }), 403, 'EVOLITH_FORBIDDEN');
    await refused(await call({ ...asPayment, 'x-evolith-caller': 'service' }), 401, 'EVOLITH_UNAUTHENTICATED');
    await refused(await call({ ...curlAuth, 'x-evolith-caller': 'service', 'x-evolith-from': 'payment' }), 403, 'EVOLITH_FORBIDDEN');
    const ok = await call({ ...asPayment, 'x-evolith-caller': 'service', 'x-evolith-from': 'payment' });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { caller: unknown }).caller).toEqual({ subject: 'service:payment', roles: ['ROLE_SERVICE'] });
  });

  test('a user assertion not signed by the deployment’s edge is refused; one that is carries no service role', async () => {
    const rogue = new AssertionSigner(new DeploymentAuthority('x').issue({ sub: 'edge', edge: true }).assertionKey!);
    const fake = rogue.assert({ subject: 'icyfenix', roles: ['ROLE_ADMIN'] }).assertion!;
    await refused(await call({ ...curlAuth, 'x-evolith-caller': fake }, 'admin'), 401, 'EVOLITH_UNAUTHENTICATED');
    const real = verifiedUser('ann', ['ROLE_USER', 'ROLE_SERVICE']).assertion!;
    const r = await call({ ...curlAuth, 'x-evolith-caller': real });
    expect(((await r.json()) as { caller: unknown }).caller).toEqual({ subject: 'ann', roles: ['ROLE_USER'] });
  });

  test('a listener without a deployment’s credentials takes anonymous calls only', async () => {
    const bare = Fastify();
    await bare.register(rpcHttpPlugin, { resolve: serving.resolve });
    const url = await bare.listen({ host: '127.0.0.1', port: 0 });
    try {
      const r = await fetch(`${url}/rpc/echo/meta`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-evolith-from': 'payment' }, body: '{}' });
      expect(r.status).toBe(401);
      const anon = await fetch(`${url}/rpc/echo/meta`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
      expect(((await anon.json()) as { caller: unknown }).caller).toBeNull();
    } finally {
      await bare.close();
    }
  });

  test('a client without credentials will not send a caller it cannot vouch for', async () => {
    const err = await rejection(new HttpTransport().send(base, m.meta, {}, callMeta(1_000, { subject: 'ann', roles: [] })));
    expect(err.code).toBe('EVOLITH_UNAUTHENTICATED');
    const unproven = await rejection(new HttpTransport({ plane: paymentPlane }).send(base, m.meta, {}, callMeta(1_000, { subject: 'ann', roles: [] })));
    expect(unproven.code).toBe('EVOLITH_UNAUTHENTICATED');
  });
});
