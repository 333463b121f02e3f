/**
 * One side of a bench:events trial, run as its own process so that publisher and subscriber
 * share nothing but the bus:
 *
 *   node bin/run-ts.mjs bench/support/events-peer.ts
 *
 * Reads one JSON command per line on stdin (`subscribe`, `deadline` or `publish`, see the types
 * below) and answers on stdout with one JSON line per step: `ready` once subscribed, `warm` once
 * the probe events arrived, then `result`, or `error`. Each subscribe or publish opens the
 * contender on the storage it names and closes it before the result, so the bench can delete
 * that storage right after. Prints `{"type":"up"}` once it listens.
 *
 * Event `i` of a trial has payload index `i`: indices below `probes` are probes, which show that
 * the subscription really consumes (a NATS subscription creates its consumers in the
 * background) before anything is measured; they count for nothing else.
 *
 * Clock: `performance.timeOrigin + performance.now()`, wall-clock milliseconds with sub-ms
 * resolution, comparable between processes on one machine (both read the same system clock).
 */
import { randomUUID } from 'node:crypto';
import { createInterface } from 'node:readline';
import type { EventEnvelope } from '../../src/kernel/plugins.js';
import { openContender, type ContenderName, type PeerBus, type TrialStorage } from './events-contenders.js';

interface Common {
  id: number;
  contender: ContenderName;
  storage: TrialStorage;
  topic: string;
  /** Epoch ms at which the trial ends, whatever is left undone. */
  deadline: number;
}

export interface SubscribeCommand extends Common {
  op: 'subscribe';
  group: string;
  /** Probe events (indices 0 … probes-1): `warm` once all arrived. */
  probes: number;
  /** Measured events after the probes, after which the subscriber reports. */
  expect: number;
}

/** Moves a running subscription's deadline (once the measured phase starts). */
export interface DeadlineCommand {
  id: number;
  op: 'deadline';
  deadline: number;
}

export interface PublishCommand extends Common {
  op: 'publish';
  /** Payload index of the first event. */
  first: number;
  count: number;
  /** Open loop at this many events per second; 0 for closed loop with `window` publishes in flight. */
  rate: number;
  window: number;
  /** The first `warmup` events of this command are flagged: the subscriber leaves them out of the latency figures. */
  warmup: number;
  keys: number;
}

export type PeerCommand = SubscribeCommand | DeadlineCommand | PublishCommand;

export interface SubscribeResult {
  id: number;
  type: 'result';
  /** Distinct measured events handled (probes not included). */
  handled: number;
  duplicates: number;
  firstAt: number;
  lastAt: number;
  /** Publish-to-handler latency (ms) of the events not flagged as warm-up, sorted. */
  p50: number;
  p99: number;
  max: number;
  measured: number;
  cpuMicros: number;
}

export interface PublishResult {
  id: number;
  type: 'result';
  published: number;
  failed: number;
  firstError?: string;
  startedAt: number;
  endedAt: number;
  /** Open loop: how late publish() was called against the schedule, p99 (ms). */
  lagP99: number;
  cpuMicros: number;
}

interface Payload {
  i: number;
  /** When publish() was called. */
  t: number;
  warm: boolean;
  order: { id: string; customer: string; lines: { sku: string; qty: number; price: number }[]; total: number };
}

const now = (): number => performance.timeOrigin + performance.now();
const reply = (msg: object): void => void process.stdout.write(`${JSON.stringify(msg)}\n`);

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

function cpuSince(start: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(start);
  return d.user + d.system;
}

/** Running subscriptions, by command id, so that a `deadline` command can reach them. */
const deadlines = new Map<number, (deadline: number) => void>();

