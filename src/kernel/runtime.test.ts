import { afterEach, describe, expect, test } from 'vitest';
import { z } from 'zod';
import { eventually, Kit, rejection, sleep } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import {
  BusinessError,
  ConfigError,
  ErrorCodes,
  ForbiddenError,
  InternalError,
  NotSerializableError,
  TimeoutError,
  UnavailableError,
  ValidationError,
} from './errors.js';
import type { Identity } from './plugins.js';
import { database, implement, type ServiceContext } from './service.js';
import type { TraceContext } from './trace.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

class Money {
  constructor(readonly cents: number) {}
}

const calc = defineContract({
  name: 'calc',
  version: '1.0.0',
  methods: {
    add: {
      input: z.object({ a: z.number(), b: z.number().int(), label: z.string().default('sum') }),
      output: z.object({ sum: z.number(), label: z.string() }),
    },
    broken: { input: z.object({}), output: z.object({ sum: z.number() }) },
    crash: { input: z.object({}), output: z.null() },
    refuse: { input: z.object({}), output: z.null() },
    admin: { input: z.object({}), output: z.object({ subject: z.string() }), roles: ['ROLE_ADMIN', 'ROLE_OWNER'] },
    leak: { input: z.object({ value: z.unknown() }), output: z.object({ value: z.unknown() }) },
  },
});

let addCalls = 0;
let adminCalls = 0;
const calcService = implement(calc, {
  handlers: {
    async add({ a, b, label }) {
      addCalls++;
      return { sum: a + b, label };
    },
    async broken() {
      return { sum: 'not a number' } as unknown as { sum: number };
    },
    async crash() {
      throw new Error('kaput');
    },
    async refuse() {
      throw new BusinessError('NO_WAY', 'refused by the rules', { details: { why: 'rules' }, httpStatus: 422 });
    },
    async admin(_i, ctx) {
      adminCalls++;
      return { subject: ctx.caller?.subject ?? 'anonymous' };
    },
    async leak({ value }) {
      return { value: value === 'money' ? new Money(5) : value };
    },
  },
});

describe('Runtime: the call pipeline', () => {
  test('a valid call reaches the handler with the parsed input (defaults applied)', async () => {
    const rt = await kit.start([calcService]);
    await expect(rt.client(calc).add({ a: 1.5, b: 2 })).resolves.toEqual({ sum: 3.5, label: 'sum' });
  });

  test('invalid input is a ValidationError listing every violation, and the handler never runs', async () => {
    const rt = await kit.start([calcService]);
    const before = addCalls;
    const err = await rejection(rt.client(calc).add({ a: 'one', b: 1.5, label: 7 } as never));
    expect(err).toBeInstanceOf(ValidationError);
    expect(err.code).toBe(ErrorCodes.VALIDATION);
    expect(err.httpStatus).toBe(400);
    expect((err as ValidationError).issues.map((i) => i.path).sort()).toEqual(['a', 'b', 'label']);
    expect(err.message).toMatch(/calc\.add/);
    for (const path of ['a:', 'b:', 'label:']) expect(err.message).toContain(path);
    expect(addCalls).toBe(before);
  });

  test('output that breaks the contract is EVOLITH_INTERNAL from the callee', async () => {
    const rt = await kit.start([calcService]);
    const err = await rejection(rt.client(calc).broken({}));
    expect(err).toBeInstanceOf(InternalError);
    expect(err.code).toBe(ErrorCodes.INTERNAL);
    expect(err.origin).toBe('calc.broken');
    expect(err.message).toContain('breaks its contract');
    expect(err.details.issues[0].path).toBe('sum');
  });

  test('an unknown fault in a handler becomes EVOLITH_INTERNAL with its origin', async () => {
    const rt = await kit.start([calcService]);
    const err = await rejection(rt.client(calc).crash({}));
    expect(err).toBeInstanceOf(InternalError);
    expect(err.origin).toBe('calc.crash');
    expect(err.message).toContain('kaput');
  });

  test('a business error reaches the caller with its class, code, details, status and origin', async () => {
    const rt = await kit.start([calcService]);
    const err = await rejection(rt.client(calc).refuse({}));
    expect(err).toBeInstanceOf(BusinessError);
    expect(err).toMatchObject({ code: 'NO_WAY', details: { why: 'rules' }, httpStatus: 422, origin: 'calc.refuse' });
  });

  test('calls before start and after stop are refused as unavailable', async () => {
    const rt = kit.runtime([calcService]);
    await expect(rt.client(calc).add({ a: 1, b: 1 })).rejects.toBeInstanceOf(UnavailableError);
    await rt.start();
    await rt.stop();
    await expect(rt.client(calc).add({ a: 1, b: 1 })).rejects.toBeInstanceOf(UnavailableError);
  });
});

