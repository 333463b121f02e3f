import { randomUUID } from 'node:crypto';
import { BusinessError, ForbiddenError, implement, NotFoundError, sql, ValidationError, type ServiceContext, type TransactionContext } from 'evolith';
import { accountContract } from '../contracts/account.js';
import { success, type CodedMessage } from '../contracts/coded-message.js';
import { paymentContract, type Payment } from '../contracts/payment.js';
import { warehouseContract } from '../contracts/warehouse.js';
import { claimFirstIds, nextId } from '../shared/id-counter.js';
import { fromCents, toCents } from '../shared/money.js';
import { maxHeldUnitsPerAccount, paymentExpiresMs } from './payment-config.js';
import { demoWallet, paymentDatabase, type PaymentDB, type PaymentTable } from './payment-db.js';

const SHIPPING_CENTS = 12_00;

type Ctx = ServiceContext<PaymentDB>;

function toPayment(row: PaymentTable): Payment {
  return {
    id: Number(row.id),
    createTime: new Date(Number(row.create_time)).toISOString(),
    payId: row.pay_id,
    totalPrice: fromCents(row.total_cents),
    expires: Number(row.expires_ms),
    paymentLink: `/pay/modify/${row.pay_id}?state=PAYED&accountId=${row.account_id}`,
    payState: row.pay_state,
  };
}

/** The signed-in user's account id: payments and wallets are per account, tokens name users. */
async function callerAccountId(ctx: Ctx): Promise<number> {
  const username = ctx.caller?.subject;
  if (!username) throw new ForbiddenError('sign in to settle or pay');
  const account = await ctx.client(accountContract).getByUsername({ username });
  if (!account) throw new ForbiddenError(`${username} has no bookstore account`);
  return account.id;
}

/**
 * WAITING → PAYED (debiting the wallet) or WAITING → CANCEL, in one transaction with the event
 * that tells the warehouse to consume or release the stock. The conditional update decides
 * races with a second click, a cancel or the expiry timer: exactly one of them moves the payment.
 *
 * Once that has committed, the warehouse is asked to make the stock change directly, so that it
 * is visible to the caller's next request, as in Fenix's own services, in every architecture.
 * The event stays the guarantee: the warehouse's stock operations are keyed by the payment and
 * only a FROZEN hold moves, so whichever of the call and the event comes second changes nothing,
 * and if the call fails the event still applies the change, once.
 */
async function changeState(ctx: Ctx, payId: string, state: 'PAYED' | 'CANCEL', accountId: number): Promise<CodedMessage> {
  const answer = await moveState(ctx, payId, state, accountId);
  const warehouse = ctx.client(warehouseContract);
  try {
    await (state === 'PAYED' ? warehouse.consume({ payId }) : warehouse.release({ payId }));
  } catch (err) {
    ctx.log.warn({ err, payId, state }, 'the warehouse did not apply the stock change directly; the payment event will');
  }
  return answer;
}

async function moveState(ctx: Ctx, payId: string, state: 'PAYED' | 'CANCEL', accountId: number): Promise<CodedMessage> {
  return ctx.transaction(async (tx) => {
    const payment = await tx.db.selectFrom('payment').selectAll().where('pay_id', '=', payId).executeTakeFirst();
    if (!payment) throw new NotFoundError(`payment ${payId} does not exist`);
    if (Number(payment.account_id) !== accountId) throw new ForbiddenError(`payment ${payId} belongs to another account`);
    const moved = await tx.db
      .updateTable('payment')
      .set({ pay_state: state })
      .where('pay_id', '=', payId)
      .where('pay_state', '=', 'WAITING')
      .executeTakeFirst();
    if (Number(moved.numUpdatedRows) === 0) {
      const now = await tx.db.selectFrom('payment').select('pay_state').where('pay_id', '=', payId).executeTakeFirstOrThrow();
      throw new BusinessError('PAYMENT_NOT_WAITING', `payment ${payId} is ${now.pay_state} and can no longer be ${state === 'PAYED' ? 'paid' : 'cancelled'}`, {
        details: { payState: now.pay_state },
      });
    }
    if (state === 'CANCEL') {
      await tx.emit(paymentContract.events.cancelled, { payId }, { key: payId, id: `cancelled:${payId}` });
      return success(`payment ${payId} cancelled`);
    }
    const total = Number(payment.total_cents);
    const debited = await tx.db
      .updateTable('wallet')
      .set((eb) => ({ money_cents: eb('money_cents', '-', total) }))
      .where('account_id', '=', accountId)
      .where('money_cents', '>=', total)
      .executeTakeFirst();
    if (Number(debited.numUpdatedRows) === 0) {
      // Throwing rolls the state change back too: the payment keeps waiting.
      throw new BusinessError('INSUFFICIENT_FUNDS', `the wallet of account ${accountId} cannot cover ${fromCents(total).toFixed(2)}`);
    }
    await tx.emit(paymentContract.events.paid, { payId }, { key: payId, id: `paid:${payId}` });
    return success(`payment ${payId} paid`);
  });
}

/**
 * Refuses (with 400) a settlement that would take the account's stock held by waiting payments
 * past `limit` units. Runs in the transaction that inserts the payment: the upsert on the
 * account's hold_guard row makes concurrent settlements of one account count one at a time
 * (PostgreSQL locks the row until commit; SQLite has a single writer anyway).
 */
