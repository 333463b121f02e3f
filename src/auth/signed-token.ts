/**
 * The compact signed form shared by internal credentials and user assertions:
 * `<prefix><base64url(JSON claims)>.<base64url(Ed25519 signature over everything before the dot)>`.
 * Signed and checked synchronously with node:crypto; checked tokens are remembered (bounded),
 * so a token seen again costs a map lookup.
 */
import { sign, verify, type KeyObject } from 'node:crypto';

export function signToken(prefix: string, claims: object, key: KeyObject): string {
  const body = prefix + Buffer.from(JSON.stringify(claims)).toString('base64url');
  return `${body}.${sign(null, Buffer.from(body), key).toString('base64url')}`;
}

/** The claims of a token signed with `key`'s private half; undefined when it is malformed or forged. */
export function openToken<T>(prefix: string, token: unknown, key: KeyObject, maxLength: number): T | undefined {
  if (typeof token !== 'string' || !token.startsWith(prefix) || token.length > maxLength) return undefined;
  const dot = token.lastIndexOf('.');
  if (dot <= prefix.length) return undefined;
  const body = token.slice(0, dot);
  try {
    if (!verify(null, Buffer.from(body), key, Buffer.from(token.slice(dot + 1), 'base64url'))) return undefined;
    const claims = JSON.parse(Buffer.from(body.slice(prefix.length), 'base64url').toString('utf8')) as unknown;
    return typeof claims === 'object' && claims !== null ? (claims as T) : undefined;
  } catch {
    return undefined;
  }
}

/** A bounded memory of checked tokens: the oldest is forgotten first. */
export class CheckedTokens<V> {
  private readonly map = new Map<string, V>();
  constructor(private readonly max = 10_000) {}
  get(token: string): V | undefined {
    return this.map.get(token);
  }
  set(token: string, value: V): void {
    if (this.map.size >= this.max) this.map.delete(this.map.keys().next().value!);
    this.map.set(token, value);
  }
}
