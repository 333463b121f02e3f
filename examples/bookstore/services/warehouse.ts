import { BusinessError, implement, NotFoundError } from 'evolith';
import { success } from '../contracts/coded-message.js';
import { paymentContract } from '../contracts/payment.js';
import { warehouseContract } from '../contracts/warehouse.js';
import { claimFirstIds, nextId } from '../shared/id-counter.js';
import { fromCents, toCents } from '../shared/money.js';
import { loadProducts, replaceSpecifications } from './warehouse-catalog.js';
import { warehouseDatabase } from './warehouse-db.js';
import { demoAdvertisements, demoProducts } from './warehouse-demo-data.js';
import { endHold, freeze } from './warehouse-stock.js';

const missing = (id: number) => new NotFoundError(`product ${id} does not exist`);

export const warehouseService = implement(warehouseContract, {
  database: warehouseDatabase,
  handlers: {
    async listProducts({ ids }, ctx) {
      return loadProducts(ctx.db, ids);
    },

    async prices({ ids }, ctx) {
      const rows = await ctx.db.selectFrom('product').select(['id', 'price_cents']).where('id', 'in', ids).execute();
      return rows.map((r) => ({ id: Number(r.id), price: fromCents(Number(r.price_cents)) }));
    },

    async getProduct({ id }, ctx) {
      const [product] = await loadProducts(ctx.db, [id]);
      return product ?? null;
    },

    async createProduct(input, ctx) {
      return ctx.transaction(async (tx) => {
        const id = await nextId(tx.db, 'product');
        await tx.db
          .insertInto('product')
          .values({
            id,
            title: input.title,
            price_cents: toCents(input.price),
            rate: input.rate,
            description: input.description ?? null,
            cover: input.cover ?? null,
            detail: input.detail ?? null,
          })
          .execute();
        await replaceSpecifications(tx.db, id, input.specifications);
        await tx.db.insertInto('stockpile').values({ id: await nextId(tx.db, 'stockpile'), product_id: id, amount: 0, frozen: 0 }).execute();
        const [created] = await loadProducts(tx.db, [id]);
        return created!;
      });
    },

    async updateProduct(input, ctx) {
      await ctx.transaction(async (tx) => {
        const r = await tx.db
          .updateTable('product')
          .set({
            title: input.title,
            price_cents: toCents(input.price),
            rate: input.rate,
            description: input.description ?? null,
            cover: input.cover ?? null,
            detail: input.detail ?? null,
          })
          .where('id', '=', input.id)
          .executeTakeFirst();
        if (Number(r.numUpdatedRows) === 0) throw missing(input.id);
        await replaceSpecifications(tx.db, input.id, input.specifications);
      });
      return success(`product ${input.id} updated`);
    },

    async removeProduct({ id }, ctx) {
      await ctx.transaction(async (tx) => {
        const product = await tx.db.selectFrom('product').select('id').where('id', '=', id).executeTakeFirst();
        if (!product) throw missing(id);
        const stock = await tx.db.selectFrom('stockpile').select('frozen').where('product_id', '=', id).executeTakeFirst();
        // Waiting payments still count on frozen units; deleting them would lose track of that stock.
        if (stock && Number(stock.frozen) > 0) {
          throw new BusinessError('STOCK_FROZEN', `product ${id} has ${stock.frozen} units frozen for waiting payments; try again once they are settled`);
        }
        for (const table of ['specification', 'advertisement', 'stockpile'] as const) {
          await tx.db.deleteFrom(table).where('product_id', '=', id).execute();
        }
        await tx.db.deleteFrom('product').where('id', '=', id).execute();
      });
      return success(`product ${id} removed`);
    },

    async listAdvertisements(_input, ctx) {
      const rows = await ctx.db.selectFrom('advertisement').selectAll().orderBy('id').execute();
      return rows.map((a) => ({ id: Number(a.id), image: a.image, productId: Number(a.product_id) }));
    },

    async getStockpile({ productId }, ctx) {
      const s = await ctx.db.selectFrom('stockpile').selectAll().where('product_id', '=', productId).executeTakeFirst();
      return s ? { id: Number(s.id), amount: Number(s.amount), frozen: Number(s.frozen), productId: Number(s.product_id) } : null;
    },

    async setStockpile({ productId, amount }, ctx) {
      await ctx.transaction(async (tx) => {
        const product = await tx.db.selectFrom('product').select('id').where('id', '=', productId).executeTakeFirst();
        if (!product) throw missing(productId);
        const r = await tx.db.updateTable('stockpile').set({ amount }).where('product_id', '=', productId).executeTakeFirst();
        if (Number(r.numUpdatedRows) === 0) {
          await tx.db.insertInto('stockpile').values({ id: await nextId(tx.db, 'stockpile'), product_id: productId, amount, frozen: 0 }).execute();
        }
      });
      return success(`stock of product ${productId} set to ${amount}`);
    },

    async freeze({ payId, items }, ctx) {
      return ctx.transaction((tx) => freeze(tx.db, payId, items));
    },

    async release({ payId }, ctx) {
      return ctx.transaction((tx) => endHold(tx.db, payId, 'RELEASED'));
    },

    async consume({ payId }, ctx) {
      return ctx.transaction((tx) => endHold(tx.db, payId, 'CONSUMED'));
    },
  },

  async onStart(ctx) {
    await ctx.transaction(async ({ db }) => {
      // Only a warehouse that never created a product gets the demo catalogue (see claimFirstIds).
      if (!(await claimFirstIds(db, 'product', demoProducts.length))) return;
      for (const [index, p] of demoProducts.entries()) {
        const id = index + 1;
        await db
          .insertInto('product')
          .values({
            id,
            title: p.title,
            price_cents: toCents(p.price),
            rate: p.rate,
            description: p.description,
            cover: `/images/cover-${id}.svg`,
            detail: `/images/detail-${id}.svg`,
          })
          .execute();
        await replaceSpecifications(db, id, p.specifications.map(([item, value]) => ({ item, value })));
        await db.insertInto('stockpile').values({ id: await nextId(db, 'stockpile'), product_id: id, amount: p.stock, frozen: 0 }).execute();
      }
      for (const ad of demoAdvertisements) {
        await db.insertInto('advertisement').values({ id: await nextId(db, 'advertisement'), image: ad.image, product_id: ad.productId }).execute();
      }
    });
  },
})
  // Exactly one of these arrives per payment (the payment service moves WAITING to one final
  // state). Running the stock change in ctx.transaction records the delivery in the same commit,
  // and the hold's own state makes a second delivery under another event id harmless too.
  .on(paymentContract.events.paid, async ({ payId }, ctx) => {
    await ctx.transaction((tx) => endHold(tx.db, payId, 'CONSUMED'));
  })
  .on(paymentContract.events.cancelled, async ({ payId }, ctx) => {
    await ctx.transaction((tx) => endHold(tx.db, payId, 'RELEASED'));
  })
  .on(paymentContract.events.timedOut, async ({ payId }, ctx) => {
    await ctx.transaction((tx) => endHold(tx.db, payId, 'RELEASED'));
  });