async function subscribe(cmd: SubscribeCommand): Promise<SubscribeResult> {
  const cpu0 = process.cpuUsage();
  const bus = await openContender(cmd.contender, cmd.storage);
  const total = cmd.probes + cmd.expect;
  const seen = new Uint8Array(total);
  const latencies = new Float64Array(cmd.expect);
  let probed = 0;
  let measured = 0;
  let handled = 0;
  let duplicates = 0;
  let firstAt = 0;
  let lastAt = 0;
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  let timer = setTimeout(finish, Math.max(0, cmd.deadline - Date.now()));
  deadlines.set(cmd.id, (deadline) => {
    clearTimeout(timer);
    timer = setTimeout(finish, Math.max(0, deadline - Date.now()));
  });
  let over = false;
  await bus.subscribe(cmd.topic, cmd.group, (e) => {
    const t = now();
    if (over) return;
    const p = e.payload as Payload;
    if (seen[p.i]) {
      duplicates++;
      return;
    }
    seen[p.i] = 1;
    if (p.i < cmd.probes) {
      if (++probed === cmd.probes) reply({ id: cmd.id, type: 'warm' });
      return;
    }
    if (handled++ === 0) firstAt = t;
    lastAt = t;
    if (!p.warm) latencies[measured++] = t - p.t;
    if (handled === cmd.expect) finish();
  });
  reply({ id: cmd.id, type: 'ready' });
  await finished;
  over = true;
  clearTimeout(timer);
  deadlines.delete(cmd.id);
  await bus.close();
  const sorted = latencies.subarray(0, measured).sort();
  return {
    id: cmd.id,
    type: 'result',
    handled,
    duplicates,
    firstAt,
    lastAt,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    max: measured > 0 ? sorted[measured - 1]! : NaN,
    measured,
    cpuMicros: cpuSince(cpu0),
  };
}

function makeEvent(cmd: PublishCommand, n: number): EventEnvelope {
  const i = cmd.first + n;
  const key = `order-${i % cmd.keys}`;
  const payload: Payload = {
    i,
    t: now(),
    warm: n < cmd.warmup,
    order: { id: key, customer: 'icyfenix', lines: [{ sku: `book-${i % 97}`, qty: 1 + (i % 3), price: 49.5 }], total: 49.5 * (1 + (i % 3)) },
  };
  return { id: randomUUID(), topic: cmd.topic, source: 'bench', payload, key, publishedAt: Date.now() };
}

async function publish(cmd: PublishCommand): Promise<PublishResult> {
  const cpu0 = process.cpuUsage();
  const bus = await openContender(cmd.contender, cmd.storage);
  let published = 0;
  let failed = 0;
  let firstError: string | undefined;
  const settle = (p: Promise<void>) =>
    p.then(
      () => void published++,
      (err: unknown) => {
        failed++;
        firstError ??= String((err as Error)?.stack ?? err);
      },
    );
  const startedAt = now();
  const lags: number[] = [];
  if (cmd.rate > 0) await openLoop(bus, cmd, startedAt, settle, lags);
  else await closedLoop(bus, cmd, settle);
  const endedAt = now();
  await bus.close();
  const sortedLags = Float64Array.from(lags).sort();
  return { id: cmd.id, type: 'result', published, failed, firstError, startedAt, endedAt, lagP99: percentile(sortedLags, 99), cpuMicros: cpuSince(cpu0) };
}

/** Publishes as fast as the bus accepts, `window` publishes in flight. */
function closedLoop(bus: PeerBus, cmd: PublishCommand, settle: (p: Promise<void>) => Promise<void>): Promise<void> {
  return new Promise((done) => {
    let next = 0;
    let inflight = 0;
    const more = () => next < cmd.count && Date.now() < cmd.deadline;
    const pump = () => {
      while (inflight < cmd.window && more()) {
        inflight++;
        void settle(bus.publish(makeEvent(cmd, next++))).finally(() => {
          inflight--;
          if (more()) pump();
          else if (inflight === 0) done();
        });
      }
      if (inflight === 0) done();
    };
    pump();
  });
}

/** Publishes event i at startedAt + i/rate, without waiting for earlier publishes (no coordinated omission). */
async function openLoop(bus: PeerBus, cmd: PublishCommand, startedAt: number, settle: (p: Promise<void>) => Promise<void>, lags: number[]): Promise<void> {
  const pending: Promise<void>[] = [];
  const interval = 1000 / cmd.rate;
  let i = 0;
  while (i < cmd.count && Date.now() < cmd.deadline) {
    const t = now();
    for (; i < cmd.count && startedAt + i * interval <= t; i++) {
      lags.push(t - (startedAt + i * interval));
      pending.push(settle(bus.publish(makeEvent(cmd, i))));
    }
    const wait = startedAt + i * interval - now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  await Promise.all(pending);
}

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line) as PeerCommand;
  if (cmd.op === 'deadline') {
    deadlines.get(cmd.id)?.(cmd.deadline);
    return;
  }
  const run = cmd.op === 'subscribe' ? subscribe(cmd) : publish(cmd);
  run.then(reply, (err: unknown) => reply({ id: cmd.id, type: 'error', message: String((err as Error)?.stack ?? err) }));
});
lines.on('close', () => process.exit(0));
reply({ type: 'up', pid: process.pid });
