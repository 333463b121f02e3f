import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { migrate } from '../../../src/storage/migrate.js';
import { SqliteStorage } from '../../../src/storage/sqlite.js';
import { username } from '../contracts/fields.js';
import { accountDatabase } from '../services/account-db.js';
import { authDatabase } from '../services/auth-db.js';
import { normaliseUsername, usernameKey, usernameProblems } from './username.js';

describe('usernameKey', () => {
  it('gives names people would read as icyfenix the key of icyfenix', () => {
    const key = usernameKey('icyfenix');
    expect(key).toBe('icyfenix');
    for (const lookAlike of [
      'ICYFENIX',
      'IcyFenix',
      '\u0456cyfenix', // Cyrillic і
      'icyfen\u0456x',
      '\u0456\u0441\u0443fen\u0456\u0445', // Cyrillic і, с, у, х
      'ｉｃｙｆｅｎｉｘ', // full width
      'i\u0307cyfenix', // i with a combining dot
      'icyfénix',
      '\u03b9cyfenix', // Greek iota
      'ıcyfenix', // dotless i
    ]) {
      expect(usernameKey(lookAlike), lookAlike).toBe(key);
    }
  });

  it('keeps names that read differently apart', () => {
    const keys = ['icyfenix', 'icyfenix2', 'icy_fenix', 'icyfenlx', '周志明', 'zhou'].map(usernameKey);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it('stores NFKC forms', () => {
    expect(normaliseUsername(' ｉｃｙ ')).toBe('icy');
    expect(normaliseUsername('ﬁsh')).toBe('fish');
  });
});

describe('usernameProblems', () => {
  it('refuses control, invisible and path characters, naming each problem', () => {
    expect(usernameProblems('icy\u0000fenix')).toEqual(['username must not contain control characters']);
    expect(usernameProblems('icy\nfenix')).toEqual(['username must not contain control characters']);
    for (const invisible of ['\u200b', '\u200d', '\u2060', '\ufeff', '\u202e', '\u00ad']) {
      expect(usernameProblems(`icy${invisible}fenix`), JSON.stringify(invisible)).toEqual([
        'username must not contain invisible formatting characters (zero-width, direction marks)',
      ]);
    }
    expect(usernameProblems('../../etc')).toEqual(['username must not contain / or \\', "username must not contain '..'"]);
    expect(usernameProblems('a\\b')).toEqual(['username must not contain / or \\']);
    expect(usernameProblems('a..b')).toEqual(["username must not contain '..'"]);
    expect(usernameProblems('周志明')).toEqual([]);
    expect(usernameProblems('j.doe-1_x')).toEqual([]);
  });

  it('the username field normalises, then lists every problem', () => {
    expect(username().parse('  ｉｃｙ  ')).toBe('icy');
    const r = username().safeParse('..\u0000/');
    expect(r.success).toBe(false);
    expect(r.error!.issues.map((i) => i.message)).toEqual([
      'username must not contain control characters',
      'username must not contain / or \\',
      "username must not contain '..'",
    ]);
    expect(username().safeParse('').error!.issues[0]!.message).toBe('username is required');
    expect(username().safeParse(undefined).error!.issues[0]!.message).toBe('username is required');
  });
});

describe('the username_key migrations', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const [service, spec, table, extra] of [
    ['account', accountDatabase, 'account', (i: number) => ({ id: i, name: 'n' })],
    ['auth', authDatabase, 'credential', () => ({ password_hash: 'x', roles: 'ROLE_USER' })],
  ] as const) {
    it(`keys the ${table} rows already stored, keeping old rows whose names collide reachable`, async () => {
      dir = mkdtempSync(join(tmpdir(), 'username-key-'));
      const store = await new SqliteStorage(dir).open(service);
      try {
        const { '001_init': init, ...later } = spec.migrations;
        expect(await migrate(store.db, service, { '001_init': init! })).toEqual(['001_init']);
        const names = ['Bob', 'bob', '\u0456cyfenix', 'icyfenix'];
        for (const [i, name] of names.entries()) await store.db.insertInto(table).values({ username: name, ...extra(i + 1) }).execute();

        expect(await migrate(store.db, service, { '001_init': init!, ...later })).toContain('002_username_key');
        const rows = await store.db.selectFrom(table).select(['username', 'username_key']).execute();
        const keyOf = Object.fromEntries(rows.map((r) => [r.username, r.username_key]));
        // The first of each colliding pair keeps the key; the other gets one no new name can have.
        // ('Bob' comes first by id and by username alike.)
        expect(keyOf.Bob).toBe('bob');
        expect(keyOf.bob).toBe('bob/registered-before-keys/bob');
        const icy = [keyOf['\u0456cyfenix'], keyOf.icyfenix];
        expect(icy).toContain('icyfenix');
        expect(icy.filter((k) => k === 'icyfenix')).toHaveLength(1);
        // From now on the key is unique.
        await expect(
          store.db.insertInto(table).values({ username: 'BOB', username_key: 'bob', ...extra(99) }).execute(),
        ).rejects.toMatchObject({ code: 'SQLITE_CONSTRAINT_UNIQUE' });
      } finally {
        await store.close();
      }
    });
  }
});
