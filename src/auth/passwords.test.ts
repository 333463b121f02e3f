import { spawnSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import bcrypt from 'bcryptjs';
import { afterAll, describe, expect, test } from 'vitest';
import { deserializeError, serializeError } from '../kernel/errors.js';
import { isEndpointFailure } from '../resilience/failures.js';
import { closePasswordWorkers, hashPassword, PasswordChecksBusyError, PasswordWorkers, verifyPassword } from './passwords.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

afterAll(() => closePasswordWorkers());

// bcrypt is slow on purpose; each test does as few hashes as it can.
describe('hashPassword / verifyPassword', () => {
  const secret = 'correct horse пароль-密码';
  const hashes = Promise.all([hashPassword(secret), hashPassword(secret)]);

  test('stores a salted bcrypt hash, never the secret', async () => {
    const [a, b] = await hashes;
    expect(a).toMatch(/^\$2[aby]\$10\$.{53}$/);
    expect(a).not.toContain('horse');
    expect(a).not.toBe(b);
  });

  test('verifies the right secret (also non-ASCII) against either hash', async () => {
    const [a, b] = await hashes;
    await expect(verifyPassword(secret, a)).resolves.toBe(true);
    await expect(verifyPassword(secret, b)).resolves.toBe(true);
  });

  test('refuses a near miss and the empty string', async () => {
    const [a] = await hashes;
    await expect(verifyPassword('correct horse пароль-密', a)).resolves.toBe(false);
    await expect(verifyPassword('', a)).resolves.toBe(false);
  });

  test('agrees with bcryptjs both ways: its hashes verify here, and these verify with it', async () => {
    const [a] = await hashes;
    expect(bcrypt.compareSync(secret, a)).toBe(true);
    expect(bcrypt.compareSync('correct horse', a)).toBe(false);
    const theirs = bcrypt.hashSync('s3cret', 4);
    await expect(verifyPassword('s3cret', theirs)).resolves.toBe(true);
    await expect(verifyPassword('s3cret!', theirs)).resolves.toBe(false);
    // What bcryptjs says about a stored value that is no bcrypt hash at all.
    await expect(verifyPassword('s3cret', 'not a hash')).resolves.toBe(bcrypt.compareSync('s3cret', 'not a hash'));
  });
});

describe('PasswordWorkers (the thread pool behind them)', () => {
  test('an error in a thread reaches the caller with bcryptjs own message, and the pool keeps working', async () => {
    const pool = new PasswordWorkers({ threads: 1 });
    try {
      const expected = (() => {
        try {
          bcrypt.hashSync(5 as unknown as string, 4);
        } catch (err) {
          return (err as Error).message;
        }
        return 'no error';
      })();
      await expect(pool.hash(5 as unknown as string, 4)).rejects.toThrow(expected);
      await expect(pool.verify('x', 7 as unknown as string)).rejects.toThrow(/Illegal arguments/);
      const h = await pool.hash('still works', 4);
      expect(bcrypt.compareSync('still works', h)).toBe(true);
    } finally {
      await pool.close();
    }
  });

  test('a full queue refuses a password check at once with a typed 503 error; accepted jobs still finish', async () => {
    const pool = new PasswordWorkers({ threads: 1, maxQueued: 2 });
    try {
      const hash = bcrypt.hashSync('pw', 4);
      const accepted = [pool.verify('pw', hash), pool.verify('no', hash), pool.verify('pw', hash)]; // 1 running + 2 queued
      expect(pool.queued).toBe(2);
      const refused = pool.verify('pw', hash);
      await expect(refused).rejects.toBeInstanceOf(PasswordChecksBusyError);
      await expect(refused).rejects.toMatchObject({ code: 'PASSWORD_CHECKS_BUSY', httpStatus: 503 });
      // Hashing a password is never refused (a refused login decoy would stay broken): it waits its turn.
      const stillHashed = pool.hash('new password', 4);
      expect(pool.queued).toBe(3);
      await expect(pool.verify('pw', hash)).rejects.toBeInstanceOf(PasswordChecksBusyError);
      await expect(Promise.all(accepted)).resolves.toEqual([true, false, true]);
      expect(bcrypt.compareSync('new password', await stillHashed)).toBe(true);
      // Room again once the queue has drained.
      await expect(pool.verify('pw', hash)).resolves.toBe(true);
    } finally {
      await pool.close();
    }
  });

  test('close waits for accepted jobs, then stops the threads; the pool starts again on the next job', async () => {
    const pool = new PasswordWorkers({ threads: 2 });
    const hash = bcrypt.hashSync('pw', 4);
    const pending = [pool.verify('pw', hash), pool.verify('pw', hash), pool.verify('nope', hash)];
    await pool.close();
    await expect(Promise.all(pending)).resolves.toEqual([true, true, false]);
    await expect(pool.verify('pw', hash)).resolves.toBe(true);
    await pool.close();
  });

  test('the busy error keeps its code and 503 across a process boundary, and is no fault of the endpoint (no circuit opens)', () => {
    const err = new PasswordChecksBusyError('too many password checks are waiting');
    err.origin = 'auth.token';
    const remote = deserializeError(serializeError(err));
    expect(remote).toMatchObject({ code: 'PASSWORD_CHECKS_BUSY', httpStatus: 503, origin: 'auth.token' });
    expect(isEndpointFailure(err, 'auth')).toBe(false);
    expect(isEndpointFailure(remote, 'auth')).toBe(false);
  });

  test('rejects a pool without threads', () => {
    expect(() => new PasswordWorkers({ threads: 0 })).toThrow(RangeError);
    expect(() => new PasswordWorkers({ maxQueued: -1 })).toThrow(RangeError);
  });

  test('a process that hashed and verified passwords exits on its own (idle threads do not hold it open)', () => {
    const moduleUrl = pathToFileURL(resolve(repoRoot, 'src/auth/passwords.ts')).href;
    const script = `
      const { hashPassword, verifyPassword } = await import(${JSON.stringify(moduleUrl)});
      const h = await hashPassword('pw');
      console.log(String(await verifyPassword('pw', h)) + ' ' + String(await verifyPassword('px', h)));
    `;
    const r = spawnSync(process.execPath, ['--import', 'tsx/esm', '--input-type=module', '-e', script], { cwd: repoRoot, encoding: 'utf8', timeout: 30_000 });
    expect(r.error, r.stderr).toBeUndefined(); // a timeout would be reported here
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe('true false');
  });
});

describe('secrets longer than bcrypt reads (72 bytes)', () => {
  const base = 'a-long-passphrase-'.repeat(5); // 90 bytes
  const other = base.slice(0, 80) + 'X'.repeat(10); // the same first 80 bytes, a different tail
  // 23 three-byte characters plus one 'a' make 70 bytes; the 24th character then takes bytes 71–73.
  // 密 (E5 AF 86) and 寇 (E5 AF 87) differ only in their last byte: the 73rd of the secret.
  const cjk = 'a' + '密'.repeat(23) + '密' + '码'.repeat(5);
  const cjkOther = 'a' + '密'.repeat(23) + '寇' + '码'.repeat(5);

  test('plain bcrypt would take either of two secrets that differ only past byte 72', () => {
    const h = bcrypt.hashSync(base, 4);
    expect(bcrypt.compareSync(other, h)).toBe(true);
    const c = bcrypt.hashSync(cjk, 4);
    expect(bcrypt.compareSync(cjkOther, c)).toBe(true);
  });

  test('every byte counts: the second of two long secrets sharing their first 72 bytes does not verify', async () => {
    const [h, c] = await Promise.all([hashPassword(base), hashPassword(cjk)]);
    expect(h.startsWith('hmac-sha256:$2')).toBe(true);
    await expect(verifyPassword(base, h)).resolves.toBe(true);
    await expect(verifyPassword(other, h)).resolves.toBe(false);
    await expect(verifyPassword(cjk, c)).resolves.toBe(true);
    await expect(verifyPassword(cjkOther, c)).resolves.toBe(false);
    await expect(verifyPassword(base.slice(0, 72), h)).resolves.toBe(false);
  });

  test('a secret of exactly 72 bytes keeps a plain bcrypt hash, and a longer one sharing it is refused', async () => {
    const exact = 'z'.repeat(72);
    const h = await hashPassword(exact);
    expect(h).toMatch(/^\$2[aby]\$10\$.{53}$/);
    await expect(verifyPassword(exact, h)).resolves.toBe(true);
    await expect(verifyPassword(exact + '!', h)).resolves.toBe(false);
  });

  test('hashes of short secrets stored before keep verifying', async () => {
    const stored = bcrypt.hashSync('MFfTW3uNI4eqhwDkG7HP9p2mzEUu/r2', 4);
    await expect(verifyPassword('MFfTW3uNI4eqhwDkG7HP9p2mzEUu/r2', stored)).resolves.toBe(true);
    await expect(verifyPassword('MFfTW3uNI4eqhwDkG7HP9p2mzEUu/r3', stored)).resolves.toBe(false);
  });
});
