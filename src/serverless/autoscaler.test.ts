import { describe, expect, test } from 'vitest';
import { ConfigError } from '../kernel/errors.js';
import { Autoscaler, checkScaling, DEFAULT_SCALING, scalingSettings, type Decision, type ScalingSettings } from './autoscaler.js';

const settings = (s: Partial<ScalingSettings> = {}): ScalingSettings => ({ ...DEFAULT_SCALING, targetConcurrency: 1, minInstances: 0, maxInstances: 100, ...s });

/** Records `concurrency(t)` every 100 ms over [from, to). */
function feed(a: Autoscaler, from: number, to: number, concurrency: number | ((t: number) => number), requests = false): void {
  for (let t = from; t < to; t += 100) {
    const c = typeof concurrency === 'number' ? concurrency : concurrency(t);
    a.record(t, c);
    if (requests && c > 0) a.requestArrived(t);
  }
}

/**
 * A closed loop: samples every 100 ms, a decision at the last sample of every second, and the
 * instances it asks for ready at once. Returns the decisions by the second they were taken in.
 */
function simulate(a: Autoscaler, from: number, to: number, concurrency: (t: number) => number, ready: { n: number }): Map<number, Decision> {
  const out = new Map<number, Decision>();
  for (let t = from; t < to; t += 100) {
    const c = concurrency(t);
    a.record(t, c);
    if (c > 0) a.requestArrived(t);
    if (t % 1000 === 900) {
      const d = a.decide(t, ready.n);
      ready.n = d.desired;
      out.set(Math.floor(t / 1000), d);
    }
  }
  return out;
}

describe('scaling settings', () => {
  test('complete settings with the defaults have no problem', () => {
    expect(checkScaling(settings())).toEqual([]);
    expect(checkScaling({ targetConcurrency: 10, minInstances: 0, maxInstances: 1 })).toEqual([]);
  });

  test('every problem is listed, each naming the setting and its value', () => {
    expect(checkScaling({})).toEqual(['targetConcurrency is required', 'minInstances is required', 'maxInstances is required']);
    expect(checkScaling({ targetConcurrency: 1, minInstances: 3, maxInstances: 2 })).toEqual(['maxInstances (2) is below minInstances (3)']);
    const problems = checkScaling({
      targetConcurrency: 0,
      minInstances: -1,
      maxInstances: 0,
      stableWindowMs: 6_000,
      panicWindowMs: 6_000,
      panicThreshold: 1,
      scaleToZeroGraceMs: -5,
      maxScaleUpRate: 1,
      maxScaleDownRate: Number.NaN,
    });
    expect(problems).toEqual([
      'targetConcurrency (0) must be above 0',
      'minInstances (-1) must be a whole number >= 0',
      'maxInstances (0) must be a whole number >= 1',
      'panicWindowMs (6000) must be shorter than stableWindowMs (6000)',
      'panicThreshold (1) must be above 1 (100 %)',
      'scaleToZeroGraceMs (-5) must be >= 0',
      'maxScaleUpRate (1) must be above 1',
      'maxScaleDownRate (NaN) is not a finite number',
    ]);
    expect(checkScaling({ targetConcurrency: 1, minInstances: 1.5, maxInstances: 3, panicWindowMs: 500 })).toEqual([
      'minInstances (1.5) must be a whole number >= 0',
      'panicWindowMs (500) must be at least 1000 (one bucket)',
    ]);
  });

  test('absent or undefined settings take the defaults', () => {
    const full = scalingSettings({ targetConcurrency: 5, minInstances: 0, maxInstances: 4, panicThreshold: undefined });
    expect(full).toMatchObject({ ...DEFAULT_SCALING, targetConcurrency: 5, maxInstances: 4 });
  });

  test('the autoscaler refuses invalid settings, at construction and when reconfigured, and keeps its old ones', () => {
    expect(() => new Autoscaler(settings({ maxInstances: 2, minInstances: 3 }))).toThrow(ConfigError);
    expect(() => new Autoscaler(settings({ maxInstances: 2, minInstances: 3 }))).toThrow(/maxInstances \(2\) is below minInstances \(3\)/);
    const a = new Autoscaler(settings({ maxScaleUpRate: 100, panicThreshold: 100 }));
    feed(a, 0, 10_000, 7);
    expect(() => a.configure(settings({ targetConcurrency: -1 }))).toThrow(/targetConcurrency \(-1\) must be above 0/);
    expect(a.decide(9_900, 7).desired).toBe(7);
  });
});

