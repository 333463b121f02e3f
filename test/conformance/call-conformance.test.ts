/**
 * A call means the same wherever its callee runs. One contract using every schema feature our
 * contracts may use is called in-process, over TCP, over HTTP/1.1 and over HTTP/2 (h2c); each
 * case must give the same value, or the same typed error (class, code, status, issues, origin),
 * in all four.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { z } from 'zod';
import { defineContract, type MethodDef } from '../../src/contract/define.js';
import { BusinessError, EvolithError, ForbiddenError, InternalError, TimeoutError, ValidationError } from '../../src/kernel/errors.js';
import { implement } from '../../src/kernel/service.js';
import { Kit } from '../fixtures/unit-kit.js';
import { inProcess, overHttp, overHttp2, overTcp, type CallMode } from '../support/call-modes.js';

const Shape = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('circle'), r: z.number().positive() }),
  z.object({ kind: z.literal('rect'), w: z.number().positive(), h: z.number().positive() }),
]);

const features = defineContract({
  name: 'features',
  version: '1.0.0',
  methods: {
    /** A transform on the input: the handler sees a number, the caller sends a string. */
    parse: { input: z.object({ n: z.string().transform(Number) }), output: z.object({ r: z.number() }) },
    /** Defaults fill what the caller left out. */
    page: {
      input: z.object({ q: z.string().default(''), page: z.number().int().min(1).default(1), size: z.number().int().max(100).default(20) }),
      output: z.object({ q: z.string(), offset: z.number() }),
    },
    /** A refinement across fields, and several issues from one superRefine. */
    range: {
      input: z
        .object({ from: z.number(), to: z.number(), step: z.number().optional() })
        .refine((v) => v.from <= v.to, { message: 'from must not exceed to', path: ['from'] })
        .superRefine((v, ctx) => {
          if (v.step !== undefined && v.step <= 0) ctx.addIssue({ code: 'custom', message: 'step must be positive', path: ['step'] });
          if (v.step !== undefined && v.step > v.to - v.from) ctx.addIssue({ code: 'custom', message: 'step larger than the range', path: ['step'] });
        }),
      output: z.array(z.number()),
    },
    /** Optional and nullable fields, in and out. */
    profile: {
      input: z.object({ name: z.string(), nick: z.string().optional(), bio: z.string().nullable(), age: z.number().nullish() }),
      output: z.object({ name: z.string(), nick: z.string().optional(), bio: z.string().nullable(), hasAge: z.boolean() }),
    },
    /** Unions: a discriminated one and a plain one. */
    area: { input: z.object({ shape: Shape, unit: z.union([z.literal('cm'), z.literal('in'), z.number()]) }), output: z.object({ area: z.number(), unit: z.string() }) },
    /** Dates travel as strings: an ISO timestamp in, a coerced date, the weekday out. */
    when: {
      input: z.object({ at: z.iso.datetime(), day: z.coerce.date() }),
      output: z.object({ at: z.iso.datetime(), weekday: z.number().int(), dayIso: z.string() }),
    },
    /** Nested objects and arrays, with limits at each level. */
    order: {
      input: z.object({
        customer: z.object({ id: z.number().int().positive(), address: z.object({ city: z.string().min(1), zip: z.string().regex(/^\d{5}$/) }) }),
        lines: z.array(z.object({ sku: z.string(), qty: z.number().int().min(1), tags: z.array(z.enum(['gift', 'fragile'])).default([]) })).min(1).max(3),
      }),
      output: z.object({ items: z.number(), gifts: z.number(), city: z.string() }),
    },
    /** A transform on the output: applied once, by the callee, wherever it runs. */
    money: { input: z.object({ cents: z.number().int() }), output: z.object({ cents: z.number().int() }).transform((o) => ({ ...o, euros: o.cents / 100 })) },
    /** Errors: a business refusal with details, a fault, output that breaks the contract. */
    refuse: { input: z.object({ why: z.string() }), output: z.null() },
    crash: { input: z.object({}), output: z.null() },
    broken: { input: z.object({}), output: z.object({ n: z.number() }) },
    slow: { input: z.object({ ms: z.number() }), output: z.null(), timeoutMs: 150 },
    admin: { input: z.object({}), output: z.object({ who: z.string() }), roles: ['ROLE_ADMIN'] },
    internalOnly: { input: z.object({}), output: z.literal('ok'), internal: true },
  },
});

