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
}

export interface WalletTable {
  id: number;
  account_id: number;
  money_cents: number;
}

export interface PaymentDB {
  payment: PaymentTable;
  wallet: WalletTable;
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
  },
});

/** The demo administrator (account 1) can afford many purchases: 10,000,000.00. */
export const demoWallet: WalletTable = { id: 1, account_id: 1, money_cents: 1_000_000_000 };
