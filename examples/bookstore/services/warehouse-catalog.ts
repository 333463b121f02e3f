import type { Kysely } from 'evolith';
import type { Product } from '../contracts/warehouse.js';
import { nextId } from '../shared/id-counter.js';
import { fromCents } from '../shared/money.js';
import type { WarehouseDB } from './warehouse-db.js';

function catalogQueries(db: Kysely<WarehouseDB>) {
  return {
    products: db.selectFrom('product').selectAll().orderBy('id'),
    specs: db.selectFrom('specification').selectAll().orderBy('id'),
  };
}

function wholeCatalogQueries(db: Kysely<WarehouseDB>) {
  const { products, specs } = catalogQueries(db);
  return { products: products.compile(), specs: specs.compile() };
}

// Listing the whole catalog is the store's most frequent request, and building and compiling
// its two queries cost about as much as running them: they are compiled once per database.
const wholeCatalog = new WeakMap<Kysely<WarehouseDB>, ReturnType<typeof wholeCatalogQueries>>();

async function readCatalog(db: Kysely<WarehouseDB>, ids: readonly number[] | undefined) {
  if (ids) {
    const { products, specs } = catalogQueries(db);
    return Promise.all([products.where('id', 'in', [...ids]).execute(), specs.where('product_id', 'in', [...ids]).execute()]);
  }
  let queries = wholeCatalog.get(db);
  if (!queries) wholeCatalog.set(db, (queries = wholeCatalogQueries(db)));
  const [products, specs] = await Promise.all([db.executeQuery(queries.products), db.executeQuery(queries.specs)]);
  return [products.rows, specs.rows] as const;
}

/** Products with their specifications, in id order; all of them when `ids` is undefined. */
export async function loadProducts(db: Kysely<WarehouseDB>, ids?: readonly number[]): Promise<Product[]> {
  if (ids && ids.length === 0) return [];
  const [rows, specRows] = await readCatalog(db, ids);
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
