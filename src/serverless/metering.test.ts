import client from 'prom-client';
import { describe, expect, test } from 'vitest';
import { ConfigError } from '../kernel/errors.js';
import { ALWAYS_ON_VM, LAMBDA_PRICES, Meter, alwaysOnCost, billedDurationMs, formatReport, type PriceModel } from './metering.js';

const SINCE = 1_000_000;

/**
 * The scripted load:
 * - orders, 128 MB: 990 warm invocations of 12.3 ms and 10 cold starts of 250.4 ms (1000 in all);
 * - thumbs, 512 MB: 500 invocations of 0.2 ms, the first one cold.
 */
function scriptedLoad(meter: Meter): void {
  for (let i = 0; i < 1000; i++) {
    const cold = i % 100 === 0;
    meter.invocation('orders', { memoryMb: 128 }, cold ? 250.4 : 12.3, cold);
  }
  for (let i = 0; i < 500; i++) meter.invocation('thumbs', { memoryMb: 512 }, 0.2, i === 0);
}

describe('billed duration', () => {
  test('rounds up to the 1 ms granularity, exact durations stay, and the minimum is 1 ms', () => {
    expect(billedDurationMs(12.3, 1)).toBe(13);
    expect(billedDurationMs(12, 1)).toBe(12);
    expect(billedDurationMs(12.000001, 1)).toBe(13);
    expect(billedDurationMs(0.2, 1)).toBe(1);
    expect(billedDurationMs(0, 1)).toBe(1);
    expect(billedDurationMs(1, 1)).toBe(1);
  });

  test('follows a coarser granularity (the 100 ms Lambda used to bill)', () => {
    expect(billedDurationMs(1, 100)).toBe(100);
    expect(billedDurationMs(100, 100)).toBe(100);
    expect(billedDurationMs(100.5, 100)).toBe(200);
    expect(billedDurationMs(250, 100)).toBe(300);
  });

  test('refuses durations that are negative or not numbers', () => {
    expect(() => billedDurationMs(-1, 1)).toThrow(RangeError);
    expect(() => billedDurationMs(Number.NaN, 1)).toThrow(RangeError);
    expect(() => billedDurationMs(Number.POSITIVE_INFINITY, 1)).toThrow(RangeError);
  });

  test('a meter with 100 ms granularity bills each invocation rounded up', () => {
    const prices: PriceModel = { ...LAMBDA_PRICES, name: 'coarse', billingGranularityMs: 100 };
    const meter = new Meter(prices, SINCE);
    meter.invocation('f', { memoryMb: 1024 }, 12.3, false); // 100 ms
    meter.invocation('f', { memoryMb: 1024 }, 100, false); // 100 ms
    meter.invocation('f', { memoryMb: 1024 }, 100.1, false); // 200 ms
    const [f] = meter.report(SINCE).functions;
    expect(f.billedMs).toBe(400);
    expect(f.gbSeconds).toBe(0.4); // 0.4 s × 1 GB
  });
});

