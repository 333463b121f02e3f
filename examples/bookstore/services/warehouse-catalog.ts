import type { Kysely } from 'evolith';
import type { Product } from '../contracts/warehouse.js';
import { nextId } from '../shared/id-counter.js';
import { fromCents } from '../shared/money.js';
import type { WarehouseDB } from './warehouse-db.js';

/** Products with their specifications, in id order; all of them when `ids` is undefined. */
export async function loadProducts(db: Kysely<WarehouseDB>, ids?: readonly number[]): Promise<Product[]> {
  if (ids && ids.length === 0) return [];
  let products = db.selectFrom('product').selectAll().orderBy('id');
  let specs = db.selectFrom('specification').selectAll().orderBy('id');
  if (ids) {
    products = products.where('id', 'in', [...ids]);
    specs = specs.where('product_id', 'in', [...ids]);
  }
  const [rows, specRows] = await Promise.all([products.execute(), specs.execute()]);
  const specsOf = new Map<number, Product['specifications']>();
  for (const s of specRows) {
    const productId = Number(s.product_id);
    const list = specsOf.get(productId) ?? [];
    list.push({ id: Number(s.id), item: s.item, value: s.value, productId });
    specsOf.set(productId, list);
  }
  return rows.map((p) => ({
    id: Number(p.id),
    title: p.title,
    price: fromCents(p.price_cents),
    rate: Number(p.rate),
    description: p.description,
    cover: p.cover,
    detail: p.detail,
    specifications: specsOf.get(Number(p.id)) ?? [],
  }));
}

export async function replaceSpecifications(
  db: Kysely<WarehouseDB>,
  productId: number,
  specs: readonly { item: string; value: string }[],
): Promise<void> {
  await db.deleteFrom('specification').where('product_id', '=', productId).execute();
  for (const s of specs) {
    await db.insertInto('specification').values({ id: await nextId(db, 'specification'), product_id: productId, item: s.item, value: s.value }).execute();
  }
}
