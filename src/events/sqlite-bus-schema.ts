/**
 * The tables of the SQLite event bus, the upgrade of files written by earlier versions, and the
 * prepared statements the bus runs on them.
 *
 * `evolith_bus_events` holds each event once, with a sequence; publishing writes nothing else.
 * Re-published ids are found through a hash of the id: with ids as random as UUIDs nearly
 * every insert into the id index dirties a different page, which the commit writes out whole,
 * and an index of small integers has about half as many pages as one of the id strings.
 * `evolith_bus_groups` has one row per (topic, group) with the group's cursor: the highest
 * sequence the group has taken. Every event of the topic at or below the cursor is either
 * acknowledged by the group or has a row in `evolith_bus_unacked` — leased to a consumer,
 * waiting out a redelivery backoff, or waiting behind an earlier event of its key. Claiming
 * moves the cursor forward and adds rows there; acknowledging deletes them. That table stays as
 * small as the events in progress, so claims and acknowledgements touch a few hot pages.
 */
import type Database from 'better-sqlite3';

/** AUTOINCREMENT: a sequence is never reused, even once every event was purged, or cursors would skip new events. */
const EVENTS_TABLE = (name: string) => `
CREATE TABLE IF NOT EXISTS ${name} (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL,
  id_hash INTEGER NOT NULL,
  topic TEXT NOT NULL,
  key TEXT,
  envelope TEXT NOT NULL,
  stored_at INTEGER NOT NULL
);`;

const TABLES = `
${EVENTS_TABLE('evolith_bus_events')}
CREATE INDEX IF NOT EXISTS evolith_bus_events_id ON evolith_bus_events (id_hash);
CREATE INDEX IF NOT EXISTS evolith_bus_events_topic ON evolith_bus_events (topic, seq);
CREATE TABLE IF NOT EXISTS evolith_bus_groups (
  topic TEXT NOT NULL,
  grp TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  cursor_seq INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (topic, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evolith_bus_unacked (
  grp TEXT NOT NULL,
  topic TEXT NOT NULL,
  seq INTEGER NOT NULL,
  key TEXT,
  available_at INTEGER NOT NULL DEFAULT 0,
  claimed_by TEXT,
  lease_until INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  PRIMARY KEY (grp, topic, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS evolith_bus_unacked_key ON evolith_bus_unacked (grp, topic, key, seq) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS evolith_bus_unacked_free ON evolith_bus_unacked (grp, topic, seq) WHERE lease_until IS NULL;
`;

/**
 * Files from before the id hash kept the id under a UNIQUE constraint, which only a new table
 * drops: the events are copied over, and the sequence carries on where it was.
 */
