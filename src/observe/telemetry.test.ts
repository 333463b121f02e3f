import { afterEach, describe, expect, test } from 'vitest';
import { z } from 'zod';
import { eventually, Kit, sleep } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import { BusinessError } from '../kernel/errors.js';
import { implement } from '../kernel/service.js';
import { PrometheusTelemetry } from './telemetry.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

const shop = defineContract({
  name: 'shop',
  version: '1',
  methods: {
    buy: { input: z.object({ qty: z.number().int().positive() }), output: z.object({ ok: z.boolean() }) },
    wait: { input: z.object({ ms: z.number() }), output: z.null(), timeoutMs: 30 },
  },
});
let waitsDone = 0;
const svc = implement(shop, {
  handlers: {
    async buy({ qty }) {
      if (qty > 10) throw new BusinessError('TOO_MANY', 'at most 10');
      return { ok: true };
    },
    async wait({ ms }) {
      await sleep(ms);
      waitsDone++;
      return null;
    },
  },
});

const line = (text: string, name: string, labels: string): number | undefined => {
  const m = new RegExp(`^${name}\\{${labels.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
};

describe('PrometheusTelemetry through the Runtime', () => {
  test('counts calls by outcome, times them, and returns the in-flight gauge to zero', async () => {
    const telemetry = new PrometheusTelemetry();
    const rt = await kit.start([svc], { telemetry });
    await rt.client(shop).buy({ qty: 1 });
    await rt.client(shop).buy({ qty: 2 });
    await rt.client(shop).buy({ qty: 11 }).catch(() => undefined);
    await rt.client(shop).wait({ ms: 200 }).catch(() => undefined);
    // Refused by the client half before reaching the service: not a handled call.
    await rt.client(shop).buy({ qty: -1 }).catch(() => undefined);

    const text = await telemetry.metrics();
    expect(line(text, 'evolith_calls_total', 'service="shop",method="buy",outcome="ok"')).toBe(2);
    expect(line(text, 'evolith_calls_total', 'service="shop",method="buy",outcome="TOO_MANY"')).toBe(1);
    expect(line(text, 'evolith_calls_total', 'service="shop",method="wait",outcome="EVOLITH_TIMEOUT"')).toBe(1);
    expect(line(text, 'evolith_call_duration_seconds_count', 'service="shop",method="buy"')).toBe(3);
    expect(line(text, 'evolith_calls_in_flight', 'service="shop"')).toBe(0);
    // The timed-out handler finishing later does not count the call twice.
    await eventually(() => expect(waitsDone).toBe(1));
    const after = await telemetry.metrics();
    expect(line(after, 'evolith_call_duration_seconds_count', 'service="shop",method="wait"')).toBe(1);
    expect(line(after, 'evolith_calls_in_flight', 'service="shop"')).toBe(0);
  });

  test('each telemetry has its own registry', async () => {
    const a = new PrometheusTelemetry();
    const b = new PrometheusTelemetry();
    const rt = await kit.start([svc], { telemetry: a });
    await rt.client(shop).buy({ qty: 1 });
    expect(line(await a.metrics(), 'evolith_calls_total', 'service="shop",method="buy",outcome="ok"')).toBe(1);
    expect(line(await b.metrics(), 'evolith_calls_total', 'service="shop",method="buy",outcome="ok"')).toBeUndefined();
  });
});

describe('PrometheusTelemetry scrapes', () => {
  test('report the calls in flight while they run, and the same totals on every scrape', async () => {
    const telemetry = new PrometheusTelemetry();
    const rt = await kit.start([svc], { telemetry });
    await rt.client(shop).buy({ qty: 1 });
    const slow = rt.client(shop).wait({ ms: 20 }).catch(() => undefined);
    const during = await telemetry.metrics();
    expect(line(during, 'evolith_calls_in_flight', 'service="shop"')).toBe(1);
    await slow;
    await rt.client(shop).buy({ qty: 12 }).catch(() => undefined);
    for (let scrape = 0; scrape < 3; scrape++) {
      const text = await telemetry.metrics();
      expect(line(text, 'evolith_calls_total', 'service="shop",method="buy",outcome="ok"')).toBe(1);
      expect(line(text, 'evolith_calls_total', 'service="shop",method="buy",outcome="TOO_MANY"')).toBe(1);
      expect(line(text, 'evolith_calls_in_flight', 'service="shop"')).toBe(0);
    }
  });
});
