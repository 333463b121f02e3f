import { database, sql, type Kysely } from 'evolith';
import type { PayState } from '../contracts/payment.js';
import { createIdCounterTable, type IdCounterTable } from '../shared/id-counter.js';

export interface PaymentTable {
  id: number;
  pay_id: string;
  account_id: number;
  total_cents: number;
  /** How long the payment may wait (ms); the API calls it `expires`. */
  expires_ms: number;
  /** When the expiry timer fires (epoch ms). */
  expires_at: number;
  create_time: number;
  pay_state: PayState;
  /** Units of stock the payment holds frozen while it waits (the sum of its items' amounts). */
  held_units: number;
}

export interface WalletTable {
  id: number;
  account_id: number;
  money_cents: number;
}

/** One row per account that ever settled while limited; settlements lock it to count the account's holds one at a time. */
export interface HoldGuardTable {
  account_id: number;
}

export interface PaymentDB {
  payment: PaymentTable;
  wallet: WalletTable;
  hold_guard: HoldGuardTable;
  id_counter: IdCounterTable;
}

export const paymentDatabase = database<PaymentDB>({
  migrations: {
    '001_init': async (db: Kysely<any>) => {
      await createIdCounterTable(db);
      await db.schema
        .createTable('payment')
        .addColumn('id', 'integer', (c) => c.primaryKey())
        .addColumn('pay_id', 'varchar(64)', (c) => c.notNull().unique())
        .addColumn('account_id', 'integer', (c) => c.notNull())
        .addColumn('total_cents', 'bigint', (c) => c.notNull())
        .addColumn('expires_ms', 'bigint', (c) => c.notNull())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .addColumn('create_time', 'bigint', (c) => c.notNull())
        .addColumn('pay_state', 'varchar(10)', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('wallet')
        .addColumn('id', 'integer', (c) => c.primaryKey())
        .addColumn('account_id', 'integer', (c) => c.notNull().unique())
        .addColumn('money_cents', 'bigint', (c) => c.notNull())
        .addCheckConstraint('wallet_not_overdrawn', sql`money_cents >= 0`)
        .execute();
    },
    // Per-account limit on stock held by waiting payments (config.payment.maxHeldUnitsPerAccount).
    // Payments made before this migration count as holding nothing; they time out soon enough.
    '002_held_units': async (db: Kysely<any>) => {
      await db.schema.alterTable('payment').addColumn('held_units', 'integer', (c) => c.notNull().defaultTo(0)).execute();
      await db.schema.createIndex('payment_account_state').on('payment').columns(['account_id', 'pay_state']).execute();
      await db.schema.createTable('hold_guard').addColumn('account_id', 'integer', (c) => c.primaryKey()).execute();
    },
  },
});

/** The demo administrator (account 1) can afford many purchases: 10,000,000.00. */
export const demoWallet: WalletTable = { id: 1, account_id: 1, money_cents: 1_000_000_000 };
