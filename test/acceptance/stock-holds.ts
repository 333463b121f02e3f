/**
 * Acceptance tests on stock held by waiting payments, run by the bookstore suite against every
 * architecture: the per-account limit on held stock, and pay/cancel whose stock change is
 * visible by the time the answer arrives (as in Fenix's own services).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { Bookstore } from '../support/bookstore-process.js';
import { createAccount, expectFailure, expectSuccess, getStock, pay, setStock, settle } from '../support/bookstore.js';
import { eventsApplied } from '../support/events.js';
import { login, type Http } from '../support/http.js';

/** The suite's running server: filled in by its beforeAll, read here only inside tests. */
export interface SuiteServer {
  server?: Bookstore;
  http: Http;
  admin: string;
}

/** The default of config.payment.maxHeldUnitsPerAccount (examples/bookstore/evolith.yaml). */
const HELD_UNITS_LIMIT = 20;

export function stockHoldTests(ctx: SuiteServer): void {
  describe('stock held by waiting payments', () => {
    let buyer: string;

    beforeAll(async () => {
      const account = await createAccount(ctx.http);
      buyer = (await login(ctx.http, account.username, account.password)).access_token;
    }, 30_000);

    it(`one account holds at most ${HELD_UNITS_LIMIT} units; a settlement past it is refused with 400 and freezes nothing`, async () => {
      const product = 6;
      await setStock(ctx.http, ctx.admin, product, 100);
      const before = await getStock(ctx.http, ctx.admin, product);

      const first = await settle(ctx.http, buyer, [[product, 15]]);
      expect(first.status, first.text).toBe(200);
      const second = await settle(ctx.http, buyer, [[product, 3], [product, 2]]); // exactly at the limit
      expect(second.status, second.text).toBe(200);

      const over = await settle(ctx.http, buyer, [[product, 1]]);
      expectFailure(over, 400);
      expect(over.body.message).toContain(String(HELD_UNITS_LIMIT));
      expect(over.body.message).toMatch(/maxHeldUnitsPerAccount/);
      // Refused before any stock moved: only the two accepted settlements' 20 units are frozen.
      expect(await getStock(ctx.http, ctx.admin, product)).toMatchObject({ amount: before.amount - 20, frozen: before.frozen + 20 });

      // Paying or cancelling a payment gives its units back to the account's allowance at once.
      expectSuccess(await pay(ctx.http, buyer, second.body.payId, 'CANCEL'));
      const again = await settle(ctx.http, buyer, [[product, 5]]);
      expect(again.status, again.text).toBe(200);
      expectFailure(await settle(ctx.http, buyer, [[product, 1]]), 400);

      for (const payId of [first.body.payId, again.body.payId]) expectSuccess(await pay(ctx.http, buyer, payId, 'CANCEL'));
    }, 30_000);

    it('a single settlement larger than the limit is refused, whatever the stock', async () => {
      const product = 6;
      await setStock(ctx.http, ctx.admin, product, 1000);
      const before = await getStock(ctx.http, ctx.admin, product);
      const r = await settle(ctx.http, buyer, [[product, HELD_UNITS_LIMIT + 1]]);
      expectFailure(r, 400);
      expect(r.body.message).toContain(String(HELD_UNITS_LIMIT));
      expect(await getStock(ctx.http, ctx.admin, product)).toMatchObject({ amount: before.amount, frozen: before.frozen });
    });

    it('concurrent settlements of one account cannot slip past the limit together', async () => {
      const product = 6;
      await setStock(ctx.http, ctx.admin, product, 100);
      const before = await getStock(ctx.http, ctx.admin, product);
      const replies = await Promise.all(Array.from({ length: 10 }, () => settle(ctx.http, buyer, [[product, 3]])));
      const ok = replies.filter((r) => r.status === 200);
      expect(replies.filter((r) => r.status !== 200 && r.status !== 400).map((r) => `${r.status} ${r.text}`)).toEqual([]);
      expect(ok.length).toBe(Math.floor(HELD_UNITS_LIMIT / 3));
      expect(await getStock(ctx.http, ctx.admin, product)).toMatchObject({ frozen: before.frozen + 3 * ok.length });
      for (const r of ok) expectSuccess(await pay(ctx.http, buyer, r.body.payId, 'CANCEL'));
    }, 30_000);

    // No waiting and no polling below: the next request after the answer must already see the change.
    it('PATCH /restful/pay/{id}?state=CANCEL: the released stock is back on sale by the time it answers', async () => {
      const product = 6;
      await setStock(ctx.http, ctx.admin, product, 50);
      const before = await getStock(ctx.http, ctx.admin, product);
      for (let round = 0; round < 3; round++) {
        const r = await settle(ctx.http, buyer, [[product, 4]]);
        expect(r.status, r.text).toBe(200);
        expect(await getStock(ctx.http, ctx.admin, product)).toMatchObject({ amount: before.amount - 4, frozen: before.frozen + 4 });
        expectSuccess(await pay(ctx.http, buyer, r.body.payId, 'CANCEL'));
        expect(await getStock(ctx.http, ctx.admin, product)).toMatchObject({ amount: before.amount, frozen: before.frozen });
      }
      if (ctx.server) await eventsApplied(ctx.server.dataDir); // the cancelled events, once handled, change nothing more
      expect(await getStock(ctx.http, ctx.admin, product)).toMatchObject({ amount: before.amount, frozen: before.frozen });
    }, 30_000);

    it('PATCH /restful/pay/{id}?state=PAYED: the sold stock has left frozen by the time it answers', async () => {
      const product = 6;
      await setStock(ctx.http, ctx.admin, product, 50);
      const before = await getStock(ctx.http, ctx.admin, product);
      for (let round = 1; round <= 3; round++) {
        const r = await settle(ctx.http, ctx.admin, [[product, 2]]);
        expect(r.status, r.text).toBe(200);
        expectSuccess(await pay(ctx.http, ctx.admin, r.body.payId, 'PAYED'));
        expect(await getStock(ctx.http, ctx.admin, product)).toMatchObject({ amount: before.amount - 2 * round, frozen: before.frozen });
      }
      // Several at once, too: each answer means its own change is in.
      const batch = await Promise.all(Array.from({ length: 4 }, () => settle(ctx.http, ctx.admin, [[product, 1]])));
      for (const r of batch) expect(r.status, r.text).toBe(200);
      const paid = await Promise.all(batch.map((r) => pay(ctx.http, ctx.admin, r.body.payId, 'PAYED')));
      for (const p of paid) expectSuccess(p);
      expect(await getStock(ctx.http, ctx.admin, product)).toMatchObject({ amount: before.amount - 10, frozen: before.frozen });
      if (ctx.server) await eventsApplied(ctx.server.dataDir); // the paid events, once handled, change nothing more
      expect(await getStock(ctx.http, ctx.admin, product)).toMatchObject({ amount: before.amount - 10, frozen: before.frozen });
    }, 30_000);
  });
}
