/**
 * Account and token security, over HTTP, for every architecture the bookstore suite runs:
 * tokens that never expire, accounts without a password, look-alike usernames, password
 * changes that revoke tokens, refresh-token rotation and login throttling.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { importJWK, SignJWT, type JWK } from 'jose';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Bookstore } from '../support/bookstore-process.js';
import { ADMIN, createAccount, expectFailure, expectSuccess, mentions, newAccount } from '../support/bookstore.js';
import { sleep } from '../support/eventually.js';
import { CLIENT, Http, login, type Reply } from '../support/http.js';
import type { BookstoreTarget, StartOverrides } from './bookstore.suite.js';

const EXTERNAL = process.env.EVOLITH_BASE_URL?.replace(/\/+$/, '') || undefined;

interface Ctx {
  server?: Bookstore;
  http: Http;
}

function useServer(target: BookstoreTarget, overrides?: StartOverrides): Ctx {
  const ctx = {} as Ctx;
  beforeAll(async () => {
    if (EXTERNAL) ctx.http = new Http(EXTERNAL);
    else {
      ctx.server = await target.start(overrides);
      ctx.http = new Http(ctx.server.baseUrl);
    }
  }, 90_000);
  afterAll(async () => {
    await ctx.server?.stop();
  }, 30_000);
  return ctx;
}

/** The auth service's private signing key, read from its own database (SQLite file or PostgreSQL schema). */
async function signingKey(server: Bookstore): Promise<JWK> {
  const storage = server.options.storage;
  if (storage?.startsWith('postgres')) {
    const schema = `${server.options.schemaPrefix ?? ''}auth`.replace(/[^a-zA-Z0-9_]/g, '_').toLowerCase();
    const client = new pg.Client({ connectionString: storage });
    await client.connect();
    try {
      const { rows } = await client.query(`SELECT jwk FROM "${schema}".signing_key`);
      return JSON.parse(rows[0].jwk) as JWK;
    } finally {
      await client.end();
    }
  }
  const db = new Database(join(server.dataDir, 'auth.sqlite'), { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT jwk FROM signing_key').get() as { jwk: string };
    return JSON.parse(row.jwk) as JWK;
  } finally {
    db.close();
  }
}

/** A token signed with the server's own key, carrying `claims` and no `exp`. */
async function signedWithoutExp(server: Bookstore, claims: Record<string, unknown>): Promise<string> {
  const jwk = await signingKey(server);
  const key = await importJWK(jwk, 'RS256');
  return new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: jwk.kid }).setIssuedAt().sign(key);
}

function refreshGrant(http: Http, refreshToken: string): Promise<Reply> {
  return http.get('/oauth/token', {
    query: { grant_type: 'refresh_token', refresh_token: refreshToken, client_id: CLIENT.id, client_secret: CLIENT.secret },
  });
}

function passwordGrant(http: Http, username: string, password?: string): Promise<Reply> {
  return http.get('/oauth/token', {
    query: { grant_type: 'password', username, password, client_id: CLIENT.id, client_secret: CLIENT.secret },
  });
}

function noteExternal(title: string): boolean {
  if (!EXTERNAL) return false;
  console.warn(`[acceptance] skipping "${title}": with EVOLITH_BASE_URL the suite cannot read the server's signing key`);
  return true;
}