describe('Meter report', () => {
  test('a scripted load matches the hand computation', () => {
    const meter = new Meter(LAMBDA_PRICES, SINCE);
    scriptedLoad(meter);
    const report = meter.report(SINCE + 60_000);
    expect(report.since).toBe(SINCE);
    expect(report.until).toBe(SINCE + 60_000);
    expect(report.prices).toBe(LAMBDA_PRICES);
    expect(report.functions.map((f) => f.fn)).toEqual(['orders', 'thumbs']);
    const [orders, thumbs] = report.functions;

    // orders: 990 × ceil(12.3) = 990 × 13 = 12 870 ms; 10 × ceil(250.4) = 10 × 251 = 2 510 ms; 15 380 ms in all.
    expect(orders).toMatchObject({ fn: 'orders', memoryMb: 128, invocations: 1000, coldStarts: 10, billedMs: 15_380 });
    // GB-s = 15.380 s × 128/1024 GB = 15.38 × 0.125 = 1.9225
    expect(orders.gbSeconds).toBe(1.9225);
    // requests: 1000 × $0.20 / 1e6 = $0.0002
    expect(orders.requestCost).toBeCloseTo(0.0002, 15);
    // compute: 1.9225 × $0.0000166667 = $0.00003204173075
    expect(orders.computeCost).toBeCloseTo(0.00003204173075, 15);
    // $0.0002 + $0.00003204173075 = $0.00023204173075
    expect(orders.cost).toBeCloseTo(0.00023204173075, 15);
    expect(orders.instanceSeconds).toBe(0);

    // thumbs: 500 × ceil-to-minimum(0.2) = 500 × 1 = 500 ms
    expect(thumbs).toMatchObject({ fn: 'thumbs', memoryMb: 512, invocations: 500, coldStarts: 1, billedMs: 500 });
    // GB-s = 0.5 s × 512/1024 GB = 0.25
    expect(thumbs.gbSeconds).toBe(0.25);
    // requests: 500 × $0.20 / 1e6 = $0.0001
    expect(thumbs.requestCost).toBeCloseTo(0.0001, 15);
    // compute: 0.25 × $0.0000166667 = $0.000004166675
    expect(thumbs.computeCost).toBeCloseTo(0.000004166675, 15);
    expect(thumbs.cost).toBeCloseTo(0.000104166675, 15);

    // total: 1500 invocations; GB-s = 1.9225 + 0.25 = 2.1725;
    // cost = 1500 × $0.20 / 1e6 + 2.1725 × $0.0000166667 = $0.0003 + $0.00003620840575 = $0.00033620840575
    expect(report.total.invocations).toBe(1500);
    expect(report.total.gbSeconds).toBe(2.1725);
    expect(report.total.cost).toBeCloseTo(0.00033620840575, 15);
    // Hundredths of a cent: 0.0336 cents.
    expect(Math.round(report.total.cost * 1e6)).toBe(336);
  });

  test('a million fractional-ms invocations sum to the exact integer billed time', () => {
    const meter = new Meter(LAMBDA_PRICES, SINCE);
    // 0.1 + 0.2 in floating point is 0.30000000000000004: still billed 1 ms each.
    for (let i = 0; i < 1_000_000; i++) meter.invocation('f', { memoryMb: 1024 }, 0.1 + 0.2, false);
    const [f] = meter.report(SINCE).functions;
    expect(f.billedMs).toBe(1_000_000);
    // 1000 s × 1 GB = 1000 GB-s → $0.0166667; 1e6 requests → $0.20
    expect(f.gbSeconds).toBe(1000);
    expect(f.cost).toBeCloseTo(0.2 + 0.0166667, 12);
  });

  test('functions are metered apart and the totals add them up', () => {
    const meter = new Meter(LAMBDA_PRICES, SINCE);
    meter.invocation('b', { memoryMb: 256 }, 99.9, false); // 100 ms × 0.25 GB = 0.025 GB-s
    meter.invocation('a', { memoryMb: 1024 }, 1999.5, true); // 2000 ms × 1 GB = 2 GB-s
    meter.invocation('c', { memoryMb: 2048 }, 500, false); // 500 ms × 2 GB = 1 GB-s
    meter.invocation('b', { memoryMb: 256 }, 100, false); // 100 ms × 0.25 GB = 0.025 GB-s
    const report = meter.report(SINCE + 1);
    expect(report.functions.map((f) => [f.fn, f.invocations, f.coldStarts, f.billedMs, f.gbSeconds])).toEqual([
      ['a', 1, 1, 2000, 2],
      ['b', 2, 0, 200, 0.05],
      ['c', 1, 0, 500, 1],
    ]);
    expect(report.total.invocations).toBe(4);
    expect(report.total.gbSeconds).toBe(3.05);
    // 4 × $0.20/1e6 + 3.05 × $0.0000166667 = $0.0000008 + $0.000050833435
    expect(report.total.cost).toBeCloseTo(0.000051633435, 15);
    expect(report.total.cost).toBeCloseTo(report.functions.reduce((n, f) => n + f.cost, 0), 15);
  });

  test('an empty meter reports nothing and costs nothing', () => {
    const report = new Meter(LAMBDA_PRICES, SINCE).report(SINCE + 5000);
    expect(report.functions).toEqual([]);
    expect(report.total).toEqual({ invocations: 0, gbSeconds: 0, cost: 0 });
  });

  test('a function invoked with another memory size is refused', () => {
    const meter = new Meter(LAMBDA_PRICES, SINCE);
    meter.invocation('f', { memoryMb: 128 }, 1, false);
    expect(() => meter.invocation('f', { memoryMb: 256 }, 1, false)).toThrow(ConfigError);
    expect(() => meter.invocation('g', { memoryMb: 0 }, 1, false)).toThrow(ConfigError);
    expect(() => meter.invocation('g', { memoryMb: 12.5 }, 1, false)).toThrow(ConfigError);
    // The refused calls left no trace.
    expect(meter.report(SINCE).functions.map((f) => [f.fn, f.invocations])).toEqual([['f', 1]]);
  });

  test('price models with a granularity that is not a positive integer are refused', () => {
    expect(() => new Meter({ ...LAMBDA_PRICES, billingGranularityMs: 0 })).toThrow(ConfigError);
    expect(() => new Meter({ ...LAMBDA_PRICES, billingGranularityMs: 0.5 })).toThrow(ConfigError);
    expect(() => new Meter({ ...LAMBDA_PRICES, perGbSecond: -1 })).toThrow(ConfigError);
  });
});

