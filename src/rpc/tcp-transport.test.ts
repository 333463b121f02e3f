import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { eventually, Kit, rejection, silentLog } from '../../test/fixtures/unit-kit.js';
import type { MethodDef } from '../contract/define.js';
import { BusinessError, ConfigError, ForbiddenError, NotFoundError, NotSerializableError, TimeoutError, UnavailableError, ValidationError } from '../kernel/errors.js';
import { formatTraceparent } from '../kernel/trace.js';
import { RpcServer, type RpcServerOptions } from './tcp-server.js';
import { TcpTransport, type TcpTransportOptions } from './tcp-transport.js';
import { callMeta, echoContract, echoService, startHosts, type ServingHosts } from '../../test/fixtures/rpc-kit.js';
import { planeFor, verifiedUser } from '../../test/fixtures/plane-kit.js';
import { DeploymentAuthority } from '../auth/credentials.js';
import { InternalPlane } from '../auth/internal-plane.js';
import { connect } from 'node:net';
import { encodeFrame, FrameDecoder, type FrameHeader } from './frame.js';
import pino from 'pino';

/** The processes of the test deployment: the echo server and a payment worker that calls it. */
const serverPlane = planeFor('echo#0', { svc: ['echo'] });
const paymentPlane = planeFor('payment#0', { svc: ['payment'] });

const kit = new Kit();
const m = echoContract.methods;
let serving: ServingHosts;
let server: RpcServer;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  serving = await startHosts([echoService], kit.tmp('rpc-tcp'), silentLog);
  server = new RpcServer({ resolve: serving.resolve, log: silentLog, plane: serverPlane });
  await server.listen();
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});
afterAll(async () => {
  await server.close(100);
  await serving.stop();
  await kit.cleanup();
});

function transport(options: Partial<TcpTransportOptions> = {}): TcpTransport {
  const t = new TcpTransport({ log: silentLog, plane: paymentPlane, ...options });
  cleanups.push(() => t.close());
  return t;
}

async function serve(options: Partial<RpcServerOptions> = {}): Promise<RpcServer> {
  const s = new RpcServer({ resolve: serving.resolve, log: silentLog, plane: serverPlane, ...options });
  await s.listen();
  cleanups.push(() => s.close(100));
  return s;
}

