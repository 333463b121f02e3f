import { randomUUID } from 'node:crypto';
import {
  BusinessError,
  createTokenService,
  ForbiddenError,
  hashPassword,
  implement,
  sql,
  verifyPassword,
  type Kysely,
  type Selectable,
  type ServiceContext,
  type TokenService,
} from 'evolith';
import { authContract, tokenIssuer } from '../contracts/auth.js';
import { success } from '../contracts/coded-message.js';
import { authDatabase, demoCredential, NO_PASSWORD, parseRoles, type AuthDB, type CredentialTable } from './auth-db.js';
import { authenticateClient, type OAuthClient } from './oauth-clients.js';
import { normaliseUsername, usernameKey, usernameProblems } from '../shared/username.js';
import { oneAtATime, recordFailure, recordSuccess, refuseIfLocked, throttleSettings } from './login-throttle.js';

const KEY_ID = 'current';
/** How long a refresh token (and so a sign-in's family) lasts. */
const REFRESH_TTL_SECONDS = 30 * 24 * 60 * 60;

// One token service per database: a process may host several runtimes (tests do), and each
// must sign with the key stored in its own auth database.
const tokenServices = new WeakMap<Kysely<AuthDB>, TokenService>();

function tokens(db: Kysely<AuthDB>): TokenService {
  let service = tokenServices.get(db);
  if (!service) {
    service = createTokenService({
      issuer: tokenIssuer,
      refreshTtlSeconds: REFRESH_TTL_SECONDS,
      store: {
        async load() {
          const row = await db.selectFrom('signing_key').select('jwk').where('id', '=', KEY_ID).executeTakeFirst();
          return row ? JSON.parse(row.jwk) : undefined;
        },
        async save(jwk) {
          const r = await db
            .insertInto('signing_key')
            .values({ id: KEY_ID, jwk: JSON.stringify(jwk), created_at: Date.now() })
            .onConflict((oc) => oc.column('id').doNothing())
            .executeTakeFirst();
          // Another replica stored its key first. Failing makes the token service forget the
          // key it just made and load the stored one on the next call, so all replicas agree.
          if (Number(r.numInsertedOrUpdatedRows ?? 0n) === 0) throw new Error('another instance stored the signing key first');
        },
      },
    });
    tokenServices.set(db, service);
  }
  return service;
}

// Checking a password for an unknown user costs as much as for a known one, so response
// times do not reveal which usernames exist.
let decoyHash: Promise<string> | undefined;

function invalidGrant(description: string): BusinessError {
  return new BusinessError('invalid_grant', description, { httpStatus: 400 });
}

/**
 * Both tokens carry the credentials' version (`ver`) and their family (`fam`, one per
 * sign-in): changing the password raises the version, reusing a spent refresh token revokes
 * the family, and either way the tokens are refused (the edge asks `checkToken` on each request).
 */
async function issueFor(ctx: ServiceContext<AuthDB>, client: OAuthClient, cred: Selectable<CredentialTable>, family: string, refreshId: string) {
  return tokens(ctx.db).issue({
    subject: cred.username,
    roles: parseRoles(cred.roles),
    clientId: client.id,
    scope: client.scope,
    common: { ver: Number(cred.token_version), fam: family },
    refreshId,
  });
}

/** A new family for a sign-in; the user's families that have expired are dropped on the way. */
async function newFamily(db: Kysely<AuthDB>, username: string): Promise<{ family: string; refreshId: string }> {
  const now = Date.now();
  const family = randomUUID();
  const refreshId = randomUUID();
  await db.deleteFrom('token_family').where('username', '=', username).where('expires_at', '<', now).execute();
  await db.insertInto('token_family').values({ id: family, username, refresh_id: refreshId, expires_at: now + REFRESH_TTL_SECONDS * 1000 }).execute();
  return { family, refreshId };
}

/**
 * Spends `used` (the refresh token presented) and makes `next` the family's one usable refresh
 * token. Presenting any other refresh token of the family (one already spent: a copy someone
 * kept, or a replay) revokes the whole family.
 */
async function rotate(db: Kysely<AuthDB>, family: string, used: string, next: string): Promise<void> {
  const r = await db
    .updateTable('token_family')
    .set({ refresh_id: next, expires_at: Date.now() + REFRESH_TTL_SECONDS * 1000 })
    .where('id', '=', family)
    .where('refresh_id', '=', used)
    .where('revoked', '=', 0)
    .executeTakeFirst();
  if (Number(r.numUpdatedRows) === 1) return;
  const row = await db.selectFrom('token_family').select('revoked').where('id', '=', family).executeTakeFirst();
  if (!row) throw invalidGrant('the refresh token was revoked; sign in again');
  if (Number(row.revoked) === 0) await db.updateTable('token_family').set({ revoked: 1 }).where('id', '=', family).execute();
  throw invalidGrant('the refresh token was already used; every token of this sign-in is now revoked, sign in again');
}

