import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { Logger } from 'pino';
import { UnavailableError } from '../kernel/errors.js';
import type { EventBus, EventEnvelope } from '../kernel/plugins.js';
import { errorMessage, InflightHandlers, redeliveryDelay, type RetryOptions } from './redelivery.js';

export interface SqliteEventBusOptions {
  /** How often each subscription looks for events published by other processes (default 100 ms). */
  pollIntervalMs?: number;
  /**
   * How long a claim lasts. A running handler renews it; a consumer that dies stops renewing,
   * and its events go to another member of the group once the lease runs out (default 30 s).
   */
  leaseMs?: number;
  /** Handlers one subscription runs at once (default 16). */
  maxInFlight?: number;
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
  log?: Logger;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS evolith_bus_events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  topic TEXT NOT NULL,
  key TEXT,
  envelope TEXT NOT NULL,
  stored_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS evolith_bus_events_topic ON evolith_bus_events (topic, seq);
CREATE INDEX IF NOT EXISTS evolith_bus_events_stored ON evolith_bus_events (stored_at);
CREATE TABLE IF NOT EXISTS evolith_bus_groups (
  topic TEXT NOT NULL,
  grp TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (topic, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evolith_bus_deliveries (
  seq INTEGER NOT NULL,
  grp TEXT NOT NULL,
  topic TEXT NOT NULL,
  key TEXT,
  available_at INTEGER NOT NULL DEFAULT 0,
  claimed_by TEXT,
  lease_until INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  acked_at INTEGER,
  last_error TEXT,
  PRIMARY KEY (seq, grp)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS evolith_bus_pending ON evolith_bus_deliveries (grp, topic, seq) WHERE acked_at IS NULL;
CREATE INDEX IF NOT EXISTS evolith_bus_pending_key ON evolith_bus_deliveries (grp, topic, key, seq)
  WHERE acked_at IS NULL AND key IS NOT NULL;
`;

/**
 * Claimable deliveries of one (group, topic), oldest first: not acknowledged, not backing off,
 * not leased, and the head of their key (no earlier unacknowledged event with the same key).
 */
const CANDIDATES = `
SELECT d.seq FROM evolith_bus_deliveries d
WHERE d.grp = @grp AND d.topic = @topic AND d.acked_at IS NULL
  AND d.available_at <= @now
  AND (d.lease_until IS NULL OR d.lease_until <= @now)
  AND (d.key IS NULL OR NOT EXISTS (
    SELECT 1 FROM evolith_bus_deliveries p
    WHERE p.grp = d.grp AND p.topic = d.topic AND p.key = d.key AND p.acked_at IS NULL AND p.seq < d.seq))
ORDER BY d.seq
LIMIT @limit`;

interface Claim {
  seq: number;
  attempt: number;
  envelope: EventEnvelope;
}

interface PendingPublish {
  envelope: EventEnvelope;
  json: string;
  resolve: () => void;
  reject: (err: unknown) => void;
}

type Statements = ReturnType<typeof prepare>;

function prepare(db: Database.Database) {
  return {
    insertEvent: db.prepare(
      'INSERT INTO evolith_bus_events (id, topic, key, envelope, stored_at) VALUES (@id, @topic, @key, @envelope, @now) ON CONFLICT (id) DO NOTHING',
    ),
    fanOut: db.prepare(
      'INSERT INTO evolith_bus_deliveries (seq, grp, topic, key) SELECT @seq, grp, @topic, @key FROM evolith_bus_groups WHERE topic = @topic',
    ),
    registerGroup: db.prepare('INSERT INTO evolith_bus_groups (topic, grp, created_at) VALUES (@topic, @grp, @now) ON CONFLICT DO NOTHING'),
    backfill: db.prepare(
      `INSERT INTO evolith_bus_deliveries (seq, grp, topic, key)
       SELECT seq, @grp, topic, key FROM evolith_bus_events WHERE topic = @topic ORDER BY seq
       ON CONFLICT DO NOTHING`,
    ),
    candidates: db.prepare(CANDIDATES).pluck(),
    claim: db.prepare(
      `UPDATE evolith_bus_deliveries SET claimed_by = @consumer, lease_until = @leaseUntil, attempts = attempts + 1
       WHERE seq = @seq AND grp = @grp AND acked_at IS NULL AND (lease_until IS NULL OR lease_until <= @now)
       RETURNING attempts`,
    ),
    envelope: db.prepare('SELECT envelope FROM evolith_bus_events WHERE seq = ?').pluck(),
    ack: db.prepare(
      'UPDATE evolith_bus_deliveries SET acked_at = @now, claimed_by = NULL, lease_until = NULL WHERE seq = @seq AND grp = @grp AND acked_at IS NULL',
    ),
    // Fenced by (claimed_by, attempts): a consumer whose lease was taken over must not undo the new claim.
    release: db.prepare(
      `UPDATE evolith_bus_deliveries SET claimed_by = NULL, lease_until = NULL, available_at = @availableAt, last_error = @error
       WHERE seq = @seq AND grp = @grp AND claimed_by = @consumer AND attempts = @attempt AND acked_at IS NULL`,
    ),
    renew: db.prepare(
      `UPDATE evolith_bus_deliveries SET lease_until = @leaseUntil
       WHERE seq = @seq AND grp = @grp AND claimed_by = @consumer AND attempts = @attempt AND acked_at IS NULL`,
    ),
    expired: db.prepare(
      `SELECT e.seq FROM evolith_bus_events e
       WHERE e.stored_at < @cutoff
         AND NOT EXISTS (SELECT 1 FROM evolith_bus_deliveries d WHERE d.seq = e.seq AND d.acked_at IS NULL)
       ORDER BY e.seq LIMIT 500`,
    ).pluck(),
    deleteDeliveries: db.prepare('DELETE FROM evolith_bus_deliveries WHERE seq = ?'),
    deleteEvent: db.prepare('DELETE FROM evolith_bus_events WHERE seq = ?'),
  };
}

/**
 * The embedded durable event bus: one SQLite file shared by every process of the app.
 *
 * Events are appended with a sequence; each subscribing group has its own delivery row per
 * event. Consumers claim rows with a lease inside a write transaction, so one member of a group
 * gets each event; a lease that runs out (the consumer died) makes the event claimable again.
 * Processes find each other's events by polling; publishes in this process wake its own
 * subscriptions at once.
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
  private readonly consumerBase = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  private queue: PendingPublish[] = [];
  private flushing: NodeJS.Immediate | undefined;
  private purgeTimer: NodeJS.Timeout | undefined;
  private nextSubscription = 0;
  private closing: Promise<void> | undefined;

  constructor(file: string, options: SqliteEventBusOptions = {}) {
    this.file = resolve(file);
    this.log = options.log;
    this.opts = {
      pollIntervalMs: options.pollIntervalMs ?? 100,
      leaseMs: options.leaseMs ?? 30_000,
      maxInFlight: options.maxInFlight ?? 16,
      retry: options.retry ?? {},
      retentionMs: options.retentionMs ?? 24 * 60 * 60 * 1000,
      closeTimeoutMs: options.closeTimeoutMs ?? 10_000,
      synchronous: options.synchronous ?? 'full',
    };
    mkdirSync(dirname(this.file), { recursive: true });
    this.db = new Database(this.file);
    // The busy timeout first: switching to WAL needs a lock another process may hold.
    this.db.pragma('busy_timeout = 5000');
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${this.opts.synchronous === 'full' ? 'FULL' : 'NORMAL'}`);
    this.db.exec(SCHEMA);
    this.sql = prepare(this.db);
    const every = Math.max(1_000, Math.min(60_000, this.opts.retentionMs / 4));
    this.purgeTimer = setInterval(() => this.purgeSafely(), every);
    this.purgeTimer.unref();
  }

  /** Resolves once the event is committed to the file (and fanned out to every known group). */
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
      this.flushing ??= setImmediate(() => this.flush());
    });
  }

  subscribe(topic: string, group: string, handler: (event: EventEnvelope) => Promise<void>): () => void {
    if (this.closing) throw new UnavailableError(`event bus ${this.file} is closed`);
    // A group seen for the first time receives the topic's retained events: a publisher that
    // started first must not lose events to a subscriber that starts later.
    this.db
      .transaction(() => {
        const now = Date.now();
        if (this.sql.registerGroup.run({ topic, grp: group, now }).changes > 0) this.sql.backfill.run({ topic, grp: group });
      })
      .immediate();
    const sub = new SqliteSubscription(this, topic, group, handler, `${this.consumerBase}:${this.nextSubscription++}`, this.opts);
    this.subscriptions.add(sub);
    sub.start();
    return () => {
      sub.stop();
      this.subscriptions.delete(sub);
    };
  }

  /** Stops consuming, lets running handlers finish (up to closeTimeoutMs), then closes the file. */
  close(): Promise<void> {
    return (this.closing ??= this.shutdown());
  }

  private async shutdown(): Promise<void> {
    clearInterval(this.purgeTimer);
    for (const sub of this.subscriptions) sub.stop();
    this.subscriptions.clear();
    if (this.flushing) clearImmediate(this.flushing);
    this.flush();
    if (!(await this.inflight.idle(this.opts.closeTimeoutMs))) {
      // Their leases run out and another consumer gets the events: a duplicate, never a loss.
      this.log?.warn({ inflight: this.inflight.size }, 'event handlers still running at close; their events will be redelivered');
    }
    this.db.close();
  }

  private flush(): void {
    this.flushing = undefined;
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
            const r = this.sql.insertEvent.run({ id: e.id, topic: e.topic, key: e.key ?? null, envelope: p.json, now });
            // A known id is a re-publish (the outbox retrying after a lost answer): already stored.
            if (r.changes === 0) continue;
            this.sql.fanOut.run({ seq: r.lastInsertRowid, topic: e.topic, key: e.key ?? null });
            topics.add(e.topic);
          }
        })
        .immediate();
    } catch (err) {
      for (const p of batch) p.reject(err);
      return;
    }
    for (const p of batch) p.resolve();
    for (const sub of this.subscriptions) if (topics.has(sub.topic)) sub.wake();
  }

  /** Claims up to `limit` events for one subscription (see CANDIDATES). */
  claim(sub: SqliteSubscription, limit: number): Claim[] {
    const now = Date.now();
    const params = { grp: sub.group, topic: sub.topic, now, limit };
    // Look without the write lock first: most polls find nothing, and must not queue up writers.
    if (this.sql.candidates.all(params).length === 0) return [];
    return this.db
      .transaction(() => {
        const claims: Claim[] = [];
        const leaseUntil = Date.now() + sub.leaseMs;
        for (const seq of this.sql.candidates.all(params) as number[]) {
          const row = this.sql.claim.get({ seq, grp: sub.group, consumer: sub.consumer, leaseUntil, now }) as { attempts: number } | undefined;
          if (!row) continue;
          const json = this.sql.envelope.get(seq) as string;
          claims.push({ seq, attempt: row.attempts, envelope: JSON.parse(json) as EventEnvelope });
        }
        return claims;
      })
      .immediate();
  }

  /** Runs the handler for a claimed event, then acknowledges it or schedules its redelivery. */
  run(sub: SqliteSubscription, claim: Claim, done: () => void): void {
    const work = (async () => {
      try {
        await sub.handler(claim.envelope);
      } catch (err) {
        this.fail(sub, claim, err);
        return;
      }
      this.ack(sub, claim);
    })();
    void this.inflight.track(work).finally(done);
  }

  private ack(sub: SqliteSubscription, claim: Claim): void {
    if (!this.db.open) return;
    try {
      this.sql.ack.run({ seq: claim.seq, grp: sub.group, now: Date.now() });
    } catch (err) {
      this.log?.warn({ err, id: claim.envelope.id, topic: sub.topic }, 'could not acknowledge event; it will be redelivered');
    }
  }

  private fail(sub: SqliteSubscription, claim: Claim, err: unknown): void {
    const delay = redeliveryDelay(claim.attempt, sub.retry);
    this.log?.warn({ err, id: claim.envelope.id, topic: sub.topic, group: sub.group, attempt: claim.attempt, retryInMs: delay }, 'event handler failed; will redeliver');
    if (!this.db.open) return;
    try {
      this.sql.release.run({
        seq: claim.seq,
        grp: sub.group,
        consumer: sub.consumer,
        attempt: claim.attempt,
        availableAt: Date.now() + delay,
        error: errorMessage(err),
      });
    } catch (e) {
      this.log?.warn({ err: e, id: claim.envelope.id }, 'could not release failed event; it returns when its lease runs out');
    }
    // The release set available_at; the wake-up must come no earlier, or the key would spin.
    sub.wakeAfter(delay);
  }

  /** Extends the leases of events whose handlers are still running. */
  renew(sub: SqliteSubscription, claims: Iterable<Claim>): void {
    if (!this.db.open) return;
    const leaseUntil = Date.now() + sub.leaseMs;
    try {
      this.db.transaction(() => {
        for (const c of claims) {
          const r = this.sql.renew.run({ seq: c.seq, grp: sub.group, consumer: sub.consumer, attempt: c.attempt, leaseUntil });
          if (r.changes === 0) this.log?.warn({ id: c.envelope.id, topic: sub.topic }, 'lost the lease on a running event; another consumer may handle it too');
        }
      })();
    } catch (err) {
      this.log?.warn({ err }, 'could not renew event leases');
    }
  }

  /** Deletes events every group has acknowledged, once they are older than the retention. Returns how many. */
  purge(now = Date.now()): number {
    const cutoff = now - this.opts.retentionMs;
    let total = 0;
    for (;;) {
      const n = this.db
        .transaction(() => {
          const seqs = this.sql.expired.all({ cutoff }) as number[];
          for (const seq of seqs) {
            this.sql.deleteDeliveries.run(seq);
            this.sql.deleteEvent.run(seq);
          }
          return seqs.length;
        })
        .immediate();
      total += n;
      if (n < 500) return total;
    }
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

/** One subscribe() call: a poll loop that claims what this consumer has room for. */
class SqliteSubscription {
  private readonly running = new Map<number, Claim>();
  private pollTimer: NodeJS.Timeout | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private immediate: NodeJS.Immediate | undefined;
  private stopped = false;
  readonly leaseMs: number;
  readonly retry: RetryOptions;
  private readonly pollIntervalMs: number;
  private readonly maxInFlight: number;

  constructor(
    private readonly bus: SqliteEventBus,
    readonly topic: string,
    readonly group: string,
    readonly handler: (event: EventEnvelope) => Promise<void>,
    readonly consumer: string,
    opts: { leaseMs: number; retry: RetryOptions; pollIntervalMs: number; maxInFlight: number },
  ) {
    this.leaseMs = opts.leaseMs;
    this.retry = opts.retry;
    this.pollIntervalMs = opts.pollIntervalMs;
    this.maxInFlight = opts.maxInFlight;
  }

  start(): void {
    this.renewTimer = setInterval(() => {
      if (this.running.size > 0) this.bus.renew(this, this.running.values());
    }, Math.max(50, Math.floor(this.leaseMs / 3)));
    this.renewTimer.unref();
    this.wake();
  }

  /** Stops claiming; handlers already running finish and acknowledge. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.pollTimer);
    if (this.immediate) clearImmediate(this.immediate);
    // Keep renewing the leases of running handlers until they settle.
    if (this.running.size === 0) clearInterval(this.renewTimer);
  }

  /** Polls soon (coalesced). */
  wake(): void {
    if (this.stopped || this.immediate) return;
    this.immediate = setImmediate(() => {
      this.immediate = undefined;
      this.poll();
    });
  }

  wakeAfter(ms: number): void {
    if (this.stopped) return;
    const t = setTimeout(() => this.wake(), ms + 1);
    t.unref();
  }

  private poll(): void {
    if (this.stopped) return;
    clearTimeout(this.pollTimer);
    const room = this.maxInFlight - this.running.size;
    if (room > 0) {
      let claims: Claim[] = [];
      try {
        claims = this.bus.claim(this, room);
      } catch (err) {
        this.bus.warn({ err, topic: this.topic, group: this.group }, 'could not claim events; will retry');
      }
      for (const c of claims) {
        this.running.set(c.seq, c);
        this.bus.run(this, c, () => {
          this.running.delete(c.seq);
          if (this.stopped && this.running.size === 0) clearInterval(this.renewTimer);
          // An acknowledgement may have freed the next event of the same key.
          this.wake();
        });
      }
    }
    this.pollTimer = setTimeout(() => this.poll(), this.pollIntervalMs);
    this.pollTimer.unref();
  }
}