describe('TCP RPC: a round trip through a real server and real kernel hosts', () => {
  test('a call returns the handler output, with schema defaults applied on the server', async () => {
    const t = transport();
    expect(await t.send(server.address, m.echo, { text: 'héllo' }, callMeta())).toEqual({ text: 'héllo', n: 0 });
    expect(await t.send(server.address, m.add, { a: 1.5, b: 2, label: 'sum' }, callMeta())).toEqual({ sum: 3.5, label: 'sum' });
    expect(await t.send(server.address, m.nothing, undefined, callMeta())).toBeUndefined();
  });

  test('deadline, trace context, caller identity and calling service cross the hop', async () => {
    const t = transport();
    const meta = callMeta(4_000, verifiedUser('icyfenix', ['ROLE_USER']), 'payment');
    const out = (await t.send(server.address, m.meta, {}, meta)) as { deadline: number; traceId: string; spanId: string; caller: unknown };
    expect(out.deadline).toBe(meta.deadline);
    expect(out.traceId).toBe(meta.trace.traceId);
    expect(out.spanId).toBe(meta.trace.spanId);
    expect(out.caller).toEqual({ subject: 'icyfenix', roles: ['ROLE_USER'] });
    expect(serving.lastMeta?.from).toBe('payment');
    expect(formatTraceparent(serving.lastMeta!.trace)).toBe(formatTraceparent(meta.trace));
  });

  test('typed errors arrive as the same classes, codes, statuses and details', async () => {
    const t = transport();
    const v = await rejection(t.send(server.address, m.add, { a: 'one', b: 1.5, label: 'x' }, callMeta()));
    expect(v).toBeInstanceOf(ValidationError);
    expect(v.code).toBe('EVOLITH_VALIDATION');
    expect(v.httpStatus).toBe(400);
    expect((v as ValidationError).issues.map((i) => i.path).sort()).toEqual(['a', 'b', 'label']);

    const b = await rejection(t.send(server.address, m.refuse, {}, callMeta()));
    expect(b).toBeInstanceOf(BusinessError);
    expect(b).toMatchObject({ code: 'NO_WAY', httpStatus: 422, message: 'refused by the rules', details: { why: 'rules' }, origin: 'echo.refuse' });

    const f = await rejection(t.send(server.address, m.admin, {}, callMeta()));
    expect(f).toBeInstanceOf(ForbiddenError);
    expect(f.httpStatus).toBe(403);
    expect(await t.send(server.address, m.admin, {}, callMeta(1_000, verifiedUser('root', ['ROLE_ADMIN'])))).toEqual({ subject: 'root' });
    expect(await rejection(t.send(server.address, m.admin, {}, callMeta(1_000, verifiedUser('bob', ['ROLE_USER']))))).toBeInstanceOf(ForbiddenError);

    expect(await rejection(t.send(server.address, m.internalOnly, {}, callMeta()))).toBeInstanceOf(ForbiddenError);
    expect(await t.send(server.address, m.internalOnly, {}, callMeta(1_000, undefined, 'payment'))).toBe('ok');

    const unknown: MethodDef = { ...m.echo, name: 'nope', fullName: 'echo.nope' };
    const nf = await rejection(t.send(server.address, unknown, {}, callMeta()));
    expect(nf).toBeInstanceOf(NotFoundError);
    expect(nf.message).toContain('echo.nope');
    expect(await rejection(t.send(server.address, { ...m.echo, service: 'ghost', fullName: 'ghost.echo' }, {}, callMeta()))).toBeInstanceOf(NotFoundError);
  });

  test('input that cannot travel is refused before it is sent', async () => {
    const t = transport();
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(await rejection(t.send(server.address, m.echo, cyclic, callMeta()))).toBeInstanceOf(NotSerializableError);
    const small = transport({ maxFrameBytes: 1_000 });
    expect(await rejection(small.send(server.address, m.echo, { text: 'x'.repeat(2_000) }, callMeta()))).toBeInstanceOf(NotSerializableError);
  });

  test('output too large for a frame comes back as a typed error, and the connection stays usable', async () => {
    const s = await serve({ maxFrameBytes: 64 * 1024 });
    const t = transport();
    const err = await rejection(t.send(s.address, m.blob, { bytes: 100_000 }, callMeta()));
    expect(err).toBeInstanceOf(NotSerializableError);
    expect(err.message).toContain('echo.blob');
    expect(await t.send(s.address, m.blob, { bytes: 10 }, callMeta())).toEqual({ data: 'x'.repeat(10) });
  });

  test('200 concurrent calls are multiplexed on one connection and each gets its own answer', async () => {
    const s = await serve();
    const t = transport({ maxConnectionsPerAddress: 1 });
    const outs = await Promise.all(Array.from({ length: 200 }, (_, i) => t.send(s.address, m.echo, { text: `call ${i}`, n: i }, callMeta())));
    outs.forEach((o, i) => expect(o).toEqual({ text: `call ${i}`, n: i }));
    expect(s.stats.accepted).toBe(1);
    expect(s.stats.requests).toBe(200);
    expect(t.connectionCount(s.address)).toBe(1);
  });

  test('maxRequestsPerConnection: a connection that carried its share of calls is replaced, and closes once they answered', async () => {
    const s = await serve();
    const t = transport({ maxConnectionsPerAddress: 1, maxRequestsPerConnection: 10 });
    const outs = await Promise.all(Array.from({ length: 25 }, (_, i) => t.send(s.address, m.echo, { text: String(i) }, callMeta())));
    outs.forEach((o, i) => expect(o).toEqual({ text: String(i), n: 0 }));
    expect(s.stats.accepted).toBe(3);
    await eventually(() => expect(s.stats.connections).toBe(1));
  });

  test('a second connection opens only under load, up to the pool size', async () => {
    const s = await serve();
    const t = transport({ maxConnectionsPerAddress: 2, spilloverAt: 50 });
    await t.send(s.address, m.echo, { text: 'warm' }, callMeta());
    expect(t.connectionCount(s.address)).toBe(1);
    await Promise.all(Array.from({ length: 300 }, (_, i) => t.send(s.address, m.echo, { text: String(i) }, callMeta())));
    expect(t.connectionCount(s.address)).toBe(2);
    expect(s.stats.accepted).toBe(2);
  });

  test('the deadline is honoured across the hop: the caller gets a TimeoutError on time', async () => {
    const t = transport();
    const started = Date.now();
    const err = await rejection(t.send(server.address, m.slow, { ms: 2_000 }, callMeta(150)));
    const took = Date.now() - started;
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err.code).toBe('EVOLITH_TIMEOUT');
    expect(took).toBeGreaterThanOrEqual(140);
    expect(took).toBeLessThan(1_000);
    // The connection is still good for the next call.
    expect(await t.send(server.address, m.echo, { text: 'after' }, callMeta())).toEqual({ text: 'after', n: 0 });
  });

  test('a call whose deadline already passed is not sent', async () => {
    const t = transport();
    const err = await rejection(t.send(server.address, m.echo, { text: 'late' }, { ...callMeta(), deadline: Date.now() - 1 }));
    expect(err).toBeInstanceOf(TimeoutError);
    expect(t.connectionCount()).toBe(0);
  });

  test('an address that is not host:port is a configuration error; nobody listening is an UnavailableError that says the call never ran', async () => {
    const e1 = await rejection(transport().send('localhost', m.echo, { text: 'x' }, callMeta()));
    expect(e1).toBeInstanceOf(ConfigError);
    expect(e1.message).toContain('"localhost" is not a host:port address');
    const s = await serve();
    const address = s.address;
    await s.close();
    const e2 = await rejection(transport().send(address, m.echo, { text: 'x' }, callMeta()));
    expect(e2).toBeInstanceOf(UnavailableError);
    expect(e2.details).toMatchObject({ maybeExecuted: false });
    expect(e2.message).toContain('ECONNREFUSED');
  });

  test('server restart: calls in flight fail with UnavailableError, then the client reconnects', async () => {
    const first = await serve();
    const address = first.address;
    const port = Number(address.split(':').pop());
    const t = transport();
    expect(await t.send(address, m.echo, { text: 'before' }, callMeta())).toEqual({ text: 'before', n: 0 });

    const inFlight = rejection(t.send(address, m.slow, { ms: 3_000 }, callMeta()));
    await new Promise((r) => setTimeout(r, 30));
    await first.close(0); // no drain: connections are cut under the call
    const dropped = await inFlight;
    expect(dropped).toBeInstanceOf(UnavailableError);
    expect(dropped.details).toMatchObject({ maybeExecuted: true });

    const down = await rejection(t.send(address, m.echo, { text: 'down' }, callMeta()));
    expect(down).toBeInstanceOf(UnavailableError);

    const second = await serve({ port });
    expect(second.address).toBe(address);
    expect(await t.send(address, m.echo, { text: 'after' }, callMeta())).toEqual({ text: 'after', n: 0 });
    expect(second.stats.accepted).toBe(1);
  });

  test('graceful close lets calls in flight answer, then refuses new ones', async () => {
    const s = await serve();
    const t = transport();
    const slow = t.send(s.address, m.slow, { ms: 150 }, callMeta());
    await new Promise((r) => setTimeout(r, 20));
    const closing = s.close();
    expect(await slow).toEqual({ slept: 150 });
    await closing;
    expect(s.stats.connections).toBe(0);
    expect(await rejection(t.send(s.address, m.echo, { text: 'x' }, callMeta()))).toBeInstanceOf(UnavailableError);
  });

  test('ping measures a round trip', async () => {
    const t = transport();
    const ms = await t.ping(server.address);
    expect(ms).toBeGreaterThanOrEqual(0);
    expect(ms).toBeLessThan(1_000);
  });
});

