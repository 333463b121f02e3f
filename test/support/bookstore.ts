/** Bookstore vocabulary for the acceptance tests: demo data, request bodies, stock helpers. */
import { randomBytes } from 'node:crypto';
import { expect } from 'vitest';
import type { Http, Reply } from './http.js';

/** Demo account 1 (admin and user); the password is what the front end sends for "123456". */
export const ADMIN = { id: 1, username: 'icyfenix', password: 'MFfTW3uNI4eqhwDkG7HP9p2mzEUu/r2' } as const;

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A short random tag, unique per call, for usernames, emails and telephones. */
export function uniqueTag(): string {
  return `${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
}

let phoneCounter = 0;
/** A fresh telephone matching `1\d{10}`. */
export function uniquePhone(): string {
  phoneCounter = (phoneCounter + 1) % 1000;
  const rand = randomBytes(4).readUInt32BE(0) % 10_000_000;
  return `1${String(rand).padStart(7, '0')}${String(phoneCounter).padStart(3, '0')}`;
}

export interface NewAccount {
  username: string;
  name: string;
  password: string;
  telephone: string;
  email: string;
  location: string;
  avatar: string;
}

export function newAccount(): NewAccount {
  const tag = uniqueTag();
  return {
    username: `acc_${tag}`,
    name: `Acceptance ${tag}`,
    password: `pw-${tag}`,
    telephone: uniquePhone(),
    email: `acc_${tag}@example.com`,
    location: 'Test Lane 1',
    avatar: '',
  };
}

export async function createAccount(http: Http, account: NewAccount = newAccount()): Promise<NewAccount & { id: number }> {
  const created = await http.post('/restful/accounts', account);
  expect(created.status, created.text).toBe(200);
  expect(created.body).toMatchObject({ code: 0 });
  const fetched = await http.get(`/restful/accounts/${encodeURIComponent(account.username)}`);
  expect(fetched.status, fetched.text).toBe(200);
  expect(typeof fetched.body.id).toBe('number');
  return { ...account, id: fetched.body.id };
}

export const PURCHASE = {
  delivery: true,
  pay: 'wechat',
  name: 'Acceptance Buyer',
  telephone: '18888888888',
  location: 'Test Lane 1, Test City',
} as const;

export type Items = ReadonlyArray<readonly [productId: number, amount: number]>;

export function settlementBody(items: Items): unknown {
  return { items: items.map(([id, amount]) => ({ id, amount })), purchase: { ...PURCHASE } };
}

export function settle(http: Http, token: string | undefined, items: Items, timeoutMs?: number): Promise<Reply> {
  return http.post('/restful/settlements', settlementBody(items), { token, timeoutMs });
}

/**
 * Settles one copy of `productId` through the edge at `edgeUrl` with a user's access token and
 * checks that a payment was opened, for tests that call a deployed edge with plain fetch.
 */
export async function expectSettled(edgeUrl: string, accessToken: string, productId: number): Promise<void> {
  const settlement = await fetch(`${edgeUrl}/restful/settlements`, {
    method: 'POST',
    headers: { authorization: `bearer ${accessToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(settlementBody([[productId, 1]])),
  });
  const paid = await settlement.text();
  expect(settlement.status, paid).toBe(200);
  expect(JSON.parse(paid)).toHaveProperty('payId');
}

export function pay(http: Http, token: string | undefined, payId: string, state: string, timeoutMs?: number): Promise<Reply> {
  return http.patch(`/restful/pay/${encodeURIComponent(payId)}`, { token, query: { state }, timeoutMs });
}

export interface Stockpile {
  id: number;
  amount: number;
  frozen: number;
  productId: number;
}

export async function getStock(http: Http, adminToken: string, productId: number): Promise<Stockpile> {
  const reply = await http.get<Stockpile>(`/restful/products/stockpile/${productId}`, { token: adminToken });
  expect(reply.status, `GET stockpile/${productId}: ${reply.text}`).toBe(200);
  return reply.body;
}

export async function setStock(http: Http, adminToken: string, productId: number, amount: number): Promise<void> {
  const reply = await http.patch(`/restful/products/stockpile/${productId}`, { token: adminToken, query: { amount } });
  expect(reply.status, `PATCH stockpile/${productId}?amount=${amount}: ${reply.text}`).toBe(200);
  expect(reply.body).toMatchObject({ code: 0 });
}

/** `{code: 1, message}` with a non-empty message. */
export function expectFailure(reply: Reply, status: number): void {
  expect(reply.status, reply.text).toBe(status);
  expect(reply.body, reply.text).toMatchObject({ code: 1 });
  expect(typeof reply.body.message, reply.text).toBe('string');
  expect(reply.body.message.length).toBeGreaterThan(0);
}

export function expectSuccess(reply: Reply): void {
  expect(reply.status, reply.text).toBe(200);
  expect(reply.body, reply.text).toMatchObject({ code: 0 });
}

/** Matches a field name as a word of its own ("name" does not match inside "username"). */
export function mentions(field: string): RegExp {
  return new RegExp(`(?<![A-Za-z])${field}(?![a-z])`, 'i');
}
