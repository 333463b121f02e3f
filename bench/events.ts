/**
 * bench:events — durable events between two processes: a publisher process and a subscriber
 * process (both `node bin/run-ts.mjs bench/support/events-peer.ts`), for
 *
 *   sqlite      Evolith's SqliteEventBus: one SQLite file both processes open (synchronous
 *               'normal', as the microservices deployer opens it), one group
 *   nats        Evolith's NatsEventBus on NATS JetStream: default settings (8 ordering
 *               partitions, dedup by envelope id, confirmed acks), one group
 *
 * and, in the same run, a baseline that is no contender:
 *
 *   jetstream   the @nats-io/jetstream client used directly: publish awaiting the PubAck, one
 *               durable pull consumer, explicit acks, client defaults (no ordering, no dedup id)
 *
 * Every event is an envelope with a ~150 B order payload and one of BENCH_KEYS ordering keys;
 * the payload carries the time publish() was called. Two figures per contender:
 *
 *   throughput  closed loop: the publisher keeps BENCH_WINDOW publishes in flight until it has
 *               published BENCH_EVENTS or BENCH_SECONDS ran out; events/s = distinct events whose
 *               handler ran in the subscriber / (last handled − first published) — or the whole
 *               BENCH_SECONDS if the subscriber had not caught up by then
 *   latency     open loop at BENCH_RATE events/s for BENCH_WARMUP + BENCH_LATENCY_SECONDS s (the
 *               warm-up events are not counted): handler start in the subscriber − publish()
 *               call in the publisher, on the machine's one clock; p50 and p99. The default
 *               rate, 500/s, stays well below what the NATS bus sustains on a busy 2-core machine
 *               (8 partitions with one event in flight each: roughly 1–3.5k/s there), so that latency
 *               is not queueing; at 1000/s its p50 there ran from ~1 ms to over a second.
 *
 * Each trial gets fresh storage (a new SQLite file, a new stream with a unique name), deleted
 * right after. Before its measured phase it publishes one probe event per key and waits until
 * the subscriber got them all, so every ordering partition is consuming (a NATS subscription
 * creates its consumers in the background) and nothing measured waits for set-up.
 * Rounds are interleaved: every round runs each figure for every contender, the order
 * rotating from round to round; reported is the median over rounds. CPU is the two peer
 * processes' user + system time per handled event (the NATS server's own CPU is not in it);
 * "cores busy" is that time over the wall time, how much of the machine the two processes got.
 * Targets: latency p50 ≤ 5 ms for both buses; ≥ 50,000 events/s for the SQLite bus.
 *
 * NATS is expected at NATS_URL (default 127.0.0.1:4222, JetStream enabled); without it the
 * bench says why and measures the SQLite bus alone. Loopback and the local disk only.
 *
 * Env: BENCH_CONTENDERS (sqlite,nats,jetstream — any subset), BENCH_ROUNDS (3),
 *      BENCH_EVENTS (100000), BENCH_SECONDS (15), BENCH_WINDOW (1000),
 *      BENCH_RATE (500), BENCH_LATENCY_SECONDS (5), BENCH_WARMUP (1), BENCH_KEYS (256),
 *      BENCH_SQLITE_SYNC (normal | full), BENCH_DATA_DIR (a new directory under the OS temp dir),
 *      NATS_URL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { connect, nanos, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, RetentionPolicy, StorageType, type JetStreamManager } from '@nats-io/jetstream';
import type { ContenderName, TrialStorage } from './support/events-contenders.js';
import type { PeerCommand, PublishCommand, PublishResult, SubscribeCommand, SubscribeResult } from './support/events-peer.js';
import { ChildProcesses } from './support/children.js';
import { median, printTable } from './support/stats.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

function numberEnv(name: string, fallback: number, integer = true): number {
  const raw = process.env[name];
  const v = raw === undefined ? fallback : Number(raw);
  if (!Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) {
    console.error(`bench:events: ${name} must be a positive ${integer ? 'integer' : 'number'}, got ${raw}`);
    process.exit(2);
  }
  return v;
}

const ROUNDS = numberEnv('BENCH_ROUNDS', 3);
const EVENTS = numberEnv('BENCH_EVENTS', 100_000);
const SECONDS = numberEnv('BENCH_SECONDS', 15, false);
const WINDOW = numberEnv('BENCH_WINDOW', 1_000);
const RATE = numberEnv('BENCH_RATE', 500);
const LATENCY_SECONDS = numberEnv('BENCH_LATENCY_SECONDS', 5, false);
const WARMUP = numberEnv('BENCH_WARMUP', 1, false);
const KEYS = numberEnv('BENCH_KEYS', 256);
const SQLITE_SYNC = (process.env.BENCH_SQLITE_SYNC ?? 'normal') as 'normal' | 'full';
if (SQLITE_SYNC !== 'normal' && SQLITE_SYNC !== 'full') {
  console.error(`bench:events: BENCH_SQLITE_SYNC must be normal or full, got ${SQLITE_SYNC}`);
  process.exit(2);
}
const NATS_URL = process.env.NATS_URL ?? '127.0.0.1:4222';
const ALL: readonly ContenderName[] = ['sqlite', 'nats', 'jetstream'];
const ONLY = (process.env.BENCH_CONTENDERS ?? ALL.join(',')).split(',').map((c) => c.trim()) as ContenderName[];
if (ONLY.length === 0 || ONLY.some((c) => !ALL.includes(c))) {
  console.error(`bench:events: BENCH_CONTENDERS must list some of ${ALL.join(', ')}, got ${process.env.BENCH_CONTENDERS}`);
  process.exit(2);
}
const REPRODUCE =
  `BENCH_CONTENDERS=${ONLY.join(',')} BENCH_ROUNDS=${ROUNDS} BENCH_EVENTS=${EVENTS} BENCH_SECONDS=${SECONDS} BENCH_WINDOW=${WINDOW} BENCH_RATE=${RATE} ` +
  `BENCH_LATENCY_SECONDS=${LATENCY_SECONDS} BENCH_WARMUP=${WARMUP} BENCH_KEYS=${KEYS} BENCH_SQLITE_SYNC=${SQLITE_SYNC} NATS_URL=${NATS_URL} npm run bench:events`;
const TARGET_P50_MS = 5;
const TARGET_SQLITE_EPS = 50_000;
/** How long a latency trial may take to drain after its last publish before it counts as a failure. */
const DRAIN_MS = 15_000;
/** How long a trial may take to subscribe and see its probe events through. */
const SETUP_MS = 60_000;

