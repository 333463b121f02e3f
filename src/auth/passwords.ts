import bcrypt from 'bcryptjs';

const ROUNDS = 10;

/** bcrypt hash of a secret; only the hash is ever stored. */
export function hashPassword(secret: string): Promise<string> {
  return bcrypt.hash(secret, ROUNDS);
}

export function verifyPassword(secret: string, hash: string): Promise<boolean> {
  return bcrypt.compare(secret, hash);
}
