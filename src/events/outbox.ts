import { randomUUID } from 'node:crypto';
import { sql, type Expression, type ExpressionBuilder, type Kysely, type SqlBool } from 'kysely';
import type { Logger } from 'pino';
import { UnavailableError, ValidationError } from '../kernel/errors.js';
import { zodIssues } from '../kernel/validate.js';
import type { EventBus, EventEnvelope, OutboxDispatch, OutboxEntry, OutboxStore } from '../kernel/plugins.js';

export type { OutboxEntry } from '../kernel/plugins.js';

/** Creates the framework's own tables in a service's database. */
export async function createEventTables(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable('evolith_outbox')
    .ifNotExists()
    .addColumn('id', 'varchar(100)', (c) => c.primaryKey())
    .addColumn('topic', 'varchar(200)', (c) => c.notNull())
    .addColumn('payload', 'text', (c) => c.notNull())
    .addColumn('key', 'varchar(200)')
    .addColumn('traceparent', 'varchar(64)')
    .addColumn('deliver_at', 'bigint', (c) => c.notNull())
    // Microseconds, increasing within a process: the tie-break that keeps one key's events in order.
    .addColumn('created_at', 'bigint', (c) => c.notNull())
    .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('delivered_at', 'bigint')
    .addColumn('last_error', 'text')
    .execute();
  await db.schema
    .createIndex('evolith_outbox_due')
    .ifNotExists()
    .on('evolith_outbox')
    .columns(['delivered_at', 'deliver_at'])
    .execute();
  // Failed rows still waiting for their retry, by key (only those: it stays empty while the bus
  // takes every event), so a row can cheaply check that no earlier event of its key is waiting.
  await db.schema
    .createIndex('evolith_outbox_failed')
    .ifNotExists()
    .on('evolith_outbox')
    .columns(['key', 'created_at'])
    .where(sql.ref('delivered_at'), 'is', null)
    .where(sql.ref('attempts'), '>', sql.lit(0))
    .execute();
  await db.schema
    .createTable('evolith_inbox')
    .ifNotExists()
    .addColumn('id', 'varchar(100)', (c) => c.primaryKey())
    .addColumn('topic', 'varchar(200)', (c) => c.notNull())
    .addColumn('received_at', 'bigint', (c) => c.notNull())
    .execute();
}

let lastStamp = 0;

/**
 * Creation stamps in microseconds, strictly increasing within the process, so that events
 * written in the same millisecond keep their order.
 */
function creationStamp(): number {
  lastStamp = Math.max(lastStamp + 1, Date.now() * 1000);
  return lastStamp;
}

/** Writes validated events into the outbox table through `db` (the handler's transaction, if any). */
export async function writeOutbox(db: Kysely<any>, entries: readonly OutboxEntry[]): Promise<void> {
  const now = Date.now();
  const rows = entries.map((e) => {
    const parsed = e.event.schema.safeParse(e.payload);
    if (!parsed.success) {
      const issues = zodIssues(parsed.error);
      throw new ValidationError(`invalid payload for event ${e.event.topic}: ${issues.map((i) => `${i.path} ${i.message}`).join('; ')}`, issues);
    }
    return {
      id: e.id ?? randomUUID(),
      topic: e.event.topic,
      payload: JSON.stringify(parsed.data),
      key: e.key ?? null,
      traceparent: e.traceparent ?? null,
      deliver_at: e.deliverAt ?? now,
      created_at: creationStamp(),
      attempts: 0,
    };
  });
  if (rows.length === 0) return;
  await db
    .insertInto('evolith_outbox')
    .values(rows)
    .onConflict((oc) => oc.column('id').doNothing())
    .execute();
}

interface OutboxRow {
  id: string;
  topic: string;
  payload: string;
  key: string | null;
  traceparent: string | null;
  deliver_at: number;
  created_at: number;
  attempts: number;
}

const BATCH = 200;
/** How last_error starts for a delivery that failed because the bus was down (not refused). */
const UNAVAILABLE_MARK = 'bus unavailable: ';
const MAX_IDLE_MS = 5_000;
const RETENTION_MS = 60 * 60 * 1000;

/**
 * Delivers a service's committed outbox rows to the event bus: due events at once, durable
 * timers when their time comes (also after a restart), failed deliveries again with backoff.
 * A row is marked delivered only after the bus accepted it, so delivery is at least once.
 */
