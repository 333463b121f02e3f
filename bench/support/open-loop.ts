/**
 * Load drivers for benchmarks: an open loop (requests leave on a fixed schedule whatever the
 * answers) and a closed loop (N callers, each sending its next request when the last answers).
 *
 * The open loop measures each request from the time it was *scheduled* to leave, not from when
 * it actually left: a server (or a driver) that stalls then shows the whole wait in the
 * latencies of the requests queued behind the stall, instead of hiding it by sending fewer
 * requests — the "coordinated omission" a closed loop suffers from. A request due while
 * `maxOutstanding` are still unanswered is not sent at all but counted as dropped, so a server
 * that cannot keep up is reported as such rather than buried under an unbounded queue.
 */
import { performance } from 'node:perf_hooks';

/** Sends one request; resolves with undefined when it succeeded, or with what went wrong. */
export type SendOne = (seq: number) => Promise<string | undefined>;

export interface OpenLoopOptions {
  ratePerS: number;
  /** Requests scheduled in the warm-up are sent (and their failures counted) but not measured. */
  warmupMs: number;
  durationMs: number;
  maxOutstanding: number;
  /** A request that leaves this much after its schedule or later counts as late (the driver fell behind). */
  lateMs?: number;
  send: SendOne;
  /** Called when the measured window opens and closes: the moments to read CPU counters. */
  onWindowStart?: () => void;
  onWindowEnd?: () => void;
}

export interface OpenLoopResult {
  windowMs: number;
  /** Requests scheduled inside the measured window. */
  scheduled: number;
  /** Of those, answered successfully. */
  completed: number;
  /** Of those, not sent because `maxOutstanding` requests were unanswered. */
  dropped: number;
  /** Of those, sent `lateMs` or more after their schedule. */
  late: number;
  /** Successful requests of the window: ms from scheduled send to the end of the answer. */
  latencies: number[];
  /** Every request sent in the window: ms from its schedule to when it actually left. */
  sendLags: number[];
  /** Failed requests over the whole run (warm-up included), and how many were sent in all. */
  failures: number;
  sent: number;
  failureSamples: string[];
  /** Successful answers per second, of the requests scheduled in the window. */
  achievedPerS: number;
}

export async function openLoop(o: OpenLoopOptions): Promise<OpenLoopResult> {
  const lateMs = o.lateMs ?? 5;
  const interval = 1000 / o.ratePerS;
  const total = Math.floor(((o.warmupMs + o.durationMs) * o.ratePerS) / 1000);
  const r: OpenLoopResult = {
    windowMs: o.durationMs,
    scheduled: 0,
    completed: 0,
    dropped: 0,
    late: 0,
    latencies: [],
    sendLags: [],
    failures: 0,
    sent: 0,
    failureSamples: [],
    achievedPerS: 0,
  };
  let outstanding = 0;
  let allIssued = false;
  let drained: () => void = () => {};
  const done = new Promise<void>((resolveDone) => (drained = resolveDone));
  const settleOne = () => {
    outstanding--;
    if (allIssued && outstanding === 0) drained();
  };

  const t0 = performance.now();
  const windowStart = t0 + o.warmupMs;
  const windowEnd = windowStart + o.durationMs;
  setTimeout(() => o.onWindowStart?.(), Math.max(0, windowStart - performance.now()));
  const windowClosed = new Promise<void>((closed) =>
    setTimeout(() => {
      o.onWindowEnd?.();
      closed();
    }, Math.max(0, windowEnd - performance.now())),
  );

  const issue = (seq: number, due: number, now: number) => {
    const measured = due >= windowStart && due < windowEnd;
    if (measured) r.scheduled++;
    if (outstanding >= o.maxOutstanding) {
      if (measured) r.dropped++;
      return;
    }
    if (measured) {
      r.sendLags.push(now - due);
      if (now - due >= lateMs) r.late++;
    }
    outstanding++;
    r.sent++;
    o.send(seq).then(
      (problem) => {
        const end = performance.now();
        if (problem === undefined) {
          if (measured) {
            r.completed++;
            r.latencies.push(end - due);
          }
        } else {
          r.failures++;
          if (r.failureSamples.length < 5) r.failureSamples.push(problem);
        }
        settleOne();
      },
      (err: unknown) => {
        r.failures++;
        if (r.failureSamples.length < 5) r.failureSamples.push((err as Error)?.message ?? String(err));
        settleOne();
      },
    );
  };

  await new Promise<void>((issuedAll) => {
    let next = 0;
    const tick = () => {
      const now = performance.now();
      // Everything due by now leaves now, each still measured from its own schedule.
      while (next < total && t0 + next * interval <= now) {
        issue(next, t0 + next * interval, now);
        next++;
      }
      if (next < total) setTimeout(tick, Math.max(0, t0 + next * interval - performance.now()));
      else issuedAll();
    };
    tick();
  });
  allIssued = true;
  if (outstanding > 0) await done;
  await windowClosed;
  r.achievedPerS = r.completed / (o.durationMs / 1000);
  return r;
}

export interface ClosedLoopOptions {
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  send: SendOne;
}

export interface ClosedLoopResult {
  /** Successful answers that ended inside the measured window. */
  completed: number;
  perS: number;
  latencies: number[];
  failures: number;
  failureSamples: string[];
  /** The most requests that were ever unanswered at once. */
  maxInFlight: number;
}

/** `concurrency` callers, each sending its next request as soon as the last one is answered. */
export async function closedLoop(o: ClosedLoopOptions): Promise<ClosedLoopResult> {
  const r: ClosedLoopResult = { completed: 0, perS: 0, latencies: [], failures: 0, failureSamples: [], maxInFlight: 0 };
  const t0 = performance.now();
  const windowStart = t0 + o.warmupMs;
  const windowEnd = windowStart + o.durationMs;
  let inFlight = 0;
  let seq = 0;
  const caller = async () => {
    while (performance.now() < windowEnd) {
      const start = performance.now();
      inFlight++;
      r.maxInFlight = Math.max(r.maxInFlight, inFlight);
      let problem: string | undefined;
      try {
        problem = await o.send(seq++);
      } catch (err) {
        problem = (err as Error)?.message ?? String(err);
      }
      inFlight--;
      const end = performance.now();
      if (problem !== undefined) {
        r.failures++;
        if (r.failureSamples.length < 5) r.failureSamples.push(problem);
        // A failing server answers fast; do not spin on it.
        await new Promise((wait) => setTimeout(wait, 10));
      } else if (end >= windowStart && end <= windowEnd) {
        r.completed++;
        r.latencies.push(end - start);
      }
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, caller));
  r.perS = r.completed / (o.durationMs / 1000);
  return r;
}