async function checkHeldUnits(tx: TransactionContext<PaymentDB>, accountId: number, units: number, limit: number): Promise<void> {
  await sql`insert into hold_guard (account_id) values (${accountId})
    on conflict (account_id) do update set account_id = excluded.account_id`.execute(tx.db);
  const row = await tx.db
    .selectFrom('payment')
    .select((eb) => eb.fn.coalesce(eb.fn.sum<number>('held_units'), sql<number>`0`).as('held'))
    .where('account_id', '=', accountId)
    .where('pay_state', '=', 'WAITING')
    .executeTakeFirstOrThrow();
  const held = Number(row.held);
  if (held + units > limit) {
    throw new BusinessError(
      'HOLD_LIMIT_EXCEEDED',
      `an account may hold at most ${limit} units of stock in waiting payments (maxHeldUnitsPerAccount); ` +
        `this settlement asks for ${units} and ${held} are already held: pay or cancel a waiting payment first`,
      { httpStatus: 400, details: { limit, held, requested: units } },
    );
  }
}

/** Gives up a payment whose stock could not be frozen; its `cancelled` event releases anything that was. */
async function abandon(ctx: Ctx, payId: string): Promise<void> {
  await ctx.transaction(async (tx) => {
    const r = await tx.db.updateTable('payment').set({ pay_state: 'CANCEL' }).where('pay_id', '=', payId).where('pay_state', '=', 'WAITING').executeTakeFirst();
    if (Number(r.numUpdatedRows) > 0) await tx.emit(paymentContract.events.cancelled, { payId }, { key: payId, id: `cancelled:${payId}` });
  });
}

export const paymentService = implement(paymentContract, {
  database: paymentDatabase,
  dependsOn: [warehouseContract, accountContract],
  handlers: {
    async settle({ items }, ctx) {
      const accountId = await callerAccountId(ctx);
      // Prices come from the warehouse, never from the client.
      const products = await ctx.client(warehouseContract).prices({ ids: [...new Set(items.map((i) => i.id))] });
      const priceOf = new Map(products.map((p) => [p.id, toCents(p.price)]));
      const unknown = items.flatMap((item, i) => (priceOf.has(item.id) ? [] : [{ path: `items.${i}.id`, message: `product ${item.id} does not exist` }]));
      if (unknown.length) throw new ValidationError(`invalid settlement: ${unknown.map((u) => u.message).join('; ')}`, unknown);
      const total = items.reduce((sum, item) => sum + priceOf.get(item.id)! * item.amount, SHIPPING_CENTS);

      // The payment and its expiry timer commit before any stock is frozen: if this process
      // dies right after the freeze, the durable timer still times the payment out and the
      // warehouse releases the stock. Freezing first could strand it.
      const payId = randomUUID();
      const now = Date.now();
      const expires = paymentExpiresMs(ctx.config);
      const units = items.reduce((sum, item) => sum + item.amount, 0);
      // Administrators may set the stock anyway; limiting what they hold would protect nothing.
      const limit = ctx.caller?.roles.includes('ROLE_ADMIN') ? undefined : maxHeldUnitsPerAccount(ctx.config);
      const row = await ctx.transaction(async (tx) => {
        if (limit !== undefined) await checkHeldUnits(tx, accountId, units, limit);
        const row: PaymentTable = {
          id: await nextId(tx.db, 'payment'),
          pay_id: payId,
          account_id: accountId,
          total_cents: total,
          expires_ms: expires,
          expires_at: now + expires,
          create_time: now,
          pay_state: 'WAITING',
          held_units: units,
        };
        await tx.db.insertInto('payment').values(row).execute();
        await tx.schedule(paymentContract.events.expired, { payId }, row.expires_at, { id: `expire:${payId}`, key: payId });
        return row;
      });

      let hold;
      try {
        hold = await ctx.client(warehouseContract).freeze({ payId, items: items.map((i) => ({ productId: i.id, amount: i.amount })) });
      } catch (err) {
        // The freeze may even have happened (a timeout hides that); cancelling releases it if so.
        await abandon(ctx, payId).catch((e) => ctx.log.error({ err: e, payId }, 'could not cancel a payment whose stock was not frozen; its timer will'));
        throw err;
      }
      if (hold.state !== 'FROZEN') {
        throw new BusinessError('PAYMENT_EXPIRED', `payment ${payId} expired before its stock could be reserved; please settle again`);
      }
      return toPayment(row);
    },

    async updateState({ payId, state }, ctx) {
      return changeState(ctx, payId, state, await callerAccountId(ctx));
    },

    async payByLink({ payId, state, accountId }, ctx) {
      return changeState(ctx, payId, state, accountId);
    },
  },

  async onStart(ctx) {
    // Refuse to start with a broken setting rather than fail every settlement.
    paymentExpiresMs(ctx.config);
    maxHeldUnitsPerAccount(ctx.config);
    await ctx.transaction(async ({ db }) => {
      if (await claimFirstIds(db, 'wallet', demoWallet.id)) await db.insertInto('wallet').values(demoWallet).execute();
    });
  },
}).on(paymentContract.events.expired, async ({ payId }, ctx) => {
  // A payment paid or cancelled in time is no longer WAITING, and the update changes nothing.
  await ctx.transaction(async (tx) => {
    const r = await tx.db.updateTable('payment').set({ pay_state: 'TIMEOUT' }).where('pay_id', '=', payId).where('pay_state', '=', 'WAITING').executeTakeFirst();
    if (Number(r.numUpdatedRows) > 0) {
      await tx.emit(paymentContract.events.timedOut, { payId }, { key: payId, id: `timedOut:${payId}` });
      ctx.log.info({ payId }, 'payment timed out');
    }
  });
});