/**
 * A row that does not wait behind its key: it has no key, or no earlier row of its key failed
 * and waits for its retry. Such a wait keeps a key's events in order even when a later row is
 * due first.
 */
function notBlocked(eb: ExpressionBuilder<any, 'evolith_outbox'>, now: number): Expression<SqlBool> {
  return eb.or([
    eb('key', 'is', null),
    eb.not(
      eb.exists(
        eb
          .selectFrom('evolith_outbox as earlier')
          .select('earlier.id')
          .whereRef('earlier.key', '=', 'evolith_outbox.key')
          // As the partial index evolith_outbox_failed says it, so that it is used.
          .where('earlier.delivered_at', 'is', null)
          .where('earlier.attempts', '>', sql.lit(0))
          .where('earlier.deliver_at', '>', now)
          .whereRef('earlier.created_at', '<', 'evolith_outbox.created_at'),
      ),
    ),
  ]);
}

export class OutboxDispatcher implements OutboxDispatch {
  private timer: NodeJS.Timeout | undefined;
  /** When the armed timer fires; Infinity while none is armed (a pass is running or pending). */
  private wakeAt = Infinity;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = true;
  private lastPurge = 0;
  /** A delivery failed because the bus was down, and none has got through since. */
  private busDown = false;

  constructor(
    private readonly db: Kysely<any>,
    private readonly service: string,
    private readonly bus: EventBus,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.stopped = false;
    this.poke();
  }

  /**
   * Tells the dispatcher that a commit wrote an event due at `dueAt`. A timer due after the
   * armed wake-up needs no pass now: that wake-up re-reads the next due time.
   */
  notify(dueAt: number): void {
    if (dueAt > Date.now() && dueAt >= this.wakeAt) return;
    this.poke();
  }

