import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, test } from 'vitest';
import { z } from 'zod';
import { eventually, Kit, sleep } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import { BusinessError, ValidationError } from '../kernel/errors.js';
import type { Runtime } from '../kernel/runtime.js';
import { database, implement } from '../kernel/service.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

// ---------------------------------------------------------------------------------------------
// A small app: orders emits `placed` (and schedules `reminder`); billing and mailer subscribe.

const orders = defineContract({
  name: 'orders',
  version: '1',
  methods: {
    place: { input: z.object({ id: z.string(), fail: z.boolean().default(false), holdMs: z.number().default(0) }), output: z.object({ traceId: z.string() }) },
    emitBad: { input: z.object({ inTransaction: z.boolean() }), output: z.null() },
    emitTwice: { input: z.object({ id: z.string(), eventId: z.string() }), output: z.null() },
    emitSequence: { input: z.object({ ids: z.array(z.string()), key: z.string() }), output: z.null() },
    remind: { input: z.object({ id: z.string(), inMs: z.number() }), output: z.object({ at: z.number() }) },
    count: { input: z.object({ id: z.string() }), output: z.number() },
  },
  events: {
    placed: z.object({ id: z.string() }),
    reminder: z.object({ id: z.string() }),
  },
});

const billing = defineContract({ name: 'billing', version: '1', methods: {} });
const mailer = defineContract({ name: 'mailer', version: '1', methods: {} });

interface Delivery {
  id: string;
  eventId: string;
  at: number;
  traceId: string;
  caller?: string;
  source: string;
}

const mailed: Delivery[] = [];
const billed: Delivery[] = [];
const reminded: Delivery[] = [];
/** What billing does the next time it sees an order id. */
const billingPlan = new Map<string, 'throw-before' | 'throw-after'>();
/** Order ids billing refuses on their first attempt (for the ordering test). */
const failFirst = new Set<string>();
let seenDuringHold: string[] = [];

type OrdersDB = { purchase: { id: string } };
type BillingDB = { charge: { order_id: string } };

const ordersService = implement(orders, {
  database: database<OrdersDB>({ migrations: { '001': async (db) => db.schema.createTable('purchase').addColumn('id', 'text').execute() } }),
  handlers: {
    async place({ id, fail, holdMs }, ctx) {
      await ctx.transaction(async (tx) => {
        await tx.db.insertInto('purchase').values({ id }).execute();
        await tx.emit(orders.events.placed, { id });
        if (holdMs) {
          await sleep(holdMs);
          seenDuringHold = [...mailed, ...billed].filter((d) => d.id === id).map((d) => d.id);
        }
        if (fail) throw new BusinessError('REJECTED', 'order rejected');
      });
      return { traceId: ctx.trace.traceId };
    },
    async emitBad({ inTransaction }, ctx) {
      if (!inTransaction) {
        await ctx.emit(orders.events.placed, { id: 5 } as never);
        return null;
      }
      await ctx.transaction(async (tx) => {
        await tx.db.insertInto('purchase').values({ id: 'bad-tx' }).execute();
        await tx.emit(orders.events.placed, { nope: true } as never);
      });
      return null;
    },
    async emitTwice({ id, eventId }, ctx) {
      await ctx.emit(orders.events.placed, { id }, { id: eventId });
      await ctx.emit(orders.events.placed, { id }, { id: eventId });
      return null;
    },
    async emitSequence({ ids, key }, ctx) {
      await ctx.transaction(async (tx) => {
        for (const id of ids) await tx.emit(orders.events.placed, { id }, { key });
      });
      return null;
    },
    async remind({ id, inMs }, ctx) {
      const at = Date.now() + inMs;
      await ctx.schedule(orders.events.reminder, { id }, at);
      return { at };
    },
    async count({ id }, ctx) {
      return (await ctx.db.selectFrom('purchase').selectAll().where('id', '=', id).execute()).length;
    },
  },
}).on(orders.events.reminder, async ({ id }, ctx) => {
  reminded.push({ id, eventId: ctx.event.id, at: Date.now(), traceId: ctx.trace.traceId, source: ctx.event.source });
});

