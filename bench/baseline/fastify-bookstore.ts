/**
 * The baseline for bench:http — a minimal, hand-written fastify 5 + better-sqlite3 server that
 * serves two of the bookstore's endpoints from the very SQLite files a running Evolith
 * bookstore created, doing the same work without any framework in between:
 *
 *   GET  /restful/products     every product with its specifications (prices in yuan)
 *   POST /restful/settlements  verify the bearer JWT (RS256, the bookstore's published key;
 *                              remembered until its exp, as Evolith's edge does), validate
 *                              the body, look the caller's account up, read prices,
 *                              open the payment + its durable expiry timer (outbox row), then
 *                              freeze the stock (conditional UPDATE) with its hold rows
 *
 * Same tables, same rows, same order of commits as examples/bookstore (payment first, then the
 * freeze, each in its own transaction and database), so the Evolith process can even pick up
 * the timers this process writes.
 *
 *   node bin/run-ts.mjs bench/baseline/fastify-bookstore.ts --data <dir> --jwks <url> [--port 0] [--expires-ms 120000]
 *
 * Prints `listening on http://127.0.0.1:<port>` when ready.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import Fastify from 'fastify';
import { importJWK, jwtVerify, type JWK } from 'jose';
import { z } from 'zod';

const { values: args } = parseArgs({
  options: {
    data: { type: 'string' },
    jwks: { type: 'string' },
    port: { type: 'string', default: '0' },
    'expires-ms': { type: 'string', default: '120000' },
  },
});
if (!args.data || !args.jwks) {
  console.error('usage: fastify-bookstore --data <dir> --jwks <url of /.well-known/jwks.json> [--port n] [--expires-ms n]');
  process.exit(2);
}
const EXPIRES_MS = Number(args['expires-ms']);
const ISSUER = 'evolith-bookstore';
const SHIPPING_CENTS = 12_00;

// ---------------------------------------------------------------------------------------------
// Databases: the same files and pragmas as Evolith's SqliteStorage.

function open(name: string): Database.Database {
  const db = new Database(join(args.data!, `${name}.sqlite`));
  db.pragma('journal_mode = WAL');
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  db.pragma('synchronous = NORMAL');
  return db;
}
const warehouse = open('warehouse');
const payment = open('payment');
const account = open('account');

interface ProductRow {
  id: number;
  title: string;
  price_cents: number;
  rate: number;
  description: string | null;
  cover: string | null;
  detail: string | null;
}
interface SpecRow {
  id: number;
  product_id: number;
  item: string;
  value: string;
}

const q = {
  products: warehouse.prepare<[], ProductRow>('select id, title, price_cents, rate, description, cover, detail from product order by id'),
  specs: warehouse.prepare<[], SpecRow>('select id, product_id, item, value from specification order by id'),
  prices: warehouse.prepare<[string], { id: number; price_cents: number }>(
    'select id, price_cents from product where id in (select value from json_each(?))',
  ),
  claimHold: warehouse.prepare<[string, number, number]>(
    "insert into stock_hold (pay_id, state, created_at, updated_at) values (?, 'FROZEN', ?, ?) on conflict (pay_id) do nothing",
  ),
  freeze: warehouse.prepare<[number, number, number, number]>(
    'update stockpile set amount = amount - ?, frozen = frozen + ? where product_id = ? and amount >= ?',
  ),
  holdItem: warehouse.prepare<[string, number, number]>('insert into stock_hold_item (pay_id, product_id, amount) values (?, ?, ?)'),
  stockOf: warehouse.prepare<[number], { title: string; amount: number | null }>(
    'select product.title, stockpile.amount from product left join stockpile on stockpile.product_id = product.id where product.id = ?',
  ),
  nextPaymentId: payment.prepare<[], { last_id: number }>(
    "insert into id_counter (name, last_id) values ('payment', 1) on conflict (name) do update set last_id = id_counter.last_id + 1 returning last_id",
  ),
  insertPayment: payment.prepare<[number, string, number, number, number, number, number, number]>(
    "insert into payment (id, pay_id, account_id, total_cents, expires_ms, expires_at, create_time, pay_state, held_units) values (?, ?, ?, ?, ?, ?, ?, 'WAITING', ?)",
  ),
  cancelPayment: payment.prepare<[string]>("update payment set pay_state = 'CANCEL' where pay_id = ? and pay_state = 'WAITING'"),
  outbox: payment.prepare<[string, string, string, string, string, number, number]>(
    'insert into evolith_outbox (id, topic, payload, key, traceparent, deliver_at, created_at, attempts) values (?, ?, ?, ?, ?, ?, ?, 0) on conflict (id) do nothing',
  ),
  accountId: account.prepare<[string], { id: number }>('select id from account where username = ?'),
};

const traceparent = () => `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-01`;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------
// Products.

function listProducts() {
  const specsOf = new Map<number, { id: number; item: string; value: string; productId: number }[]>();
  for (const s of q.specs.all()) {
    const list = specsOf.get(s.product_id) ?? [];
    list.push({ id: s.id, item: s.item, value: s.value, productId: s.product_id });
    specsOf.set(s.product_id, list);
  }
  return q.products.all().map((p) => ({
    id: p.id,
    title: p.title,
    price: p.price_cents / 100,
    rate: p.rate,
    description: p.description,
    cover: p.cover,
    detail: p.detail,
    specifications: specsOf.get(p.id) ?? [],
  }));
}

// ---------------------------------------------------------------------------------------------
// Settlements: the same schema shape (and messages) as examples/bookstore/contracts/payment.ts.

const missingOr = (field: string, kind: string) => (issue: { input: unknown }) =>
  issue.input === undefined || issue.input === null ? `${field} is required` : `${field} must be ${kind}`;
const text = (field: string) =>
  z.string({ error: missingOr(field, 'text') }).trim().min(1, `${field} is required`).max(200, `${field} must be at most 200 characters`);
const whole = (field: string) => z.number({ error: missingOr(field, 'a number') }).int(`${field} must be a whole number`);

const Settlement = z.object({
  items: z
    .array(
      z.object({
        id: whole('item id').positive('item id must be positive'),
        amount: whole('item amount').min(1, 'item amount must be at least 1').max(10_000, 'item amount must be at most 10000'),
      }),
      { error: 'items are required' },
    )
    .min(1, 'a settlement needs at least one item')
    .max(100, 'a settlement holds at most 100 items'),
  purchase: z.object(
    {
      delivery: z.boolean({ error: (issue) => (issue.input === undefined ? 'purchase.delivery is required' : 'purchase.delivery must be true or false') }),
      pay: text('purchase.pay'),
      name: text('purchase.name'),
      telephone: text('purchase.telephone'),
      location: text('purchase.location'),
    },
    { error: 'purchase (delivery details) is required' },
  ),
});

const jwks = (await (await fetch(args.jwks)).json()) as { keys: JWK[] };
const jwk = jwks.keys.find((k) => k.alg === 'RS256' || k.kty === 'RSA');
if (!jwk) throw new Error(`no RS256 key at ${args.jwks}`);
const publicKey = await importJWK(jwk, 'RS256');

type Caller = { subject: string; roles: string[] };

// Evolith's edge remembers a verified token until its exp; so does this server, so that both
// pay for one RS256 verification per token rather than one per request.
const verified = new Map<string, { caller: Caller; expiresAtMs: number }>();
const VERIFIED_MAX = 10_000;

/** The caller's username, or undefined for an anonymous request; 401 for a bad token. */
async function authenticate(header: string | undefined): Promise<Caller | undefined> {
  if (!header) return undefined;
  const m = /^bearer\s+(\S+)\s*$/i.exec(header);
  if (!m) {
    if (/^bearer\b/i.test(header)) throw new HttpError(401, 'malformed bearer token');
    return undefined;
  }
  const token = m[1]!;
  const known = verified.get(token);
  if (known && Date.now() < known.expiresAtMs) return known.caller;
  let payload;
  try {
    ({ payload } = await jwtVerify(token, publicKey, { algorithms: ['RS256'], issuer: ISSUER }));
  } catch (err) {
    throw new HttpError(401, `invalid token (${(err as Error).message})`);
  }
  if (payload.typ !== 'access' || typeof payload.sub !== 'string') throw new HttpError(401, 'not an access token');
  const caller = { subject: payload.sub, roles: Array.isArray(payload.authorities) ? payload.authorities.map(String) : [] };
  if (typeof payload.exp === 'number') {
    if (verified.size >= VERIFIED_MAX) verified.delete(verified.keys().next().value!);
    verified.set(token, { caller, expiresAtMs: payload.exp * 1000 });
  }
  return caller;
}