/** The version a token was issued under; tokens from before versions existed carry none (0). */
function versionOf(claims: Readonly<Record<string, unknown>>): number {
  return typeof claims.ver === 'number' ? claims.ver : 0;
}

/**
 * The credentials a sign-in names: by the exact (NFKC) username first, then by its key, so
 * 'ICYFENIX' signs in as icyfenix (with icyfenix's password). The exact match keeps accounts
 * registered before keys existed reachable when their names share a key.
 */
async function findCredential(db: Kysely<AuthDB>, username: string) {
  const name = normaliseUsername(username);
  return (
    (await db.selectFrom('credential').selectAll().where('username', '=', name).executeTakeFirst()) ??
    (await db.selectFrom('credential').selectAll().where('username_key', '=', usernameKey(name)).executeTakeFirst())
  );
}

export const authService = implement(authContract, {
  database: authDatabase,
  handlers: {
    async token(input, ctx) {
      const client = authenticateClient(input.client_id, input.client_secret);
      if (!input.grant_type) throw new BusinessError('invalid_request', 'grant_type is required', { httpStatus: 400 });
      if (!client.grants.includes(input.grant_type)) {
        throw new BusinessError('unsupported_grant_type', `grant_type ${input.grant_type} is not supported; use ${client.grants.join(' or ')}`, {
          httpStatus: 400,
        });
      }
      if (input.grant_type === 'password') {
        if (!input.username) throw new BusinessError('invalid_request', 'username is required for grant_type=password', { httpStatus: 400 });
        const possible = usernameProblems(normaliseUsername(input.username)).length === 0;
        // A name today's rules refuse may still be held by an account registered before them:
        // it is found by its exact name and throttled by it. A name with control characters
        // (which PostgreSQL cannot even compare) is looked up nowhere: it fails as an unknown
        // user does, counted per address.
        const legacy = !possible && !/[\p{Cc}\p{Cs}]/u.test(input.username);
        // Locked usernames and addresses are refused before any password is looked at.
        const throttle = { user: possible ? usernameKey(input.username) : legacy ? `exact:${input.username}` : undefined, address: input.client_address };
        const cred = await oneAtATime(throttle.user, async () => {
          await refuseIfLocked(ctx.db, throttle);
          const found = possible
            ? await findCredential(ctx.db, input.username!)
            : legacy
              ? await ctx.db.selectFrom('credential').selectAll().where('username', '=', input.username!).executeTakeFirst()
              : undefined;
          // An account registered without a password has none (NO_PASSWORD), and an empty password
          // matches nothing: both cost a bcrypt check and answer exactly as a wrong password does.
          const usable = found && found.password_hash !== NO_PASSWORD ? found.password_hash : undefined;
          const matches = await verifyPassword(input.password ?? '', usable ?? (await (decoyHash ??= hashPassword(randomUUID()))));
          if (!found || !usable || !input.password || !matches) {
            await recordFailure(ctx.db, throttle, throttleSettings(ctx.config));
            throw invalidGrant('Bad credentials');
          }
          await recordSuccess(ctx.db, throttle);
          return found;
        });
        const { family, refreshId } = await newFamily(ctx.db, cred.username);
        return issueFor(ctx, client, cred, family, refreshId);
      }
      if (!input.refresh_token) throw new BusinessError('invalid_request', 'refresh_token is required for grant_type=refresh_token', { httpStatus: 400 });
      const holder = await tokens(ctx.db)
        .verifyRefresh(input.refresh_token)
        .catch((err: Error) => {
          throw invalidGrant(err.message);
        });
      if (holder.clientId !== client.id) throw invalidGrant(`the refresh token was not issued to client ${client.id}`);
      // Roles come from the credentials as they are now, not as they were at sign-in.
      const cred = await ctx.db.selectFrom('credential').selectAll().where('username', '=', holder.subject).executeTakeFirst();
      if (!cred) throw invalidGrant(`user ${holder.subject} no longer exists`);
      if (versionOf(holder.payload) !== Number(cred.token_version)) throw invalidGrant('the refresh token was revoked: the password changed since it was issued');
      const family = holder.payload.fam;
      // Refresh tokens from before families existed cannot be rotated: their holder signs in again.
      if (typeof family !== 'string' || !holder.id) throw invalidGrant('the refresh token can no longer be used; sign in again');
      const next = randomUUID();
      await rotate(ctx.db, family, holder.id, next);
      return issueFor(ctx, client, cred, family, next);
    },

    async checkToken({ sub, ver, fam }, ctx) {
      // Asked on every authenticated request: one statement, a template rather than the builder.
      const { rows } = await sql<{ token_version: number | string; revoked: number | string | null }>`
        SELECT c.token_version, f.revoked FROM credential c LEFT JOIN token_family f ON f.id = ${fam ?? null}
        WHERE c.username = ${sub}`.execute(ctx.db);
      const row = rows[0];
      if (!row || (ver ?? 0) !== Number(row.token_version)) return { active: false };
      return { active: fam === undefined || (row.revoked !== null && Number(row.revoked) === 0) };
    },

    async changePassword({ currentPassword, newPassword }, ctx) {
      const username = ctx.caller!.subject;
      // Guessing the current password with a stolen token is throttled like signing in.
      const throttle = { user: usernameKey(username) };
      await oneAtATime(throttle.user, async () => {
        await refuseIfLocked(ctx.db, throttle);
        const cred = await ctx.db.selectFrom('credential').selectAll().where('username', '=', username).executeTakeFirst();
        const usable = cred && cred.password_hash !== NO_PASSWORD ? cred.password_hash : undefined;
        const matches = await verifyPassword(currentPassword, usable ?? (await (decoyHash ??= hashPassword(randomUUID()))));
        if (!cred || !usable || !matches) {
          await recordFailure(ctx.db, throttle, throttleSettings(ctx.config));
          throw new BusinessError('WRONG_PASSWORD', 'currentPassword is not the password of this account; nothing was changed', { httpStatus: 400 });
        }
        await recordSuccess(ctx.db, throttle);
      });
      const hash = await hashPassword(newPassword);
      // Raising the version revokes every access and refresh token issued before: whoever holds
      // one (a thief, say) has to sign in again, with the new password.
      await ctx.db
        .updateTable('credential')
        .set((eb) => ({ password_hash: hash, token_version: eb('token_version', '+', 1) }))
        .where('username', '=', username)
        .execute();
      return success(`password of ${username} changed; sign in again`);
    },

    async jwks(_input, ctx) {
      const { keys } = await tokens(ctx.db).jwks();
      return { keys: keys.filter((k): k is typeof k & { kty: string } => typeof k.kty === 'string') };
    },

    async setCredentials({ username, password, roles }, ctx) {
      const caller = ctx.caller;
      const privileged = !!caller && (caller.roles.includes('ROLE_ADMIN') || caller.roles.includes('ROLE_SERVICE'));
      if (roles && !privileged) throw new ForbiddenError('only an administrator may grant roles');
      const hash = password === '' ? NO_PASSWORD : await hashPassword(password);
      const key = usernameKey(username);
      const existing = await ctx.db
        .selectFrom('credential')
        .select('username')
        .where((eb) => eb.or([eb('username', '=', username), eb('username_key', '=', key)]))
        .executeTakeFirst();
      if (existing) {
        // Registration is anonymous, so "exists" must not mean "anyone may overwrite it";
        // nor may a name that merely reads the same reach someone else's credentials.
        // A user changes their own password with changePassword (which asks for the current one).
        if (existing.username !== username || !privileged) {
          throw new BusinessError('USERNAME_TAKEN', `username ${username} is already registered`, { httpStatus: 400 });
        }
        // An administrator's reset revokes the tokens issued under the old password, too.
        await ctx.db
          .updateTable('credential')
          .set((eb) => ({ password_hash: hash, token_version: eb('token_version', '+', 1), ...(roles ? { roles: roles.join(',') } : {}) }))
          .where('username', '=', username)
          .execute();
        return success(`credentials of ${username} changed`);
      }
      const r = await ctx.db
        .insertInto('credential')
        .values({ username, username_key: key, password_hash: hash, roles: (roles ?? ['ROLE_USER']).join(',') })
        .onConflict((oc) => oc.doNothing())
        .executeTakeFirst();
      if (Number(r.numInsertedOrUpdatedRows ?? 0n) === 0) {
        throw new BusinessError('USERNAME_TAKEN', `username ${username} is already registered`, { httpStatus: 400 });
      }
      return success(`credentials of ${username} created`);
    },
  },

  async onStart(ctx) {
    throttleSettings(ctx.config); // refuse to start with a broken setting rather than fail sign-ins
    const empty = !(await ctx.db.selectFrom('credential').select('username').limit(1).executeTakeFirst());
    if (empty) {
      await ctx.db
        .insertInto('credential')
        .values({ username: demoCredential.username, username_key: usernameKey(demoCredential.username), password_hash: await hashPassword(demoCredential.password), roles: demoCredential.roles.join(',') })
        .onConflict((oc) => oc.column('username').doNothing())
        .execute();
    }
    // Make (or load) the signing key now rather than on the first sign-in. When replicas start
    // together one of them loses the race to store its key; its second attempt loads the winner's.
    await tokens(ctx.db)
      .jwks()
      .catch(() => tokens(ctx.db).jwks());
  },
});