const featuresService = implement(features, {
  handlers: {
    parse: async ({ n }) => ({ r: n }),
    page: async ({ q, page, size }) => ({ q, offset: (page - 1) * size }),
    range: async ({ from, to, step }) => {
      const out: number[] = [];
      for (let x = from; x <= to && out.length < 100; x += step ?? 1) out.push(x);
      return out;
    },
    profile: async ({ name, nick, bio, age }) => ({ name, ...(nick === undefined ? {} : { nick }), bio, hasAge: age !== undefined && age !== null }),
    area: async ({ shape, unit }) => ({ area: shape.kind === 'circle' ? Math.round(Math.PI * shape.r ** 2 * 100) / 100 : shape.w * shape.h, unit: String(unit) }),
    when: async ({ at, day }) => ({ at, weekday: day.getUTCDay(), dayIso: day.toISOString() }),
    order: async ({ customer, lines }) => ({ items: lines.reduce((n, l) => n + l.qty, 0), gifts: lines.filter((l) => l.tags.includes('gift')).length, city: customer.address.city }),
    money: async ({ cents }) => ({ cents }),
    refuse: async ({ why }) => {
      throw new BusinessError('OUT_OF_STOCK', `refused: ${why}`, { details: { why, left: 0 }, httpStatus: 409 });
    },
    crash: async () => {
      throw new Error('disk on fire');
    },
    broken: async () => ({ n: 'seven' }) as unknown as { n: number },
    slow: async ({ ms }, ctx) => {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, ms);
        ctx.signal.addEventListener('abort', () => (clearTimeout(t), resolve()));
      });
      return null;
    },
    admin: async (_i, ctx) => ({ who: ctx.caller?.subject ?? 'nobody' }),
    internalOnly: async () => 'ok' as const,
  },
});

const m = features.methods;
type Outcome = { ok: true; value: unknown } | { ok: false; error: { type: string; code: string; httpStatus: number; message: string; details: unknown; origin: string | undefined } };

async function outcome(p: Promise<unknown>): Promise<Outcome> {
  try {
    return { ok: true, value: await p };
  } catch (err) {
    if (!(err instanceof EvolithError)) throw err;
    return { ok: false, error: { type: err.constructor.name, code: err.code, httpStatus: err.httpStatus, message: err.message, details: err.details, origin: err.origin } };
  }
}

const kit = new Kit();
const cleanups: (() => Promise<unknown>)[] = [];
const modes: CallMode[] = [];

beforeAll(async () => {
  modes.push(await inProcess(kit, [featuresService]));
  modes.push(await overTcp(kit, [featuresService], (fn) => cleanups.push(fn)));
  modes.push(await overHttp(kit, [featuresService], (fn) => cleanups.push(fn)));
  modes.push(await overHttp2(kit, [featuresService], (fn) => cleanups.push(fn)));
});
afterAll(async () => {
  for (const c of cleanups.splice(0)) await c();
  await kit.cleanup();
});
afterEach(() => undefined);

/** Runs one call in every mode; the in-process outcome is the reference the others must equal. */
async function everywhere(call: (mode: CallMode) => Promise<unknown>): Promise<Outcome> {
  const results = [];
  for (const mode of modes) results.push({ mode: mode.name, outcome: await outcome(call(mode)) });
  const [reference, ...others] = results;
  for (const r of others) expect(r.outcome, `${r.mode} differs from in-process`).toEqual(reference!.outcome);
  return reference!.outcome;
}

const call = (method: MethodDef, input: unknown) => (mode: CallMode) => (mode.client(features) as Record<string, (i: unknown) => Promise<unknown>>)[method.name]!(input);