describe('window averages', () => {
  test('a second is the mean of its samples; before the window fills, the divisor is the age of the history', () => {
    const a = new Autoscaler(settings());
    feed(a, 0, 1_000, (t) => ((t / 100) % 2 === 0 ? 2 : 4));
    const d = a.decide(900, 3);
    expect(d.stableConcurrency).toBeCloseTo(3, 10);
    expect(d.panicConcurrency).toBeCloseTo(3, 10);
    // Second 1 has no samples: it counts as 0 once the history exists.
    const later = a.decide(1_500, 3);
    expect(later.stableConcurrency).toBeCloseTo(1.5, 10);
    expect(later.panicConcurrency).toBeCloseTo(1.5, 10);
  });

  test('the stable window sees 60 seconds and the panic window 6', () => {
    const a = new Autoscaler(settings({ minInstances: 1 }));
    feed(a, 0, 60_000, 4);
    feed(a, 60_000, 90_000, 0);
    const d = a.decide(89_900, 4);
    // Seconds 30..59 at 4 and 60..89 at 0.
    expect(d.stableConcurrency).toBeCloseTo(2, 10);
    expect(d.panicConcurrency).toBe(0);
    // At 92.9 s the panic window is seconds 87..92: three at 0, three at 12.
    feed(a, 90_000, 93_000, 12);
    expect(a.decide(92_900, 4).panicConcurrency).toBeCloseTo(36 / 6, 10);
  });

  test('a malformed sample is refused and leaves no trace', () => {
    const a = new Autoscaler(settings());
    expect(() => a.record(0, -1)).toThrow(RangeError);
    expect(() => a.record(Number.NaN, 3)).toThrow(/finite time and a count >= 0/);
    expect(() => a.record(0, Number.POSITIVE_INFINITY)).toThrow(RangeError);
    expect(a.decide(0, 0).reason).toBe('no samples yet → min 0');
  });

  test('zeros recorded before any demand are no history: the decision is the floor, as with no samples', () => {
    const a = new Autoscaler(settings({ minInstances: 2 }));
    expect(a.decide(0, 0)).toMatchObject({ desired: 2, panic: false, stableConcurrency: 0 });
    feed(a, 0, 30_000, 0);
    const d = a.decide(29_900, 2);
    expect(d.desired).toBe(2);
    expect(d.reason).toMatch(/^no samples yet → min 2$/);
    feed(a, 30_000, 31_000, 6);
    // The first demand is measured as itself, not averaged with the 30 zero seconds.
    expect(a.decide(30_900, 2).stableConcurrency).toBe(6);
  });
});

describe('stable decisions', () => {
  test('desired is the stable average over the target, rounded up', () => {
    const a = new Autoscaler(settings({ targetConcurrency: 10 }));
    feed(a, 0, 60_000, 25);
    const d = a.decide(59_900, 3);
    expect(d).toMatchObject({ desired: 3, panic: false });
    expect(d.reason).toBe('stable avg 25.0 / target 10 → 3; panic avg 25.0 → 3');
    feed(a, 60_000, 120_000, 30);
    expect(a.decide(119_900, 3).desired).toBe(3);
    feed(a, 120_000, 180_000, 31);
    expect(a.decide(179_900, 3).desired).toBe(4);
  });

  test('the result stays within min and max instances', () => {
    const busy = new Autoscaler(settings({ maxInstances: 5 }));
    feed(busy, 0, 60_000, 100);
    const d = busy.decide(59_900, 5);
    expect(d.desired).toBe(5);
    expect(d.reason).toMatch(/capped at max 5/);

    const quiet = new Autoscaler(settings({ minInstances: 3 }));
    feed(quiet, 0, 60_000, 1);
    const q = quiet.decide(59_900, 3);
    expect(q.desired).toBe(3);
    expect(q.reason).toMatch(/raised to min 3/);
  });

  test('one decision grows at most to ready × maxScaleUpRate; from zero ready, against one', () => {
    const a = new Autoscaler(settings({ maxScaleUpRate: 2, panicThreshold: 1000 }));
    feed(a, 0, 60_000, 10);
    expect(a.decide(59_900, 2).desired).toBe(4);
    expect(a.decide(59_900, 3).desired).toBe(6);
    expect(a.decide(59_900, 0).desired).toBe(2);
    expect(a.decide(59_900, 8).desired).toBe(10);
    expect(a.decide(59_900, 2).reason).toMatch(/rate limits with 2 ready \[1, 4\] → 4/);
  });

  test('one decision shrinks at most to ready / maxScaleDownRate', () => {
    const a = new Autoscaler(settings({ minInstances: 1 }));
    feed(a, 0, 1_000, 1);
    feed(a, 1_000, 70_000, 0);
    expect(a.decide(69_900, 10).desired).toBe(5);
    expect(a.decide(69_900, 5).desired).toBe(2);
    expect(a.decide(69_900, 2).desired).toBe(1);
    const gentle = new Autoscaler(settings({ minInstances: 1, maxScaleDownRate: 1.25 }));
    feed(gentle, 0, 1_000, 1);
    feed(gentle, 1_000, 70_000, 0);
    expect(gentle.decide(69_900, 10).desired).toBe(8);
  });

  test('a live change of settings applies to the next decision with the same history', () => {
    const a = new Autoscaler(settings({ panicThreshold: 1000 }));
    feed(a, 0, 60_000, 20);
    expect(a.decide(59_900, 20).desired).toBe(20);
    a.configure(settings({ targetConcurrency: 5, panicThreshold: 1000 }));
    expect(a.decide(59_900, 20).desired).toBe(10);
    a.configure(settings({ targetConcurrency: 5, panicThreshold: 1000, maxInstances: 6 }));
    expect(a.decide(59_900, 20).desired).toBe(6);
  });
});

