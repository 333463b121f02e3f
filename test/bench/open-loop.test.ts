import { describe, expect, it } from 'vitest';
import { closedLoop, openLoop } from '../../bench/support/open-loop.js';
import { percentile } from '../../bench/support/stats.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('openLoop', () => {
  it('accounts for every request scheduled in the window: answered, failed or dropped', async () => {
    const r = await openLoop({
      ratePerS: 400,
      warmupMs: 50,
      durationMs: 250,
      maxOutstanding: 64,
      send: async (seq) => (seq % 10 === 3 ? `500 for ${seq}` : undefined),
    });
    // 400/s over 300 ms is 120 requests in all, 100 of them scheduled in the 250 ms window.
    expect(r.sent).toBe(120);
    expect(r.scheduled).toBe(100);
    expect(r.dropped).toBe(0);
    expect(r.failures).toBe(12); // seq 3, 13, ..., 113
    expect(r.completed + r.dropped).toBe(r.scheduled - 10); // the window's ten failures
    expect(r.latencies).toHaveLength(r.completed);
    expect(r.failureSamples[0]).toBe('500 for 3');
    expect(r.achievedPerS).toBe(r.completed / 0.25);
  });

  it('keeps sending on schedule while answers wait, dropping what exceeds maxOutstanding', async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const loop = openLoop({
      ratePerS: 200,
      warmupMs: 0,
      durationMs: 200,
      maxOutstanding: 5,
      send: async () => {
        await gate;
        return undefined;
      },
    });
    await sleep(250);
    release();
    const r = await loop;
    expect(r.scheduled).toBe(40);
    expect(r.sent).toBe(5);
    expect(r.dropped).toBe(35);
    expect(r.completed).toBe(5);
    // Answered only once the gate opened, ~250 ms after the first was due.
    expect(Math.min(...r.latencies)).toBeGreaterThanOrEqual(200);
  });

  it('measures latency from the scheduled send, so a stalled sender shows in the latencies', async () => {
    let stalled = false;
    const r = await openLoop({
      ratePerS: 500,
      warmupMs: 0,
      durationMs: 300,
      maxOutstanding: 1000,
      send: async (seq) => {
        if (seq === 10 && !stalled) {
          // The event loop is blocked for 100 ms: everything due meanwhile leaves late.
          stalled = true;
          const until = Date.now() + 100;
          while (Date.now() < until);
        }
        return undefined;
      },
    });
    expect(r.completed).toBe(150);
    expect(r.late).toBeGreaterThan(0);
    const sorted = [...r.latencies].sort((a, b) => a - b);
    // The request due just after the stall began waited for all of it: measured from its
    // schedule its latency is ~100 ms, though its own round trip took almost nothing.
    expect(percentile(sorted, 100)).toBeGreaterThanOrEqual(90);
    expect(Math.max(...r.sendLags)).toBeGreaterThanOrEqual(90);
  });

  it('opens and closes the window once each, after the warm-up and after the duration', async () => {
    const events: string[] = [];
    const start = performance.now();
    let openedAt = 0;
    let closedAt = 0;
    await openLoop({
      ratePerS: 100,
      warmupMs: 60,
      durationMs: 100,
      maxOutstanding: 8,
      send: async () => undefined,
      onWindowStart: () => {
        events.push('start');
        openedAt = performance.now() - start;
      },
      onWindowEnd: () => {
        events.push('end');
        closedAt = performance.now() - start;
      },
    });
    expect(events).toEqual(['start', 'end']);
    // Timers run off the event loop's cached clock, which may lag performance.now() by a few ms.
    expect(openedAt).toBeGreaterThanOrEqual(55);
    expect(closedAt - openedAt).toBeGreaterThanOrEqual(95);
  });
});

describe('closedLoop', () => {
  it('keeps exactly `concurrency` requests in flight and counts only the window', async () => {
    let inFlight = 0;
    let most = 0;
    const r = await closedLoop({
      concurrency: 4,
      warmupMs: 30,
      durationMs: 100,
      send: async (seq) => {
        inFlight++;
        most = Math.max(most, inFlight);
        await sleep(5);
        inFlight--;
        return seq === 2 ? 'refused' : undefined;
      },
    });
    expect(most).toBe(4);
    expect(r.maxInFlight).toBe(4);
    expect(r.failures).toBe(1);
    expect(r.failureSamples).toEqual(['refused']);
    expect(r.completed).toBeGreaterThan(0);
    expect(r.latencies).toHaveLength(r.completed);
    expect(r.perS).toBe(r.completed / 0.1);
  });
});