describe('TCP RPC on a deployment’s internal plane, attacked', () => {
  const quietLog = () => {
    const lines: { msg: string; reason?: string }[] = [];
    return { lines, log: pino({ level: 'warn' }, { write: (x: string) => void lines.push(JSON.parse(x)) }) };
  };

  /** Writes frames on a raw socket; resolves what came back and whether the server hung up. */
  function raw(address: string, frames: Buffer[]): Promise<{ closed: boolean; got: FrameHeader[] }> {
    const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
    return new Promise((resolve) => {
      const got: FrameHeader[] = [];
      const decoder = new FrameDecoder((h) => got.push(h), () => undefined);
      const socket = connect({ host, port });
      socket.on('data', (d) => decoder.push(d));
      socket.on('error', () => undefined);
      socket.once('close', () => resolve({ closed: true, got }));
      socket.setTimeout(3_000, () => {
        socket.destroy();
        resolve({ closed: false, got });
      });
      socket.once('connect', () => socket.write(Buffer.concat(frames)));
    });
  }

  test('a request without a handshake is refused and the connection closed, with a logged reason', async () => {
    const { log, lines } = quietLog();
    const s = await serve({ log });
    const forged = encodeFrame(
      { kind: 'request', id: 1, service: 'echo', method: 'meta', deadline: Date.now() + 5_000, traceparent: undefined, caller: 'service', from: 'echo' },
      {},
    );
    const { closed, got } = await raw(s.address, [forged]);
    expect(closed).toBe(true);
    expect(got.map((h) => h.kind)).toEqual(['error', 'goaway']);
    expect(serving.lastMeta?.from).not.toBe('echo');
    expect(s.stats.refused).toBe(1);
    expect(lines).toEqual([expect.objectContaining({ msg: 'rpc connection refused', reason: expect.stringMatching(/before the peer proved itself/) })]);
  });

  test('a client without credentials, or with another deployment’s, gets nothing through; the call surely never ran', async () => {
    const before = serving.calls;
    const bare = await rejection(transport({ plane: undefined }).send(server.address, m.echo, { text: 'x' }, callMeta()));
    expect(bare.code).toBe('EVOLITH_UNAUTHENTICATED');
    const stranger = new InternalPlane(new DeploymentAuthority('elsewhere').issue({ sub: 'payment#0', svc: ['payment'] }));
    const foreign = await rejection(transport({ plane: stranger }).send(server.address, m.echo, { text: 'x' }, callMeta()));
    expect(foreign).toBeInstanceOf(UnavailableError);
    expect(foreign.details).toMatchObject({ maybeExecuted: false });
    expect(serving.calls).toBe(before);
  });

  test('a stolen credential without its key does not complete the handshake', async () => {
    const victim = planeFor('payment#0', { svc: ['payment'] });
    const thief = planeFor('thief', { svc: [] });
    const stolen = new InternalPlane({ ...thief.credential.bundle, token: victim.credential.token });
    const { log, lines } = quietLog();
    const s = await serve({ log });
    const err = await rejection(transport({ plane: stolen }).send(s.address, m.echo, { text: 'x' }, callMeta(1_000, undefined, 'payment')));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(lines.some((l) => l.msg === 'rpc connection refused' && /could not prove/.test(l.reason ?? ''))).toBe(true);
  });

  test('a server that cannot prove itself is sent nothing: not the input, not the caller', async () => {
    const rogue = new InternalPlane(new DeploymentAuthority('rogue').issue({ sub: 'echo#0', svc: ['echo'] }));
    const s = await serve({ plane: rogue });
    const user = verifiedUser('icyfenix', ['ROLE_USER']);
    const err = await rejection(transport().send(s.address, m.meta, {}, callMeta(1_000, user, 'payment')));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.details).toMatchObject({ maybeExecuted: false });
    expect(s.stats.requests).toBe(0);
  });

  test('a process may call only as a service it hosts; acting as itself is proven by its credential', async () => {
    const t = transport();
    const asAccount = await rejection(t.send(server.address, m.meta, {}, callMeta(1_000, undefined, 'account')));
    expect(asAccount).toBeInstanceOf(ForbiddenError);
    const self = { subject: 'service:payment', roles: ['ROLE_SERVICE'], service: 'payment' };
    const out = (await t.send(server.address, m.meta, {}, callMeta(1_000, self, 'payment'))) as { caller: unknown };
    expect(out.caller).toEqual({ subject: 'service:payment', roles: ['ROLE_SERVICE'] });
    // A user identity this process cannot vouch for (no assertion) never leaves it.
    const unproven = await rejection(t.send(server.address, m.meta, {}, callMeta(1_000, { subject: 'icyfenix', roles: ['ROLE_ADMIN'] }, 'payment')));
    expect(unproven.code).toBe('EVOLITH_UNAUTHENTICATED');
  });

  test('a listener without credentials takes anonymous calls only, and refuses a handshake', async () => {
    const bare = await serve({ plane: undefined });
    const anonymous = transport({ plane: undefined });
    expect(await anonymous.send(bare.address, m.echo, { text: 'hi' }, callMeta())).toEqual({ text: 'hi', n: 0 });
    expect(await rejection(anonymous.send(bare.address, m.meta, {}, callMeta(1_000, undefined, 'payment')))).toMatchObject({ code: 'EVOLITH_UNAUTHENTICATED' });
    const credentialed = await rejection(transport().send(bare.address, m.echo, { text: 'x' }, callMeta()));
    expect(credentialed).toBeInstanceOf(UnavailableError);
  });
});
