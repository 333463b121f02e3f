/**
 * How far a deployment's events are behind: what services committed but have not yet handed to
 * the bus (their outboxes), and what the bus holds that a subscriber has not yet handled. Read
 * from the stores themselves, beside the running processes, so it answers for every
 * architecture and needs nothing from them: `evolith status` prints it, and a caller that must
 * know every event so far has taken effect waits for both to reach zero.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { sql, type Kysely } from 'kysely';
import { sqliteBusFile, storageFor } from '../worker/backends.js';
import type { Topology } from './topology.js';

export type EventsSetting = Topology['events'];

export interface EventBacklog {
  /** Per service: events it committed that are due and not yet accepted by the bus. */
  readonly unsent: Readonly<Record<string, number>>;
  /**
   * Events the bus accepted that a subscribing group has not yet handled (acknowledged). Zero
   * for in-process delivery, where an event counts as sent only once every handler took it.
   */
  readonly unhandled: number;
}

export interface BacklogSource {
  readonly data: string;
  readonly storage: Topology['storage'];
  /** The bus the deployment really uses (a monolith delivers in process whatever the file says). */
  readonly events: EventsSetting;
  readonly services: readonly string[];
}

export function totalBacklog(b: EventBacklog): number {
  return Object.values(b.unsent).reduce((a, n) => a + n, 0) + b.unhandled;
}

/**
 * Runs `read` on each service's store, one after the other, and collects what it returns. A
 * service whose SQLite file does not exist yet, or whose store has no outbox table (it never
 * used events), gets `empty`: it has committed nothing. PostgreSQL gets one connection attempt,
 * so a reading says the database is unreachable rather than wait for it.
 */
export async function readOutboxes<T>(source: BacklogSource, read: (db: Kysely<any>) => Promise<T>, empty: T): Promise<Record<string, T>> {
  const s = source.storage;
  const storage = await storageFor({ data: source.data, storage: typeof s === 'object' && s.driver === 'postgres' ? { ...s, startAttempts: 1 } : s }, 1);
  const out: Record<string, T> = {};
  for (const service of source.services) {
    if ((s === 'sqlite' || s.driver === 'sqlite') && !existsSync(join(source.data, `${service}.sqlite`))) {
      out[service] = empty;
      continue;
    }
    const store = await storage.open(service);
    try {
      out[service] = await read(store.db).catch((err: Error) => {
        if (/no such table|does not exist/.test(err.message)) return empty;
        throw err;
      });
    } finally {
      await store.close();
    }
  }
  return out;
}

function unsent(source: BacklogSource): Promise<Record<string, number>> {
  return readOutboxes(
    source,
    async (db) => {
      const r = await sql<{ n: number | string }>`select count(*) as n from evolith_outbox where delivered_at is null and deliver_at <= ${Date.now()}`.execute(db);
      return Number(r.rows[0]?.n ?? 0);
    },
    0,
  );
}

/**
 * Runs `read` on the embedded bus's file, opened read-only; undefined when the file or its
 * tables do not exist yet (no service subscribed or published), so nothing waits there.
 */
export async function readSqliteBus<T>(file: string, read: (db: Database.Database) => T): Promise<T | undefined> {
  if (!existsSync(file)) return undefined;
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    db.pragma('busy_timeout = 5000');
    const tables = db.prepare("select count(*) from sqlite_master where type = 'table' and name in ('evolith_bus_groups', 'evolith_bus_unacked')").pluck().get() as number;
    if (tables < 2) return undefined;
    return read(db);
  } finally {
    db.close();
  }
}

async function unhandledOnSqliteBus(file: string): Promise<number> {
  const n = await readSqliteBus(file, (db) => {
    // Taken but not acknowledged, plus not yet taken: past each group's cursor on its topic.
    const unacked = db.prepare('select count(*) from evolith_bus_unacked').pluck().get() as number;
    const untaken = db
      .prepare('select coalesce(sum((select count(*) from evolith_bus_events e where e.topic = g.topic and e.seq > g.cursor_seq)), 0) from evolith_bus_groups g')
      .pluck()
      .get() as number;
    return unacked + untaken;
  });
  return n ?? 0;
}

/** A durable consumer of the stream, with its filter subject and the events it has not acknowledged. */
export interface StreamConsumer {
  readonly name: string;
  readonly subject: string;
  /** Not yet delivered plus delivered and not yet acknowledged. */
  readonly waiting: number;
}

/** The stream's durable consumers; none when the stream does not exist yet. */
export async function streamConsumers(url: string, stream: string): Promise<StreamConsumer[]> {
  const { connect } = await import('@nats-io/transport-node');
  const { jetstreamManager } = await import('@nats-io/jetstream');
  const nc = await connect({ servers: url.replace(/^nats:\/\//, ''), timeout: 5_000, maxReconnectAttempts: 0 });
  try {
    const jsm = await jetstreamManager(nc);
    const out: StreamConsumer[] = [];
    try {
      for await (const c of jsm.consumers.list(stream)) {
        out.push({ name: c.name, subject: c.config.filter_subject ?? '', waiting: c.num_pending + c.num_ack_pending });
      }
    } catch (err) {
      if (/stream not found/i.test((err as Error).message)) return [];
      throw err;
    }
    return out;
  } finally {
    await nc.close();
  }
}

async function unhandledOnNats(url: string, stream: string): Promise<number> {
  return (await streamConsumers(url, stream)).reduce((a, c) => a + c.waiting, 0);
}

async function unhandled(source: BacklogSource): Promise<number> {
  const e = source.events;
  if (e === 'memory') return 0;
  if (e === 'sqlite' || e.driver === 'sqlite') {
    return unhandledOnSqliteBus(sqliteBusFile(source));
  }
  return unhandledOnNats(e.url, e.stream);
}

/**
 * Reads the outboxes first, then the bus: an event an outbox no longer holds is already on the
 * bus, so a reading of zero and zero means every event committed before it was handled, except
 * those its handlers committed meanwhile (two such readings in a row rule those out too).
 */
export async function eventBacklog(source: BacklogSource): Promise<EventBacklog> {
  const u = await unsent(source);
  return { unsent: u, unhandled: await unhandled(source) };
}
