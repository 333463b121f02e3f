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
}

const bearer = /^bearer\s+(\S+)\s*$/i;

/**
 * Verifies `Authorization: bearer <jwt>` at the edge: RS256 only (so `alg: none` and HMAC
 * confusion are refused), signature against the published JWKS, expiry, issuer, token type.
 * No header means an anonymous caller; a header that fails any check is refused.
 */
export function createJwtAuthenticator(options: JwtAuthenticatorOptions): Authenticator {
  let keyset: ReturnType<typeof createLocalJWKSet> | undefined;
  let loading: Promise<void> | undefined;
  let lastRefresh = 0;
  const minInterval = options.refreshIntervalMs ?? 30_000;

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

  const verify = async (token: string) => {
    if (!keyset) await refresh();
    try {
      return await jwtVerify(token, keyset!, { algorithms: ['RS256'], issuer: options.issuer, audience: options.audience });
    } catch (err) {
      if (err instanceof joseErrors.JWKSNoMatchingKey && Date.now() - lastRefresh > minInterval) {
        await refresh();
        return jwtVerify(token, keyset!, { algorithms: ['RS256'], issuer: options.issuer, audience: options.audience });
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
      let payload;
      try {
        ({ payload } = await verify(m[1]!));
      } catch (err) {
        const why = err instanceof joseErrors.JWTExpired ? 'token expired' : `invalid token (${(err as Error).message})`;
        throw new UnauthenticatedError(why);
      }
      if (payload.typ !== 'access' || typeof payload.sub !== 'string') throw new UnauthenticatedError('not an access token');
      const roles = Array.isArray(payload.authorities) ? payload.authorities.map(String) : [];
      const identity: Identity = { subject: payload.sub, roles, claims: payload as Record<string, unknown> };
      return identity;
    },
  };
}