describe('panic mode', () => {
  test('a surge panics, follows the panic window up, holds its highest count, and ends a stable window after the condition last held', () => {
    const a = new Autoscaler(settings({ minInstances: 1 }));
    const ready = { n: 2 };
    // 2 calls for a minute, 10 from 60 s to 70 s, then 1.
    const load = (t: number): number => (t < 60_000 ? 2 : t < 70_000 ? 10 : 1);
    const d = simulate(a, 0, 130_000, load, ready);
    expect(d.get(59)).toMatchObject({ desired: 2, panic: false });
    // Second 60: the panic average (5 × 2 + 10) / 6 asks for 4, which is 2 × the 2 ready; the stable one only for 3.
    expect(d.get(60)).toMatchObject({ desired: 4, panic: true });
    expect(d.get(60)?.reason).toBe('stable avg 2.1 / target 1 → 3; panic avg 3.3 → 4 (panicking for 0.0 s, holding 4)');
    // The condition no longer holds against the grown count (5 < 2 × 4, ...), yet panic goes on, following the panic window.
    expect([61, 62, 63, 64, 65].map((s) => d.get(s)?.desired)).toEqual([5, 6, 8, 9, 10]);
    for (let s = 61; s < 66; s++) expect(d.get(s)?.panic).toBe(true);
    // The load fell to 1 at 70 s and the panic average with it: no scale-down while panicking.
    for (let s = 66; s < 120; s++) expect(d.get(s)).toMatchObject({ desired: 10, panic: true });
    expect(d.get(100)?.panicConcurrency).toBe(1);
    // The condition last held at 60.9 s: panic ends at 120.9 s, and the stable count takes over within the down rate.
    expect(d.get(120)).toMatchObject({ desired: 5, panic: false });
    expect(d.get(120)?.reason).toMatch(/panic over \(threshold last met 60\.0 s ago\)/);
    // Seconds 61..69 at 10, 70..121 at 1: 142 / 60 → 3.
    expect(d.get(121)).toMatchObject({ desired: 3, panic: false });
  });

  test('while the condition keeps holding, panic lasts until a stable window after its last time', () => {
    // The instances never become ready: 2 stay ready while 10 calls wait.
    const a = new Autoscaler(settings());
    const panicBySecond: boolean[] = [];
    for (let t = 0; t < 100_000; t += 100) {
      a.record(t, t < 30_000 ? 10 : 1);
      if (t % 1000 === 900) panicBySecond.push(a.decide(t, 2).panic);
    }
    // Second 33: the panic average (2 × 10 + 4 × 1) / 6 asks for 4 = 2 × 2 ready, the last time; second 34 asks for 3.
    // Panic therefore ends at second 93.
    expect(panicBySecond.indexOf(false)).toBe(93);
    expect(panicBySecond.slice(0, 93).every(Boolean)).toBe(true);
    expect(panicBySecond.slice(93).some(Boolean)).toBe(false);
  });

  test('a burst of 200 held calls at zero instances with target 10 asks for 20 at once, in panic, capped by max', () => {
    const a = new Autoscaler(settings({ targetConcurrency: 10 }));
    a.requestArrived(0);
    a.record(0, 200);
    expect(a.decide(0, 0)).toMatchObject({ desired: 20, panic: true, stableConcurrency: 200, panicConcurrency: 200 });

    const capped = new Autoscaler(settings({ targetConcurrency: 10, maxInstances: 15 }));
    capped.record(0, 200);
    expect(capped.decide(0, 0)).toMatchObject({ desired: 15, panic: true });
  });

  test('a burst after an idle period that went to zero is measured as itself, not diluted by the idle minute', () => {
    const a = new Autoscaler(settings({ targetConcurrency: 10 }));
    const ready = { n: 0 };
    const d = simulate(a, 0, 120_000, (t) => (t < 10_000 ? 5 : 0), ready);
    expect(d.get(119)?.desired).toBe(0);
    a.requestArrived(120_000);
    a.record(120_000, 200);
    expect(a.decide(120_000, 0)).toMatchObject({ desired: 20, panic: true, stableConcurrency: 200 });
  });
});

