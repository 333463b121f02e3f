import { BusinessError, ConfigError, sql, type Kysely } from 'evolith';
import type { AuthDB } from './auth-db.js';

/**
 * How sign-ins are throttled, from `config.auth.*` in the topology file. The failure that
 * brings a username's count (or a client address's) to its limit locks it for
 * `loginBackoffMs`; each further failure locks it for twice as long as the one before, up to
 * `loginBackoffMaxMs`. While locked, sign-ins are answered 429 with Retry-After, without
 * looking at the password. Failures are forgotten `loginFailuresForgottenMs` after the latest,
 * and a successful sign-in forgets the username's at once.
 */
export interface ThrottleSettings {
  /** Failures in a row a username may have before it is locked. */
  readonly loginFailuresPerUser: number;
  /** Failures one client address may have (across usernames) before it is locked. */
  readonly loginFailuresPerAddress: number;
  /** The first lock; each further failure doubles it. */
  readonly loginBackoffMs: number;
  readonly loginBackoffMaxMs: number;
  readonly loginFailuresForgottenMs: number;
}

/** A person mistyping gets five tries; a shared address (an office, a NAT) gets more. */
export const DEFAULT_THROTTLE: ThrottleSettings = {
  loginFailuresPerUser: 5,
  loginFailuresPerAddress: 50,
  loginBackoffMs: 1_000,
  loginBackoffMaxMs: 15 * 60 * 1000,
  loginFailuresForgottenMs: 15 * 60 * 1000,
};

/** The settings from the auth service's config; a broken value fails the start with its name. */
export function throttleSettings(config: Readonly<Record<string, unknown>>): ThrottleSettings {
  const out: Record<string, number> = { ...DEFAULT_THROTTLE };
  for (const name of Object.keys(DEFAULT_THROTTLE) as (keyof ThrottleSettings)[]) {
    const value = config[name];
    if (value === undefined) continue;
    const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
    if (typeof n !== 'number' || !Number.isInteger(n) || n <= 0) {
      throw new ConfigError(`config.auth.${name} must be a positive whole number, not ${JSON.stringify(value)}`);
    }
    out[name] = n;
  }
  return out as unknown as ThrottleSettings;
}

/** What a throttled sign-in answers: 429, with the seconds to wait (the edge sends Retry-After). */
export class TooManyAttempts extends BusinessError {
  constructor(retryAfterSeconds: number) {
    super('too_many_attempts', `too many failed sign-ins; try again in ${retryAfterSeconds} s`, {
      httpStatus: 429,
      details: { retryAfterSeconds },
    });
  }
}

/** The counters a sign-in touches: its username's key and, when known, its client's address. */
export interface ThrottleKeys {
  /** The username's key; none for a name no account can have. */
  readonly user?: string;
  readonly address?: string;
}

function rows(keys: ThrottleKeys): { key: string; limit: (s: ThrottleSettings) => number }[] {
  const out: { key: string; limit: (s: ThrottleSettings) => number }[] = [];
  if (keys.user !== undefined) out.push({ key: `user:${keys.user}`, limit: (s: ThrottleSettings) => s.loginFailuresPerUser });
  if (keys.address) out.push({ key: `addr:${keys.address}`, limit: (s: ThrottleSettings) => s.loginFailuresPerAddress });
  return out;
}

/**
 * Refuses (429) while the username or the address is locked. The counters live in the auth
 * service's database, so every replica of the service sees the same ones.
 */
export async function refuseIfLocked(db: Kysely<AuthDB>, keys: ThrottleKeys, now = Date.now()): Promise<void> {
  if (rows(keys).length === 0) return;
  const locked = await db
    .selectFrom('login_throttle')
    .select('blocked_until')
    .where('key', 'in', rows(keys).map((r) => r.key))
    .where('blocked_until', '>', now)
    .execute();
  if (locked.length === 0) return;
  const until = Math.max(...locked.map((r) => Number(r.blocked_until)));
  throw new TooManyAttempts(Math.max(1, Math.ceil((until - now) / 1000)));
}

/** Counts a failed sign-in against the username and the address, locking them past their limit. */
export async function recordFailure(db: Kysely<AuthDB>, keys: ThrottleKeys, settings: ThrottleSettings, now = Date.now()): Promise<void> {
  // Counters nobody has failed on for a while are of no use any more.
  await db
    .deleteFrom('login_throttle')
    .where('last_failure_at', '<', now - settings.loginFailuresForgottenMs)
    .where('blocked_until', '<', now)
    .execute();
  for (const { key, limit } of rows(keys)) {
    // One statement, so failures counted by replicas at the same time all count.
    const { rows: counted } = await sql<{ failures: number | string }>`
      INSERT INTO login_throttle (key, failures, last_failure_at, blocked_until)
      VALUES (${key}, 1, ${now}, 0)
      ON CONFLICT (key) DO UPDATE SET
        failures = CASE WHEN login_throttle.last_failure_at < ${now - settings.loginFailuresForgottenMs} THEN 1 ELSE login_throttle.failures + 1 END,
        last_failure_at = ${now}
      RETURNING failures`.execute(db);
    const failures = Number(counted[0]!.failures);
    const over = failures - limit(settings);
    if (over >= 0) {
      const lock = Math.min(settings.loginBackoffMaxMs, settings.loginBackoffMs * 2 ** Math.min(over, 40));
      await db.updateTable('login_throttle').set({ blocked_until: now + lock }).where('key', '=', key).execute();
    }
  }
}

/** A successful sign-in: the username starts afresh (the address does not: it may be an attacker's). */
export async function recordSuccess(db: Kysely<AuthDB>, keys: ThrottleKeys): Promise<void> {
  if (keys.user === undefined) return;
  await db.deleteFrom('login_throttle').where('key', '=', `user:${keys.user}`).execute();
}

const turns = new Map<string, Promise<unknown>>();

/**
 * Runs a sign-in's check-verify-record after every earlier one for the same username in this
 * process has finished. Without it, guesses sent all at once would each pass the lock check
 * before any of their failures was counted, and get a password check each instead of the
 * handful the limit allows. (Replicas each let one through at a time.)
 */
export async function oneAtATime<T>(user: string | undefined, work: () => Promise<T>): Promise<T> {
  if (user === undefined) return work();
  const before = turns.get(user) ?? Promise.resolve();
  const run = before.then(
    () => work(),
    () => work(),
  );
  const settled = run.catch(() => undefined);
  turns.set(user, settled);
  try {
    return await run;
  } finally {
    if (turns.get(user) === settled) turns.delete(user);
  }
}