describe('Runtime: roles', () => {
  const call = async (caller: Identity | undefined) => {
    const rt = await kit.start([calcService]);
    return rt.client(calc, undefined, { caller }).admin({});
  };

  test('an anonymous caller is forbidden and the handler never runs', async () => {
    const before = adminCalls;
    const err = await rejection(call(undefined));
    expect(err).toBeInstanceOf(ForbiddenError);
    expect(err.httpStatus).toBe(403);
    expect(err.message).toContain('ROLE_ADMIN');
    expect(adminCalls).toBe(before);
  });

  test('a caller without any of the roles is forbidden', async () => {
    const before = adminCalls;
    await expect(call({ subject: 'bob', roles: ['ROLE_USER'] })).rejects.toBeInstanceOf(ForbiddenError);
    expect(adminCalls).toBe(before);
  });

  test('a caller with one of the roles gets through', async () => {
    await expect(call({ subject: 'alice', roles: ['ROLE_USER', 'ROLE_OWNER'] })).resolves.toEqual({ subject: 'alice' });
  });

  test('a service identity (ROLE_SERVICE) gets through', async () => {
    await expect(call({ subject: 'service:orders', roles: ['ROLE_SERVICE'] })).resolves.toEqual({ subject: 'service:orders' });
  });
});

describe('Runtime: checkSerializable', () => {
  test('fails a call returning a class instance, and only because of the check', async () => {
    const checked = await kit.start([calcService], { checkSerializable: true });
    const err = await rejection(checked.client(calc).leak({ value: 'money' }));
    expect(err).toBeInstanceOf(NotSerializableError);
    expect(err.message).toContain('output of calc.leak');
    expect(err.message).toContain('$.value is an instance of Money');

    const unchecked = await kit.start([calcService], { checkSerializable: false });
    const out = await unchecked.client(calc).leak({ value: 'money' });
    expect(out.value).toBeInstanceOf(Money);
  });

  test('fails a call whose input holds a Map before the handler runs', async () => {
    const rt = await kit.start([calcService]);
    const err = await rejection(rt.client(calc).leak({ value: new Map([[1, 2]]) }));
    expect(err).toBeInstanceOf(NotSerializableError);
    expect(err.message).toContain('input of calc.leak');
  });

  test('plain data passes the check', async () => {
    const rt = await kit.start([calcService]);
    await expect(rt.client(calc).leak({ value: { at: new Date(0), list: [1, 'a'] } })).resolves.toEqual({
      value: { at: new Date(0), list: [1, 'a'] },
    });
  });

  test('errors are rebuilt from their wire form and keep their class', async () => {
    const rt = await kit.start([calcService]);
    const err = await rejection(rt.client(calc).refuse({}));
    expect(err).toBeInstanceOf(BusinessError);
    expect(err).toMatchObject({ code: 'NO_WAY', httpStatus: 422, origin: 'calc.refuse' });
  });
});

// ---------------------------------------------------------------------------------------------
// Deadlines, identity and trace on nested calls.