describe('the same call, in-process, over TCP, over HTTP and over HTTP/2', () => {
  test('modes under test', () => {
    expect(modes.map((x) => x.name)).toEqual(['in-process', 'tcp', 'http', 'http2']);
  });

  test('a transform on the input runs once, on the callee’s side', async () => {
    expect(await everywhere(call(m.parse, { n: '42' }))).toEqual({ ok: true, value: { r: 42 } });
  });

  test('defaults fill what the caller left out', async () => {
    expect(await everywhere(call(m.page, {}))).toEqual({ ok: true, value: { q: '', offset: 0 } });
    expect(await everywhere(call(m.page, { q: 'x', page: 3, size: 10 }))).toEqual({ ok: true, value: { q: 'x', offset: 20 } });
  });

  test('refinements: one across fields, several from superRefine, each listed', async () => {
    expect(await everywhere(call(m.range, { from: 1, to: 4 }))).toEqual({ ok: true, value: [1, 2, 3, 4] });
    const bad = await everywhere(call(m.range, { from: 1, to: 3, step: 5 }));
    expect(bad).toMatchObject({ ok: false, error: { type: 'ValidationError', code: 'EVOLITH_VALIDATION', httpStatus: 400 } });
    expect((bad as { error: { details: { issues: unknown[] } } }).error.details.issues).toEqual([{ path: 'step', message: 'step larger than the range' }]);
    const reversed = await everywhere(call(m.range, { from: 5, to: 1 }));
    expect(reversed).toMatchObject({ ok: false, error: { details: { issues: [{ path: 'from', message: 'from must not exceed to' }] } } });
  });

  test('optional, nullable and nullish fields', async () => {
    expect(await everywhere(call(m.profile, { name: 'ann', bio: null }))).toEqual({ ok: true, value: { name: 'ann', bio: null, hasAge: false } });
    expect(await everywhere(call(m.profile, { name: 'bob', nick: 'b', bio: 'hi', age: 30 }))).toEqual({ ok: true, value: { name: 'bob', nick: 'b', bio: 'hi', hasAge: true } });
    expect(await everywhere(call(m.profile, { name: 'cy', bio: 'x', age: null }))).toEqual({ ok: true, value: { name: 'cy', bio: 'x', hasAge: false } });
    expect(await everywhere(call(m.profile, { name: 'dee' }))).toMatchObject({ ok: false, error: { code: 'EVOLITH_VALIDATION', details: { issues: [{ path: 'bio' }] } } });
  });

  test('discriminated and plain unions', async () => {
    expect(await everywhere(call(m.area, { shape: { kind: 'rect', w: 2, h: 3 }, unit: 'cm' }))).toEqual({ ok: true, value: { area: 6, unit: 'cm' } });
    expect(await everywhere(call(m.area, { shape: { kind: 'circle', r: 1 }, unit: 2 }))).toEqual({ ok: true, value: { area: 3.14, unit: '2' } });
    expect(await everywhere(call(m.area, { shape: { kind: 'hexagon', s: 1 }, unit: 'cm' }))).toMatchObject({ ok: false, error: { code: 'EVOLITH_VALIDATION' } });
    expect(await everywhere(call(m.area, { shape: { kind: 'rect', w: 2, h: 3 }, unit: 'mile' }))).toMatchObject({ ok: false, error: { code: 'EVOLITH_VALIDATION' } });
  });

  test('dates travel as strings; a coerced date is made on the callee’s side', async () => {
    const value = { ok: true, value: { at: '2026-11-30T09:00:00.000Z', weekday: 1, dayIso: '2026-11-30T00:00:00.000Z' } };
    expect(await everywhere(call(m.when, { at: '2026-11-30T09:00:00.000Z', day: '2026-11-30' }))).toEqual(value);
    expect(await everywhere(call(m.when, { at: 'yesterday', day: 'not a day' }))).toMatchObject({ ok: false, error: { code: 'EVOLITH_VALIDATION' } });
  });

  test('nested objects and arrays, with every violation named by its path', async () => {
    const good = { customer: { id: 7, address: { city: 'Lyon', zip: '69001' } }, lines: [{ sku: 'a', qty: 2, tags: ['gift'] }, { sku: 'b', qty: 1 }] };
    expect(await everywhere(call(m.order, good))).toEqual({ ok: true, value: { items: 3, gifts: 1, city: 'Lyon' } });
    const bad = await everywhere(call(m.order, { customer: { id: -1, address: { city: '', zip: 'x' } }, lines: [{ sku: 'a', qty: 0, tags: ['heavy'] }] }));
    const paths = (bad as { error: { details: { issues: { path: string }[] } } }).error.details.issues.map((i) => i.path).sort();
    expect(paths).toEqual(['customer.address.city', 'customer.address.zip', 'customer.id', 'lines.0.qty', 'lines.0.tags.0']);
  });

  test('a transform on the output runs once, on the callee’s side', async () => {
    expect(await everywhere(call(m.money, { cents: 250 }))).toEqual({ ok: true, value: { cents: 250, euros: 2.5 } });
  });

  test('a business refusal arrives with its class, code, status, details and origin', async () => {
    const r = await everywhere(call(m.refuse, { why: 'none left' }));
    expect(r).toEqual({
      ok: false,
      error: { type: 'BusinessError', code: 'OUT_OF_STOCK', httpStatus: 409, message: 'refused: none left', details: { why: 'none left', left: 0 }, origin: 'features.refuse' },
    });
  });

  test('a fault and broken output are EVOLITH_INTERNAL from the callee', async () => {
    expect(await everywhere(call(m.crash, {}))).toMatchObject({ ok: false, error: { type: 'InternalError', origin: 'features.crash' } });
    const broken = await everywhere(call(m.broken, {}));
    expect(broken).toMatchObject({ ok: false, error: { type: 'InternalError', origin: 'features.broken', details: { issues: [{ path: 'n' }] } } });
  });

  test('a callee past its deadline is EVOLITH_TIMEOUT', async () => {
    const r = await everywhere(async (mode) => {
      const err = await (mode.client(features).slow({ ms: 1_000 }) as Promise<unknown>).catch((e) => e);
      // Who noticed first differs (the callee's host or the caller's transport); the type may not.
      if (!(err instanceof TimeoutError)) throw err;
      return 'timed out';
    });
    expect(r).toEqual({ ok: true, value: 'timed out' });
  });

  test('roles and internal methods are enforced by the callee', async () => {
    const anonymous = await everywhere((mode) => mode.client(features).admin({}));
    expect(anonymous).toMatchObject({ ok: false, error: { type: 'ForbiddenError', httpStatus: 403 } });
    expect(await everywhere((mode) => mode.client(features).internalOnly({}))).toMatchObject({ ok: false, error: { type: 'ForbiddenError' } });
    expect(await everywhere((mode) => mode.client(features, undefined, 'edge').internalOnly({}))).toEqual({ ok: true, value: 'ok' });
  });

  test('input a caller did not check is parsed by the callee with the same result and the same errors', async () => {
    for (const mode of modes) {
      expect(await mode.raw(m.parse, { n: '42' }), mode.name).toEqual({ r: 42 });
      expect(await mode.raw(m.page, {}), mode.name).toEqual({ q: '', offset: 0 });
    }
    const reference = await outcome(modes[0]!.client(features).order({ customer: { id: 0 } } as never));
    for (const mode of modes) {
      expect(await outcome(mode.raw(m.order, { customer: { id: 0 } })), mode.name).toEqual(reference);
    }
    expect(reference).toMatchObject({ ok: false, error: { type: 'ValidationError' } });
  });

  test('error classes survive as classes', async () => {
    for (const mode of modes) {
      await expect(mode.client(features).refuse({ why: 'x' }), mode.name).rejects.toBeInstanceOf(BusinessError);
      await expect(mode.client(features).crash({}), mode.name).rejects.toBeInstanceOf(InternalError);
      await expect(mode.client(features).admin({}), mode.name).rejects.toBeInstanceOf(ForbiddenError);
      await expect(mode.client(features).parse({ n: 1 } as never), mode.name).rejects.toBeInstanceOf(ValidationError);
    }
  });
});
