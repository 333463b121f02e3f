import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Kysely } from 'evolith';
import type { ServiceStore } from '../../../src/kernel/plugins.js';
import { migrate } from '../../../src/storage/migrate.js';
import { SqliteStorage } from '../../../src/storage/sqlite.js';
import { authDatabase, type AuthDB } from './auth-db.js';
import { DEFAULT_THROTTLE, recordFailure, recordSuccess, refuseIfLocked, throttleSettings, TooManyAttempts, type ThrottleSettings } from './login-throttle.js';

const settings: ThrottleSettings = { ...DEFAULT_THROTTLE, loginFailuresPerUser: 3, loginFailuresPerAddress: 5, loginBackoffMs: 1_000, loginBackoffMaxMs: 8_000 };
const T0 = 1_800_000_000_000;

async function lockedFor(db: Kysely<AuthDB>, keys: { user: string; address?: string }, now: number): Promise<number | undefined> {
  try {
    await refuseIfLocked(db, keys, now);
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(TooManyAttempts);
    expect((err as TooManyAttempts).httpStatus).toBe(429);
    return (err as TooManyAttempts & { details: { retryAfterSeconds: number } }).details.retryAfterSeconds;
  }
}

describe('login throttle', () => {
  let dir: string;
  let store: ServiceStore;
  let db: Kysely<AuthDB>;
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'throttle-'));
    store = await new SqliteStorage(dir).open('auth');
    await migrate(store.db, 'auth', authDatabase.migrations);
    db = store.db as Kysely<AuthDB>;
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('locks a username at its limit, doubling the lock with each further failure up to the maximum', async () => {
    const alice = { user: 'alice' };
    await recordFailure(db, alice, settings, T0);
    await recordFailure(db, alice, settings, T0 + 10);
    expect(await lockedFor(db, alice, T0 + 20)).toBeUndefined();
    await recordFailure(db, alice, settings, T0 + 20); // the 3rd: locked for 1 s
    expect(await lockedFor(db, alice, T0 + 20)).toBe(1);
    expect(await lockedFor(db, alice, T0 + 1_019)).toBe(1);
    expect(await lockedFor(db, alice, T0 + 1_020)).toBeUndefined();
    const locks: number[] = [];
    let now = T0 + 1_020;
    for (let i = 0; i < 5; i++) {
      await recordFailure(db, alice, settings, now);
      locks.push((await lockedFor(db, alice, now))!);
      now += locks.at(-1)! * 1000;
    }
    expect(locks).toEqual([2, 4, 8, 8, 8]);
    // Another username is not affected.
    expect(await lockedFor(db, { user: 'bob' }, now - 1)).toBeUndefined();
  });

  it('a success forgets the username\'s failures, not the address\'s', async () => {
    const keys = { user: 'carol', address: '192.0.2.1' };
    for (let i = 0; i < 2; i++) await recordFailure(db, keys, settings, T0 + i);
    await recordSuccess(db, keys);
    await recordFailure(db, keys, settings, T0 + 10);
    await recordFailure(db, keys, settings, T0 + 11);
    expect(await lockedFor(db, { user: 'carol' }, T0 + 12)).toBeUndefined();
    // The address has 4 failures; the 5th locks it for every username.
    await recordFailure(db, { user: 'dave', address: '192.0.2.1' }, settings, T0 + 12);
    expect(await lockedFor(db, { user: 'erin', address: '192.0.2.1' }, T0 + 13)).toBe(1);
    expect(await lockedFor(db, { user: 'erin', address: '192.0.2.2' }, T0 + 13)).toBeUndefined();
    expect(await lockedFor(db, { user: 'erin' }, T0 + 13)).toBeUndefined();
  });

  it('forgets failures a while after the latest one', async () => {
    const frank = { user: 'frank' };
    await recordFailure(db, frank, settings, T0);
    await recordFailure(db, frank, settings, T0 + 1);
    const later = T0 + 1 + settings.loginFailuresForgottenMs + 1;
    await recordFailure(db, frank, settings, later);
    expect(await lockedFor(db, frank, later)).toBeUndefined();
    const row = await db.selectFrom('login_throttle').select('failures').where('key', '=', 'user:frank').executeTakeFirstOrThrow();
    expect(Number(row.failures)).toBe(1);
  });

  it('reads its settings from config.auth, refusing broken values by name', () => {
    expect(throttleSettings({})).toEqual(DEFAULT_THROTTLE);
    expect(throttleSettings({ loginFailuresPerUser: 3, loginBackoffMs: '250' })).toMatchObject({ loginFailuresPerUser: 3, loginBackoffMs: 250, loginFailuresPerAddress: 50 });
    expect(() => throttleSettings({ loginFailuresPerUser: 0 })).toThrow(/config\.auth\.loginFailuresPerUser must be a positive whole number/);
    expect(() => throttleSettings({ loginBackoffMs: 'soon' })).toThrow(/config\.auth\.loginBackoffMs/);
  });
});