interface Seen {
  deadline: number;
  trace: { traceId: string; spanId: string; parentSpanId?: string };
  caller: Identity | undefined;
  signalAbortedAtEnd?: boolean;
  lateSignalAborted?: boolean;
  abortedAt?: number;
  nestedError?: unknown;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const snapshot = (ctx: ServiceContext<any>): Seen => ({
  deadline: ctx.deadline,
  trace: { traceId: ctx.trace.traceId, spanId: ctx.trace.spanId, parentSpanId: ctx.trace.parentSpanId },
  caller: ctx.caller,
});

const inner = defineContract({
  name: 'inner',
  version: '1.0.0',
  methods: {
    probe: { input: z.object({}), output: z.object({ ok: z.boolean() }) },
    nap: { input: z.object({ ms: z.number() }), output: z.null(), timeoutMs: 5_000 },
    secret: { input: z.object({}), output: z.null(), roles: ['ROLE_ADMIN'] },
    backstage: { input: z.object({}), output: z.literal('ok'), internal: true },
  },
});

const outer = defineContract({
  name: 'outer',
  version: '1.0.0',
  methods: {
    relay: { input: z.object({}), output: z.object({ ok: z.boolean() }) },
    relayNap: { input: z.object({ ms: z.number(), timeoutMs: z.number().optional() }), output: z.null(), timeoutMs: 120 },
    relaySecret: { input: z.object({}), output: z.null() },
    relayBackstage: { input: z.object({}), output: z.literal('ok') },
    sleep: { input: z.object({ ms: z.number() }), output: z.null(), timeoutMs: 100 },
    sleepThenCall: { input: z.object({ ms: z.number() }), output: z.null(), timeoutMs: 60 },
  },
});

const seen: Record<string, Seen> = {};

const innerService = implement(inner, {
  handlers: {
    async probe(_i, ctx) {
      seen.inner = snapshot(ctx);
      return { ok: true };
    },
    async nap({ ms }, ctx) {
      seen.nap = snapshot(ctx);
      await sleep(ms);
      return null;
    },
    async secret() {
      return null;
    },
    async backstage() {
      return 'ok' as const;
    },
  },
});

const outerService = implement(outer, {
  dependsOn: [inner],
  handlers: {
    async relay(_i, ctx) {
      seen.outer = snapshot(ctx);
      return ctx.client(inner).probe({});
    },
    async relayNap({ ms, timeoutMs }, ctx) {
      seen.outer = snapshot(ctx);
      return ctx.client(inner).nap({ ms }, timeoutMs === undefined ? undefined : { timeoutMs });
    },
    async relaySecret(_i, ctx) {
      return ctx.client(inner).secret({});
    },
    async relayBackstage(_i, ctx) {
      return ctx.client(inner).backstage({});
    },
    async sleep({ ms }, ctx) {
      const s = (seen.sleep = snapshot(ctx));
      const signal = ctx.signal;
      signal.addEventListener('abort', () => (s.abortedAt = Date.now()));
      await sleep(ms);
      s.signalAbortedAtEnd = signal.aborted;
      return null;
    },
    async sleepThenCall({ ms }, ctx) {
      const s = (seen.sleepThenCall = snapshot(ctx));
      await sleep(ms);
      // First look at the signal only after the deadline passed.
      s.lateSignalAborted = ctx.signal.aborted;
      s.nestedError = await ctx.client(inner).probe({}).then(
        () => undefined,
        (err: unknown) => err,
      );
      return null;
    },
  },
});

describe('Runtime: deadlines', () => {
  test('a handler sleeping past its timeout gives a TimeoutError on time and its signal is aborted', async () => {
    const rt = await kit.start([innerService, outerService]);
    const t0 = Date.now();
    const err = await rejection(rt.client(outer).sleep({ ms: 400 }));
    const took = Date.now() - t0;
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err.code).toBe(ErrorCodes.TIMEOUT);
    expect(err.origin).toBe('outer.sleep');
    expect(took, `answered after ${took} ms`).toBeGreaterThanOrEqual(95);
    expect(took, `answered after ${took} ms`).toBeLessThan(100 + 50);
    const s = seen.sleep!;
    expect(s.abortedAt).toBeDefined();
    expect(s.abortedAt! - s.deadline).toBeLessThan(50);
    await eventually(() => expect(s.signalAbortedAtEnd).toBeDefined());
    expect(s.signalAbortedAtEnd).toBe(true);
  });

  // ctx.signal is made lazily; a handler that first reads it after the deadline must still see it aborted.
  test('ctx.signal read for the first time after the deadline is aborted', async () => {
    const rt = await kit.start([innerService, outerService]);
    delete seen.sleepThenCall;
    await expect(rt.client(outer).sleepThenCall({ ms: 100 })).rejects.toBeInstanceOf(TimeoutError);
    await eventually(() => expect(seen.sleepThenCall!.lateSignalAborted).toBeDefined());
    expect(seen.sleepThenCall!.lateSignalAborted).toBe(true);
  });

  test('a caller can shorten the deadline, and policies set it per method', async () => {
    const rt = await kit.start([innerService, outerService]);
    let t0 = Date.now();
    await expect(rt.client(inner).nap({ ms: 300 }, { timeoutMs: 40 })).rejects.toBeInstanceOf(TimeoutError);
    let took = Date.now() - t0;
    // Answered at its deadline, not when the 300 ms nap ends (slack for a busy machine).
    expect(took, `answered after ${took} ms`).toBeLessThan(250);

    const withPolicy = await kit.start([innerService, outerService], { policies: { 'inner.nap': { timeoutMs: 30 } } });
    t0 = Date.now();
    await expect(withPolicy.client(inner).nap({ ms: 300 })).rejects.toBeInstanceOf(TimeoutError);
    took = Date.now() - t0;
    expect(took, `answered after ${took} ms`).toBeLessThan(250);
  });

  test("a nested call inherits the parent's shorter deadline", async () => {
    const rt = await kit.start([innerService, outerService]);
    const t0 = Date.now();
    const err = await rejection(rt.client(outer).relayNap({ ms: 1_000 }));
    const took = Date.now() - t0;
    expect(err).toBeInstanceOf(TimeoutError);
    // At the parent's 120 ms deadline, not the nap's 1 s (slack for a busy machine).
    expect(took, `answered after ${took} ms`).toBeLessThan(600);
    // inner.nap allows 5 s on its own; inside outer.relayNap it gets what is left of 120 ms.
    expect(seen.nap!.deadline).toBe(seen.outer!.deadline);
    expect(seen.outer!.deadline - t0).toBeLessThanOrEqual(120 + 10);
  });

  test("a nested call's own longer timeout never extends the parent's deadline", async () => {
    const rt = await kit.start([innerService, outerService]);
    await expect(rt.client(outer).relayNap({ ms: 1_000, timeoutMs: 10_000 })).rejects.toBeInstanceOf(TimeoutError);
    expect(seen.nap!.deadline).toBe(seen.outer!.deadline);
  });

  test("a nested call started after the parent's deadline is refused at once", async () => {
    const rt = await kit.start([innerService, outerService]);
    delete seen.inner;
    await expect(rt.client(outer).sleepThenCall({ ms: 90 })).rejects.toBeInstanceOf(TimeoutError);
    await eventually(() => expect(seen.sleepThenCall!.nestedError).toBeDefined());
    // The handler went on after its deadline; its nested call must not reach inner.probe.
    expect(seen.sleepThenCall!.nestedError).toBeInstanceOf(TimeoutError);
    expect((seen.sleepThenCall!.nestedError as Error).message).toContain("the caller's deadline has passed");
    expect(seen.inner).toBeUndefined();
  });
});