describe('scale to zero', () => {
  test('zero once the stable average is 0 and the last request is older than the grace; one until then', () => {
    const a = new Autoscaler(settings());
    const ready = { n: 0 };
    const d = simulate(a, 0, 100_000, (t) => (t < 10_000 ? 1 : 0), ready);
    expect(d.get(0)?.desired).toBe(1);
    expect(d.get(9)?.desired).toBe(1);
    // Last request at 9.9 s; the stable window holds second 9 through second 68.
    for (let s = 10; s < 69; s++) expect(d.get(s)?.desired).toBe(1);
    expect(d.get(68)?.stableConcurrency).toBeGreaterThan(0);
    expect(d.get(69)).toMatchObject({ desired: 0, stableConcurrency: 0 });
    expect(d.get(69)?.reason).toMatch(/idle, last request 60\.0 s ago, grace 30\.0 s → 0/);
  });

  test('a grace longer than the stable window holds one instance after the average reached 0', () => {
    const a = new Autoscaler(settings({ scaleToZeroGraceMs: 120_000 }));
    const ready = { n: 0 };
    const d = simulate(a, 0, 140_000, (t) => (t < 10_000 ? 1 : 0), ready);
    expect(d.get(80)).toMatchObject({ desired: 1, stableConcurrency: 0 });
    expect(d.get(80)?.reason).toMatch(/last request 71\.0 s ago, grace 120\.0 s → 1/);
    // Last request at 9.9 s: 128.9 s is within 120 s of it, 129.9 s is not.
    expect(d.get(128)?.desired).toBe(1);
    expect(d.get(129)?.desired).toBe(0);
  });

  test('never zero with minInstances above 0', () => {
    const a = new Autoscaler(settings({ minInstances: 1, scaleToZeroGraceMs: 0 }));
    const ready = { n: 1 };
    const d = simulate(a, 0, 100_000, (t) => (t < 1_000 ? 1 : 0), ready);
    expect(Math.min(...[...d.values()].map((x) => x.desired))).toBe(1);
  });

  test('with no samples, a request within the grace asks for one instance, and none after it', () => {
    const a = new Autoscaler(settings());
    expect(a.decide(0, 0).desired).toBe(0);
    a.requestArrived(1_000);
    const d = a.decide(1_000, 0);
    expect(d).toMatchObject({ desired: 1, panic: false });
    expect(d.reason).toBe('no samples yet; last request 0.0 s ago, grace 30.0 s → 1');
    expect(a.decide(30_999, 0).desired).toBe(1);
    expect(a.decide(31_000, 0).desired).toBe(0);
  });

  test('the smallest demand keeps one instance, with no request recorded and no grace', () => {
    const a = new Autoscaler(settings({ targetConcurrency: 100, scaleToZeroGraceMs: 0 }));
    a.record(0, 0.5);
    expect(a.decide(0, 1).desired).toBe(1);
    // Second 0 leaves the stable window at 60 s.
    expect(a.decide(59_000, 1).desired).toBe(1);
    const idle = a.decide(60_000, 1);
    expect(idle.desired).toBe(0);
    expect(idle.reason).toMatch(/idle, no request recorded → 0$/);
  });
});

describe('determinism', () => {
  test('the same inputs give the same decisions; the answers depend on the given times alone', () => {
    const load = (t: number): number => Math.floor(((t * 7919) % 13_000) / 1000);
    const run = (): Decision[] => [...simulate(new Autoscaler(settings({ targetConcurrency: 2 })), 0, 90_000, load, { n: 0 }).values()];
    const first = run();
    expect(first.some((x) => x.panic)).toBe(true);
    expect(run()).toEqual(first);
    // A decision at a later `now` sees the samples aged, whatever the wall clock says.
    const a = new Autoscaler(settings());
    feed(a, 0, 1_000, 4, true);
    expect(a.decide(900, 4).stableConcurrency).toBe(4);
    expect(a.decide(3_900, 4).stableConcurrency).toBe(1);
  });
});