const billingService = implement(billing, {
  database: database<BillingDB>({ migrations: { '001': async (db) => db.schema.createTable('charge').addColumn('order_id', 'text').execute() } }),
  handlers: {},
}).on(orders.events.placed, async ({ id }, ctx) => {
  if (failFirst.delete(id)) throw new Error(`billing is not ready for ${id}`);
  const plan = billingPlan.get(id);
  if (plan === 'throw-before') {
    billingPlan.delete(id);
    throw new Error('billing is down');
  }
  await ctx.transaction(async (tx) => {
    await tx.db.insertInto('charge').values({ order_id: id }).execute();
  });
  billed.push({ id, eventId: ctx.event.id, at: Date.now(), traceId: ctx.trace.traceId, caller: ctx.caller?.subject, source: ctx.event.source });
  if (plan === 'throw-after') {
    billingPlan.delete(id);
    throw new Error('crashed after committing');
  }
});

const mailerService = implement(mailer, { handlers: {} }).on(orders.events.placed, async ({ id }, ctx) => {
  mailed.push({ id, eventId: ctx.event.id, at: Date.now(), traceId: ctx.trace.traceId, caller: ctx.caller?.subject, source: ctx.event.source });
});

const app = [ordersService, billingService, mailerService];

const of = (list: Delivery[], id: string) => list.filter((d) => d.id === id);

async function charges(rt: Runtime, id: string): Promise<number> {
  return (await rt.host('billing').db.selectFrom('charge').selectAll().where('order_id', '=', id).execute()).length;
}

async function outboxRows(rt: Runtime) {
  return rt.host('orders').db.selectFrom('evolith_outbox').selectAll().execute() as Promise<
    { id: string; payload: string; delivered_at: number | null; attempts: number; last_error: string | null; deliver_at: number }[]
  >;
}

async function outboxRowFor(rt: Runtime, id: string) {
  const rows = (await outboxRows(rt)).filter((r) => JSON.parse(r.payload).id === id);
  return rows;
}

/** Waits until every outbox row of orders for `id` is marked delivered: no delivery is still due. */
async function settled(rt: Runtime, id: string): Promise<void> {
  await eventually(async () => {
    const rows = await outboxRowFor(rt, id);
    expect(rows.length).toBeGreaterThan(0);
    for (const r of rows) expect(r.delivered_at).not.toBeNull();
  });
}

const newId = () => `o-${randomUUID().slice(0, 8)}`;

