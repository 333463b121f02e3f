import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashPassword, type EvolithError, type Identity, type ValidationError } from 'evolith';
import type { StorageProvider } from '../../src/kernel/plugins.js';
import { Runtime } from '../../src/kernel/runtime.js';
import { inProcessPlugins } from '../../src/worker/backends.js';
import { PostgresStorage } from '../../src/storage/postgres.js';
import { SqliteStorage } from '../../src/storage/sqlite.js';
import app from './app.js';
import { accountContract } from './contracts/account.js';
import { authContract } from './contracts/auth.js';
import { paymentContract } from './contracts/payment.js';
import { warehouseContract } from './contracts/warehouse.js';

const admin: Identity = { subject: 'icyfenix', roles: ['ROLE_USER', 'ROLE_ADMIN'] };
const reader: Identity = { subject: 'reader', roles: ['ROLE_USER'] };
const client = { client_id: 'bookstore_frontend', client_secret: 'bookstore_secret' };
const demoPassword = 'MFfTW3uNI4eqhwDkG7HP9p2mzEUu/r2';
const purchase = { delivery: true, pay: 'wechat', name: 'Zhou', telephone: '18888888888', location: 'Zhuhai' };

interface Backend {
  name: string;
  available: boolean;
  /** Fresh, empty storage; `storage()` reopens the same data (for restarts). */
  create(): { storage: () => StorageProvider; cleanup: () => Promise<void> };
}

// node-postgres takes the user from $USER when the URL names none; containers often have no $USER.
function pgUrl(): string {
  const url = new URL(process.env.EVOLITH_TEST_PG ?? 'postgres://127.0.0.1:5432/test');
  if (!url.username && !process.env.PGUSER && !process.env.USER) url.username = userInfo().username;
  return url.toString();
}

async function reachable(connectionString: string): Promise<boolean> {
  const c = new pg.Client({ connectionString, connectionTimeoutMillis: 2000 });
  try {
    await c.connect();
    return true;
  } catch {
    return false;
  } finally {
    await c.end().catch(() => undefined);
  }
}

