import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, test } from 'vitest';
import { eventually } from '../../../test/fixtures/unit-kit.js';
import { loadTopology } from '../topology.js';
import type { Wakeup } from '../../serverless/wakeups.js';
import { Waker, WAKEUP_EVENT_TYPE } from './pod-waker.js';

interface Received {
  url: string;
  headers: IncomingHttpHeaders;
  body: unknown;
}

const servers: Server[] = [];
const wakers: Waker[] = [];
afterEach(async () => {
  for (const w of wakers.splice(0)) w.stop();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

/** A stand-in for the function's URL (Knative's K_SINK). */
async function sink(status = 202): Promise<{ url: string; received: Received[]; setStatus(s: number): void }> {
  const received: Received[] = [];
  let answer = status;
  const server = createServer((req, res) => {
    let text = '';
    req.on('data', (c: Buffer) => (text += c.toString()));
    req.on('end', () => {
      received.push({ url: `${req.method} ${req.url}`, headers: req.headers, body: JSON.parse(text) });
      res.writeHead(answer).end();
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, received, setStatus: (s) => (answer = s) };
}

const log = pino({ level: 'silent' });

function waker(url: string, read: (services: readonly string[], now: number) => Promise<Wakeup[]>, pollMs = 60_000): Waker {
  const w = new Waker({ app: 'shop', group: 'payment', services: ['payment', 'wallet'], topology: loadTopology(process.cwd()), sink: url, pollMs, log, read });
  wakers.push(w);
  return w;
}

describe('the waker', () => {
  test('posts a binary-mode CloudEvent to K_SINK/evolith/wake when work is due, naming why', async () => {
    const s = await sink();
    const asked: string[][] = [];
    const w = waker(s.url, async (services, now) => {
      asked.push([...services]);
      return [
        { service: 'payment', at: now - 5, why: 'timer', count: 1 },
        { service: 'wallet', at: now, why: 'event', count: 3 },
      ];
    });
    const due = await w.poll();
    expect(due).toHaveLength(2);
    expect(asked).toEqual([['payment', 'wallet']]);
    expect(s.received).toHaveLength(1);
    const r = s.received[0]!;
    expect(r.url).toBe('POST /evolith/wake');
    expect(r.headers).toMatchObject({ 'ce-specversion': '1.0', 'ce-type': WAKEUP_EVENT_TYPE, 'ce-source': '/evolith/shop/payment', 'content-type': 'application/json' });
    expect(r.headers['ce-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(r.body).toEqual({
      function: 'payment',
      reasons: [
        { service: 'payment', why: 'timer', waiting: 1 },
        { service: 'wallet', why: 'event', waiting: 3 },
      ],
    });
    expect(w.sent).toBe(1);
  });

  test('posts nothing while nothing is due (a timer later than now is not due yet)', async () => {
    const s = await sink();
    const w = waker(s.url, async (_services, now) => [{ service: 'payment', at: now + 60_000, why: 'timer', count: 1 }]);
    expect(await w.poll()).toEqual([]);
    expect(s.received).toHaveLength(0);
    expect(w.ready).toBe(true);
  });

  test('a sink that refuses, or stores that cannot be read, are retried on the next poll', async () => {
    const s = await sink(503);
    let broken = true;
    const w = waker(s.url, async (_services, now) => {
      if (broken) throw new Error('connect ECONNREFUSED 127.0.0.1:5432');
      return [{ service: 'wallet', at: now, why: 'outbox', count: 2 }];
    });
    expect(await w.poll()).toEqual([]);
    expect(w.ready).toBe(false);
    broken = false;
    await w.poll();
    expect(s.received).toHaveLength(1);
    expect(w.sent).toBe(0);
    s.setStatus(202);
    await w.poll();
    expect(w.sent).toBe(1);
  });

  test('with a resolver of its own, the sink’s name is resolved through it', async () => {
    const s = await sink();
    const port = new URL(s.url).port;
    const asked: string[] = [];
    const w = new Waker({
      app: 'shop',
      group: 'payment',
      services: ['payment'],
      topology: loadTopology(process.cwd()),
      sink: `http://payment.shop.svc.cluster.test:${port}`,
      pollMs: 60_000,
      log,
      resolve4: async (name) => (asked.push(name), ['127.0.0.1']),
      read: async (_services, now) => [{ service: 'payment', at: now, why: 'event', count: 1 }],
    });
    wakers.push(w);
    await w.poll();
    expect(asked).toEqual(['payment.shop.svc.cluster.test']);
    expect(s.received.map((r) => r.url)).toEqual(['POST /evolith/wake']);
  });

  test('polls every pollMs once started', async () => {
    const s = await sink();
    let n = 0;
    waker(s.url, async (_services, now) => (++n >= 3 ? [{ service: 'payment', at: now, why: 'event', count: 1 }] : []), 30).start();
    await eventually(() => expect(s.received.length).toBeGreaterThanOrEqual(1), 3_000);
    expect(n).toBeGreaterThanOrEqual(3);
  });
});
