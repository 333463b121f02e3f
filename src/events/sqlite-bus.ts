import { randomUUID } from 'node:crypto';
import { resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { Logger } from 'pino';
import { UnavailableError } from '../kernel/errors.js';
import type { EventBus, EventEnvelope } from '../kernel/plugins.js';
import { errorMessage, InflightHandlers, redeliveryDelay, type RetryOptions } from './redelivery.js';
import { createSchema, idHash, prepareStatements, type Statements } from './sqlite-bus-schema.js';
import { preparePrivateDatabaseFile } from '../storage/sqlite-files.js';
import { Doorbell } from './sqlite-doorbell.js';

export interface SqliteEventBusOptions {
  /**
   * How often each subscription looks for events without being told (default 100 ms). Publishers
   * ring a doorbell beside the file that wakes subscribers in every process at once; the poll is
   * the fallback where file change events do not arrive, and what finds expired leases and
   * redeliveries whose backoff ended in another process.
   */
  pollIntervalMs?: number;
  /**
   * How long a claim lasts. A running handler renews it (every third of it); a consumer that
   * dies stops renewing, and its events go to another member of the group once the lease runs
   * out (default 1.5 s, as the NATS bus's ack wait: a crash holds events up for seconds, not
   * half a minute; a process whose event loop stalls longer than that may see its events handled
   * twice, which handlers already allow for).
   */
  leaseMs?: number;
  /** Handlers one subscription runs at once (default 16). */
  maxInFlight?: number;
  /**
   * The most events one subscription holds at a time: its running handlers and the events it
   * claimed to run next (default 256, at least maxInFlight). One transaction acknowledges and
   * claims a whole batch, which is what makes handlers that take microseconds fast. It claims
   * ahead only what its handlers get through in a few milliseconds, so replicas with slower
   * handlers still share the work. Leases cover waiting events too: a consumer that dies holds
   * them until the leases run out.
   */
  prefetch?: number;
  /** Backoff before an event whose handler threw is offered again. */
  retry?: RetryOptions;
  /**
   * How long an event is kept once every group has acknowledged it (default 24 h). Within this
   * window a re-published id is recognised as a duplicate, and a group subscribing for the first
   * time receives the topic's retained events.
   */
  retentionMs?: number;
  /** close() waits at most this long for running handlers (default 10 s). */
  closeTimeoutMs?: number;
  /**
   * `full` (default) makes every commit survive power loss; `normal` only a process crash,
   * at a fraction of the cost.
   */
  synchronous?: 'full' | 'normal';
  /** check() reports the bus not ready once publishes have waited this long for another process's write lock (default 2 s). */
  lockStuckMs?: number;
  log?: Logger;
}

/**
 * How long the rare writes (subscribing, renewing leases, releasing a failed event, purging,
 * closing) wait for the write lock, blocking. Publishing and claiming never block on it: they
 * try again from the event loop, as does a subscriber that another process's commit woke up.
 */
const LOCK_WAIT_MS = 5_000;
/** How soon a publish or claim that found the write lock taken tries again. */
const LOCK_RETRY_MS = 1;

/** Another connection holds the write lock (SQLITE_BUSY and its extended codes). */
function isBusy(err: unknown): boolean {
  return String((err as { code?: unknown })?.code ?? '').startsWith('SQLITE_BUSY');
}

/** How much work, in handler time, a subscription claims ahead of its free handler slots. */
const CLAIM_AHEAD_MS = 5;

/** Events one purge transaction looks at, so that it never holds the write lock for long. */
const PURGE_BATCH = 500;

/** The most events past its cursor one claim looks at (most are claimed; the rest wait for their key). */
const MAX_SCAN = 1_000;

interface Claim {
  seq: number;
  attempt: number;
  /** The stored envelope, parsed only when its handler is about to run: not under the write lock. */
  json: string;
  envelope?: EventEnvelope;
}

interface EventRow {
  seq: number;
  key: string | null;
  envelope: string;
}

/** Events past a cursor, read before taking the write lock. */
interface Ahead {
  cursor: number;
  rows: EventRow[];
}

interface PendingPublish {
  envelope: EventEnvelope;
  json: string;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/**
 * The embedded durable event bus: one SQLite file shared by every process of the app.
 *
 * Events are appended with a sequence. Each subscribing group has a cursor over its topic;
 * consumers claim events past it with a lease inside a write transaction, so one member of a
 * group gets each event, and a lease that runs out (the consumer died) makes the event claimable
 * again (see sqlite-bus-schema.ts for the tables). After each commit a publisher rings a
 * doorbell that wakes the topic's subscribers in every process; they also poll, which finds
 * whatever a lost ring would have announced. Publishes issued together share one transaction,
 * and a subscription acknowledges the handlers that finished and claims its next events in one
 * transaction too.
 */
export class SqliteEventBus implements EventBus {
  readonly name = 'sqlite';
  readonly file: string;
  private readonly db: Database.Database;
  private readonly sql: Statements;
  private readonly opts: Required<Omit<SqliteEventBusOptions, 'log' | 'retry'>> & { retry: RetryOptions };
  private readonly log: Logger | undefined;
  private readonly subscriptions = new Set<SqliteSubscription>();
  private readonly inflight = new InflightHandlers();
  private readonly doorbell: Doorbell;
  // The file is local to one machine: the process and a random tag tell consumers apart.
  private readonly consumerBase = `${process.pid}:${randomUUID().slice(0, 8)}`;
  private queue: PendingPublish[] = [];
  private flushing: NodeJS.Immediate | undefined;
  private flushRetry: NodeJS.Timeout | undefined;
  /** When the queued publishes first found the write lock taken. */
  private busySince: number | undefined;
  /** Why the last publish failed, until one succeeds. */
  private lastFailure: string | undefined;
  private purgeTimer: NodeJS.Timeout | undefined;
  private nextSubscription = 0;
  private closing: Promise<void> | undefined;

  constructor(file: string, options: SqliteEventBusOptions = {}) {
    this.file = resolve(file);
    this.log = options.log;
    this.opts = {
      pollIntervalMs: options.pollIntervalMs ?? 100,
      leaseMs: options.leaseMs ?? 1_500,
      maxInFlight: options.maxInFlight ?? 16,
      prefetch: Math.max(options.prefetch ?? 256, options.maxInFlight ?? 16),
      retry: options.retry ?? {},
      retentionMs: options.retentionMs ?? 24 * 60 * 60 * 1000,
      closeTimeoutMs: options.closeTimeoutMs ?? 10_000,
      synchronous: options.synchronous ?? 'full',
      lockStuckMs: options.lockStuckMs ?? 2_000,
    };
    // Owner-only, as the services' databases: mode 0600 (with its -wal and -shm) in a 0700 directory.
    preparePrivateDatabaseFile(this.file);
    this.db = new Database(this.file);
    // The busy timeout first: switching to WAL needs a lock another process may hold.
    this.db.pragma(`busy_timeout = ${LOCK_WAIT_MS}`);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${this.opts.synchronous === 'full' ? 'FULL' : 'NORMAL'}`);
    createSchema(this.db);
    this.sql = prepareStatements(this.db);
    // SQLite's own wait sleeps the whole process, in steps of 1, 2, 5, 10… ms: hot paths retry instead.
    this.db.pragma('busy_timeout = 0');
    this.doorbell = new Doorbell(this.file, this.log);
    const every = Math.max(1_000, Math.min(60_000, this.opts.retentionMs / 4));
    this.purgeTimer = setInterval(() => this.purgeSafely(), every);
    this.purgeTimer.unref();
  }

  /** Resolves once the event is committed to the file. */
  publish(event: EventEnvelope): Promise<void> {
    if (this.closing) return Promise.reject(new UnavailableError(`event bus ${this.file} is closed`));
    let json: string;
    try {
      json = JSON.stringify(event);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      this.queue.push({ envelope: event, json, resolve, reject });
      // Publishes issued in the same turn share one transaction, and so one fsync.
      if (!this.flushRetry) this.flushing ??= setImmediate(() => this.flush());
    });
  }

  subscribe(topic: string, group: string, handler: (event: EventEnvelope) => Promise<void>): () => void {
    if (this.closing) throw new UnavailableError(`event bus ${this.file} is closed`);
    // A group seen for the first time starts its cursor at 0, so it receives the topic's retained
    // events: a publisher that started first must not lose events to a subscriber that starts later.
    this.blocking(() => this.db.transaction(() => this.sql.registerGroup.run(topic, group, Date.now())).immediate());
    const sub = new SqliteSubscription(this, topic, group, handler, `${this.consumerBase}:${this.nextSubscription++}`, this.opts);
    this.subscriptions.add(sub);
    // Listening before the first look: an event committed in between still rings.
    const unlisten = this.doorbell.listen(topic, () => sub.wake());
    sub.start();
    return () => {
      unlisten();
      sub.stop();
      this.subscriptions.delete(sub);
    };
  }

  /**
   * Ready unless closed, its last publish failed (and none succeeded since), or its publishes
   * have waited on another process's write lock for longer than lockStuckMs.
   */
  async check(): Promise<void> {
    if (this.closing) throw new UnavailableError(`event bus ${this.file} is closed`);
    if (this.lastFailure !== undefined) throw new UnavailableError(`event bus ${this.file}: the last publish failed: ${this.lastFailure}`);
    if (this.busySince !== undefined && Date.now() - this.busySince > this.opts.lockStuckMs) {
      throw new UnavailableError(`event bus ${this.file}: publishes have waited ${Math.round((Date.now() - this.busySince) / 1000)} s for the write lock`);
    }
  }

  /** Stops consuming, lets running handlers finish (up to closeTimeoutMs), then closes the file. */
  close(): Promise<void> {
    return (this.closing ??= this.shutdown());
  }

  private async shutdown(): Promise<void> {
    clearInterval(this.purgeTimer);
    const subs = [...this.subscriptions];
    for (const sub of subs) sub.stop();
    this.subscriptions.clear();
    if (this.flushing) clearImmediate(this.flushing);
    clearTimeout(this.flushRetry);
    this.flushRetry = undefined;
    this.blocking(() => this.flush(true));
    if (!(await this.inflight.idle(this.opts.closeTimeoutMs))) {
      // Their leases run out and another consumer gets the events: a duplicate, never a loss.
      this.log?.warn({ inflight: this.inflight.size }, 'event handlers still running at close; their events will be redelivered');
    }
    // Handlers that just finished may not have had their acknowledgements committed yet.
    this.blocking(() => {
      for (const sub of subs) sub.flushAcks();
    });
    this.doorbell.close();
    this.db.close();
  }

  /** Runs `fn` waiting up to LOCK_WAIT_MS for the write lock, as the rare writes may. */
  blocking<T>(fn: () => T): T {
    if (!this.db.open) return fn();
    this.db.pragma(`busy_timeout = ${LOCK_WAIT_MS}`);
    try {
      return fn();
    } finally {
      if (this.db.open) this.db.pragma('busy_timeout = 0');
    }
  }

  /** Commits the queued publishes in one transaction; `final` (closing): no retry later. */
  private flush(final = false): void {
    this.flushing = undefined;
    this.flushRetry = undefined;
    const batch = this.queue;
    this.queue = [];
    if (batch.length === 0) return;
    const topics = new Set<string>();
    try {
      this.db
        .transaction(() => {
          const now = Date.now();
          for (const p of batch) {
            const e = p.envelope;
            // A known id is a re-publish (the outbox retrying after a lost answer): already stored.
            const h = idHash(e.id);
            if (this.sql.known.get(h, e.id) !== undefined) continue;
            this.sql.insertEvent.run(e.id, h, e.topic, e.key ?? null, p.json, now);
            topics.add(e.topic);
          }
        })
        .immediate();
    } catch (err) {
      const now = Date.now();
      this.busySince ??= now;
      if (!final && isBusy(err) && now - this.busySince < LOCK_WAIT_MS) {
        // Another process is writing: go again shortly, with whatever is published meanwhile.
        this.queue = batch.concat(this.queue);
        this.flushRetry = setTimeout(() => this.flush(), LOCK_RETRY_MS);
        return;
      }
      this.busySince = undefined;
      this.lastFailure = (err as Error).message;
      for (const p of batch) p.reject(err);
      return;
    }
    this.busySince = undefined;
    this.lastFailure = undefined;
    for (const p of batch) p.resolve();
    if (topics.size === 0) return;
    // Only topics someone subscribes to: a ring wakes readers in every process.
    const heard = [...topics].filter((t) => this.hasGroups(t));
    if (heard.length > 0) this.doorbell.ring(heard);
    for (const sub of this.subscriptions) if (topics.has(sub.topic)) sub.wake();
  }

  private hasGroups(topic: string): boolean {
    try {
      return this.sql.hasGroups.get(topic) !== undefined;
    } catch {
      return true;
    }
  }

  /**
   * Commits the acknowledgements of handlers that finished, then claims up to `limit` events
   * for the subscription, in one write transaction: first the group's unacknowledged events
   * that may go again (released after a failure, waiting for their key, and — when `expired` —
   * those whose lease ran out), then events past the group's cursor.
   */
  claim(sub: SqliteSubscription, limit: number, acks: readonly Claim[], expired: boolean): Claim[] {
    const { group, topic } = sub;
    // Read without the write lock first: most wake-ups of an idle subscription find nothing and
    // must not queue up writers, and events read here need not be read again under the lock.
    const ahead = limit > 0 ? this.readAhead(sub, limit) : undefined;
    if (acks.length === 0 && (!ahead || (ahead.rows.length === 0 && !this.reclaimable(sub, expired)))) return [];
    return this.db
      .transaction(() => {
        for (const a of acks) this.sql.ack.run({ grp: group, topic, seq: a.seq, consumer: sub.consumer, attempt: a.attempt });
        if (limit <= 0) return [];
        const now = Date.now();
        const leaseUntil = now + sub.leaseMs;
        const find = { grp: group, topic, now, limit };
        const again = this.sql.free.all(find) as number[];
        if (expired && again.length < limit) again.push(...(this.sql.expiredLeases.all({ ...find, limit: limit - again.length }) as number[]));
        const claims: Claim[] = [];
        for (const seq of again.sort((a, b) => a - b)) {
          const attempt = this.sql.lease.get({ grp: group, topic, seq, consumer: sub.consumer, leaseUntil }) as number;
          claims.push({ seq, attempt, json: this.sql.envelope.get(seq) as string });
        }
        if (claims.length < limit) this.advance(sub, limit - claims.length, leaseUntil, claims, ahead);
        return claims;
      })
      .immediate();
  }

  /** The events past the group's cursor, as of now: read without the write lock. */
  private readAhead(sub: SqliteSubscription, limit: number): Ahead {
    const cursor = (this.sql.cursor.get(sub.topic, sub.group) as number | undefined) ?? 0;
    return { cursor, rows: this.sql.after.all(sub.topic, cursor, limit) as EventRow[] };
  }

  /** Whether unacknowledged events could be claimed again now: reads only, without the write lock. */
  private reclaimable(sub: SqliteSubscription, expired: boolean): boolean {
    const find = { grp: sub.group, topic: sub.topic, now: Date.now(), limit: 1 };
    return this.sql.free.all(find).length > 0 || (expired && this.sql.expiredLeases.all(find).length > 0);
  }

  /**
   * Takes events past the cursor, in order, until `room` are leased to `sub`. An event whose key
   * still has an unacknowledged earlier event is taken as waiting instead; it is claimed once
   * that one is acknowledged. The cursor moves past everything taken.
   */
  private advance(sub: SqliteSubscription, room: number, leaseUntil: number, claims: Claim[], ahead: Ahead | undefined): void {
    const { group: grp, topic, consumer } = sub;
    let cursor = (this.sql.cursor.get(topic, grp) as number | undefined) ?? 0;
    const start = cursor;
    // Events are never changed once stored: what was read ahead is still what follows the
    // cursor, unless a competing consumer moved the cursor in between.
    let early = ahead?.cursor === cursor ? ahead.rows : undefined;
    let leased = 0;
    for (let scanned = 0; leased < room && scanned < MAX_SCAN; ) {
      const want = Math.min(MAX_SCAN - scanned, room - leased);
      const rows = early ? early.slice(0, want) : (this.sql.after.all(topic, cursor, want) as EventRow[]);
      early = undefined;
      for (const r of rows) {
        if (leased >= room) break;
        scanned++;
        cursor = r.seq;
        if (r.key !== null && this.sql.keyBusy.get(grp, topic, r.key) !== undefined) {
          this.sql.wait.run(grp, topic, r.seq, r.key);
          continue;
        }
        this.sql.take.run(grp, topic, r.seq, r.key, consumer, leaseUntil);
        claims.push({ seq: r.seq, attempt: 1, json: r.envelope });
        leased++;
      }
      if (rows.length < want) break;
    }
    if (cursor !== start) this.sql.setCursor.run(cursor, topic, grp);
  }

  /**
   * Runs the handler for a claimed event, then queues its acknowledgement or schedules its
   * redelivery, and calls `done`. One promise reaction per event: this runs for every event.
   */
  run(sub: SqliteSubscription, claim: Claim, done: () => void): void {
    this.inflight.begin();
    const ok = () => {
      sub.handled(claim);
      this.inflight.end();
      done();
    };
    const failed = (err: unknown) => {
      this.fail(sub, claim, err);
      this.inflight.end();
      done();
    };
    let result: unknown;
    try {
      claim.envelope ??= JSON.parse(claim.json) as EventEnvelope;
      result = sub.handler(claim.envelope);
    } catch (err) {
      // As if the handler were async: `done` never runs inside the caller's loop.
      queueMicrotask(() => failed(err));
      return;
    }
    if (typeof (result as Promise<void> | undefined)?.then === 'function') (result as Promise<void>).then(ok, failed);
    else queueMicrotask(ok);
  }

  /** Commits acknowledgements on their own (the subscription stopped claiming). */
  ack(sub: SqliteSubscription, acks: readonly Claim[]): boolean {
    if (!this.db.open) return false;
    try {
      this.blocking(() =>
        this.db.transaction(() => {
          for (const a of acks) this.sql.ack.run({ grp: sub.group, topic: sub.topic, seq: a.seq, consumer: sub.consumer, attempt: a.attempt });
        })(),
      );
      return true;
    } catch (err) {
      this.log?.warn({ err, events: acks.length, topic: sub.topic }, 'could not acknowledge events; they will be redelivered');
      return false;
    }
  }

  private fail(sub: SqliteSubscription, claim: Claim, err: unknown): void {
    const delay = redeliveryDelay(claim.attempt, sub.retry);
    this.log?.warn({ err, id: claim.envelope?.id, seq: claim.seq, topic: sub.topic, group: sub.group, attempt: claim.attempt, retryInMs: delay }, 'event handler failed; will redeliver');
    if (!this.db.open) return;
    try {
      this.blocking(() =>
        this.sql.release.run({
          seq: claim.seq,
          grp: sub.group,
          topic: sub.topic,
          consumer: sub.consumer,
          attempt: claim.attempt,
          availableAt: Date.now() + delay,
          error: errorMessage(err),
        }),
      );
    } catch (e) {
      this.log?.warn({ err: e, id: claim.envelope?.id, seq: claim.seq }, 'could not release failed event; it returns when its lease runs out');
    }
    // The release set available_at; the wake-up must come no earlier, or the key would spin.
    sub.wakeAfter(delay);
  }

  /** Hands back claimed events that never ran (the subscription stopped), for any consumer to take at once. */
  unclaim(sub: SqliteSubscription, claims: readonly Claim[]): void {
    if (!this.db.open || claims.length === 0) return;
    try {
      this.blocking(() =>
        this.db.transaction(() => {
          for (const c of claims) this.sql.unclaim.run({ seq: c.seq, grp: sub.group, topic: sub.topic, consumer: sub.consumer, attempt: c.attempt });
        })(),
      );
    } catch (err) {
      this.log?.warn({ err, events: claims.length, topic: sub.topic }, 'could not hand back unstarted events; they return when their leases run out');
    }
  }

  /** Extends the leases of events this subscription holds. */
  renew(sub: SqliteSubscription, claims: Iterable<Claim>): void {
    if (!this.db.open) return;
    try {
      this.blocking(() =>
        this.db.transaction(() => {
          // From when the write lock was had, not from before waiting for it.
          const leaseUntil = Date.now() + sub.leaseMs;
          for (const c of claims) {
            const r = this.sql.renew.run({ seq: c.seq, grp: sub.group, topic: sub.topic, consumer: sub.consumer, attempt: c.attempt, leaseUntil });
            if (r.changes === 0) this.log?.warn({ id: c.envelope?.id, seq: c.seq, topic: sub.topic }, 'lost the lease on a running event; another consumer may handle it too');
          }
        })(),
      );
    } catch (err) {
      this.log?.warn({ err }, 'could not renew event leases');
    }
  }

  /** Deletes events every group has acknowledged, once they are older than the retention. Returns how many. */
  purge(now = Date.now()): number {
    return this.blocking(() => this.purgeAll(now));
  }

  private purgeAll(now: number): number {
    const cutoff = now - this.opts.retentionMs;
    let total = 0;
    let after = 0;
    for (let more = true; more; ) {
      total += this.db
        .transaction(() => {
          const rows = this.sql.oldest.all({ cutoff, after, limit: PURGE_BATCH }) as { seq: number; old: number; done: number }[];
          more = rows.length === PURGE_BATCH;
          let deleted = 0;
          for (const r of rows) {
            // Stored in sequence order: the first one inside the retention ends the sweep.
            if (!r.old) {
              more = false;
              break;
            }
            after = r.seq;
            if (r.done) deleted += this.sql.deleteEvent.run(r.seq).changes;
          }
          return deleted;
        })
        .immediate();
    }
    return total;
  }

  private purgeSafely(): void {
    try {
      this.purge();
    } catch (err) {
      this.log?.warn({ err }, 'event retention cleanup failed; will retry');
    }
  }

  warn(obj: object, msg: string): void {
    this.log?.warn(obj, msg);
  }
}

/**
 * One subscribe() call: claims up to `prefetch` events when woken (or on a timer), runs up to
 * `maxInFlight` of them at once, and acknowledges finished ones with its next claim.
 */
class SqliteSubscription {
  private readonly running = new Map<number, Claim>();
  /** Claimed, leased, waiting for a free handler slot. */
  private queued: Claim[] = [];
  /** Handlers that finished; acknowledged in the transaction of the next claim. */
  private acks: Claim[] = [];
  private pollTimer: NodeJS.Timeout | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private lastExpiredCheck = 0;
  private stopped = false;
  readonly leaseMs: number;
  readonly retry: RetryOptions;
  private readonly pollIntervalMs: number;
  private readonly maxInFlight: number;
  private readonly prefetch: number;
  /** Moving average of how long handlers take (ms); undefined until one finished. */
  private handlerMs: number | undefined;

  constructor(
    private readonly bus: SqliteEventBus,
    readonly topic: string,
    readonly group: string,
    readonly handler: (event: EventEnvelope) => Promise<void>,
    readonly consumer: string,
    opts: { leaseMs: number; retry: RetryOptions; pollIntervalMs: number; maxInFlight: number; prefetch: number },
  ) {
    this.leaseMs = opts.leaseMs;
    this.retry = opts.retry;
    this.pollIntervalMs = opts.pollIntervalMs;
    this.maxInFlight = opts.maxInFlight;
    this.prefetch = opts.prefetch;
  }

  start(): void {
    this.renewTimer = setInterval(() => {
      if (this.running.size + this.queued.length > 0) this.bus.renew(this, [...this.running.values(), ...this.queued]);
    }, Math.max(50, Math.floor(this.leaseMs / 3)));
    this.renewTimer.unref();
    this.wake();
  }

  /** Stops claiming and hands back what has not started; running handlers finish and acknowledge. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.pollTimer);
    if (this.immediate) clearImmediate(this.immediate);
    this.immediate = undefined;
    const unstarted = this.queued;
    this.queued = [];
    this.bus.unclaim(this, unstarted);
    this.flushAcks();
    // Keep renewing the leases of running handlers until they settle.
    if (this.running.size === 0) clearInterval(this.renewTimer);
  }

  /** Looks for events soon (coalesced). */
  wake(): void {
    if (this.stopped || this.immediate) return;
    this.immediate = setImmediate(() => {
      this.immediate = undefined;
      this.poll(false);
    });
  }

  wakeAfter(ms: number): void {
    if (this.stopped) return;
    const t = setTimeout(() => this.wake(), ms + 1);
    t.unref();
  }

  /** The handler of `claim` returned: acknowledge it with the next claim. */
  handled(claim: Claim): void {
    this.acks.push(claim);
  }

  /** Commits the pending acknowledgements on their own. */
  flushAcks(): void {
    if (this.acks.length === 0) return;
    const acks = this.acks;
    this.acks = [];
    this.bus.ack(this, acks);
  }

  /**
   * Acknowledges what finished and claims what there is room for. A wake-up while enough
   * claimed events still wait locally does nothing: the next claim then commits a larger batch.
   * The timer always goes ahead (acknowledgements are not held back for longer than a poll
   * interval), and also looks for leases that ran out — rare, so at least once per poll interval
   * even while wake-ups keep the subscription busy, but not on every wake-up.
   */
  private poll(timer: boolean): void {
    if (this.stopped) return;
    const now = Date.now();
    const expired = timer || now - this.lastExpiredCheck >= this.pollIntervalMs;
    if (!expired && this.queued.length >= this.maxInFlight) return;
    clearTimeout(this.pollTimer);
    if (expired) this.lastExpiredCheck = now;
    const room = this.maxInFlight + this.claimAhead() - this.running.size - this.queued.length;
    try {
      const claims = this.bus.claim(this, room, this.acks, expired);
      this.acks = [];
      for (const c of claims) this.queued.push(c);
    } catch (err) {
      // Acknowledgements stay queued for the next attempt; until then their events stay leased.
      if (isBusy(err)) this.wakeAfter(LOCK_RETRY_MS);
      else this.bus.warn({ err, topic: this.topic, group: this.group }, 'could not claim events; will retry');
    }
    this.pump();
    this.pollTimer = setTimeout(() => this.poll(true), this.pollIntervalMs);
    this.pollTimer.unref();
  }

  /**
   * How many events to hold beyond the free handler slots: about CLAIM_AHEAD_MS of work. None
   * until a handler has finished, and none for handlers that take tens of milliseconds.
   */
  private claimAhead(): number {
    if (this.handlerMs === undefined) return 0;
    const ahead = Math.floor((this.maxInFlight * CLAIM_AHEAD_MS) / Math.max(this.handlerMs, 0.001));
    return Math.min(this.prefetch - this.maxInFlight, ahead);
  }

  /** Starts queued events while there are free handler slots. */
  private pump(): void {
    while (this.running.size < this.maxInFlight && this.queued.length > 0 && !this.stopped) {
      const c = this.queued.shift()!;
      this.running.set(c.seq, c);
      const started = performance.now();
      this.bus.run(this, c, () => {
        const ms = performance.now() - started;
        this.handlerMs = this.handlerMs === undefined ? ms : this.handlerMs * 0.9 + ms * 0.1;
        this.running.delete(c.seq);
        if (this.stopped) {
          this.flushAcks();
          if (this.running.size === 0) clearInterval(this.renewTimer);
          return;
        }
        this.pump();
        // Running low: claim more, commit the acknowledgements, maybe free the next event of a key.
        if (this.queued.length < this.maxInFlight) this.wake();
      });
    }
  }
}