const connectionString = pgUrl();
const backends: Backend[] = [
  {
    name: 'SQLite',
    available: true,
    create() {
      const dir = mkdtempSync(join(tmpdir(), 'bookstore-'));
      return { storage: () => new SqliteStorage(dir), cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
    },
  },
  {
    name: 'PostgreSQL',
    available: await reachable(connectionString),
    create() {
      const schemaPrefix = `bst_${randomUUID().slice(0, 8)}_`;
      const postgres = new PostgresStorage({ connectionString, schemaPrefix });
      return {
        storage: () => postgres,
        async cleanup() {
          const c = new pg.Client({ connectionString });
          await c.connect();
          try {
            for (const s of app.services) await c.query(`DROP SCHEMA IF EXISTS "${postgres.schemaFor(s.contract.name)}" CASCADE`);
          } finally {
            await c.end();
          }
        },
      };
    },
  },
];

async function failure(p: Promise<unknown>): Promise<EvolithError> {
  try {
    await p;
  } catch (err) {
    return err as EvolithError;
  }
  throw new Error('expected the call to fail');
}

for (const backend of backends) {
  describe.skipIf(!backend.available)(`bookstore services on ${backend.name}`, () => {
    let env: ReturnType<Backend['create']>;
    let rt: Runtime;

    const boot = async (payment: Record<string, unknown> = { paymentExpiresMs: 300 }) => {
      const runtime = new Runtime({
        services: app.services,
        ...inProcessPlugins(),
        storage: env.storage(),
        checkSerializable: true,
        config: { payment },
        log: pino({ level: 'warn' }),
      });
      await runtime.start();
      return runtime;
    };
    /** Clients for `caller`; `from` names the calling service, which internal methods require. */
    const as = (caller?: Identity, from?: string) => ({
      account: rt.client(accountContract, undefined, { caller }, from),
      auth: rt.client(authContract, undefined, { caller }, from),
      warehouse: rt.client(warehouseContract, undefined, { caller }, from),
      payment: rt.client(paymentContract, undefined, { caller }, from),
    });
    const stock = async (productId: number) => {
      const s = await as(admin).warehouse.getStockpile({ productId });
      return { amount: s!.amount, frozen: s!.frozen };
    };
    const paymentState = async (payId: string) =>
      (await rt.host('payment').db.selectFrom('payment').select('pay_state').where('pay_id', '=', payId).executeTakeFirstOrThrow()).pay_state;
    const wallet = async (accountId: number) =>
      Number((await rt.host('payment').db.selectFrom('wallet').select('money_cents').where('account_id', '=', accountId).executeTakeFirst())?.money_cents ?? 0);
    const holdState = async (payId: string) =>
      (await rt.host('warehouse').db.selectFrom('stock_hold').select('state').where('pay_id', '=', payId).executeTakeFirst())?.state;
    const poll = <T>(probe: () => Promise<T>) => expect.poll(probe, { timeout: 5000, interval: 20 });

    beforeAll(async () => {
      env = backend.create();
      rt = await boot();
    });

    afterAll(async () => {
      await rt?.stop();
      await env?.cleanup();
    });

    it('seeds the demo store on first start', async () => {
      const { warehouse, account } = as();
      const products = await warehouse.listProducts({});
      expect(products.length).toBeGreaterThanOrEqual(8);
      expect(products.slice(0, 8).map((p) => p.id)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      for (const p of products) {
        expect(p.title).not.toBe('');
        expect(p.price).toBeGreaterThan(0);
        expect(p.cover).toBe(`/images/cover-${p.id}.svg`);
        expect(p.detail).toBe(`/images/detail-${p.id}.svg`);
        expect(p.specifications.length).toBeGreaterThan(0);
        expect(p.specifications.every((s) => s.productId === p.id)).toBe(true);
        expect((await stock(p.id)).amount).toBeGreaterThanOrEqual(100);
      }
      expect(await warehouse.getProduct({ id: 999 })).toBeNull();
      expect((await warehouse.listAdvertisements({})).length).toBeGreaterThanOrEqual(3);
      const icyfenix = await account.getByUsername({ username: 'icyfenix' });
      expect(icyfenix).toMatchObject({ id: 1, username: 'icyfenix', telephone: '18888888888', email: 'icyfenix@gmail.com' });
      expect(icyfenix).not.toHaveProperty('password');
      expect(await account.getByUsername({ username: 'nobody' })).toBeNull();
      expect(await wallet(1)).toBe(1_000_000_000);
    });

    it('issues and refreshes tokens, refusing bad credentials the OAuth way', async () => {
      const { auth } = as();
      const pair = await auth.token({ grant_type: 'password', username: 'icyfenix', password: demoPassword, ...client });
      expect(pair).toMatchObject({ token_type: 'bearer', username: 'icyfenix', scope: 'BROWSER' });
      expect(pair.authorities).toEqual(expect.arrayContaining(['ROLE_USER', 'ROLE_ADMIN']));
      const header = JSON.parse(Buffer.from(pair.access_token.split('.')[0]!, 'base64url').toString());
      expect((await auth.jwks({})).keys.map((k) => k.kid)).toContain(header.kid);

      const refreshed = await auth.token({ grant_type: 'refresh_token', refresh_token: pair.refresh_token, ...client });
      expect(refreshed.username).toBe('icyfenix');
      expect(refreshed.jti).not.toBe(pair.jti);

      expect(await failure(auth.token({ grant_type: 'password', username: 'icyfenix', password: 'wrong', ...client }))).toMatchObject({
        code: 'invalid_grant',
        httpStatus: 400,
      });
      expect(await failure(auth.token({ grant_type: 'password', username: 'ghost', password: 'x', ...client }))).toMatchObject({ code: 'invalid_grant' });
      expect(await failure(auth.token({ grant_type: 'refresh_token', refresh_token: 'garbage', ...client }))).toMatchObject({ code: 'invalid_grant' });
      expect(await failure(auth.token({ grant_type: 'password', username: 'icyfenix', password: demoPassword, client_id: 'bookstore_frontend', client_secret: 'nope' }))).toMatchObject({
        code: 'invalid_client',
        httpStatus: 401,
      });
      expect(await failure(auth.token({ grant_type: 'client_credentials', ...client }))).toMatchObject({ code: 'unsupported_grant_type', httpStatus: 400 });
    });

    it('signs in an account registered before the username rules, by its exact name, and throttles it', async () => {
      const { auth } = as();
      // A name the rules now refuse ('/'), stored as an earlier version stored it.
      await rt
        .host('auth')
        .db.insertInto('credential')
        .values({ username: 'old/timer', username_key: null, password_hash: await hashPassword('legacy-pw'), roles: 'ROLE_USER' })
        .execute();
      expect(await auth.token({ grant_type: 'password', username: 'old/timer', password: 'legacy-pw', ...client })).toMatchObject({ username: 'old/timer' });
      for (let i = 0; i < 5; i++) {
        expect(await failure(auth.token({ grant_type: 'password', username: 'old/timer', password: `wrong-${i}`, ...client }))).toMatchObject({ code: 'invalid_grant' });
      }
      // Five failures (the default limit) lock the name, the right password included.
      expect(await failure(auth.token({ grant_type: 'password', username: 'old/timer', password: 'legacy-pw', ...client }))).toMatchObject({
        code: 'too_many_attempts',
        httpStatus: 429,
      });
      // A name no account can hold (a NUL byte) is looked up nowhere, and fails like an unknown one.
      expect(await failure(auth.token({ grant_type: 'password', username: 'old\u0000timer', password: 'legacy-pw', ...client }))).toMatchObject({ code: 'invalid_grant' });
    });

    it('registers accounts, listing every violation', async () => {
      const { account, auth } = as();
      const invalid = (await failure(account.create({ username: 'x', name: '', password: 'p', telephone: '123', email: 'not-an-email' }))) as ValidationError;
      expect(invalid).toMatchObject({ code: 'EVOLITH_VALIDATION', httpStatus: 400 });
      expect(invalid.issues.map((i) => i.path).sort()).toEqual(['email', 'name', 'telephone']);

      const taken = (await failure(
        account.create({ username: 'icyfenix', name: 'Copycat', password: 'p', telephone: '18888888888', email: 'icyfenix@gmail.com' }),
      )) as ValidationError;
      expect(taken.httpStatus).toBe(400);
      expect(taken.issues.map((i) => i.path)).toEqual(['username', 'telephone', 'email']);

      expect(await account.create({ username: 'reader', name: 'A Reader', password: 'secret-1', telephone: '13900000000', email: 'reader@example.com' })).toEqual({
        code: 0,
        message: expect.any(String),
      });
      const created = await account.getByUsername({ username: 'reader' });
      expect(created).toMatchObject({ username: 'reader', name: 'A Reader', avatar: null, location: null });
      expect(created).not.toHaveProperty('password');
      const pair = await auth.token({ grant_type: 'password', username: 'reader', password: 'secret-1', ...client });
      expect(pair.authorities).toEqual(['ROLE_USER']);
      // Registration is anonymous; it must not become a way to reset someone's password.
      expect(await failure(as(undefined, 'account').auth.setCredentials({ username: 'icyfenix', password: 'hijacked' }))).toMatchObject({
        code: 'USERNAME_TAKEN',
      });
      // Credentials are internal: nobody outside the services may call them directly.
      expect(await failure(as().auth.setCredentials({ username: 'someone', password: 'x' }))).toMatchObject({ code: 'EVOLITH_FORBIDDEN' });
    });

    it('lets only the account itself change it', async () => {
      const change = { username: 'reader', name: 'Renamed Reader', password: 'secret-2' };
      expect(await failure(as(admin).account.update(change))).toMatchObject({ code: 'EVOLITH_FORBIDDEN', httpStatus: 403 });
      expect(await failure(as().account.update(change))).toMatchObject({ httpStatus: 403 });
      expect(await failure(as(reader).account.update({ ...change, telephone: '18888888888' }))).toMatchObject({ httpStatus: 400 });

      expect((await as(reader).account.update(change)).code).toBe(0);
      expect(await as().account.getByUsername({ username: 'reader' })).toMatchObject({ name: 'Renamed Reader', telephone: '13900000000' });
      // The password in an update is ignored; changePassword (with the current one) changes it.
      const { auth } = as();
      await expect(auth.token({ grant_type: 'password', username: 'reader', password: 'secret-1', ...client })).resolves.toMatchObject({ username: 'reader' });
      expect(await failure(auth.token({ grant_type: 'password', username: 'reader', password: 'secret-2', ...client }))).toMatchObject({ code: 'invalid_grant' });
      expect(await failure(as(reader).auth.changePassword({ currentPassword: 'wrong', newPassword: 'secret-2' }))).toMatchObject({ code: 'WRONG_PASSWORD', httpStatus: 400 });
      expect((await as(reader).auth.changePassword({ currentPassword: 'secret-1', newPassword: 'secret-2' })).code).toBe(0);
      await expect(auth.token({ grant_type: 'password', username: 'reader', password: 'secret-2', ...client })).resolves.toMatchObject({ username: 'reader' });
      expect(await failure(auth.token({ grant_type: 'password', username: 'reader', password: 'secret-1', ...client }))).toMatchObject({ code: 'invalid_grant' });
    });

    it('checkToken honours a token until its password changes or its sign-in is revoked', async () => {
      const { auth } = as();
      const edge = as(undefined, 'edge').auth;
      const claims = (jwt: string) => JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as { sub: string; ver?: number; fam?: string };
      // Credentials only (no account row: a later test counts the accounts).
      await as(undefined, 'account').auth.setCredentials({ username: 'checked', password: 'pw-1' });
      const a = await auth.token({ grant_type: 'password', username: 'checked', password: 'pw-1', ...client });
      const { sub, ver, fam } = claims(a.access_token);
      expect(await edge.checkToken({ sub, ver, fam })).toEqual({ active: true });
      expect(await edge.checkToken({ sub, ver })).toEqual({ active: true });
      expect(await edge.checkToken({ sub, ver, fam: 'no-such-family' })).toEqual({ active: false });
      expect(await edge.checkToken({ sub: 'nobody', ver, fam })).toEqual({ active: false });
      expect(await failure(as().auth.checkToken({ sub, ver, fam }))).toMatchObject({ code: 'EVOLITH_FORBIDDEN' });

      // Reusing a spent refresh token revokes the family.
      const b = await auth.token({ grant_type: 'refresh_token', refresh_token: a.refresh_token, ...client });
      expect(claims(b.access_token).fam).toBe(fam);
      expect(await failure(auth.token({ grant_type: 'refresh_token', refresh_token: a.refresh_token, ...client }))).toMatchObject({ code: 'invalid_grant' });
      expect(await edge.checkToken(claims(b.access_token))).toEqual({ active: false });

      // A password change raises the version: every earlier token is revoked.
      const c = await auth.token({ grant_type: 'password', username: 'checked', password: 'pw-1', ...client });
      expect(await edge.checkToken(claims(c.access_token))).toEqual({ active: true });
      await as({ subject: 'checked', roles: ['ROLE_USER'] }).auth.changePassword({ currentPassword: 'pw-1', newPassword: 'pw-2' });
      expect(await edge.checkToken(claims(c.access_token))).toEqual({ active: false });
      const d = await auth.token({ grant_type: 'password', username: 'checked', password: 'pw-2', ...client });
      expect(claims(d.access_token).ver).toBe((claims(c.access_token).ver ?? 0) + 1);
      expect(await edge.checkToken(claims(d.access_token))).toEqual({ active: true });
    });

    it('settles with warehouse prices, pays from the wallet and consumes the frozen stock', async () => {
      const { payment, warehouse } = as(admin);
      const [p1, p2] = (await warehouse.listProducts({ ids: [1, 2] }))!;
      const before = [await stock(1), await stock(2)];
      const money = await wallet(1);

      const bill = await payment.settle({ items: [{ id: 1, amount: 2 }, { id: 2, amount: 1 }], purchase });
      expect(bill).toMatchObject({ payState: 'WAITING', expires: 300, totalPrice: p1!.price * 2 + p2!.price + 12 });
      expect(bill.payId).toMatch(/^[0-9a-f-]{36}$/);
      expect(bill.paymentLink).toBe(`/pay/modify/${bill.payId}?state=PAYED&accountId=1`);
      expect(await stock(1)).toEqual({ amount: before[0]!.amount - 2, frozen: before[0]!.frozen + 2 });

      expect((await payment.updateState({ payId: bill.payId, state: 'PAYED' })).code).toBe(0);
      expect(await paymentState(bill.payId)).toBe('PAYED');
      expect(await wallet(1)).toBe(money - Math.round(bill.totalPrice * 100));
      // Already applied when the answer arrives (the paid event then finds nothing left to do).
      expect(await stock(1)).toEqual({ amount: before[0]!.amount - 2, frozen: before[0]!.frozen });
      expect(await stock(2)).toEqual({ amount: before[1]!.amount - 1, frozen: before[1]!.frozen });

      expect(await failure(payment.updateState({ payId: bill.payId, state: 'PAYED' }))).toMatchObject({ code: 'PAYMENT_NOT_WAITING', httpStatus: 409 });
      expect(await failure(payment.updateState({ payId: bill.payId, state: 'CANCEL' }))).toMatchObject({ code: 'PAYMENT_NOT_WAITING', httpStatus: 409 });
      expect(await wallet(1)).toBe(money - Math.round(bill.totalPrice * 100));
    });

    it('cancels a waiting payment and releases its stock', async () => {
      const { payment } = as(admin);
      const before = await stock(3);
      const bill = await payment.settle({ items: [{ id: 3, amount: 5 }], purchase });
      expect(await stock(3)).toEqual({ amount: before.amount - 5, frozen: before.frozen + 5 });
      expect((await payment.updateState({ payId: bill.payId, state: 'CANCEL' })).code).toBe(0);
      expect(await paymentState(bill.payId)).toBe('CANCEL');
      expect(await stock(3)).toEqual(before);
      expect(await failure(payment.updateState({ payId: bill.payId, state: 'PAYED' }))).toMatchObject({ code: 'PAYMENT_NOT_WAITING' });
    });

    it('times out an unpaid payment with a durable timer and releases its stock', async () => {
      const { payment } = as(admin);
      const before = await stock(4);
      const money = await wallet(1);
      const bill = await payment.settle({ items: [{ id: 4, amount: 3 }], purchase });
      await poll(() => paymentState(bill.payId)).toBe('TIMEOUT');
      await poll(() => stock(4)).toEqual(before);
      expect(await failure(payment.updateState({ payId: bill.payId, state: 'PAYED' }))).toMatchObject({ code: 'PAYMENT_NOT_WAITING', httpStatus: 409 });
      expect(await wallet(1)).toBe(money);
    });

    it('refuses a settlement the stock cannot cover and leaves nothing frozen', async () => {
      const { payment, warehouse } = as(admin);
      const original = await stock(8);
      await warehouse.setStockpile({ productId: 8, amount: 1 });
      const err = await failure(payment.settle({ items: [{ id: 1, amount: 1 }, { id: 8, amount: 2 }], purchase }));
      expect(err).toMatchObject({ code: 'INSUFFICIENT_STOCK', httpStatus: 400 });
      expect(err.message).toContain('product 8');
      expect(await stock(8)).toEqual({ amount: 1, frozen: 0 });
      const abandoned = await rt.host('payment').db.selectFrom('payment').select('pay_state').orderBy('id', 'desc').executeTakeFirstOrThrow();
      expect(abandoned.pay_state).toBe('CANCEL');
      await warehouse.setStockpile({ productId: 8, amount: original.amount });
    });

    it('validates settlements, listing every violation', async () => {
      const { payment } = as(admin);
      const err = (await failure(
        payment.settle({ items: [{ id: 1, amount: 0 }], purchase: { pay: '', name: '', telephone: '1', location: '' } } as never),
      )) as ValidationError;
      expect(err.httpStatus).toBe(400);
      expect(err.issues.map((i) => i.path).sort()).toEqual(['items.0.amount', 'purchase.delivery', 'purchase.location', 'purchase.name', 'purchase.pay']);
      expect(((await failure(payment.settle({ items: [], purchase }))) as ValidationError).issues[0]!.path).toBe('items');
      expect(await failure(payment.settle({ items: [{ id: 4242, amount: 1 }], purchase }))).toMatchObject({ code: 'EVOLITH_VALIDATION', httpStatus: 400 });
      expect(await failure(payment.updateState({ payId: 'x', state: 'LOST' as 'PAYED' }))).toMatchObject({ code: 'EVOLITH_VALIDATION', httpStatus: 400 });
    });

    it('never oversells under 50 concurrent freezes', async () => {
      const { warehouse } = as(admin, 'payment');
      const original = await stock(7);
      await warehouse.setStockpile({ productId: 7, amount: 20 });
      const payIds = Array.from({ length: 50 }, () => randomUUID());
      const results = await Promise.allSettled(payIds.map((payId) => warehouse.freeze({ payId, items: [{ productId: 7, amount: 2 }] })));
      const won = payIds.filter((_, i) => results[i]!.status === 'fulfilled');
      expect(won).toHaveLength(10);
      for (const r of results) if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'INSUFFICIENT_STOCK', httpStatus: 400 });
      expect(await stock(7)).toEqual({ amount: 0, frozen: original.frozen + 20 });

      // Repeating a payId is a no-op, whatever its items say.
      expect(await warehouse.freeze({ payId: won[0]!, items: [{ productId: 7, amount: 5 }] })).toMatchObject({ state: 'FROZEN', items: [{ productId: 7, amount: 2 }] });
      await Promise.all(won.map((payId) => warehouse.release({ payId })));
      await Promise.all(won.slice(0, 3).map((payId) => warehouse.release({ payId })));
      expect(await stock(7)).toEqual({ amount: 20, frozen: original.frozen });
      await warehouse.setStockpile({ productId: 7, amount: original.amount });
    });

    it('refuses to pay from a wallet that cannot cover the bill', async () => {
      const { payment } = as(reader);
      const before = await stock(5);
      const bill = await payment.settle({ items: [{ id: 5, amount: 1 }], purchase });
      expect(bill.paymentLink).toMatch(/accountId=2$/);
      expect(await failure(payment.updateState({ payId: bill.payId, state: 'PAYED' }))).toMatchObject({ code: 'INSUFFICIENT_FUNDS', httpStatus: 409 });
      expect(await paymentState(bill.payId)).toBe('WAITING');
      expect((await payment.updateState({ payId: bill.payId, state: 'CANCEL' })).code).toBe(0);
      await poll(() => stock(5)).toEqual(before);
    });

    it('limits the stock one account holds in waiting payments, also under concurrent settlements', async () => {
      // Payments that wait long enough not to time out (and free their units) during the test.
      await rt.stop();
      rt = await boot({ paymentExpiresMs: 60_000 });
      const { payment } = as(reader);
      const before = await stock(6);
      const results = await Promise.allSettled(Array.from({ length: 12 }, () => payment.settle({ items: [{ id: 6, amount: 2 }], purchase })));
      const won = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      expect(won).toHaveLength(10); // the default limit: 20 units
      for (const r of results) {
        if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'HOLD_LIMIT_EXCEEDED', httpStatus: 400, details: { limit: 20, requested: 2 } });
      }
      expect(await stock(6)).toEqual({ amount: before.amount - 20, frozen: before.frozen + 20 });
      // Administrators are not limited.
      const big = await as(admin).payment.settle({ items: [{ id: 6, amount: 25 }], purchase });
      await as(admin).payment.updateState({ payId: big.payId, state: 'CANCEL' });
      for (const bill of won) await payment.updateState({ payId: bill.payId, state: 'CANCEL' });
      await poll(() => stock(6)).toEqual(before);
      // The runtime keeps the longer expiry: the tests that follow do not wait for timeouts.
    });

    it('checks who may settle, pay and manage stock', async () => {
      expect(await failure(as().payment.settle({ items: [{ id: 6, amount: 1 }], purchase }))).toMatchObject({ code: 'EVOLITH_FORBIDDEN', httpStatus: 403 });
      expect(await failure(as(reader).warehouse.setStockpile({ productId: 6, amount: 1 }))).toMatchObject({ httpStatus: 403 });
      expect(await failure(as(reader).warehouse.createProduct({ title: 'Mine', price: 1 }))).toMatchObject({ httpStatus: 403 });

      const bill = await as(admin).payment.settle({ items: [{ id: 6, amount: 1 }], purchase });
      expect(await failure(as(reader).payment.updateState({ payId: bill.payId, state: 'CANCEL' }))).toMatchObject({ httpStatus: 403 });
      expect(await failure(as().payment.payByLink({ payId: bill.payId, state: 'PAYED', accountId: 2 }))).toMatchObject({ httpStatus: 403 });
      expect(await failure(as().payment.payByLink({ payId: 'no-such-payment', state: 'PAYED', accountId: 1 }))).toMatchObject({ httpStatus: 404 });
      // The payment link works for anyone who holds it, as a QR code would.
      expect((await as().payment.payByLink({ payId: bill.payId, state: 'PAYED', accountId: 1 })).code).toBe(0);
      expect(await paymentState(bill.payId)).toBe('PAYED');
    });

    it('treats duplicate and conflicting payment events as no-ops', async () => {
      const { payment } = as(admin);
      const before = await stock(2);
      const bill = await payment.settle({ items: [{ id: 2, amount: 4 }], purchase });
      await payment.updateState({ payId: bill.payId, state: 'PAYED' });
      const consumed = { amount: before.amount - 4, frozen: before.frozen };
      await poll(() => stock(2)).toEqual(consumed);

      const deliver = (topic: string, id: string) =>
        rt.bus.publish({ id, topic, source: 'payment', payload: { payId: bill.payId }, key: bill.payId, publishedAt: Date.now() });
      await deliver(paymentContract.events.paid.topic, `paid:${bill.payId}`); // the same delivery again
      await deliver(paymentContract.events.paid.topic, randomUUID()); // the same fact under a new id
      await deliver(paymentContract.events.cancelled.topic, randomUUID()); // a contradiction
      await deliver(paymentContract.events.timedOut.topic, randomUUID());
      expect(await stock(2)).toEqual(consumed);
      expect(await holdState(bill.payId)).toBe('CONSUMED');
    });

    it('keeps its data and signing key across a restart without seeding twice', async () => {
      const { warehouse, auth } = as();
      const counts = { products: (await warehouse.listProducts({})).length, ads: (await warehouse.listAdvertisements({})).length };
      const keys = await auth.jwks({});
      const pair = await auth.token({ grant_type: 'password', username: 'icyfenix', password: demoPassword, ...client });

      await rt.stop();
      rt = await boot();

      expect((await as().warehouse.listProducts({})).length).toBe(counts.products);
      expect((await as().warehouse.listAdvertisements({})).length).toBe(counts.ads);
      expect(await as().auth.jwks({})).toEqual(keys);
      await expect(as().auth.token({ grant_type: 'refresh_token', refresh_token: pair.refresh_token, ...client })).resolves.toMatchObject({ username: 'icyfenix' });
      const accounts = await rt.host('account').db.selectFrom('account').select('id').execute();
      expect(accounts.map((a: { id: number }) => Number(a.id)).sort()).toEqual([1, 2]);
    });
  });
}