export function accountSecurityTests(target: BookstoreTarget): void {
  describe('account and token security', () => {
    const ctx = useServer(target);

    describe('tokens without exp', () => {
      it('a validly signed access token without exp is refused with 401; the same claims with exp work', async () => {
        if (noteExternal('access token without exp')) return;
        const real = await login(ctx.http, ADMIN.username, ADMIN.password);
        const claims = JSON.parse(Buffer.from(real.access_token.split('.')[1]!, 'base64url').toString('utf8')) as Record<string, unknown>;
        const { exp: _exp, iat: _iat, ...rest } = claims;
        const forever = await signedWithoutExp(ctx.server!, rest);
        const refused = await ctx.http.get('/restful/products/stockpile/1', { token: forever });
        expect(refused.status, refused.text).toBe(401);
        const ok = await ctx.http.get('/restful/products/stockpile/1', { token: real.access_token });
        expect(ok.status, ok.text).toBe(200);
      });

      it('a validly signed refresh token without exp is refused (invalid_grant)', async () => {
        if (noteExternal('refresh token without exp')) return;
        const real = await login(ctx.http, ADMIN.username, ADMIN.password);
        const claims = JSON.parse(Buffer.from(real.refresh_token.split('.')[1]!, 'base64url').toString('utf8')) as Record<string, unknown>;
        const { exp: _exp, iat: _iat, ...rest } = claims;
        const forever = await signedWithoutExp(ctx.server!, rest);
        const r = await refreshGrant(ctx.http, forever);
        expect(r.status, r.text).toBe(400);
        expect(r.body).toMatchObject({ error: 'invalid_grant' });
        expect(r.body.error_description).toMatch(/exp/);
      });
    });

    describe('accounts registered without a password', () => {
      it('POST without a password creates the account (as Fenix does), yet no sign-in to it ever succeeds', async () => {
        const { password: _none, ...account } = newAccount();
        const created = await ctx.http.post('/restful/accounts', account);
        expectSuccess(created);
        const got = await ctx.http.get(`/restful/accounts/${account.username}`);
        expect(got.status, got.text).toBe(200);
        expect(got.body).toMatchObject({ username: account.username, email: account.email });

        // What a wrong password gets, for comparison: the same answer for every attempt below.
        const other = await createAccount(ctx.http);
        const wrong = await passwordGrant(ctx.http, other.username, 'not-the-password');
        expect(wrong.status, wrong.text).toBe(400);
        expect(wrong.body).toMatchObject({ error: 'invalid_grant' });

        for (const [what, password] of [['empty', ''], ['missing', undefined], ['some', 'guess-1'], ['blank', '   ']] as const) {
          const r = await passwordGrant(ctx.http, account.username, password);
          expect(r.status, `${what} password: ${r.text}`).toBe(400);
          expect(r.body, `${what} password`).toEqual(wrong.body);
        }
        // An empty or missing password never matches an account that has one either.
        for (const password of ['', undefined]) expect((await passwordGrant(ctx.http, other.username, password)).body).toEqual(wrong.body);
        expect((await login(ctx.http, other.username, other.password)).username).toBe(other.username);
      });
    });

    describe('usernames', () => {
      it('ICYFENIX and a Cyrillic look-alike of icyfenix are refused as taken; nothing is created', async () => {
        for (const name of ['ICYFENIX', 'IcyFenix', '\u0456cyfenix', 'ｉｃｙｆｅｎｉｘ']) {
          const account = { ...newAccount(), username: name };
          const r = await ctx.http.post('/restful/accounts', account);
          expectFailure(r, 400);
          expect(r.body.message, name).toMatch(mentions('username'));
          expect(r.body.message, name).toMatch(/already used/);
          expect((await ctx.http.get(`/restful/accounts/${encodeURIComponent(name)}`)).status, name).toBe(204);
        }
        // Nor did the look-alike get credentials of its own: the password it chose signs in to nothing.
        expect((await passwordGrant(ctx.http, '\u0456cyfenix', newAccount().password)).status).toBe(400);
        // A new name taken in one case is taken in every other.
        const mine = await createAccount(ctx.http);
        const upper = await ctx.http.post('/restful/accounts', { ...newAccount(), username: mine.username.toUpperCase() });
        expectFailure(upper, 400);
        expect(upper.body.message).toMatch(mentions('username'));
      });

      it('a NUL byte, zero-width characters and path characters are refused with 400 naming the violation', async () => {
        const cases: [string, RegExp][] = [
          ['evil\u0000name', /control characters/],
          ['evil\u200bname', /invisible/],
          ['../../etc', /\/ or \\/],
          ['../../etc', /'\.\.'/],
          ['a\\b', /\/ or \\/],
        ];
        for (const [name, why] of cases) {
          const r = await ctx.http.post('/restful/accounts', { ...newAccount(), username: name });
          expectFailure(r, 400);
          expect(r.body.message, JSON.stringify(name)).toMatch(mentions('username'));
          expect(r.body.message, JSON.stringify(name)).toMatch(why);
        }
        // Nor do such names crash a sign-in or a look-up (PostgreSQL cannot compare a NUL byte).
        const nul = await passwordGrant(ctx.http, 'evil\u0000name', 'whatever');
        expect(nul.status, nul.text).toBe(400);
        expect(nul.body).toMatchObject({ error: 'invalid_grant' });
        const lookup = await ctx.http.get('/restful/accounts/evil%00name');
        expectFailure(lookup, 400);
        expect(lookup.body.message).toMatch(/control characters/);
        // Every violation is listed, beside the other fields' ones.
        const all = await ctx.http.post('/restful/accounts', { ...newAccount(), username: '..\u0000/', email: 'not-an-email' });
        expectFailure(all, 400);
        for (const why of [/control characters/, /\/ or \\/, /'\.\.'/, /email/]) expect(all.body.message).toMatch(why);
      });

      it('sign-in normalises the name the same way: ICYFENIX signs in as icyfenix, with its password only', async () => {
        const pair = await login(ctx.http, 'ICYFENIX', ADMIN.password);
        expect(pair.username).toBe(ADMIN.username);
        const ok = await ctx.http.get('/restful/products/stockpile/1', { token: pair.access_token });
        expect(ok.status, ok.text).toBe(200);
        expect((await passwordGrant(ctx.http, 'ICYFENIX', 'wrong-password')).body).toMatchObject({ error: 'invalid_grant' });
        const mine = await createAccount(ctx.http, { ...newAccount(), username: `Reader_${Date.now().toString(36)}` });
        expect((await login(ctx.http, mine.username.toLowerCase(), mine.password)).username).toBe(mine.username);
        expect((await login(ctx.http, `  ${mine.username}  `, mine.password)).username).toBe(mine.username);
      });
    });

    describe('changing the password', () => {
      it('PUT /restful/accounts ignores a password in the body: the old one still signs in, the new one does not', async () => {
        const mine = await createAccount(ctx.http);
        const token = (await login(ctx.http, mine.username, mine.password)).access_token;
        const r = await ctx.http.put('/restful/accounts', { ...mine, name: 'Still Me', password: 'taken-over-1' }, { token });
        expectSuccess(r);
        expect((await ctx.http.get(`/restful/accounts/${mine.username}`)).body.name).toBe('Still Me');
        expect((await passwordGrant(ctx.http, mine.username, 'taken-over-1')).body).toMatchObject({ error: 'invalid_grant' });
        expect((await login(ctx.http, mine.username, mine.password)).username).toBe(mine.username);
        // Nor did it revoke anything.
        expect((await ctx.http.get(`/restful/accounts/${mine.username}`, { token })).status).toBe(200);
        expectSuccess(await ctx.http.put('/restful/accounts', { ...mine, name: 'Me Again' }, { token }));
      });

      it('PUT /restful/accounts/password needs the signed-in user and the current password; a wrong one changes nothing', async () => {
        const mine = await createAccount(ctx.http);
        const pair = await login(ctx.http, mine.username, mine.password);
        const anonymous = await ctx.http.put('/restful/accounts/password', { currentPassword: mine.password, newPassword: 'new-pass-1' });
        expect(anonymous.status, anonymous.text).toBe(403);
        const wrong = await ctx.http.put('/restful/accounts/password', { currentPassword: 'not-it', newPassword: 'new-pass-1' }, { token: pair.access_token });
        expectFailure(wrong, 400);
        expect(wrong.body.message).toMatch(mentions('currentPassword'));
        const missing = await ctx.http.put('/restful/accounts/password', {}, { token: pair.access_token });
        expectFailure(missing, 400);
        for (const field of ['currentPassword', 'newPassword']) expect(missing.body.message).toMatch(mentions(field));
        // Nothing changed, nothing was revoked.
        expect((await login(ctx.http, mine.username, mine.password)).username).toBe(mine.username);
        expectSuccess(await ctx.http.put('/restful/accounts', { ...mine, name: 'Unchanged' }, { token: pair.access_token }));
        expect((await refreshGrant(ctx.http, pair.refresh_token)).status).toBe(200);
      });

      it('a password change revokes the access and refresh tokens issued before, on the very next request', async () => {
        const mine = await createAccount(ctx.http);
        const before = await login(ctx.http, mine.username, mine.password);
        const other = await login(ctx.http, mine.username, mine.password); // another device
        // Used (and so remembered by the edge) before the change.
        expectSuccess(await ctx.http.put('/restful/accounts', { ...mine, name: 'Before' }, { token: before.access_token }));
        const changed = await ctx.http.put('/restful/accounts/password', { currentPassword: mine.password, newPassword: 'brand-new-1' }, { token: before.access_token });
        expectSuccess(changed);
        for (const old of [before.access_token, other.access_token]) {
          const put = await ctx.http.put('/restful/accounts', { ...mine, name: 'After' }, { token: old });
          expect(put.status, put.text).toBe(401);
          const settlement = await ctx.http.post('/restful/settlements', { items: [{ id: 1, amount: 1 }] }, { token: old });
          expect(settlement.status, settlement.text).toBe(401);
        }
        for (const old of [before.refresh_token, other.refresh_token]) {
          const r = await refreshGrant(ctx.http, old);
          expect(r.status, r.text).toBe(400);
          expect(r.body).toMatchObject({ error: 'invalid_grant' });
        }
        expect((await ctx.http.get(`/restful/accounts/${mine.username}`)).body.name).toBe('Before');
        expect((await passwordGrant(ctx.http, mine.username, mine.password)).body).toMatchObject({ error: 'invalid_grant' });
        const fresh = await login(ctx.http, mine.username, 'brand-new-1');
        expectSuccess(await ctx.http.put('/restful/accounts', { ...mine, name: 'After' }, { token: fresh.access_token }));
        expect((await refreshGrant(ctx.http, fresh.refresh_token)).status).toBe(200);
        // Other users' tokens are untouched.
        const admin = await login(ctx.http, ADMIN.username, ADMIN.password);
        expect((await ctx.http.get('/restful/products/stockpile/1', { token: admin.access_token })).status).toBe(200);
      });
    });

    describe('refresh-token rotation', () => {
      it('each refresh returns a new refresh token and spends the one used', async () => {
        const mine = await createAccount(ctx.http);
        const first = await login(ctx.http, mine.username, mine.password);
        const second = await refreshGrant(ctx.http, first.refresh_token);
        expect(second.status, second.text).toBe(200);
        expect(second.body.refresh_token).not.toBe(first.refresh_token);
        const third = await refreshGrant(ctx.http, second.body.refresh_token);
        expect(third.status, third.text).toBe(200);
        expect(third.body.refresh_token).not.toBe(second.body.refresh_token);
        expectSuccess(await ctx.http.put('/restful/accounts', { ...mine, name: 'Rotated' }, { token: third.body.access_token }));
      });

      it('reusing a spent refresh token answers invalid_grant and revokes the whole sign-in: its refresh and access tokens', async () => {
        const mine = await createAccount(ctx.http);
        const a = await login(ctx.http, mine.username, mine.password);
        const elsewhere = await login(ctx.http, mine.username, mine.password); // another sign-in: a family of its own
        const b = await refreshGrant(ctx.http, a.refresh_token);
        expect(b.status, b.text).toBe(200);
        // Both access tokens of the family work until the reuse.
        for (const token of [a.access_token, b.body.access_token]) {
          expectSuccess(await ctx.http.put('/restful/accounts', { ...mine, name: 'Family' }, { token }));
        }

        const reuse = await refreshGrant(ctx.http, a.refresh_token);
        expect(reuse.status, reuse.text).toBe(400);
        expect(reuse.body).toMatchObject({ error: 'invalid_grant' });
        expect(reuse.body.error_description).toMatch(/already used/);

        const afterB = await refreshGrant(ctx.http, b.body.refresh_token);
        expect(afterB.status, afterB.text).toBe(400);
        expect(afterB.body).toMatchObject({ error: 'invalid_grant' });
        for (const token of [a.access_token, b.body.access_token]) {
          const r = await ctx.http.put('/restful/accounts', { ...mine, name: 'Stolen' }, { token });
          expect(r.status, r.text).toBe(401);
        }
        expect((await ctx.http.get(`/restful/accounts/${mine.username}`)).body.name).toBe('Family');

        // The other sign-in is another family: untouched.
        expectSuccess(await ctx.http.put('/restful/accounts', { ...mine, name: 'Other Device' }, { token: elsewhere.access_token }));
        expect((await refreshGrant(ctx.http, elsewhere.refresh_token)).status).toBe(200);
        // And signing in again starts a new, working family.
        const again = await login(ctx.http, mine.username, mine.password);
        expect((await refreshGrant(ctx.http, again.refresh_token)).status).toBe(200);
      });
    });

    describe('sign-in throttling', () => {
      // Lower limits than the defaults (5 per username, 50 per address), set the way a deployer would.
      const throttled = useServer(target, {
        set: { 'config.auth.loginFailuresPerUser': 3, 'config.auth.loginFailuresPerAddress': 8, 'config.auth.loginBackoffMs': 1000 },
      });

      function expectLocked(r: Reply): number {
        expect(r.status, r.text).toBe(429);
        expect(r.body).toMatchObject({ error: 'too_many_attempts' });
        expect(typeof r.body.error_description).toBe('string');
        const wait = Number(r.headers.get('retry-after'));
        expect(Number.isInteger(wait) && wait >= 1, `Retry-After: ${r.headers.get('retry-after')}`).toBe(true);
        return wait;
      }

      it('wrong passwords lock the username (429 + Retry-After); after the wait the right password works and resets the count', async () => {
        const mine = await createAccount(throttled.http);
        for (let i = 1; i <= 3; i++) {
          const r = await passwordGrant(throttled.http, mine.username, `wrong-${i}`);
          expect(r.status, `attempt ${i}: ${r.text}`).toBe(400);
          expect(r.body).toMatchObject({ error: 'invalid_grant' });
        }
        // Locked: even the right password is refused, without being looked at; so is the same name in capitals.
        const wait = expectLocked(await passwordGrant(throttled.http, mine.username, mine.password));
        expectLocked(await passwordGrant(throttled.http, mine.username.toUpperCase(), mine.password));
        // Other users are not affected.
        expect((await login(throttled.http, ADMIN.username, ADMIN.password)).username).toBe(ADMIN.username);

        await sleep(wait * 1000 + 100);
        expect((await login(throttled.http, mine.username, mine.password)).username).toBe(mine.username);
        // The success reset the username's count: a wrong password is an ordinary failure again.
        const after = await passwordGrant(throttled.http, mine.username, 'wrong-again');
        expect(after.status, after.text).toBe(400);
        expect((await login(throttled.http, mine.username, mine.password)).username).toBe(mine.username);
      });

      it('guesses sent all at once get no more password checks than the limit: the rest are refused 429', async () => {
        const mine = await createAccount(throttled.http);
        const replies = await Promise.all(Array.from({ length: 12 }, (_, i) => passwordGrant(throttled.http, mine.username, `burst-${i}`)));
        const checked = replies.filter((r) => r.status === 400);
        const refused = replies.filter((r) => r.status === 429);
        expect(checked.length + refused.length, replies.map((r) => `${r.status} ${r.text}`).join('\n')).toBe(12);
        // One auth process: exactly the three the limit allows were checked.
        expect(checked.length).toBe(3);
        for (const r of checked) expect(r.body).toMatchObject({ error: 'invalid_grant' });
        const wait = Math.max(...refused.map(expectLocked));
        await sleep(wait * 1000 + 100);
        expect((await login(throttled.http, mine.username, mine.password)).username).toBe(mine.username);
      });

      it('guessing the current password on PUT /restful/accounts/password is throttled the same way', async () => {
        const mine = await createAccount(throttled.http);
        const { access_token: token } = await login(throttled.http, mine.username, mine.password);
        for (let i = 1; i <= 3; i++) {
          const r = await throttled.http.put('/restful/accounts/password', { currentPassword: `guess-${i}`, newPassword: 'mine-now' }, { token });
          expectFailure(r, 400);
        }
        const refused = await throttled.http.put('/restful/accounts/password', { currentPassword: mine.password, newPassword: 'mine-now' }, { token });
        expect(refused.status, refused.text).toBe(429);
        expect(refused.body).toMatchObject({ code: 1 });
        const wait = Number(refused.headers.get('retry-after'));
        expect(wait).toBeGreaterThanOrEqual(1);
        await sleep(wait * 1000 + 100);
        expectSuccess(await throttled.http.put('/restful/accounts/password', { currentPassword: mine.password, newPassword: 'mine-now' }, { token }));
        expect((await login(throttled.http, mine.username, 'mine-now')).username).toBe(mine.username);
      });

      it('failures across usernames lock the client address; a forged X-Forwarded-For or client_address does not get around it', async () => {
        const victim = await createAccount(throttled.http);
        let locked: Reply | undefined;
        for (let i = 0; i < 12 && !locked; i++) {
          const r = await passwordGrant(throttled.http, `nobody_${i}_${Date.now().toString(36)}`, 'guess');
          if (r.status === 429) locked = r;
          else expect(r.status, r.text).toBe(400);
        }
        expect(locked, 'the address was never locked').toBeDefined();
        const wait = expectLocked(locked!);
        // Locked for every username from this address, the right password included...
        expectLocked(await passwordGrant(throttled.http, victim.username, victim.password));
        // ...whatever the client claims about its address.
        const forged = { 'x-forwarded-for': '203.0.113.7', 'x-real-ip': '203.0.113.8' };
        expectLocked(
          await throttled.http.get('/oauth/token', {
            headers: forged,
            query: { grant_type: 'password', username: victim.username, password: victim.password, client_id: CLIENT.id, client_secret: CLIENT.secret, client_address: '203.0.113.9' },
          }),
        );
        expectLocked(
          await throttled.http.postForm('/oauth/token', {
            grant_type: 'password',
            username: victim.username,
            password: victim.password,
            client_id: CLIENT.id,
            client_secret: CLIENT.secret,
            client_address: '203.0.113.10',
          }),
        );
        await sleep(wait * 1000 + 100);
        expect((await login(throttled.http, victim.username, victim.password)).username).toBe(victim.username);
      });
    });
  });
}