describe('instance-seconds', () => {
  test('sum the time each instance was up, counting one still running up to the report', () => {
    const meter = new Meter(LAMBDA_PRICES, SINCE);
    meter.instanceStarted('orders', SINCE, { memoryMb: 128 }); // A
    meter.instanceStarted('orders', SINCE + 1000); // B
    meter.instanceStopped('orders', SINCE + 3000); // one of them
    meter.instanceStopped('orders', SINCE + 4500); // the other
    meter.instanceStarted('orders', SINCE + 10_000); // C, still running
    meter.instanceStarted('thumbs', SINCE + 2000, { memoryMb: 512 });
    meter.instanceStopped('thumbs', SINCE + 2250);
    expect(meter.running('orders')).toBe(1);
    expect(meter.running('thumbs')).toBe(0);

    // orders: 1 × 1000 (A alone) + 2 × 2000 (A and B) + 1 × 1500 + 0 × 5500 + 1 × 6000 (C up to the report) = 12 500 ms
    const report = meter.report(SINCE + 16_000);
    const orders = report.functions.find((f) => f.fn === 'orders')!;
    expect(orders.instanceSeconds).toBe(12.5);
    expect(orders.memoryMb).toBe(128);
    expect(orders.invocations).toBe(0);
    // thumbs: 250 ms
    expect(report.functions.find((f) => f.fn === 'thumbs')!.instanceSeconds).toBe(0.25);

    // A report does not close the running instance: a later one counts it further.
    expect(meter.report(SINCE + 17_000).functions.find((f) => f.fn === 'orders')!.instanceSeconds).toBe(13.5);
    meter.instanceStopped('orders', SINCE + 18_000);
    expect(meter.report(SINCE + 30_000).functions.find((f) => f.fn === 'orders')!.instanceSeconds).toBe(14.5);
  });

  test('a stop with nothing running, events out of order and reports before the last event are refused', () => {
    const meter = new Meter(LAMBDA_PRICES, SINCE);
    expect(() => meter.instanceStopped('f', SINCE + 1)).toThrow(RangeError);
    expect(() => meter.instanceStarted('f', SINCE - 1)).toThrow(RangeError);
    meter.instanceStarted('f', SINCE + 100);
    expect(() => meter.instanceStopped('f', SINCE + 50)).toThrow(RangeError);
    expect(meter.running('f')).toBe(1);
    expect(() => meter.report(SINCE + 99)).toThrow(RangeError);
    expect(() => meter.report(SINCE - 1)).toThrow(RangeError);
    expect(meter.report(SINCE + 100).functions[0].instanceSeconds).toBe(0);
  });
});

describe('alwaysOnCost', () => {
  test('the reference VM is a t3.small at its published us-east-1 price', () => {
    expect(ALWAYS_ON_VM).toMatchObject({ perHour: 0.0208, vcpus: 2, memoryGb: 2 });
    expect(ALWAYS_ON_VM.name).toContain('t3.small');
  });

  test('packs one process per vCPU when memory allows', () => {
    // 3 processes of 512 MB: a t3.small holds min(2 vCPUs, 2048/512 = 4) = 2 → 2 VMs; an hour: 2 × $0.0208 = $0.0416
    const r = alwaysOnCost(3, 512, 3600);
    expect(r.vms).toBe(2);
    expect(r.cost).toBeCloseTo(0.0416, 12);
    expect(r.explanation).toContain('2 VMs');
    expect(r.explanation).toContain('t3.small');
  });

  test('packs by memory when processes are large', () => {
    // 3 processes of 1536 MB: min(2, floor(2048/1536) = 1) = 1 a VM → 3 VMs; a day: 3 × 24 × $0.0208 = $1.4976
    const r = alwaysOnCost(3, 1536, 86_400);
    expect(r.vms).toBe(3);
    expect(r.cost).toBeCloseTo(1.4976, 12);
  });

  test('bills at least 60 seconds a VM, whole seconds, and nothing for no processes', () => {
    // 1 VM × $0.0208 × 60/3600 = $0.000346666…
    expect(alwaysOnCost(1, 128, 30).cost).toBeCloseTo(0.0208 / 60, 15);
    // 90.2 s → 91 s: $0.0208 × 91/3600
    expect(alwaysOnCost(2, 128, 90.2).cost).toBeCloseTo((0.0208 * 91) / 3600, 15);
    expect(alwaysOnCost(0, 128, 3600)).toMatchObject({ vms: 0, cost: 0 });
  });

  test('a process larger than the VM is refused, as are nonsense arguments', () => {
    expect(() => alwaysOnCost(1, 3000, 60)).toThrow(ConfigError);
    expect(() => alwaysOnCost(-1, 128, 60)).toThrow(RangeError);
    expect(() => alwaysOnCost(1, 0, 60)).toThrow(RangeError);
    expect(() => alwaysOnCost(1, 128, -5)).toThrow(RangeError);
  });

  test('takes another VM', () => {
    // 8 processes of 1024 MB on 4 vCPU / 16 GiB at $0.1664/h: 4 a VM → 2 VMs; half an hour: 2 × 0.1664 / 2 = $0.1664
    const r = alwaysOnCost(8, 1024, 1800, { name: 't3.xlarge', perHour: 0.1664, vcpus: 4, memoryGb: 16 });
    expect(r.vms).toBe(2);
    expect(r.cost).toBeCloseTo(0.1664, 12);
  });
});