function rebuildEvents(db: Database.Database): void {
  const last = (db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'evolith_bus_events'").pluck().get() as number | undefined) ?? 0;
  db.exec(`
    DROP TABLE IF EXISTS evolith_bus_events_next;
    ${EVENTS_TABLE('evolith_bus_events_next')}
    INSERT INTO evolith_bus_events_next (seq, id, id_hash, topic, key, envelope, stored_at)
      SELECT seq, id, evolith_id_hash(id), topic, key, envelope, stored_at FROM evolith_bus_events ORDER BY seq;
    DROP TABLE evolith_bus_events;
    ALTER TABLE evolith_bus_events_next RENAME TO evolith_bus_events;
    DELETE FROM sqlite_sequence WHERE name = 'evolith_bus_events';`);
  const max = (db.prepare('SELECT MAX(seq) FROM evolith_bus_events').pluck().get() as number | null) ?? 0;
  db.prepare("INSERT INTO sqlite_sequence (name, seq) VALUES ('evolith_bus_events', ?)").run(Math.max(last, max));
}

/**
 * Files from before the cursor kept a delivery row per event and group, acknowledged ones
 * included. The unacknowledged rows move to `evolith_bus_unacked`; each group's cursor starts
 * past the topic's last event, since every event already had its row.
 */
const UPGRADE_DELIVERIES = `
ALTER TABLE evolith_bus_groups ADD COLUMN cursor_seq INTEGER NOT NULL DEFAULT 0;
${TABLES}
INSERT OR IGNORE INTO evolith_bus_unacked (grp, topic, seq, key, available_at, claimed_by, lease_until, attempts, last_error)
  SELECT grp, topic, seq, key, available_at, claimed_by, lease_until, attempts, last_error
  FROM evolith_bus_deliveries WHERE acked_at IS NULL;
UPDATE evolith_bus_groups SET cursor_seq = coalesce((SELECT MAX(seq) FROM evolith_bus_events e WHERE e.topic = evolith_bus_groups.topic), 0);
DROP TABLE evolith_bus_deliveries;
`;

/** Creates the tables, or brings a file written by an earlier version up to date (once, under the write lock). */
export function createSchema(db: Database.Database): void {
  db.function('evolith_id_hash', { deterministic: true }, (id: unknown) => idHash(String(id)));
  db.transaction(() => {
    const columns = db.prepare("SELECT name FROM pragma_table_info('evolith_bus_events')").pluck().all() as string[];
    if (columns.length > 0 && !columns.includes('id_hash')) rebuildEvents(db);
    const deliveries = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'evolith_bus_deliveries'").get() !== undefined;
    db.exec(deliveries ? UPGRADE_DELIVERIES : TABLES);
  }).immediate();
}

/** cyrb53: a fast 53-bit string hash, the same in every process and every version. */
export function idHash(s: string): number {
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

/** First of its key: no earlier unacknowledged event of the same key (any such event sits at or below the cursor, so in this table). */
const FIRST_OF_KEY = `(u.key IS NULL OR NOT EXISTS (
    SELECT 1 FROM evolith_bus_unacked p WHERE p.grp = u.grp AND p.topic = u.topic AND p.key = u.key AND p.seq < u.seq))`;

/**
 * A group's unacknowledged events that may be claimed now, oldest first: not leased (waiting
 * for their key, or released by a handler that threw), past their backoff, first of their key.
 * Most of the time there are none, and the partial index makes finding that out cheap.
 */
const FREE = `
SELECT u.seq FROM evolith_bus_unacked u INDEXED BY evolith_bus_unacked_free
WHERE u.grp = @grp AND u.topic = @topic AND u.lease_until IS NULL AND u.available_at <= @now AND ${FIRST_OF_KEY}
ORDER BY u.seq
LIMIT @limit`;

/** Events whose lease ran out (their consumer died or stalled) and that are first of their key. */
const EXPIRED = `
SELECT u.seq FROM evolith_bus_unacked u
WHERE u.grp = @grp AND u.topic = @topic AND u.lease_until <= @now AND u.available_at <= @now AND ${FIRST_OF_KEY}
ORDER BY u.seq
LIMIT @limit`;

// Named here because type declarations (dist/*.d.ts) cannot name better-sqlite3's own statement type.
type StatementName =
  | 'insertEvent'
  | 'known'
  | 'hasGroups'
  | 'registerGroup'
  | 'cursor'
  | 'setCursor'
  | 'after'
  | 'keyBusy'
  | 'take'
  | 'wait'
  | 'free'
  | 'expiredLeases'
  | 'lease'
  | 'envelope'
  | 'ack'
  | 'release'
  | 'unclaim'
  | 'renew'
  | 'oldest'
  | 'deleteEvent';
export type Statements = Record<StatementName, Database.Statement<unknown[], unknown>>;

/** Every statement the bus runs, prepared once per connection. */
export function prepareStatements(db: Database.Database): Statements {
  return {
    insertEvent: db.prepare('INSERT INTO evolith_bus_events (id, id_hash, topic, key, envelope, stored_at) VALUES (?, ?, ?, ?, ?, ?)'),
    // Equal hashes of different ids are possible: the id itself decides.
    known: db.prepare('SELECT 1 FROM evolith_bus_events WHERE id_hash = ? AND id = ?').pluck(),
    hasGroups: db.prepare('SELECT 1 FROM evolith_bus_groups WHERE topic = ? LIMIT 1').pluck(),
    registerGroup: db.prepare('INSERT INTO evolith_bus_groups (topic, grp, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING'),
    cursor: db.prepare('SELECT cursor_seq FROM evolith_bus_groups WHERE topic = ? AND grp = ?').pluck(),
    setCursor: db.prepare('UPDATE evolith_bus_groups SET cursor_seq = ? WHERE topic = ? AND grp = ?'),
    /** Events of a topic past a cursor, oldest first. */
    after: db.prepare('SELECT seq, key, envelope FROM evolith_bus_events WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?'),
    keyBusy: db.prepare('SELECT 1 FROM evolith_bus_unacked WHERE grp = ? AND topic = ? AND key = ? LIMIT 1').pluck(),
    take: db.prepare('INSERT INTO evolith_bus_unacked (grp, topic, seq, key, claimed_by, lease_until, attempts) VALUES (?, ?, ?, ?, ?, ?, 1)'),
    wait: db.prepare('INSERT INTO evolith_bus_unacked (grp, topic, seq, key) VALUES (?, ?, ?, ?)'),
    free: db.prepare(FREE).pluck(),
    expiredLeases: db.prepare(EXPIRED).pluck(),
    lease: db.prepare(
      `UPDATE evolith_bus_unacked SET claimed_by = @consumer, lease_until = @leaseUntil, attempts = attempts + 1
       WHERE grp = @grp AND topic = @topic AND seq = @seq
       RETURNING attempts`,
    ).pluck(),
    envelope: db.prepare('SELECT envelope FROM evolith_bus_events WHERE seq = ?').pluck(),
    // Fenced like release: a consumer whose lease ran out and was taken over does not free the
    // event (and so its key's next one) while the consumer that took it over still runs it.
    ack: db.prepare(
      `DELETE FROM evolith_bus_unacked
       WHERE grp = @grp AND topic = @topic AND seq = @seq AND claimed_by = @consumer AND attempts = @attempt`,
    ),
    // Fenced by (claimed_by, attempts): a consumer whose lease was taken over must not undo the new claim.
    release: db.prepare(
      `UPDATE evolith_bus_unacked SET claimed_by = NULL, lease_until = NULL, available_at = @availableAt, last_error = @error
       WHERE grp = @grp AND topic = @topic AND seq = @seq AND claimed_by = @consumer AND attempts = @attempt`,
    ),
    // Never ran, so the attempt does not count; fenced like release.
    unclaim: db.prepare(
      `UPDATE evolith_bus_unacked SET claimed_by = NULL, lease_until = NULL, attempts = attempts - 1
       WHERE grp = @grp AND topic = @topic AND seq = @seq AND claimed_by = @consumer AND attempts = @attempt`,
    ),
    renew: db.prepare(
      `UPDATE evolith_bus_unacked SET lease_until = @leaseUntil
       WHERE grp = @grp AND topic = @topic AND seq = @seq AND claimed_by = @consumer AND attempts = @attempt`,
    ),
    /**
     * The oldest events in sequence order (the order they were stored in, so no index on the
     * time is kept up for this), each with whether it is past the retention and whether every
     * group of its topic has taken and acknowledged it.
     */
    oldest: db.prepare(
      `SELECT e.seq, e.stored_at < @cutoff AS old,
         NOT EXISTS (SELECT 1 FROM evolith_bus_groups g WHERE g.topic = e.topic AND g.cursor_seq < e.seq)
         AND NOT EXISTS (SELECT 1 FROM evolith_bus_groups g JOIN evolith_bus_unacked u ON u.grp = g.grp AND u.topic = g.topic AND u.seq = e.seq
                         WHERE g.topic = e.topic) AS done
       FROM evolith_bus_events e WHERE e.seq > @after ORDER BY e.seq LIMIT @limit`,
    ),
    deleteEvent: db.prepare('DELETE FROM evolith_bus_events WHERE seq = ?'),
  };
}
