import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { SqliteEventBus } from '../events/sqlite-bus.js';
import type { ServiceStore } from '../kernel/plugins.js';
import { SqliteStorage } from './sqlite.js';

const mode = (path: string) => (statSync(path).mode & 0o777).toString(8).padStart(4, '0');

let root: string;
let savedUmask: number;
const opened: { close(): Promise<void> }[] = [];

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'evolith-modes-'));
  savedUmask = process.umask();
});
afterEach(async () => {
  for (const o of opened.splice(0)) await o.close().catch(() => undefined);
  process.umask(savedUmask);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

async function writeSomething(store: ServiceStore): Promise<void> {
  await sql`create table if not exists t (x integer)`.execute(store.db);
  await sql`insert into t (x) values (1)`.execute(store.db);
}

// 022 is the usual umask (files 0644 by default: readable by everyone); 0 leaves every bit
// asked for; 0277 would even take the owner's write bit off a directory made with 0700.
describe.each([0o022, 0o000, 0o277])('SQLite files under umask %o', (umask) => {
  test('a service database, its -wal and -shm are 0600, in directories made 0700', async () => {
    process.umask(umask);
    const parent = join(root, `storage-${umask.toString(8)}`);
    const dir = join(parent, 'data');
    const store = await new SqliteStorage(dir).open('auth');
    opened.push(store);
    await writeSomething(store);
    const file = join(dir, 'auth.sqlite');
    expect(existsSync(`${file}-wal`)).toBe(true);
    expect(existsSync(`${file}-shm`)).toBe(true);
    expect({ parent: mode(parent), dir: mode(dir), db: mode(file), wal: mode(`${file}-wal`), shm: mode(`${file}-shm`) }).toEqual({
      parent: '0700',
      dir: '0700',
      db: '0600',
      wal: '0600',
      shm: '0600',
    });
  });

  test('the event bus file, its -wal and -shm, its doorbell directory and bells are owner-only', async () => {
    process.umask(umask);
    const dir = join(root, `bus-${umask.toString(8)}`, 'events');
    const file = join(dir, 'events.sqlite');
    const bus = new SqliteEventBus(file, { pollIntervalMs: 20 });
    opened.push(bus);
    const seen = new Promise<void>((resolve) => bus.subscribe('orders.placed', 'billing', async () => resolve()));
    await bus.publish({ id: 'e1', topic: 'orders.placed', source: 'orders', payload: { n: 1 }, publishedAt: Date.now() });
    await seen;
    const bells = `${file}-bells`;
    const bellFiles = readdirSync(bells);
    expect(bellFiles.length).toBeGreaterThan(0);
    expect({
      dir: mode(dir),
      db: mode(file),
      wal: mode(`${file}-wal`),
      shm: mode(`${file}-shm`),
      bells: mode(bells),
      bellFiles: bellFiles.map((f) => mode(join(bells, f))),
    }).toEqual({ dir: '0700', db: '0600', wal: '0600', shm: '0600', bells: '0700', bellFiles: bellFiles.map(() => '0600') });
  });
});

describe('files made before', () => {
  test('an existing database readable by others, and its -wal, are narrowed to 0600 when opened', async () => {
    const dir = join(root, 'older');
    mkdirSync(dir, { mode: 0o755 });
    chmodSync(dir, 0o755);
    const file = join(dir, 'payment.sqlite');
    writeFileSync(file, '');
    writeFileSync(`${file}-wal`, '');
    chmodSync(file, 0o644);
    chmodSync(`${file}-wal`, 0o644);
    const store = await new SqliteStorage(dir).open('payment');
    opened.push(store);
    await writeSomething(store);
    expect([mode(file), mode(`${file}-wal`), mode(`${file}-shm`)]).toEqual(['0600', '0600', '0600']);
    // A directory the operator made and chose is left as it is.
    expect(mode(dir)).toBe('0755');
  });
});
