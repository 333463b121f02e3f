import type { Kysely } from 'evolith';
import { usernameKey } from './username.js';

/**
 * Adds `username_key` to `table`, fills it for the rows already there and makes it unique.
 * Rows stored before usernames were compared by key may share one ('Bob' and 'bob'): the first
 * (by `order`) keeps the key, the others get a key no new username can have (new usernames
 * cannot contain '/'), so they stay as they are and can still sign in by their exact name.
 */
export async function keyExistingUsernames(db: Kysely<any>, table: string, order: string): Promise<void> {
  await db.schema.alterTable(table).addColumn('username_key', 'varchar(200)').execute();
  const rows = (await db.selectFrom(table).select('username').orderBy(order).execute()) as { username: string }[];
  const taken = new Set<string>();
  for (const { username } of rows) {
    let key = usernameKey(username);
    if (taken.has(key)) key = `${key}/registered-before-keys/${username}`;
    taken.add(key);
    await db.updateTable(table).set({ username_key: key }).where('username', '=', username).execute();
  }
  await db.schema.createIndex(`${table}_username_key_unique`).on(table).column('username_key').unique().execute();
}
