import { BusinessError, sql, type Kysely } from 'evolith';
import type { HoldState, WarehouseDB } from './warehouse-db.js';

/**
 * Stock operations keyed by payId, each run inside the caller's transaction. Every one starts
 * by inserting the payment's `stock_hold` row if there is none; a second insert of the same key
 * waits for the first transaction to finish (PostgreSQL) or runs after it (SQLite's single
 * writer). Leaving FROZEN is a conditional update, so exactly one of release and consume wins.
 * A repeated call or a redelivered event therefore changes nothing.
 *
 * The claim and the stock updates run on every settlement and every payment event; they are
 * written as SQL because building them (upserts, arithmetic on columns) cost more than running
 * them. The SQL is the same on SQLite and PostgreSQL.
 */

export interface HoldItem {
  productId: number;
  amount: number;
}

export interface Hold {
  payId: string;
  state: HoldState;
  items: HoldItem[];
}

/** Sums repeated products and orders them by id, so concurrent freezes lock rows in one order (no deadlocks). */
function merge(items: readonly HoldItem[]): HoldItem[] {
  const byProduct = new Map<number, number>();
  for (const { productId, amount } of items) byProduct.set(productId, (byProduct.get(productId) ?? 0) + amount);
  return [...byProduct].sort(([a], [b]) => a - b).map(([productId, amount]) => ({ productId, amount }));
}

async function claim(db: Kysely<WarehouseDB>, payId: string, state: HoldState): Promise<boolean> {
  const now = Date.now();
  const r = await sql`insert into stock_hold (pay_id, state, created_at, updated_at) values (${payId}, ${state}, ${now}, ${now})
    on conflict (pay_id) do nothing`.execute(db);
  return Number(r.numAffectedRows ?? 0n) > 0;
}

export async function readHold(db: Kysely<WarehouseDB>, payId: string): Promise<Hold | undefined> {
  const hold = await db.selectFrom('stock_hold').select('state').where('pay_id', '=', payId).executeTakeFirst();
  if (!hold) return undefined;
  const items = await db
    .selectFrom('stock_hold_item')
    .select(['product_id', 'amount'])
    .where('pay_id', '=', payId)
    .orderBy('product_id')
    .execute();
  return { payId, state: hold.state, items: items.map((i) => ({ productId: Number(i.product_id), amount: Number(i.amount) })) };
}

/** Moves stock from `amount` to `frozen` for every item, or (by throwing) for none. */
export async function freeze(db: Kysely<WarehouseDB>, payId: string, items: readonly HoldItem[]): Promise<Hold> {
  if (!(await claim(db, payId, 'FROZEN'))) return (await readHold(db, payId))!;
  const wanted = merge(items);
  for (const { productId, amount } of wanted) {
    // The condition is evaluated against the row as it is when the update takes its lock,
    // so concurrent freezes can never sell the same unit twice.
    const r = await sql`update stockpile set amount = amount - ${amount}, frozen = frozen + ${amount}
      where product_id = ${productId} and amount >= ${amount}`.execute(db);
    if (Number(r.numAffectedRows ?? 0n) === 0) throw await shortage(db, productId, amount);
  }
  await db
    .insertInto('stock_hold_item')
    .values(wanted.map((i) => ({ pay_id: payId, product_id: i.productId, amount: i.amount })))
    .execute();
  return { payId, state: 'FROZEN', items: wanted };
}

async function shortage(db: Kysely<WarehouseDB>, productId: number, requested: number): Promise<BusinessError> {
  const row = await db
    .selectFrom('product')
    .leftJoin('stockpile', 'stockpile.product_id', 'product.id')
    .select(['product.title', 'stockpile.amount'])
    .where('product.id', '=', productId)
    .executeTakeFirst();
  const available = Number(row?.amount ?? 0);
  const message = row
    ? `not enough stock of "${row.title}" (product ${productId}): ${requested} requested, ${available} available`
    : `product ${productId} does not exist`;
  return new BusinessError('INSUFFICIENT_STOCK', message, { httpStatus: 400, details: { productId, requested, available } });
}

/**
 * Ends a hold: RELEASED returns the frozen stock to sale, CONSUMED removes it (it was sold).
 * Only a FROZEN hold changes. A payId never frozen is recorded in its final state anyway, so a
 * freeze arriving late (after its payment already timed out or was cancelled) is a no-op and
 * cannot strand stock that no event would ever release.
 */
export async function endHold(db: Kysely<WarehouseDB>, payId: string, to: Exclude<HoldState, 'FROZEN'>): Promise<Hold> {
  if (await claim(db, payId, to)) return { payId, state: to, items: [] };
  const moved = await db
    .updateTable('stock_hold')
    .set({ state: to, updated_at: Date.now() })
    .where('pay_id', '=', payId)
    .where('state', '=', 'FROZEN')
    .executeTakeFirst();
  const hold = (await readHold(db, payId))!;
  if (Number(moved.numUpdatedRows) === 0) return hold;
  for (const { productId, amount } of hold.items) {
    const change = to === 'RELEASED' ? sql`amount = amount + ${amount}, frozen = frozen - ${amount}` : sql`frozen = frozen - ${amount}`;
    await sql`update stockpile set ${change} where product_id = ${productId}`.execute(db);
  }
  return hold;
}