class BenchError extends Error {}

const CONTENDERS: Record<ContenderName, string> = {
  sqlite: `SqliteEventBus, one file shared by both processes, synchronous '${SQLITE_SYNC}', defaults otherwise`,
  nats: 'NatsEventBus on JetStream (file storage), defaults: 8 ordering partitions, Nats-Msg-Id dedup, confirmed acks',
  jetstream: 'baseline, not a contender: @nats-io/jetstream directly (PubAck per publish, one durable pull consumer, acks, defaults)',
};

// ---------------------------------------------------------------------------------------------
// Peer processes.

const children = new ChildProcesses();

class Peer {
  private readonly waiting = new Map<number, { type: string; resolve: (msg: any) => void; reject: (err: Error) => void }[]>();
  readonly output: string[] = [];
  private exited: string | undefined;

  private constructor(
    readonly role: string,
    private readonly child: ChildProcess,
  ) {}

  static start(role: string): Promise<Peer> {
    const child = spawn(process.execPath, ['bin/run-ts.mjs', 'bench/support/events-peer.ts'], { cwd: root, stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(child);
    const peer = new Peer(role, child);
    child.stderr!.on('data', (d) => peer.keep(String(d)));
    return new Promise((resolveUp, rejectUp) => {
      const timer = setTimeout(() => rejectUp(new BenchError(`${role} peer did not start within 30 s:\n${peer.output.join('')}`)), 30_000);
      createInterface({ input: child.stdout! }).on('line', (line) => {
        let msg: { id?: number; type?: string; message?: string };
        try {
          msg = JSON.parse(line);
        } catch {
          peer.keep(`${line}\n`);
          return;
        }
        if (msg.type === 'up') {
          clearTimeout(timer);
          resolveUp(peer);
          return;
        }
        const list = peer.waiting.get(msg.id!) ?? [];
        const at = msg.type === 'error' ? 0 : list.findIndex((w) => w.type === msg.type);
        const w = list[at];
        if (!w) return;
        list.splice(at, 1);
        if (msg.type === 'error') {
          for (const other of list) other.reject(new BenchError(`${role} peer: ${msg.message}`));
          peer.waiting.delete(msg.id!);
          w.reject(new BenchError(`${role} peer: ${msg.message}`));
        } else w.resolve(msg);
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        peer.exited = `${role} peer exited (${signal ?? code}):\n${peer.output.join('').slice(-3000)}`;
        rejectUp(new BenchError(peer.exited));
        for (const list of peer.waiting.values()) for (const w of list) w.reject(new BenchError(peer.exited));
        peer.waiting.clear();
      });
    });
  }

  /** Sends a command; resolves the answers of the given types, in the order asked. */
  send<T extends readonly string[]>(cmd: PeerCommand, types: T): { [K in keyof T]: Promise<any> } {
    if (this.exited) throw new BenchError(this.exited);
    const answers = types.map(
      (type) =>
        new Promise((resolveAnswer, reject) => {
          const list = this.waiting.get(cmd.id) ?? [];
          list.push({ type, resolve: resolveAnswer, reject });
          this.waiting.set(cmd.id, list);
        }),
    );
    this.child.stdin!.write(`${JSON.stringify(cmd)}\n`);
    return answers as { [K in keyof T]: Promise<any> };
  }

  get pid(): number {
    return this.child.pid!;
  }

  private keep(text: string): void {
    this.output.push(text);
    if (this.output.length > 200) this.output.splice(0, this.output.length - 200);
  }
}

// ---------------------------------------------------------------------------------------------
// Trials.

interface Throughput {
  eps: number;
  publishEps: number;
  handled: number;
  published: number;
  cpuPerEvent: number;
  pubCpuPerEvent: number;
  subCpuPerEvent: number;
  /** Publisher and subscriber CPU time over the trial's wall time: how much of the machine they got. */
  coresBusy: number;
  caughtUp: boolean;
}

interface Latency {
  p50: number;
  p99: number;
  max: number;
  measured: number;
  lagP99: number;
  cpuPerEvent: number;
}

/** Whether a JetStream server answers at NATS_URL, or why not. */
async function natsProblem(): Promise<string | undefined> {
  let nc: NatsConnection | undefined;
  try {
    nc = await connect({ servers: NATS_URL, timeout: 2_000, maxReconnectAttempts: 0 });
    await (await jetstreamManager(nc)).getAccountInfo();
    return undefined;
  } catch (err) {
    return `no JetStream server at ${NATS_URL} (${(err as Error).message})`;
  } finally {
    await nc?.close().catch(() => undefined);
  }
}

class Trials {
  private next = 0;
  private readonly run = randomUUID().replace(/-/g, '').slice(0, 8);
  private readonly created = new Set<string>();

  constructor(
    private readonly publisher: Peer,
    private readonly subscriber: Peer,
    private readonly dataDir: string,
    private readonly jsm: JetStreamManager | undefined,
  ) {}

  private async storage(c: ContenderName, tag: string): Promise<TrialStorage> {
    if (c === 'sqlite') return { file: join(this.dataDir, `${tag}.sqlite`), synchronous: SQLITE_SYNC };
    const stream = `EVOLITH_BENCH_${tag}`;
    const prefix = `evolith_bench_${tag.toLowerCase()}`;
    this.created.add(stream);
    if (c === 'jetstream') {
      await this.jsm!.streams.add({ name: stream, subjects: [`${prefix}.>`], retention: RetentionPolicy.Limits, storage: StorageType.File, max_age: nanos(60 * 60 * 1000) });
    }
    return { servers: NATS_URL, stream, prefix };
  }

  private async dispose(c: ContenderName, tag: string, s: TrialStorage): Promise<void> {
    if (c === 'sqlite') {
      for (const f of readdirSync(this.dataDir)) if (f.startsWith(`${tag}.`)) rmSync(join(this.dataDir, f), { recursive: true, force: true });
      return;
    }
    await this.jsm!.streams.delete(s.stream!).catch(() => undefined);
    this.created.delete(s.stream!);
  }

  /** Deletes whatever a failed run left behind. */
  async cleanup(): Promise<void> {
    for (const stream of this.created) await this.jsm?.streams.delete(stream).catch(() => undefined);
    this.created.clear();
  }

  /**
   * One trial on fresh storage: subscribe; publish one probe event per key and wait until all
   * arrived (every ordering partition consumes: a NATS subscription creates its consumers in the
   * background); then the measured phase, which ends after `phaseMs` whatever is left undone.
   */
  private async once(
    c: ContenderName,
    publish: Omit<PublishCommand, 'id' | 'op' | 'contender' | 'storage' | 'topic' | 'deadline' | 'first'>,
    phaseMs: number,
  ): Promise<{ sub: SubscribeResult; pub: PublishResult; deadline: number }> {
    const tag = `${this.run}_${++this.next}`;
    const storage = await this.storage(c, tag);
    try {
      const base = { contender: c, storage, topic: 'orders.placed' };
      const setupDeadline = Date.now() + SETUP_MS;
      const id = this.next * 3;
      const subCmd: SubscribeCommand = { ...base, id, op: 'subscribe', group: 'billing', probes: KEYS, expect: publish.count, deadline: setupDeadline + phaseMs };
      const [ready, warm, subResult] = this.subscriber.send(subCmd, ['ready', 'warm', 'result'] as const);
      // Whichever side fails first is the error to report; the other's rejection must not go unhandled.
      subResult.catch(() => undefined);
      warm.catch(() => undefined);
      await ready;
      const probeCmd: PublishCommand = { ...base, id: id + 1, op: 'publish', first: 0, count: KEYS, rate: 0, window: KEYS, warmup: KEYS, keys: KEYS, deadline: setupDeadline };
      const probed = (await this.publisher.send(probeCmd, ['result'] as const)[0]) as PublishResult;
      if (probed.failed > 0) throw new BenchError(`${c}: ${probed.failed} probe publishes failed; first: ${probed.firstError}`);
      if (!(await Promise.race([warm.then(() => true), subResult.then(() => false)]))) {
        throw new BenchError(`${c}: the subscriber did not receive the ${KEYS} probe events within ${SETUP_MS / 1000} s`);
      }
      const deadline = Date.now() + phaseMs;
      this.subscriber.send({ id, op: 'deadline', deadline }, [] as const);
      const pubCmd: PublishCommand = { ...base, ...publish, id: id + 2, op: 'publish', first: KEYS, deadline };
      const pub = (await this.publisher.send(pubCmd, ['result'] as const)[0]) as PublishResult;
      const sub = (await subResult) as SubscribeResult;
      if (pub.failed > 0) throw new BenchError(`${c}: ${pub.failed} publishes failed; first: ${pub.firstError}`);
      return { sub, pub, deadline };
    } finally {
      await this.dispose(c, tag, storage);
    }
  }

  async throughput(c: ContenderName, events = EVENTS, seconds = SECONDS): Promise<Throughput> {
    const { sub, pub, deadline } = await this.once(c, { count: events, rate: 0, window: WINDOW, warmup: 0, keys: KEYS }, seconds * 1000);
    const caughtUp = sub.handled === pub.published && pub.published === events;
    const end = caughtUp ? sub.lastAt : deadline;
    return {
      eps: sub.handled / ((end - pub.startedAt) / 1000),
      publishEps: pub.published / ((pub.endedAt - pub.startedAt) / 1000),
      handled: sub.handled,
      published: pub.published,
      cpuPerEvent: (sub.cpuMicros + pub.cpuMicros) / Math.max(1, sub.handled),
      pubCpuPerEvent: pub.cpuMicros / Math.max(1, pub.published),
      subCpuPerEvent: sub.cpuMicros / Math.max(1, sub.handled),
      coresBusy: (sub.cpuMicros + pub.cpuMicros) / 1000 / (end - pub.startedAt),
      caughtUp,
    };
  }

  async latency(c: ContenderName): Promise<Latency> {
    const warm = Math.round(RATE * WARMUP);
    const count = warm + Math.round(RATE * LATENCY_SECONDS);
    const { sub, pub } = await this.once(c, { count, rate: RATE, window: 0, warmup: warm, keys: KEYS }, (WARMUP + LATENCY_SECONDS) * 1000 + DRAIN_MS);
    if (sub.handled < count) throw new BenchError(`${c}: only ${sub.handled} of ${count} events handled within ${DRAIN_MS / 1000} s of the last publish`);
    return { p50: sub.p50, p99: sub.p99, max: sub.max, measured: sub.measured, lagP99: pub.lagP99, cpuPerEvent: (sub.cpuMicros + pub.cpuMicros) / sub.handled };
  }
}

// ---------------------------------------------------------------------------------------------
// Report.

const f1 = (v: number) => v.toFixed(1);
const f2 = (v: number) => v.toFixed(2);
const int = (v: number) => Math.round(v).toLocaleString('en-US');
const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}×`;

async function main(): Promise<void> {
  const started = Date.now();
  console.log(`bench:events — reproduce with: ${REPRODUCE}`);
  console.log(
    `throughput: closed loop, ${WINDOW} publishes in flight, up to ${int(EVENTS)} events or ${SECONDS} s; latency: open loop at ${RATE} events/s for ${WARMUP} s warm-up + ${LATENCY_SECONDS} s; ` +
      `${KEYS} ordering keys; ${ROUNDS} rounds; node ${process.version}, ${availableParallelism()} CPUs; load average before: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`,
  );
  const wantsNats = ONLY.some((c) => c !== 'sqlite');
  const problem = wantsNats ? await natsProblem() : 'not asked for (BENCH_CONTENDERS)';
  const contenders = ONLY.filter((c) => c === 'sqlite' || problem === undefined);
  if (problem && wantsNats) console.log(`NATS: ${problem} — measuring the SQLite bus alone, without the JetStream baseline`);
  if (contenders.length === 0) throw new BenchError('nothing to measure: NATS is absent and the SQLite bus was not asked for');
  for (const c of contenders) console.log(`  ${c.padEnd(10)} ${CONTENDERS[c]}`);

  const ownDataDir = process.env.BENCH_DATA_DIR === undefined;
  const dataDir = ownDataDir ? mkdtempSync(join(tmpdir(), 'evolith-bench-events-')) : resolve(process.env.BENCH_DATA_DIR!);
  mkdirSync(dataDir, { recursive: true });
  console.log(`layout: publisher and subscriber in two child processes; SQLite files in ${dataDir}; NATS ${problem ? 'not measured' : `at ${NATS_URL}`}`);

  const nc = problem ? undefined : await connect({ servers: NATS_URL, name: 'bench-events-admin' });
  const jsm = nc ? await jetstreamManager(nc) : undefined;
  let trials: Trials | undefined;
  try {
    const [publisher, subscriber] = await Promise.all([Peer.start('publisher'), Peer.start('subscriber')]);
    trials = new Trials(publisher, subscriber, dataDir, jsm);

    // Warm-up: JIT, page cache, NATS server; not counted.
    for (const c of contenders) await trials.throughput(c, Math.min(EVENTS, 10_000), Math.min(SECONDS, 5));

    const latencies = new Map<ContenderName, Latency[]>(contenders.map((c) => [c, []]));
    const throughputs = new Map<ContenderName, Throughput[]>(contenders.map((c) => [c, []]));
    for (let r = 0; r < ROUNDS; r++) {
      const order = contenders.map((_, k) => contenders[(k + r) % contenders.length]!);
      for (const c of order) {
        const l = await trials.latency(c);
        latencies.get(c)!.push(l);
        console.log(`  round ${r + 1}  ${c.padEnd(10)} latency     p50 ${f2(l.p50)} ms  p99 ${f2(l.p99)} ms  max ${f1(l.max)} ms  (${l.measured} events; publisher lag p99 ${f2(l.lagP99)} ms)`);
      }
      for (const c of order) {
        const t = await trials.throughput(c);
        throughputs.get(c)!.push(t);
        console.log(
          `  round ${r + 1}  ${c.padEnd(10)} throughput  ${int(t.eps).padStart(7)} events/s  (${int(t.handled)} of ${int(t.published)} published handled${t.caughtUp ? '' : `, cut at ${SECONDS} s`}; ` +
            `publish alone ${int(t.publishEps)}/s; CPU µs/event: publisher ${f1(t.pubCpuPerEvent)}, subscriber ${f1(t.subCpuPerEvent)}; ${f2(t.coresBusy)} cores busy)`,
        );
      }
    }

    const lat = (c: ContenderName) => {
      const list = latencies.get(c)!;
      return { list, p50: median(list.map((x) => x.p50)), p99: median(list.map((x) => x.p99)), cpu: median(list.map((x) => x.cpuPerEvent)) };
    };
    const thr = (c: ContenderName) => {
      const list = throughputs.get(c)!;
      return { list, eps: median(list.map((x) => x.eps)), publishEps: median(list.map((x) => x.publishEps)), cpu: median(list.map((x) => x.cpuPerEvent)) };
    };
    const base = contenders.includes('jetstream') ? 'jetstream' : undefined;

    const rows: string[][] = [['contender', 'events/s', 'publish alone/s', 'CPU µs/event', 'vs jetstream', 'events/s per round', 'p50 ms', 'p99 ms', 'p50 vs jetstream', 'p50 per round']];
    for (const c of contenders) {
      const t = thr(c);
      const l = lat(c);
      rows.push([
        c,
        int(t.eps),
        int(t.publishEps),
        f1(t.cpu),
        base ? ratio(t.eps, thr(base).eps) : '—',
        t.list.map((x) => int(x.eps)).join(' / '),
        f2(l.p50),
        f2(l.p99),
        base ? ratio(l.p50, lat(base).p50) : '—',
        l.list.map((x) => f2(x.p50)).join(' / '),
      ]);
    }
    printTable(
      `bench:events — median of ${ROUNDS} rounds; throughput: distinct events handled in the other process per second (closed loop); latency: publish() call → handler start at ${RATE} events/s (open loop)`,
      rows,
    );

    const verdicts: string[][] = [['contender', 'figure', 'measured', 'target', 'verdict', 'same-run baseline (jetstream)']];
    let met = 0;
    let total = 0;
    const verdict = (c: ContenderName, figure: string, measured: string, target: string, ok: boolean, baseline: string) => {
      total++;
      met += Number(ok);
      verdicts.push([c, figure, measured, target, ok ? 'meets' : 'MISSES', baseline]);
    };
    for (const c of contenders.filter((x) => x !== 'jetstream')) {
      verdict(c, 'latency p50', `${f2(lat(c).p50)} ms`, `≤ ${TARGET_P50_MS} ms`, lat(c).p50 <= TARGET_P50_MS, base ? `${f2(lat(base).p50)} ms` : '—');
      if (c === 'sqlite') verdict(c, 'throughput', `${int(thr(c).eps)}/s`, `≥ ${int(TARGET_SQLITE_EPS)}/s`, thr(c).eps >= TARGET_SQLITE_EPS, base ? `${int(thr(base).eps)}/s` : '—');
    }
    printTable('targets', verdicts);
    console.log(`\ntargets met: ${met} of ${total}; load average after: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
    console.log(`total time ${((Date.now() - started) / 1000).toFixed(0)} s; reproduce with: ${REPRODUCE}`);
  } finally {
    await trials?.cleanup();
    await children.stopAll();
    await nc?.close().catch(() => undefined);
    if (ownDataDir) rmSync(dataDir, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (err) {
  console.error(`\nbench:events FAILED: ${err instanceof BenchError ? err.message : ((err as Error)?.stack ?? String(err))}`);
  process.exitCode = 1;
}
