/**
 * A file written by the earlier layout of the SQLite bus (a delivery row per event and group,
 * the id under a UNIQUE constraint) keeps every guarantee once a current bus opens it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, expect, test } from 'vitest';
import type { EventEnvelope } from '../kernel/plugins.js';
import { envelope, eventually, sleep } from './bus-contract.test-helpers.js';
import { SqliteEventBus } from './sqlite-bus.js';

/** The earlier layout, as that version created it. */
const EARLIER_SCHEMA = `
CREATE TABLE evolith_bus_events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  topic TEXT NOT NULL,
  key TEXT,
  envelope TEXT NOT NULL,
  stored_at INTEGER NOT NULL
);
CREATE INDEX evolith_bus_events_topic ON evolith_bus_events (topic, seq);
CREATE INDEX evolith_bus_events_stored ON evolith_bus_events (stored_at);
CREATE TABLE evolith_bus_groups (
  topic TEXT NOT NULL,
  grp TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (topic, grp)
) WITHOUT ROWID;
CREATE TABLE evolith_bus_deliveries (
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
CREATE INDEX evolith_bus_pending ON evolith_bus_deliveries (grp, topic, seq) WHERE acked_at IS NULL;
CREATE INDEX evolith_bus_pending_key ON evolith_bus_deliveries (grp, topic, key, seq) WHERE acked_at IS NULL AND key IS NOT NULL;
`;

const dirs: string[] = [];
const buses: SqliteEventBus[] = [];
afterEach(async () => {
  for (const b of buses.splice(0)) await b.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

test('a file in the earlier layout is upgraded in place: pending events arrive in key order, acknowledged ones do not, ids stay known', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'evolith-bus-upgrade-'));
  dirs.push(dir);
  const file = join(dir, 'events.sqlite');
  const topic = 'orders.placed';
  const old = [envelope(topic, { n: 1 }, 'k1'), envelope(topic, { n: 2 }, 'k1'), envelope(topic, { n: 3 }, 'k2'), envelope(topic, { n: 4 }), envelope(topic, { n: 5 }, 'k1')];
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.exec(EARLIER_SCHEMA);
  const now = Date.now();
  const insert = db.prepare('INSERT INTO evolith_bus_events (id, topic, key, envelope, stored_at) VALUES (?, ?, ?, ?, ?)');
  for (const e of old) insert.run(e.id, e.topic, e.key ?? null, JSON.stringify(e), now);
  // Later events were purged already: the sequence had gone further than the rows that are left.
  db.prepare("UPDATE sqlite_sequence SET seq = 10 WHERE name = 'evolith_bus_events'").run();
  db.exec(`INSERT INTO evolith_bus_groups VALUES ('${topic}', 'billing', ${now}), ('${topic}', 'mailer', ${now})`);
  const deliver = db.prepare('INSERT INTO evolith_bus_deliveries (seq, grp, topic, key, claimed_by, lease_until, attempts, acked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)');
  old.forEach((e, i) => {
    const seq = i + 1;
    // billing: the first acknowledged, the second leased by a consumer that died, the rest pending.
    if (seq === 1) deliver.run(seq, 'billing', topic, e.key ?? null, null, null, 1, now);
    else if (seq === 2) deliver.run(seq, 'billing', topic, e.key ?? null, 'gone:1:dead', now - 1_000, 1, null);
    else deliver.run(seq, 'billing', topic, e.key ?? null, null, null, 0, null);
    // mailer: everything acknowledged.
    deliver.run(seq, 'mailer', topic, e.key ?? null, null, null, 1, now);
  });
  db.close();

  const bus = new SqliteEventBus(file, { pollIntervalMs: 20, leaseMs: 1_000, synchronous: 'normal' });
  buses.push(bus);
  const billing: EventEnvelope[] = [];
  const mailer: EventEnvelope[] = [];
  bus.subscribe(topic, 'billing', async (e) => {
    billing.push(e);
  });
  bus.subscribe(topic, 'mailer', async (e) => {
    mailer.push(e);
  });
  await eventually(() => expect(billing.map((e) => e.id).sort()).toEqual(old.slice(1).map((e) => e.id).sort()));
  const k1 = billing.filter((e) => e.key === 'k1').map((e) => (e.payload as { n: number }).n);
  expect(k1).toEqual([2, 5]);
  expect(billing[0]).toEqual(old[1]);

  // A re-published old id is still a duplicate; a new event continues the sequence and the key.
  await bus.publish(old[0]!);
  const fresh = envelope(topic, { n: 6 }, 'k1');
  await bus.publish(fresh);
  await eventually(() => expect(mailer.map((e) => e.id)).toEqual([fresh.id]));
  await eventually(() => expect(billing.at(-1)?.id).toBe(fresh.id));
  await sleep(100);
  expect(billing).toHaveLength(old.length);

  const check = new Database(file, { readonly: true });
  try {
    expect(check.prepare("SELECT name FROM sqlite_master WHERE name = 'evolith_bus_deliveries'").all()).toEqual([]);
    expect(check.prepare('SELECT seq FROM evolith_bus_events WHERE id = ?').pluck().get(fresh.id)).toBe(11);
    expect(check.prepare('SELECT COUNT(*) FROM evolith_bus_events').pluck().get()).toBe(old.length + 1);
  } finally {
    check.close();
  }
});