describe('Runtime: internal methods', () => {
  test('are refused to callers outside any service, even with every role', async () => {
    const rt = await kit.start([innerService, outerService]);
    const err = await rejection(rt.client(inner, undefined, { caller: { subject: 'root', roles: ['ROLE_SERVICE', 'ROLE_ADMIN'] } }).backstage({}));
    expect(err).toBeInstanceOf(ForbiddenError);
    expect(err.message).toContain('inner.backstage is internal');
  });

  test('are open to other services', async () => {
    const rt = await kit.start([innerService, outerService]);
    await expect(rt.client(outer).relayBackstage({})).resolves.toBe('ok');
  });
});

describe('Runtime: identity and trace on nested calls', () => {
  test('the same trace id, a new span, and the caller are carried to the callee', async () => {
    const rt = await kit.start([innerService, outerService]);
    const alice: Identity = { subject: 'alice', roles: ['ROLE_USER'] };
    await rt.client(outer, undefined, { caller: alice }).relay({});
    const o = seen.outer!;
    const i = seen.inner!;
    expect(o.trace.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(o.trace.spanId).toMatch(/^[0-9a-f]{16}$/);
    expect(i.trace.traceId).toBe(o.trace.traceId);
    expect(i.trace.spanId).not.toBe(o.trace.spanId);
    expect(i.trace.parentSpanId).toBe(o.trace.spanId);
    expect(o.caller).toEqual(alice);
    expect(i.caller).toEqual(alice);
  });

  test('a root call continues a trace it is given', async () => {
    const rt = await kit.start([innerService, outerService]);
    const given: TraceContext = { traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), sampled: true };
    await rt.client(outer, undefined, { trace: given }).relay({});
    expect(seen.outer!.trace.traceId).toBe(given.traceId);
    expect(seen.outer!.trace.parentSpanId).toBe(given.spanId);
    expect(seen.inner!.trace.traceId).toBe(given.traceId);
    expect(seen.outer!.caller).toBeUndefined();
  });

  test('two root calls get different trace ids', async () => {
    const rt = await kit.start([innerService, outerService]);
    await rt.client(outer).relay({});
    const first = seen.outer!.trace.traceId;
    await rt.client(outer).relay({});
    expect(seen.outer!.trace.traceId).not.toBe(first);
  });

  test("the caller's identity, not the calling service's, is checked on nested calls", async () => {
    const rt = await kit.start([innerService, outerService]);
    await expect(rt.client(outer, undefined, { caller: { subject: 'bob', roles: ['ROLE_USER'] } }).relaySecret({})).rejects.toBeInstanceOf(
      ForbiddenError,
    );
    await expect(rt.client(outer, undefined, { caller: { subject: 'root', roles: ['ROLE_ADMIN'] } }).relaySecret({})).resolves.toBeNull();
  });
});