describe('Prometheus counters', () => {
  const line = (text: string, name: string, fn: string): number | undefined => {
    const m = new RegExp(`^${name}\\{function="${fn}"\\} (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  };

  test('expose per-function invocations, cold starts, billed ms, GB-seconds and running instances', async () => {
    const meter = new Meter(LAMBDA_PRICES, SINCE);
    const registry = new client.Registry();
    meter.register(registry);
    scriptedLoad(meter);
    meter.instanceStarted('orders', SINCE + 10);
    let text = await registry.metrics();
    expect(line(text, 'evolith_serverless_invocations_total', 'orders')).toBe(1000);
    expect(line(text, 'evolith_serverless_invocations_total', 'thumbs')).toBe(500);
    expect(line(text, 'evolith_serverless_cold_starts_total', 'orders')).toBe(10);
    expect(line(text, 'evolith_serverless_cold_starts_total', 'thumbs')).toBe(1);
    expect(line(text, 'evolith_serverless_billed_milliseconds_total', 'orders')).toBe(15_380);
    expect(line(text, 'evolith_serverless_billed_milliseconds_total', 'thumbs')).toBe(500);
    expect(line(text, 'evolith_serverless_gb_seconds_total', 'orders')).toBe(1.9225);
    expect(line(text, 'evolith_serverless_gb_seconds_total', 'thumbs')).toBe(0.25);
    expect(line(text, 'evolith_serverless_instances', 'orders')).toBe(1);
    expect(line(text, 'evolith_serverless_instances', 'thumbs')).toBe(0);

    // A later scrape follows the ledger rather than adding to the previous one.
    meter.invocation('thumbs', { memoryMb: 512 }, 3.5, false); // 4 ms more
    text = await registry.metrics();
    expect(line(text, 'evolith_serverless_invocations_total', 'thumbs')).toBe(501);
    expect(line(text, 'evolith_serverless_billed_milliseconds_total', 'thumbs')).toBe(504);
    expect(line(text, 'evolith_serverless_invocations_total', 'orders')).toBe(1000);
  });
});

describe('formatReport', () => {
  test('has a row per function, the totals and the always-on comparison', () => {
    const meter = new Meter(LAMBDA_PRICES, SINCE);
    scriptedLoad(meter);
    const report = meter.report(SINCE + 3_600_000);
    // One always-on process per function, at the larger memory: 2 processes of 512 MB → 1 t3.small for an hour = $0.0208
    const alwaysOn = alwaysOnCost(2, 512, 3600);
    const text = formatReport(report, alwaysOn);
    expect(text).toContain('AWS Lambda (x86, us-east-1)');
    expect(text).toContain('3600.000 s');
    expect(text).toMatch(/^function\s+MB\s+invocations\s+cold\s+billed ms\s+GB-s\s+instance-s\s+requests\s+compute\s+cost$/m);
    expect(text).toMatch(/^orders\s+128\s+1000\s+10\s+15380\s+1\.922500\s+0\.000\s+\$0\.000200\s+\$0\.000032\s+\$0\.000232$/m);
    expect(text).toMatch(/^thumbs\s+512\s+500\s+1\s+500\s+0\.250000\s+0\.000\s+\$0\.000100\s+\$0\.000004\s+\$0\.000104$/m);
    expect(text).toMatch(/^total\s+1500\s+11\s+15880\s+2\.172500\s+0\.000\s+\$0\.000300\s+\$0\.000036\s+\$0\.000336$/m);
    // $0.0208 / $0.00033620840575 ≈ 61.9
    expect(text).toMatch(/^Serverless: \$0\.000336\. Always on: \$0\.020800 \(61\.9× serverless\): .*1 VM × \$0\.0208\/h × 3600 s/m);
  });

  test('leaves the comparison out when none is given', () => {
    const meter = new Meter(LAMBDA_PRICES, SINCE);
    meter.invocation('f', { memoryMb: 128 }, 5, true);
    const text = formatReport(meter.report(SINCE + 1000));
    expect(text).toMatch(/^f\s+128\s+1\s+1\s+5\s/m);
    expect(text).not.toContain('Always on');
  });
});
