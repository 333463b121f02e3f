/**
 * When a function with no instance must run anyway. Scaling to zero takes away the process that
 * would fire a service's durable timers, hand its committed events to the bus and handle the
 * events others publish for it; the data stays in the stores, so the platform reads them there
 * (as the event backlog does) and starts an instance when one of them comes due.
 *
 * A service's subscriber group on both buses is its name (the host subscribes as itself), so the
 * events waiting for a group are the events waiting for that service.
 */
import { sql } from 'kysely';
import { readOutboxes, readSqliteBus, streamConsumers, type BacklogSource, type StreamConsumer } from '../deploy/event-backlog.js';
import { sqliteBusFile } from '../worker/backends.js';

export interface Wakeup {
  readonly service: string;
  /** Epoch milliseconds; at or before the reading's `now` means at once. */
  readonly at: number;
  /**
   * What comes due first: `timer`, a durable timer (an outbox row scheduled, when it was
   * written, for later than that moment, and not yet tried); `outbox`, an event the service
   * committed and has not handed to the bus, or a timer whose delivery failed and waits for its
   * retry; `event`, events on the bus that its subscriber group has not handled.
   */
  readonly why: 'timer' | 'outbox' | 'event';
  /**
   * What the woken instance finds waiting when it starts (at `at`, or now if that is later):
   * the outbox rows due by then plus the events on the bus for its group.
   */
  readonly count: number;
}

interface OutboxReading {
  /** deliver_at of the earliest unsent row. */
  readonly next: number;
  readonly timer: boolean;
  /** Unsent rows due by the reading's `now`. */
  readonly dueNow: number;
  /** Unsent rows due by `next`, or by `now` if that is later. */
  readonly dueByNext: number;
}

function readOutbox(source: BacklogSource, now: number): Promise<Record<string, OutboxReading | undefined>> {
  return readOutboxes<OutboxReading | undefined>(
    source,
    async (db) => {
      // The index on (delivered_at, deliver_at) answers this without a scan.
      const first = await db
        .selectFrom('evolith_outbox')
        .select(['deliver_at', 'created_at', 'attempts'])
        .where('delivered_at', 'is', null)
        .orderBy('deliver_at')
        .limit(1)
        .executeTakeFirst();
      if (!first) return undefined;
      const next = Number(first.deliver_at);
      const horizon = Math.max(next, now);
      const r = await sql<{ due_now: number | string | null; due_by_next: number | string | null }>`
        select sum(case when deliver_at <= ${now} then 1 else 0 end) as due_now, count(*) as due_by_next
        from evolith_outbox where delivered_at is null and deliver_at <= ${horizon}`.execute(db);
      // emit() writes deliver_at = now before stamping created_at (µs), so a plain event never
      // has deliver_at past its creation; a retry pushes deliver_at on but counts an attempt.
      const timer = Number(first.attempts) === 0 && next * 1000 > Number(first.created_at);
      return { next, timer, dueNow: Number(r.rows[0]?.due_now ?? 0), dueByNext: Number(r.rows[0]?.due_by_next ?? 0) };
    },
    undefined,
  );
}

/** Events per subscriber group on the embedded bus: taken and not acknowledged, plus not yet taken. */
async function waitingOnSqliteBus(file: string): Promise<Map<string, number>> {
  const rows = await readSqliteBus(file, (db) =>
    db
      .prepare(
        `select grp, sum(n) as n from (
           select grp, count(*) as n from evolith_bus_unacked group by grp
           union all
           select g.grp, (select count(*) from evolith_bus_events e where e.topic = g.topic and e.seq > g.cursor_seq) from evolith_bus_groups g
         ) group by grp`,
      )
      .all() as { grp: string; n: number }[],
  );
  return new Map((rows ?? []).map((r) => [r.grp, r.n]));
}

/**
 * Events per service on NATS JetStream. A consumer's name is derived from (group, topic,
 * partition) with the group shortened and its characters replaced, so it is not parsed back:
 * each service's name is tried with each topic the consumer's subject could hold, and kept only
 * when it gives exactly that name.
 */
async function waitingOnNats(url: string, stream: string, services: readonly string[]): Promise<Map<string, number>> {
  const consumers = await streamConsumers(url, stream);
  if (consumers.length === 0) return new Map();
  const { durableName } = await import('../events/nats-bus.js');
  const owner = (c: StreamConsumer): string | undefined => {
    const p = /-p(\d+)$/.exec(c.name)?.[1];
    if (p === undefined || !c.subject.endsWith(`.${p}`)) return undefined;
    const base = c.subject.slice(0, -(p.length + 1));
    for (let i = base.indexOf('.'); i >= 0; i = base.indexOf('.', i + 1)) {
      const topic = base.slice(i + 1);
      const service = services.find((s) => durableName(s, topic, Number(p)) === c.name);
      if (service) return service;
    }
    return undefined;
  };
  const out = new Map<string, number>();
  for (const c of consumers) {
    if (c.waiting === 0) continue;
    const service = owner(c);
    if (service) out.set(service, (out.get(service) ?? 0) + c.waiting);
  }
  return out;
}

async function waitingEvents(source: BacklogSource): Promise<Map<string, number>> {
  const e = source.events;
  // In-process delivery holds nothing outside the process.
  if (e === 'memory') return new Map();
  if (e === 'sqlite' || e.driver === 'sqlite') return waitingOnSqliteBus(sqliteBusFile(source));
  return waitingOnNats(e.url, e.stream, source.services);
}

/**
 * For each of `source.services`: when it must next run even with no call for it, earliest
 * first. An unsent outbox row wakes it at the row's deliver_at (a durable timer's is in the
 * future); events waiting on the bus for its group wake it at `now`. Services with nothing
 * pending are absent. One reading: outboxes first, then the bus, like eventBacklog, opening
 * and closing what it needs.
 */
export async function nextWakeups(source: BacklogSource, now = Date.now()): Promise<Wakeup[]> {
  const outboxes = await readOutbox(source, now);
  const events = await waitingEvents(source);
  const out: Wakeup[] = [];
  for (const service of source.services) {
    const o = outboxes[service];
    const waiting = events.get(service) ?? 0;
    if (waiting > 0 && (!o || o.next > now)) {
      out.push({ service, at: now, why: 'event', count: waiting + (o?.dueNow ?? 0) });
    } else if (o) {
      out.push({ service, at: o.next, why: o.timer ? 'timer' : 'outbox', count: waiting > 0 ? o.dueNow + waiting : o.dueByNext });
    }
  }
  return out.sort((a, b) => a.at - b.at || a.service.localeCompare(b.service));
}