/** Opens the payment and its expiry timer in one commit (before any stock is frozen, as Evolith does). */
// (The bench settles as the administrator, whom the per-account limit on held stock does not apply to.)
const openPayment = payment.transaction((payId: string, accountId: number, totalCents: number, heldUnits: number, now: number) => {
  const id = q.nextPaymentId.get()!.last_id;
  q.insertPayment.run(id, payId, accountId, totalCents, EXPIRES_MS, now + EXPIRES_MS, now, heldUnits);
  q.outbox.run(`expire:${payId}`, 'payment.expired', JSON.stringify({ payId }), payId, traceparent(), now + EXPIRES_MS, Date.now());
  return id;
});

/** Freezes every item or none; throws a 400 naming the first product short of stock. */
const freeze = warehouse.transaction((payId: string, items: { productId: number; amount: number }[]) => {
  const now = Date.now();
  q.claimHold.run(payId, now, now);
  const merged = new Map<number, number>();
  for (const i of items) merged.set(i.productId, (merged.get(i.productId) ?? 0) + i.amount);
  const wanted = [...merged].sort(([a], [b]) => a - b);
  for (const [productId, amount] of wanted) {
    if (q.freeze.run(amount, amount, productId, amount).changes === 0) {
      const row = q.stockOf.get(productId);
      throw new HttpError(
        400,
        row
          ? `not enough stock of "${row.title}" (product ${productId}): ${amount} requested, ${row.amount ?? 0} available`
          : `product ${productId} does not exist`,
      );
    }
  }
  for (const [productId, amount] of wanted) q.holdItem.run(payId, productId, amount);
});

