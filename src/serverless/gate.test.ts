/**
 * The function gate on a clock the test moves by hand: limits, the waiting line and its bound,
 * deadline cutting, and the figures it reports to the platform (exact, since no real time
 * passes between the steps).
 */
import { describe, expect, it } from 'vitest';
import type { MethodDef } from '../contract/define.js';
import { EvolithError } from '../kernel/errors.js';
import type { CallMeta } from '../kernel/plugins.js';
import type { RpcTarget } from '../rpc/tcp-server.js';
import { FunctionGate, type GateSettings } from './gate.js';

const method = { kind: 'method', service: 'orders', name: 'place', fullName: 'orders.place' } as unknown as MethodDef;

function meta(deadline = Date.now() + 60_000): CallMeta {
  return { deadline, trace: { traceId: 't', spanId: 's' } } as unknown as CallMeta;
}

/** A promise the test settles itself. */
function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Lets queued microtasks (a woken call starting) run. */
const settle = () => new Promise((r) => setImmediate(r));

function gateWithClock(settings: Partial<GateSettings> = {}) {
  const clock = { t: 1000 };
  const gate = new FunctionGate({ name: 'orders', maxConcurrency: 2, queueLimit: 2, timeoutMs: 30_000, ...settings }, () => clock.t);
  return { gate, clock };
}

describe('FunctionGate', () => {
  it('runs at most maxConcurrency calls, queues the excess in order, and refuses beyond the queue limit as not run', async () => {
    const { gate } = gateWithClock({ maxConcurrency: 2, queueLimit: 2 });
    const started: string[] = [];
    let running = 0;
    let peak = 0;
    const pending = new Map<string, ReturnType<typeof deferred<void>>>();
    const call = (name: string) => {
      const d = deferred();
      pending.set(name, d);
      return gate.run(method, meta(), async () => {
        started.push(name);
        running++;
        peak = Math.max(peak, running);
        try {
          await d.promise;
        } finally {
          running--;
        }
        return name;
      });
    };
    const results = ['a', 'b', 'c', 'd'].map(call);
    await settle();
    expect(started).toEqual(['a', 'b']);
    expect(gate.inFlight).toBe(4);

    const refused = await call('e').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(EvolithError);
    expect((refused as EvolithError).code).toBe('EVOLITH_UNAVAILABLE');
    expect((refused as EvolithError).details).toMatchObject({ maybeExecuted: false });
    expect(started).not.toContain('e');

    pending.get('b')!.resolve();
    await expect(results[1]).resolves.toBe('b');
    await settle();
    expect(started).toEqual(['a', 'b', 'c']);
    pending.get('a')!.resolve();
    await settle();
    expect(started).toEqual(['a', 'b', 'c', 'd']);
    pending.get('c')!.resolve();
    pending.get('d')!.resolve();
    await Promise.all(results);
    expect(peak).toBe(2);
    expect(gate.inFlight).toBe(0);
    const r = gate.report();
    expect(r.refused).toBe(1);
    expect(r.invocations).toBe(4);
  });

  it('cuts the deadline to timeoutMs when the caller allows longer, and leaves an earlier one alone', async () => {
    const { gate } = gateWithClock({ timeoutMs: 1000 });
    const late = meta(Date.now() + 60_000);
    const before = Date.now();
    const seen = await gate.run(method, late, async (m) => m);
    const after = Date.now();
    expect(seen.deadline).toBeGreaterThanOrEqual(before + 1000);
    expect(seen.deadline).toBeLessThanOrEqual(after + 1000);
    expect(seen.trace).toBe(late.trace);

    const early = meta(Date.now() + 500);
    const untouched = await gate.run(method, early, async (m) => m);
    expect(untouched).toBe(early);
  });

  it('reports invocations, billed time with the first one carrying initMs, time-weighted concurrency, and starts a new interval each time', async () => {
    const { gate, clock } = gateWithClock({ maxConcurrency: 10 });
    gate.initMs = 20.4;
    // Interval 1 (1000 → 1100): two calls in flight from 1050, that is for half of it.
    clock.t = 1050;
    const one = deferred();
    const two = deferred();
    const p1 = gate.run(method, meta(), () => one.promise);
    const p2 = gate.run(method, meta(), () => two.promise);
    clock.t = 1100;
    expect(gate.report()).toEqual({ concurrency: 1, inFlight: 2, invocations: 0, billedMs: 0, coldStarts: 0, refused: 0 });

    // Interval 2 (1100 → 1200): both finish at 1125, 75 ms after they started.
    clock.t = 1125;
    one.resolve();
    await p1;
    two.resolve();
    await p2;
    clock.t = 1200;
    // The first: 75 + 20.4 → 96 ms; the second: 75 ms. Two calls for a quarter: 0.5.
    expect(gate.report()).toEqual({ concurrency: 0.5, inFlight: 0, invocations: 2, billedMs: 96 + 75, coldStarts: 1, refused: 0 });

    // Interval 3 (1200 → 1300): one warm call of 0.3 ms, billed 1 ms; no cold start.
    clock.t = 1210;
    const three = deferred();
    const p3 = gate.run(method, meta(), () => three.promise);
    clock.t = 1210.3;
    three.resolve();
    await p3;
    clock.t = 1300;
    const r3 = gate.report();
    expect(r3).toMatchObject({ inFlight: 0, invocations: 1, billedMs: 1, coldStarts: 0, refused: 0 });
    expect(r3.concurrency).toBeCloseTo(0.003, 10);

    // Interval 4: nothing happened.
    clock.t = 1400;
    expect(gate.report()).toEqual({ concurrency: 0, inFlight: 0, invocations: 0, billedMs: 0, coldStarts: 0, refused: 0 });
  });

  it('frees the slot of a handler that throws, and bills it', async () => {
    const { gate, clock } = gateWithClock({ maxConcurrency: 1, queueLimit: 1 });
    const failing = deferred();
    const first = gate.run(method, meta(), () => failing.promise);
    let secondStarted = false;
    const second = gate.run(method, meta(), async () => {
      secondStarted = true;
      return 'ok';
    });
    await settle();
    expect(secondStarted).toBe(false);
    clock.t += 7;
    failing.reject(new Error('boom'));
    await expect(first).rejects.toThrow('boom');
    await expect(second).resolves.toBe('ok');
    expect(secondStarted).toBe(true);
    expect(gate.inFlight).toBe(0);
    const r = gate.report();
    expect(r.invocations).toBe(2);
    // 7 ms for the failing one, the minimum 1 ms for the instant one.
    expect(r.billedMs).toBe(8);
  });

  it('wraps each target of a resolver once and finds nothing for unknown methods', async () => {
    const { gate } = gateWithClock();
    const inputs: unknown[] = [];
    const target: RpcTarget = {
      method,
      host: {
        handle: async (_m, input) => {
          inputs.push(input);
          return 'placed';
        },
      },
    };
    const inner = (service: string, name: string) => (service === 'orders' && name === 'place' ? target : undefined);
    const resolve = gate.resolver(inner);
    const w = resolve('orders', 'place')!;
    expect(w).toBeDefined();
    expect(w).not.toBe(target);
    expect(w.method).toBe(method);
    expect(resolve('orders', 'place')).toBe(w);
    expect(resolve('orders', 'cancel')).toBeUndefined();
    expect(resolve('billing', 'place')).toBeUndefined();

    await expect(w.host.handle(method, { qty: 1 }, meta())).resolves.toBe('placed');
    expect(inputs).toEqual([{ qty: 1 }]);
    expect(gate.report().invocations).toBe(1);
  });
});
