import Fastify, { type FastifyInstance } from 'fastify';
import { pack, unpack } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Kit, silentLog } from '../../test/fixtures/unit-kit.js';
import type { MethodDef } from '../contract/define.js';
import { BusinessError, ForbiddenError, NotFoundError, TimeoutError, UnavailableError, ValidationError } from '../kernel/errors.js';
import { HttpTransport, MSGPACK_TYPE, rpcHttpPlugin } from './http-transport.js';
import { callMeta, echoContract, echoService, startHosts, type ServingHosts } from '../../test/fixtures/rpc-kit.js';

const kit = new Kit();
const m = echoContract.methods;
let serving: ServingHosts;
let app: FastifyInstance;
let base: string;

beforeAll(async () => {
  serving = await startHosts([echoService], kit.tmp('rpc-http'), silentLog);
  app = Fastify();
  await app.register(rpcHttpPlugin, { resolve: serving.resolve });
  base = await app.listen({ host: '127.0.0.1', port: 0 });
});
afterAll(async () => {
  await app.close();
  await serving.stop();
  await kit.cleanup();
});

async function rejection(p: Promise<unknown>): Promise<any> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the call to fail, but it succeeded');
}

describe.each(['json', 'msgpack'] as const)('HTTP RPC transport (%s)', (format) => {
  const transport = () => new HttpTransport({ addressesFor: () => [base], format });

  test('a call returns the handler output', async () => {
    const t = transport();
    expect(await t.invoke(m.echo, { text: 'héllo' }, callMeta())).toEqual({ text: 'héllo', n: 0 });
    expect(await t.invoke(m.add, { a: 1.5, b: 2, label: 'sum' }, callMeta())).toEqual({ sum: 3.5, label: 'sum' });
    expect(await t.invoke(m.nothing, undefined, callMeta())).toBeUndefined();
    const host = base.replace('http://', '');
    expect(await new HttpTransport({ addressesFor: () => [host], format }).invoke(m.echo, { text: 'by address' }, callMeta())).toEqual({ text: 'by address', n: 0 });
  });

  test('deadline, trace context, caller identity (even non-ASCII) and calling service cross the hop', async () => {
    const meta = callMeta(4_000, { subject: 'José 李', roles: ['ROLE_USER'] }, 'payment');
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
    expect(await t.invoke(m.admin, {}, callMeta(1_000, { subject: 'root', roles: ['ROLE_ADMIN'] }))).toEqual({ subject: 'root' });
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
    const json = await fetch(`${base}/rpc/echo/echo`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"text":"a"}' });
    expect(json.status).toBe(200);
    expect(json.headers.get('content-type')).toContain('application/json');
    expect(await json.json()).toEqual({ text: 'a', n: 0 });

    const mp = await fetch(`${base}/rpc/echo/echo`, { method: 'POST', headers: { 'content-type': MSGPACK_TYPE }, body: pack({ text: 'b', n: 2 }) });
    expect(mp.headers.get('content-type')).toBe(MSGPACK_TYPE);
    expect(unpack(new Uint8Array(await mp.arrayBuffer()))).toEqual({ text: 'b', n: 2 });

    const mixed = await fetch(`${base}/rpc/echo/echo`, { method: 'POST', headers: { 'content-type': 'application/json', accept: MSGPACK_TYPE }, body: '{"text":"c"}' });
    expect(unpack(new Uint8Array(await mixed.arrayBuffer()))).toEqual({ text: 'c', n: 0 });
  });

  test('errors answer with their status, an x-evolith-error header and the SerializedError body', async () => {
    const r = await fetch(`${base}/rpc/echo/refuse`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(r.status).toBe(422);
    expect(r.headers.get('x-evolith-error')).toBe('NO_WAY');
    expect(await r.json()).toEqual({ code: 'NO_WAY', message: 'refused by the rules', details: { why: 'rules' }, httpStatus: 422, origin: 'echo.refuse' });

    const nf = await fetch(`${base}/rpc/constructor/toString`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(nf.status).toBe(404);
    expect(((await nf.json()) as { code: string }).code).toBe('EVOLITH_NOT_FOUND');
  });

  test('a relative timeout header works for hand-made calls, and an expired deadline is refused', async () => {
    const slow = await fetch(`${base}/rpc/echo/slow`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-evolith-timeout-ms': '50' }, body: '{"ms":2000}' });
    expect(slow.status).toBe(504);
    expect(((await slow.json()) as { code: string }).code).toBe('EVOLITH_TIMEOUT');
    const late = await fetch(`${base}/rpc/echo/echo`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-evolith-deadline': String(Date.now() - 10) }, body: '{"text":"x"}' });
    expect(late.status).toBe(504);
  });

  test('malformed headers and bodies are validation errors, not crashes', async () => {
    const cases: [Record<string, string>, string | Uint8Array][] = [
      [{ 'content-type': 'application/json', 'x-evolith-caller': '{not json' }, '{"text":"x"}'],
      [{ 'content-type': 'application/json', 'x-evolith-caller': '{"subject":1,"roles":[]}' }, '{"text":"x"}'],
      [{ 'content-type': 'application/json', 'x-evolith-deadline': 'soon' }, '{"text":"x"}'],
      [{ 'content-type': 'application/json' }, '{"text":'],
      [{ 'content-type': MSGPACK_TYPE }, new Uint8Array([0x93, 0x01])],
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
    const err = await rejection(new HttpTransport({ addressesFor: () => [addr] }).invoke(m.echo, { text: 'x' }, callMeta()));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.details).toMatchObject({ maybeExecuted: false });
  });
});
