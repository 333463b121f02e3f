import { ForbiddenError, implement, ValidationError, type Kysely, type ValidationIssue } from 'evolith';
import { accountContract, type Account } from '../contracts/account.js';
import { authContract } from '../contracts/auth.js';
import { success } from '../contracts/coded-message.js';
import { claimFirstIds, nextId } from '../shared/id-counter.js';
import { isUniqueViolation } from '../shared/unique-violation.js';
import { usernameKey } from '../shared/username.js';
import { accountDatabase, demoAccount, type AccountDB, type AccountTable } from './account-db.js';

type Unique = Pick<AccountTable, 'username'> & Partial<Pick<AccountTable, 'telephone' | 'email'>>;

/** Lists every unique field another account already uses (all of them, not just the first). */
async function conflicts(db: Kysely<AccountDB>, wanted: Unique, self?: number): Promise<ValidationIssue[]> {
  // Usernames are compared by key: 'ICYFENIX' or a look-alike of icyfenix is icyfenix.
  const checks = [
    { field: 'username', column: 'username_key', value: usernameKey(wanted.username) },
    { field: 'telephone', column: 'telephone', value: wanted.telephone },
    { field: 'email', column: 'email', value: wanted.email },
  ] as const;
  const issues: ValidationIssue[] = [];
  for (const { field, column, value } of checks) {
    if (value === undefined || value === null) continue;
    let q = db.selectFrom('account').select('id').where(column, '=', value);
    if (self !== undefined) q = q.where('id', '<>', self);
    if (await q.executeTakeFirst()) {
      const shown = field === 'username' ? wanted.username : value;
      issues.push({ path: field, message: `${field} ${shown} is already used by another account${field === 'username' ? ' (or one that reads the same)' : ''}` });
    }
  }
  return issues;
}

function refuse(issues: ValidationIssue[]): never {
  throw new ValidationError(`invalid account: ${issues.map((i) => i.message).join('; ')}`, issues);
}

/** The unique constraints are the last word when two registrations race past the pre-check. */
function raceLost(err: unknown): never {
  if (isUniqueViolation(err)) refuse([{ path: '(root)', message: 'username, telephone or email is already used by another account' }]);
  throw err;
}

function toAccount({ username_key: _key, ...row }: AccountTable): Account {
  return { ...row, id: Number(row.id) };
}

export const accountService = implement(accountContract, {
  database: accountDatabase,
  dependsOn: [authContract],
  handlers: {
    async create(input, ctx) {
      const issues = await conflicts(ctx.db, input);
      if (issues.length) refuse(issues);
      const id = await ctx
        .transaction(async (tx) => {
          const id = await nextId(tx.db, 'account');
          const { password: _secret, ...profile } = input;
          await tx.db
            .insertInto('account')
            .values({ ...profile, id, username_key: usernameKey(profile.username), avatar: profile.avatar ?? null, telephone: profile.telephone ?? null, email: profile.email ?? null, location: profile.location ?? null })
            .execute();
          return id;
        })
        .catch(raceLost);
      try {
        await ctx.client(authContract).setCredentials({ username: input.username, password: input.password ?? '' });
      } catch (err) {
        // An account nobody can sign in to is useless; undo it so the username stays free.
        await ctx.db.deleteFrom('account').where('id', '=', id).execute();
        throw err;
      }
      return success(`account ${input.username} created`);
    },

    async update(input, ctx) {
      if (ctx.caller?.subject !== input.username) throw new ForbiddenError(`only ${input.username} may change account ${input.username}`);
      const current = await ctx.db.selectFrom('account').selectAll().where('username', '=', input.username).executeTakeFirst();
      if (!current) throw new ForbiddenError(`there is no account named ${input.username}`);
      const next = {
        name: input.name,
        avatar: input.avatar === undefined ? current.avatar : input.avatar,
        telephone: input.telephone === undefined ? current.telephone : input.telephone,
        email: input.email === undefined ? current.email : input.email,
        location: input.location === undefined ? current.location : input.location,
      };
      const issues = await conflicts(ctx.db, { username: current.username, telephone: next.telephone, email: next.email }, current.id);
      if (issues.length) refuse(issues);
      await ctx.db.updateTable('account').set(next).where('id', '=', current.id).execute().catch(raceLost);
      return success(`account ${input.username} updated`);
    },

    async getByUsername({ username }, ctx) {
      const row = await ctx.db.selectFrom('account').selectAll().where('username', '=', username).executeTakeFirst();
      return row ? toAccount(row) : null;
    },
  },

  async onStart(ctx) {
    await ctx.transaction(async (tx) => {
      if (await claimFirstIds(tx.db, 'account', demoAccount.id)) await tx.db.insertInto('account').values(demoAccount).execute();
    });
  },
});
