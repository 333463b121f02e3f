import { describe, expect, test } from 'vitest';
import { hashPassword, verifyPassword } from './passwords.js';

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
});
