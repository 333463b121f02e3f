import { database, type Kysely } from 'evolith';
import { createIdCounterTable, type IdCounterTable } from '../shared/id-counter.js';
import { keyExistingUsernames } from '../shared/username-migration.js';

export interface AccountTable {
  id: number;
  username: string;
  /** usernameKey(username): unique, so no two accounts have names people would take for one. */
  username_key: string | null;
  name: string;
  avatar: string | null;
  telephone: string | null;
  email: string | null;
  location: string | null;
}

export interface AccountDB {
  account: AccountTable;
  id_counter: IdCounterTable;
}

export const accountDatabase = database<AccountDB>({
  migrations: {
    '001_init': async (db: Kysely<any>) => {
      await createIdCounterTable(db);
      await db.schema
        .createTable('account')
        .addColumn('id', 'integer', (c) => c.primaryKey())
        .addColumn('username', 'varchar(50)', (c) => c.notNull())
        .addColumn('name', 'varchar(50)', (c) => c.notNull())
        .addColumn('avatar', 'varchar(500)')
        .addColumn('telephone', 'varchar(20)')
        .addColumn('email', 'varchar(100)')
        .addColumn('location', 'varchar(200)')
        // Both dialects let several rows leave telephone or email empty (NULLs are distinct).
        .addUniqueConstraint('account_username_unique', ['username'])
        .addUniqueConstraint('account_telephone_unique', ['telephone'])
        .addUniqueConstraint('account_email_unique', ['email'])
        .execute();
    },
    '002_username_key': async (db: Kysely<any>) => {
      await keyExistingUsernames(db, 'account', 'id');
    },
  },
});

/** The demo administrator every bookstore starts with (id 1, as the clients' demo data expects). */
export const demoAccount: AccountTable = {
  id: 1,
  username: 'icyfenix',
  username_key: 'icyfenix',
  name: '周志明',
  avatar: '/images/avatar.svg',
  telephone: '18888888888',
  email: 'icyfenix@gmail.com',
  location: '唐家湾港湾大道科技一路3号',
};
