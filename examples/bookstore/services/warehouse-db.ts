import { database, sql, type Kysely } from 'evolith';
import { createIdCounterTable, type IdCounterTable } from '../shared/id-counter.js';

export interface ProductTable {
  id: number;
  title: string;
  price_cents: number;
  rate: number;
  description: string | null;
  cover: string | null;
  detail: string | null;
}

export interface SpecificationTable {
  id: number;
  product_id: number;
  item: string;
  value: string;
}

export interface AdvertisementTable {
  id: number;
  image: string;
  product_id: number;
}

export interface StockpileTable {
  id: number;
  product_id: number;
  amount: number;
  frozen: number;
}

export type HoldState = 'FROZEN' | 'RELEASED' | 'CONSUMED';

/** One row per payment that ever touched stock: its key is what makes every stock operation idempotent. */
export interface StockHoldTable {
  pay_id: string;
  state: HoldState;
  created_at: number;
  updated_at: number;
}

export interface StockHoldItemTable {
  pay_id: string;
  product_id: number;
  amount: number;
}

export interface WarehouseDB {
  product: ProductTable;
  specification: SpecificationTable;
  advertisement: AdvertisementTable;
  stockpile: StockpileTable;
  stock_hold: StockHoldTable;
  stock_hold_item: StockHoldItemTable;
  id_counter: IdCounterTable;
}

export const warehouseDatabase = database<WarehouseDB>({
  migrations: {
    '001_init': async (db: Kysely<any>) => {
      await createIdCounterTable(db);
      await db.schema
        .createTable('product')
        .addColumn('id', 'integer', (c) => c.primaryKey())
        .addColumn('title', 'varchar(200)', (c) => c.notNull())
        .addColumn('price_cents', 'bigint', (c) => c.notNull())
        .addColumn('rate', 'double precision', (c) => c.notNull())
        .addColumn('description', 'text')
        .addColumn('cover', 'varchar(500)')
        .addColumn('detail', 'varchar(500)')
        .execute();
      await db.schema
        .createTable('specification')
        .addColumn('id', 'integer', (c) => c.primaryKey())
        .addColumn('product_id', 'integer', (c) => c.notNull().references('product.id').onDelete('cascade'))
        .addColumn('item', 'varchar(100)', (c) => c.notNull())
        .addColumn('value', 'varchar(500)', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('specification_product').on('specification').column('product_id').execute();
      await db.schema
        .createTable('advertisement')
        .addColumn('id', 'integer', (c) => c.primaryKey())
        .addColumn('image', 'varchar(500)', (c) => c.notNull())
        .addColumn('product_id', 'integer', (c) => c.notNull().references('product.id').onDelete('cascade'))
        .execute();
      await db.schema
        .createTable('stockpile')
        .addColumn('id', 'integer', (c) => c.primaryKey())
        .addColumn('product_id', 'integer', (c) => c.notNull().unique().references('product.id').onDelete('cascade'))
        .addColumn('amount', 'integer', (c) => c.notNull())
        .addColumn('frozen', 'integer', (c) => c.notNull())
        // The last line of defence against overselling: no interleaving may drive stock negative.
        .addCheckConstraint('stockpile_not_negative', sql`amount >= 0 and frozen >= 0`)
        .execute();
      await db.schema
        .createTable('stock_hold')
        .addColumn('pay_id', 'varchar(64)', (c) => c.primaryKey())
        .addColumn('state', 'varchar(10)', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('stock_hold_item')
        .addColumn('pay_id', 'varchar(64)', (c) => c.notNull())
        .addColumn('product_id', 'integer', (c) => c.notNull())
        .addColumn('amount', 'integer', (c) => c.notNull())
        .addPrimaryKeyConstraint('stock_hold_item_pk', ['pay_id', 'product_id'])
        .execute();
    },
  },
});