describe('events through the outbox', () => {
  test('an event emitted in a transaction reaches subscribers only after commit', async () => {
    const rt = await kit.start(app);
    const id = newId();
    seenDuringHold = ['not checked'];
    const { traceId } = await rt.client(orders).place({ id, holdMs: 100 });
    // While the transaction was open (100 ms), nobody saw the event.
    expect(seenDuringHold).toEqual([]);
    await eventually(() => {
      expect(of(mailed, id)).toHaveLength(1);
      expect(of(billed, id)).toHaveLength(1);
    });
    // Subscribers run as themselves (an identity they can prove across processes), in the
    // emitter's trace; the event names its emitter.
    expect(of(mailed, id)[0]).toMatchObject({ caller: 'service:mailer', source: 'orders', traceId });
  });

  test('an event emitted in a transaction that throws is never delivered', async () => {
    const rt = await kit.start(app);
    const rolledBack = newId();
    await expect(rt.client(orders).place({ id: rolledBack, fail: true })).rejects.toBeInstanceOf(BusinessError);
    await expect(rt.client(orders).count({ id: rolledBack })).resolves.toBe(0);
    // A later event goes through; by then the rolled-back one would have gone out too.
    const later = newId();
    await rt.client(orders).place({ id: later });
    await settled(rt, later);
    await eventually(() => expect(of(mailed, later)).toHaveLength(1));
    expect(of(mailed, rolledBack)).toEqual([]);
    expect(of(billed, rolledBack)).toEqual([]);
    expect(await outboxRowFor(rt, rolledBack)).toEqual([]);
  });

  test('an emit with an invalid payload is a ValidationError and stores nothing', async () => {
    const rt = await kit.start(app);
    const before = (await outboxRows(rt)).length;
    const err = await rt.client(orders).emitBad({ inTransaction: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as ValidationError).message).toContain('orders.placed');
    expect((err as ValidationError).issues[0]!.path).toBe('id');

    const inTx = await rt.client(orders).emitBad({ inTransaction: true }).catch((e: unknown) => e);
    expect(inTx).toBeInstanceOf(ValidationError);
    // The transaction rolled back with it.
    await expect(rt.client(orders).count({ id: 'bad-tx' })).resolves.toBe(0);
    expect((await outboxRows(rt)).length).toBe(before);
  });

  test('each subscribing service gets the event exactly once', async () => {
    const rt = await kit.start(app);
    const id = newId();
    await rt.client(orders).place({ id });
    await settled(rt, id);
    await eventually(() => expect(of(billed, id)).toHaveLength(1));
    expect(of(mailed, id)).toHaveLength(1);
    expect(await charges(rt, id)).toBe(1);
    expect(of(mailed, id)[0]!.eventId).toBe(of(billed, id)[0]!.eventId);
  });

  test('emitting twice with the same event id stores and delivers one event', async () => {
    const rt = await kit.start(app);
    const id = newId();
    await rt.client(orders).emitTwice({ id, eventId: `evt-${id}` });
    await settled(rt, id);
    expect(await outboxRowFor(rt, id)).toHaveLength(1);
    await eventually(() => expect(of(mailed, id)).toHaveLength(1));
    expect(of(mailed, id)[0]!.eventId).toBe(`evt-${id}`);
  });

  test('a subscriber that throws gets the event again later (at least once); others are not re-applied', async () => {
    const rt = await kit.start(app);
    const id = newId();
    billingPlan.set(id, 'throw-before');
    await rt.client(orders).place({ id });
    await eventually(() => expect(of(billed, id)).toHaveLength(1));
    await settled(rt, id);
    expect(await charges(rt, id)).toBe(1);
    const [row] = await outboxRowFor(rt, id);
    expect(row!.attempts).toBe(1);
    expect(row!.last_error).toContain('billing is down');
    // The bus redelivered to every group; the mailer had already handled it and was not called again.
    expect(of(mailed, id)).toHaveLength(1);
  });

  test('a redelivery of an event whose effects were committed is not applied twice', async () => {
    const rt = await kit.start(app);
    const id = newId();
    billingPlan.set(id, 'throw-after');
    await rt.client(orders).place({ id });
    await eventually(async () => {
      const [row] = await outboxRowFor(rt, id);
      expect(row!.attempts).toBe(1);
    });
    await settled(rt, id);
    expect(await charges(rt, id)).toBe(1);
    expect(of(billed, id)).toHaveLength(1);
  });

  test('the same event id published twice, even concurrently, is applied once by a transactional subscriber', async () => {
    const rt = await kit.start(app);
    const id = newId();
    const envelope = { id: `dup-${id}`, topic: orders.events.placed.topic, source: 'orders', payload: { id }, publishedAt: Date.now() };
    await Promise.all([rt.bus.publish(envelope), rt.bus.publish(envelope)]);
    await rt.bus.publish(envelope);
    expect(await charges(rt, id)).toBe(1);
  });

  test('events with the same key reach a subscriber in order, also when one delivery had to be retried', async () => {
    const rt = await kit.start(app);
    const ids = [newId(), newId(), newId()];
    failFirst.add(ids[0]!);
    await rt.client(orders).emitSequence({ ids, key: `k-${ids[0]}` });
    await eventually(() => expect(ids.flatMap((i) => of(billed, i))).toHaveLength(3));
    const order = billed.filter((d) => ids.includes(d.id)).map((d) => d.id);
    expect(order).toEqual(ids);
  });
});

describe('durable timers', () => {
  test('ctx.schedule fires after the requested delay', async () => {
    const rt = await kit.start(app);
    const id = newId();
    const t0 = Date.now();
    const { at } = await rt.client(orders).remind({ id, inMs: 300 });
    await eventually(() => expect(of(reminded, id)).toHaveLength(1), 2_000, 5);
    const fired = of(reminded, id)[0]!.at;
    expect(fired).toBeGreaterThanOrEqual(at);
    expect(fired - t0).toBeGreaterThanOrEqual(300);
    expect(fired - t0).toBeLessThan(300 + 200);
    expect(of(reminded, id)[0]!.source).toBe('orders');
  });

  test('a timer that fell due while the runtime was stopped fires once a new runtime starts', async () => {
    const dir = kit.tmp('timers');
    const first = await kit.start(app, { dir });
    const id = newId();
    const { at } = await first.client(orders).remind({ id, inMs: 300 });
    await first.stop();
    await sleep(Math.max(0, at - Date.now()) + 30);
    expect(of(reminded, id)).toEqual([]);

    const t0 = Date.now();
    const second = await kit.start(app, { dir });
    await eventually(() => expect(of(reminded, id)).toHaveLength(1), 2_000, 5);
    expect(Date.now() - t0).toBeLessThan(1_000);
    await settled(second, id);
    expect(of(reminded, id)).toHaveLength(1);
  });
});