// ---------------------------------------------------------------------------------------------
// Lifecycle.

function lifecycleApp(log: string[], deps: Record<string, string[]>, extraNames: string[] = []) {
  const contracts = new Map<string, ReturnType<typeof defineContract<{ name: string; version: '1'; methods: {} }>>>();
  const names = [...Object.keys(deps), ...extraNames];
  for (const n of names) contracts.set(n, defineContract({ name: n, version: '1', methods: {} }));
  return Object.keys(deps).map((n) =>
    implement(contracts.get(n)!, {
      dependsOn: deps[n]!.map((d) => contracts.get(d)!),
      handlers: {},
      onStart: async () => void log.push(`start ${n}`),
      onStop: async () => void log.push(`stop ${n}`),
    }),
  );
}

describe('Runtime: lifecycle', () => {
  test('services start dependencies first and stop in reverse', async () => {
    const log: string[] = [];
    // Listed in the wrong order on purpose.
    const services = lifecycleApp(log, { web: ['orders', 'users'], orders: ['users', 'stock'], users: [], stock: [] });
    const rt = await kit.start(services);
    expect(rt.services.map((s) => s.contract.name)).toEqual(['users', 'stock', 'orders', 'web']);
    expect(log).toEqual(['start users', 'start stock', 'start orders', 'start web']);
    log.length = 0;
    await rt.stop();
    expect(log).toEqual(['stop web', 'stop orders', 'stop stock', 'stop users']);
  });

  test('a dependency cycle is a ConfigError naming the cycle', () => {
    const services = lifecycleApp([], { a: ['b'], b: ['c'], c: ['a'] });
    let err: unknown;
    try {
      kit.runtime(services);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain('cycle');
    expect((err as Error).message).toContain('a → b → c → a');
  });

  test('a missing dependency is a ConfigError naming both services', () => {
    const services = lifecycleApp([], { a: ['ghost'] }, ['ghost']);
    expect(() => kit.runtime(services)).toThrow(ConfigError);
    expect(() => kit.runtime(services)).toThrow('service a depends on ghost, which is not part of the app');
  });

  test('a service defined twice is a ConfigError', () => {
    const [a] = lifecycleApp([], { a: [] });
    expect(() => kit.runtime([a!, a!])).toThrow(/service a is defined twice/);
  });

  test('starting twice is refused', async () => {
    const rt = await kit.start(lifecycleApp([], { a: [] }));
    await expect(rt.start()).rejects.toBeInstanceOf(ConfigError);
  });

  test('when start fails, onStop runs only for services whose onStart ran', async () => {
    const log: string[] = [];
    const [ok] = lifecycleApp(log, { ok: [] });
    const bad = implement(defineContract({ name: 'bad', version: '1', methods: {} }), {
      dependsOn: [ok!.contract],
      database: database({
        migrations: {
          '001_broken': async () => {
            throw new Error('syntax error');
          },
        },
      }),
      handlers: {},
    });
    await expect(kit.start([ok!, bad])).rejects.toThrow(/001_broken/);
    // Migrations run before any onStart, so nothing started; nothing may be stopped.
    expect(log).toEqual([]);
  });

  test('stop() waits for in-flight calls before closing stores', async () => {
    const slow = defineContract({
      name: 'slow',
      version: '1',
      methods: { work: { input: z.object({ ms: z.number() }), output: z.object({ rows: z.number() }) } },
    });
    const svc = implement(slow, {
      database: database<{ job: { id: number } }>({
        migrations: { '001': async (db) => db.schema.createTable('job').addColumn('id', 'integer').execute() },
      }),
      handlers: {
        async work({ ms }, ctx) {
          await sleep(ms);
          // The store must still be open here, after stop() was called.
          await ctx.db.insertInto('job').values({ id: 1 }).execute();
          const rows = await ctx.db.selectFrom('job').selectAll().execute();
          return { rows: rows.length };
        },
      },
    });
    const rt = await kit.start([svc], { drainMs: 5_000 });
    const order: string[] = [];
    const call = rt
      .client(slow)
      .work({ ms: 150 })
      .then((r) => {
        order.push('call done');
        return r;
      });
    await sleep(10);
    const stopped = rt.stop().then(() => order.push('stopped'));
    await expect(call).resolves.toEqual({ rows: 1 });
    await stopped;
    expect(order).toEqual(['call done', 'stopped']);
    expect(rt.host('slow').running).toBe(false);
  });

  test('stop() gives up waiting after drainMs', async () => {
    const stuck = defineContract({ name: 'stuck', version: '1', methods: { hang: { input: z.object({}), output: z.null(), timeoutMs: 60_000 } } });
    const svc = implement(stuck, { handlers: { hang: () => new Promise<null>(() => undefined) } });
    const rt = await kit.start([svc], { drainMs: 80 });
    void rt.client(stuck).hang({}).catch(() => undefined);
    await sleep(5);
    const t0 = Date.now();
    await rt.stop();
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(75);
    expect(took).toBeLessThan(1_000);
  });
});
