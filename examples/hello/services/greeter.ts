import { database, implement } from 'evolith';
import { greeterContract } from '../contracts/greeter.js';

/** The greeter's own database (every service owns its data). */
interface Tables {
  greeting: { name: string; count: number };
}

export const greeter = implement(greeterContract, {
  database: database<Tables>({
    migrations: {
      '001-greeting': async (db) => {
        await db.schema
          .createTable('greeting')
          .addColumn('name', 'text', (c) => c.primaryKey())
          .addColumn('count', 'integer', (c) => c.notNull())
          .execute();
      },
    },
  }),
  handlers: {
    async hello({ name }, ctx) {
      // The row and the event commit together: subscribers hear of every counted greeting, once.
      return ctx.transaction(async (tx) => {
        const { count } = await tx.db
          .insertInto('greeting')
          .values({ name, count: 1 })
          .onConflict((oc) => oc.column('name').doUpdateSet((eb) => ({ count: eb('greeting.count', '+', 1) })))
          .returning('count')
          .executeTakeFirstOrThrow();
        await tx.emit(greeterContract.events.greeted, { name, count });
        return { message: `Hello, ${name}!`, count };
      });
    },
    async greetings({ name }, ctx) {
      const row = await ctx.db.selectFrom('greeting').select('count').where('name', '=', name).executeTakeFirst();
      return { name, count: row?.count ?? 0 };
    },
  },
});
