import { createLocalJWKSet, errors as joseErrors, jwtVerify, type JSONWebKeySet } from 'jose';
import { UnauthenticatedError } from '../kernel/errors.js';
import type { Authenticator, Identity } from '../kernel/plugins.js';

export interface JwtAuthenticatorOptions {
  /** Fetches the JWKS (from the auth service); called at first use and when a key id is unknown. */
  fetchJwks: () => Promise<JSONWebKeySet>;
  issuer?: string;
  audience?: string;
  /** Least time between two JWKS refreshes triggered by unknown key ids. */
  refreshIntervalMs?: number;
  /**
   * How many verified tokens to remember until they expire, so that a client sending the same
   * token again is not verified again (an RS256 check costs more than most requests). 0 turns
   * the cache off. Default 10,000.
   */
  verifiedTokenCache?: number;
  /**
   * Asked on every request whose token passed the checks (from the cache too), with the
   * token's claims: whether the issuer still honours it (a password change or a reused refresh
   * token revokes tokens before their exp). A token it answers false for is refused (401).
   */
  isActive?: (claims: Readonly<Record<string, unknown>>) => Promise<boolean>;
}

const bearer = /^bearer\s+(\S+)\s*$/i;

/**
 * Tokens that passed verification, by their exact text, each until the instant it expires.
 * Bounded: when full, the entry remembered longest ago is dropped first.
 */
class VerifiedTokens<T> {
  private readonly entries = new Map<string, { value: T; expiresAtMs: number }>();

  constructor(private readonly capacity: number) {}

  /** What was remembered for `token`, if it has not expired yet (an expired entry is forgotten). */
  get(token: string): T | undefined {
    const e = this.entries.get(token);
    if (!e) return undefined;
    if (Date.now() < e.expiresAtMs) return e.value;
    this.entries.delete(token);
    return undefined;
  }

  /** Remembers `value` for `token` until `expiresAtMs` (epoch ms); a token already expired is not kept. */
  set(token: string, value: T, expiresAtMs: number): void {
    if (this.capacity <= 0 || !(Date.now() < expiresAtMs)) return;
    this.entries.delete(token);
    while (this.entries.size >= this.capacity) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(token, { value, expiresAtMs });
  }
}

/**
 * Verifies `Authorization: bearer <jwt>` at the edge: RS256 only (so `alg: none` and HMAC
 * confusion are refused), signature against the published JWKS, expiry (a token without `exp`
 * is refused), issuer, token type.
 * No header means an anonymous caller; a header that fails any check is refused.
 *
 * A token that passed every check is remembered, by its exact text, until its `exp`: the same
 * token is then accepted without another signature check while it is still unexpired, and
 * checked (and refused) in full once it has expired. Refusals are never remembered.
 */
export function createJwtAuthenticator(options: JwtAuthenticatorOptions): Authenticator {
  let keyset: ReturnType<typeof createLocalJWKSet> | undefined;
  let loading: Promise<void> | undefined;
  let lastRefresh = 0;
  const minInterval = options.refreshIntervalMs ?? 30_000;
  const verified = new VerifiedTokens<Identity>(options.verifiedTokenCache ?? 10_000);
  const isActive = options.isActive;

  const refresh = (): Promise<void> =>
    (loading ??= options
      .fetchJwks()
      .then((jwks) => {
        keyset = createLocalJWKSet(jwks);
        lastRefresh = Date.now();
      })
      .finally(() => {
        loading = undefined;
      }));

  // A token without exp would be valid forever (and remembered forever): refused even when signed.
  const checks = { algorithms: ['RS256'], issuer: options.issuer, audience: options.audience, requiredClaims: ['exp'] };
  const verify = async (token: string) => {
    if (!keyset) await refresh();
    try {
      return await jwtVerify(token, keyset!, checks);
    } catch (err) {
      if (err instanceof joseErrors.JWKSNoMatchingKey && Date.now() - lastRefresh > minInterval) {
        await refresh();
        return jwtVerify(token, keyset!, checks);
      }
      throw err;
    }
  };

  return {
    async authenticate(header) {
      if (header === undefined || header === '') return undefined;
      const m = bearer.exec(header);
      if (!m) {
        if (/^bearer\b/i.test(header)) throw new UnauthenticatedError('malformed bearer token');
        return undefined;
      }
      const token = m[1]!;
      const identity = verified.get(token) ?? (await verifyFully(token));
      if (isActive && !(await isActive(identity.claims!))) throw new UnauthenticatedError('token revoked');
      return identity;
    },
  };

  async function verifyFully(token: string): Promise<Identity> {
    let payload;
    try {
      ({ payload } = await verify(token));
    } catch (err) {
      const why = err instanceof joseErrors.JWTExpired ? 'token expired' : `invalid token (${(err as Error).message})`;
      throw new UnauthenticatedError(why);
    }
    if (payload.typ !== 'access' || typeof payload.sub !== 'string') throw new UnauthenticatedError('not an access token');
    const roles = Array.isArray(payload.authorities) ? payload.authorities.map(String) : [];
    // Shared by every request that presents this token: nobody may change it.
    const identity: Identity = Object.freeze({ subject: payload.sub, roles: Object.freeze(roles), claims: Object.freeze(payload) as Record<string, unknown> });
    // jose refuses a token once the clock reaches its exp (in seconds); remembered until then.
    verified.set(token, identity, payload.exp! * 1000);
    return identity;
  }
}
