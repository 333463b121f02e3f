import { afterEach, describe, expect, test } from 'vitest';
import { BusinessError, ForbiddenError, ValidationError, database, defineContract, implement, z } from 'evolith';
import { startApp, startServices, type LocalServices, type StartedApp } from 'evolith/testing';

const counter = defineContract({
  name: 'counter',
  version: '1.0.0',
  methods: {
    add: { input: z.object({ name: z.string().min(1), by: z.number().int().positive().default(1) }), output: z.object({ total: z.number() }) },
    total: { input: z.object({ name: z.string() }), output: z.object({ total: z.number() }), idempotent: true },
    reset: { input: z.object({ name: z.string() }), output: z.null(), roles: ['ROLE_ADMIN'] },
  },
  events: { added: z.object({ name: z.string(), total: z.number() }) },
});

const heard: { name: string; total: number }[] = [];
const counterService = implement(counter, {
  database: database<{ counts: { name: string; total: number } }>({
    migrations: { '001': async (db) => void (await db.schema.createTable('counts').addColumn('name', 'text', (c) => c.primaryKey()).addColumn('total', 'integer').execute()) },
  }),
  handlers: {
    async add({ name, by }, ctx) {
      return ctx.transaction(async (tx) => {
        await tx.db.insertInto('counts').values({ name, total: by }).onConflict((oc) => oc.column('name').doUpdateSet((eb) => ({ total: eb('counts.total', '+', by) }))).execute();
        const { total } = await tx.db.selectFrom('counts').select('total').where('name', '=', name).executeTakeFirstOrThrow();
        if (total > 100) throw new BusinessError('TOO_MANY', 'a counter stops at 100');
        await tx.emit(counter.events.added, { name, total });
        return { total };
      });
    },
    async total({ name }, ctx) {
      const row = await ctx.db.selectFrom('counts').select('total').where('name', '=', name).executeTakeFirst();
      return { total: row?.total ?? 0 };
    },
    async reset({ name }, ctx) {
      await ctx.db.deleteFrom('counts').where('name', '=', name).execute();
      return null;
    },
  },
}).on(counter.events.added, async (p) => void heard.push(p));

const stops: (LocalServices | StartedApp)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0)) await s.stop();
});

describe('evolith/testing', () => {
  test('startServices runs services in this process: typed calls, validation, roles, transactions, events', async () => {
    const local = await startServices([counterService]);
    stops.push(local);
    const c = local.client(counter);
    expect(await c.add({ name: 'a' })).toEqual({ total: 1 });
    expect(await c.add({ name: 'a', by: 41 })).toEqual({ total: 42 });
    expect(await c.total({ name: 'a' })).toEqual({ total: 42 });
    await expect(c.add({ name: '', by: -1 })).rejects.toBeInstanceOf(ValidationError);
    await expect(c.add({ name: 'a', by: 99 })).rejects.toMatchObject({ code: 'TOO_MANY' });
    expect(await c.total({ name: 'a' })).toEqual({ total: 42 }); // the failed transaction left nothing
    await expect(c.reset({ name: 'a' })).rejects.toBeInstanceOf(ForbiddenError);
    await local.client(counter, { subject: 'root', roles: ['ROLE_ADMIN'] }).reset({ name: 'a' });
    expect(await c.total({ name: 'a' })).toEqual({ total: 0 });
    await expect.poll(() => heard.filter((e) => e.name === 'a')).toEqual([{ name: 'a', total: 1 }, { name: 'a', total: 42 }]);
  });

  test('startApp runs an app as `evolith run` does and stop() ends it', async () => {
    const app = await startApp('test/fixtures/greeter', { architecture: 'monolith' });
    stops.push(app);
    const reply = await fetch(`${app.url}/hello/ada`);
    expect(reply.status).toBe(200);
    expect(await reply.json()).toEqual({ text: 'hello ada', n: 1 });
    await app.stop();
    await expect(fetch(`${app.url}/hello/ada`)).rejects.toThrow();
  });

  test('startApp fails with the reason when the app cannot start', async () => {
    await expect(startApp('test/fixtures/greeter', { architecture: 'kubernetes' })).rejects.toThrow(/exited \(code 2\) before it served:\n.*kubernetes is a deployment target, not a local architecture: use evolith deploy kubernetes/s);
  });
});