  /** Asks for a dispatch pass soon. */
  poke(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.loop().finally(() => {
      this.running = undefined;
      if (this.again && !this.stopped) {
        this.again = false;
        this.poke();
      }
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  private async loop(): Promise<void> {
    clearTimeout(this.timer);
    this.wakeAt = Infinity;
    try {
      do {
        this.again = false;
        const n = await this.dispatchDue();
        if (n === BATCH) this.again = true;
      } while (this.again && !this.stopped);
      await this.purge();
    } catch (err) {
      // Its database unreachable for now: one line, no stack; the next pass tries again.
      if (err instanceof UnavailableError) this.log.warn({ err: err.message }, 'outbox dispatch failed; retrying');
      else this.log.error({ err }, 'outbox dispatch failed; retrying');
    }
    if (!this.stopped) await this.armTimer();
  }

  private async armTimer(): Promise<void> {
    let wait = MAX_IDLE_MS;
    try {
      const now = Date.now();
      // Rows due now but waiting behind a failed row of their key do not count (that row, due
      // later, does): waking for them would find nothing to send, again and again.
      const next = await this.db
        .selectFrom('evolith_outbox')
        .select((eb) => eb.fn.min('deliver_at').as('next'))
        .where('delivered_at', 'is', null)
        .where((eb) => eb.or([eb('deliver_at', '>', now), notBlocked(eb, now)]))
        .executeTakeFirst();
      if (next?.next != null) wait = Math.min(wait, Math.max(0, Number(next.next) - Date.now()));
    } catch (err) {
      this.log.warn({ err: err instanceof UnavailableError ? err.message : err }, 'outbox could not read its next due time');
    }
    // Something committed while this pass ran: poke() goes round once more instead of sleeping.
    if (this.stopped || this.again) return;
    this.wakeAt = Date.now() + wait;
    this.timer = setTimeout(() => this.poke(), wait);
    this.timer.unref();
  }

  private async dispatchDue(): Promise<number> {
    const now = Date.now();
    const rows = (await this.db
      .selectFrom('evolith_outbox')
      .selectAll()
      .where('delivered_at', 'is', null)
      .where('deliver_at', '<=', now)
      // A row of a key whose earlier event failed and waits for its retry waits too, even if
      // it was written after that failure (and so is due first): a key's events stay in order.
      .where((eb) => notBlocked(eb, now))
      // Written order, not due order: a batch that holds a row of a key also holds every
      // earlier due row of that key (a retried row is due later than rows written after it).
      .orderBy('created_at')
      // While the bus is down, one event at a time finds out when it is back (its publish waits
      // for the bus); the rest stay here, to leave together, every key at once, when it is.
      .limit(this.busDown ? 1 : BATCH)
      .execute()) as OutboxRow[];
    if (rows.length === 0) return 0;
    // Events sharing a key go out in order; different keys go out concurrently.
    const chains = new Map<string, OutboxRow[]>();
    for (const row of rows) {
      const k = row.key ?? row.id;
      const chain = chains.get(k);
      if (chain) chain.push(row);
      else chains.set(k, [row]);
    }
    await Promise.all(
      [...chains.values()].map(async (chain) => {
        for (const row of chain) {
          if (this.stopped) return;
          if (!(await this.deliver(row))) return;
        }
      }),
    );
    return rows.length;
  }

  private async deliver(row: OutboxRow): Promise<boolean> {
    const envelope: EventEnvelope = {
      id: row.id,
      topic: row.topic,
      source: this.service,
      payload: JSON.parse(row.payload),
      key: row.key ?? undefined,
      publishedAt: Math.floor(Number(row.created_at) / 1000),
      traceparent: row.traceparent ?? undefined,
    };
    try {
      await this.bus.publish(envelope);
      await this.db.updateTable('evolith_outbox').set({ delivered_at: Date.now() }).where('id', '=', row.id).execute();
      if (this.busDown) await this.busBack();
      return true;
    } catch (err) {
      const attempts = row.attempts + 1;
      const unavailable = err instanceof UnavailableError;
      // A bus that is down for now (its publish already waited for it up to its own timeout) is
      // tried again within a second, and at once when another event gets through (busBack); a
      // bus that refuses the event backs off up to a minute.
      if (unavailable) this.busDown = true;
      const backoff = Math.min(unavailable ? 1_000 : 60_000, 100 * 2 ** Math.min(attempts, 10)) * (0.5 + Math.random() / 2);
      this.log.warn({ err: unavailable ? err.message : err, event: row.topic, id: row.id, attempts }, 'event delivery failed; will retry');
      const message = String((err as Error)?.message ?? err);
      // Events behind this one on its key wait for it (see dispatchDue): none overtakes it.
      await this.db
        .updateTable('evolith_outbox')
        .set({ attempts, deliver_at: Date.now() + Math.round(backoff), last_error: (unavailable ? `${UNAVAILABLE_MARK}${message}` : message).slice(0, 1000) })
        .where('id', '=', row.id)
        .execute();
      return false;
    }
  }

  /**
   * An event got through after the bus was down: the events that failed meanwhile are due now,
   * not at their backoff, so the backlog leaves as soon as the bus is back.
   */
  private async busBack(): Promise<void> {
    this.busDown = false;
    const now = Date.now();
    const r = await this.db
      .updateTable('evolith_outbox')
      .set({ deliver_at: now })
      .where('delivered_at', 'is', null)
      .where('attempts', '>', sql.lit(0))
      .where('deliver_at', '>', now)
      .where('last_error', 'like', `${UNAVAILABLE_MARK}%`)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows ?? 0n) > 0) this.again = true;
  }

  private async purge(): Promise<void> {
    const now = Date.now();
    if (now - this.lastPurge < RETENTION_MS / 4) return;
    this.lastPurge = now;
    await this.db.deleteFrom('evolith_outbox').where('delivered_at', '<', now - RETENTION_MS).execute();
    await this.db.deleteFrom('evolith_inbox').where('received_at', '<', now - 7 * 24 * RETENTION_MS).execute();
  }
}

/** Inserts the inbox row for a delivery; false when that delivery was already applied. */
export async function claimDelivery(db: Kysely<any>, id: string, topic: string): Promise<boolean> {
  const r = await db
    .insertInto('evolith_inbox')
    .values({ id, topic, received_at: Date.now() })
    .onConflict((oc) => oc.column('id').doNothing())
    .executeTakeFirst();
  return Number(r.numInsertedOrUpdatedRows ?? 0n) > 0;
}

export async function alreadyDelivered(db: Kysely<any>, id: string): Promise<boolean> {
  const row = await db.selectFrom('evolith_inbox').select('id').where('id', '=', id).executeTakeFirst();
  return row !== undefined;
}

/** The outbox and inbox as tables in each service's own database (SQLite or PostgreSQL, through Kysely). */
export const sqlOutbox: OutboxStore = {
  prepare: createEventTables,
  write: writeOutbox,
  claimDelivery,
  alreadyDelivered,
  dispatcher: (db, service, bus, log) => new OutboxDispatcher(db, service, bus, log),
};
