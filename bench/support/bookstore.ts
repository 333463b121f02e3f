/**
 * The bookstore example as the deployment benches drive it: how it is started for a bench, the
 * demo user's sign-in, the stock raised so that no settlement runs out, and the two ways of
 * calling it (fetch for setup, node:http over keep-alive connections for the load).
 */
import { Agent, request as httpRequest } from 'node:http';
import { fail, type Deployment } from './deployments.js';

/** Long enough that no payment made here times out while the bench runs (the timers' work would be noise). */
export const EXPIRES_MS = 3_600_000;
export const REQUEST_TIMEOUT_MS = 10_000;
export const PRODUCTS = [1, 2, 3, 4, 5, 6, 7, 8];
export const PURCHASE = { delivery: true, pay: 'wechat', name: 'Bench Buyer', telephone: '18888888888', location: 'Tangjiawan, Zhuhai' };
const USERNAME = 'icyfenix';
const PASSWORD = 'MFfTW3uNI4eqhwDkG7HP9p2mzEUu/r2';

/** `evolith run` of the bookstore as `arch` on a free port, payments that do not expire, then `options`. */
export function bookstoreArgs(arch: string, dataDir: string, options: string[] = []): string[] {
  return [
    'bin/evolith.mjs', 'run', 'examples/bookstore', '--arch', arch, '--port', '0', '--data', dataDir,
    ...options,
    '--set', `config.payment.paymentExpiresMs=${EXPIRES_MS}`,
  ];
}

export async function call(url: string, init: RequestInit = {}): Promise<{ status: number; text: string }> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  return { status: res.status, text: await res.text() };
}

/** The demo user's password grant, as a query string for GET /oauth/token. */
export const loginQuery = new URLSearchParams({
  grant_type: 'password',
  username: USERNAME,
  password: PASSWORD,
  client_id: 'bookstore_frontend',
  client_secret: 'bookstore_secret',
}).toString();

export async function signIn(deployment: Deployment): Promise<string> {
  const r = await call(`${deployment.url}/oauth/token?${loginQuery}`);
  if (r.status !== 200) fail(`${deployment.name}: login failed: ${r.status} ${r.text}`);
  return (JSON.parse(r.text) as { access_token: string }).access_token;
}

/** Raises every product's stock (as admin) so that no settlement runs out. */
export async function raiseStock(deployment: Deployment): Promise<void> {
  const token = await signIn(deployment);
  for (const id of PRODUCTS) {
    const s = await call(`${deployment.url}/restful/products/stockpile/${id}?amount=1000000000`, { method: 'PATCH', headers: { authorization: `bearer ${token}` } });
    if (s.status !== 200) fail(`${deployment.name}: could not raise the stock of product ${id}: ${s.status} ${s.text}`);
  }
}

export interface Reply {
  status: number;
  body: string;
}

export function send(agent: Agent, base: URL, method: string, path: string, headers: Record<string, string>, body?: string): Promise<Reply> {
  return new Promise((resolveReply, rejectReply) => {
    const req = httpRequest(
      {
        host: base.hostname,
        port: base.port,
        method,
        path,
        agent,
        headers: body === undefined ? headers : { ...headers, 'content-length': String(Buffer.byteLength(body)) },
        timeout: REQUEST_TIMEOUT_MS,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolveReply({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
        res.on('error', rejectReply);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)));
    req.on('error', rejectReply);
    req.end(body);
  });
}