/** A payment whose stock could not be frozen is cancelled (its event releases whatever was). */
const abandon = payment.transaction((payId: string) => {
  if (q.cancelPayment.run(payId).changes > 0) {
    q.outbox.run(`cancelled:${payId}`, 'payment.cancelled', JSON.stringify({ payId }), payId, traceparent(), Date.now(), Date.now());
  }
});

async function settle(authorization: string | undefined, body: unknown) {
  const caller = await authenticate(authorization);
  if (!caller) throw new HttpError(403, 'payment.settle requires authentication (one of ROLE_USER)');
  if (!caller.roles.includes('ROLE_USER')) throw new HttpError(403, 'payment.settle requires one of ROLE_USER');
  const parsed = Settlement.safeParse(body);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`);
    throw new HttpError(400, `invalid input for payment.settle: ${issues.join('; ')}`);
  }
  const { items } = parsed.data;
  const accountId = q.accountId.get(caller.subject)?.id;
  if (accountId === undefined) throw new HttpError(403, `${caller.subject} has no bookstore account`);

  const priceOf = new Map(q.prices.all(JSON.stringify([...new Set(items.map((i) => i.id))])).map((p) => [p.id, p.price_cents]));
  const unknown = items.filter((i) => !priceOf.has(i.id)).map((i) => `product ${i.id} does not exist`);
  if (unknown.length) throw new HttpError(400, `invalid settlement: ${unknown.join('; ')}`);
  const total = items.reduce((sum, i) => sum + priceOf.get(i.id)! * i.amount, SHIPPING_CENTS);

  const payId = randomUUID();
  const now = Date.now();
  const id = openPayment(payId, accountId, total, items.reduce((n, i) => n + i.amount, 0), now);
  try {
    freeze(payId, items.map((i) => ({ productId: i.id, amount: i.amount })));
  } catch (err) {
    abandon(payId);
    throw err;
  }
  return {
    id,
    createTime: new Date(now).toISOString(),
    payId,
    totalPrice: total / 100,
    expires: EXPIRES_MS,
    paymentLink: `/pay/modify/${payId}?state=PAYED&accountId=${accountId}`,
    payState: 'WAITING' as const,
  };
}

// ---------------------------------------------------------------------------------------------

const app = Fastify({ logger: false });

app.setErrorHandler((error: Error & { statusCode?: number }, _req, reply) => {
  const status = error instanceof HttpError ? error.status : error.statusCode && error.statusCode < 500 ? error.statusCode : 500;
  if (status >= 500) console.error(error);
  reply.status(status).send({ code: 1, message: status >= 500 ? 'internal error' : error.message });
});

app.get('/restful/products', async () => listProducts());
app.post('/restful/settlements', async (req) => settle(req.headers.authorization, req.body));

const address = await app.listen({ host: '127.0.0.1', port: Number(args.port) });
console.log(`listening on ${address}`);

const stop = () => {
  app.close().finally(() => {
    for (const db of [warehouse, payment, account]) db.close();
    process.exit(0);
  });
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
