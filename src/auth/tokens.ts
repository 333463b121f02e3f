import { randomUUID } from 'node:crypto';
import { exportJWK, generateKeyPair, importJWK, jwtVerify, SignJWT, type JWK, type CryptoKey } from 'jose';
import { UnauthenticatedError } from '../kernel/errors.js';

const ALG = 'RS256';

/** Where the signing key lives between restarts (the auth service's own database). */
export interface SigningKeyStore {
  load(): Promise<JWK | undefined>;
  save(privateJwk: JWK): Promise<void>;
}

export interface TokenSubject {
  subject: string;
  roles: readonly string[];
  clientId: string;
  scope: readonly string[];
  /** Extra claims copied into the access token. */
  claims?: Record<string, unknown>;
  /**
   * Claims carried by both tokens (e.g. a credentials version or a token family, by which the
   * issuer can revoke them before they expire); `verifyRefresh` returns them in `payload`.
   */
  common?: Record<string, unknown>;
  /** The refresh token's id (its `jti`); a random UUID when not given. */
  refreshId?: string;
}

/** A refresh token that passed every check: whom it was issued to, its id and all its claims. */
export interface VerifiedRefresh extends TokenSubject {
  /** The refresh token's `jti` (every token this service issues has one). */
  id: string | undefined;
  payload: Readonly<Record<string, unknown>>;
}

/** The OAuth2 token response (RFC 6749 §5.1) plus the fields the bookstore's clients read. */
export interface TokenPair {
  access_token: string;
  token_type: 'bearer';
  refresh_token: string;
  expires_in: number;
  scope: string;
  authorities: string[];
  username: string;
  jti: string;
}

export interface TokenService {
  issue(subject: TokenSubject): Promise<TokenPair>;
  /** Checks a refresh token and returns whom it was issued to. */
  verifyRefresh(token: string): Promise<VerifiedRefresh>;
  jwks(): Promise<{ keys: JWK[] }>;
}

export interface TokenServiceOptions {
  store: SigningKeyStore;
  issuer: string;
  accessTtlSeconds?: number;
  refreshTtlSeconds?: number;
}

/**
 * Issues RS256 access and refresh tokens. The key pair is made once and kept in `store`, so
 * tokens stay valid across restarts; the public half is published as a JWKS.
 */
export function createTokenService(options: TokenServiceOptions): TokenService {
  const accessTtl = options.accessTtlSeconds ?? 3 * 60 * 60;
  const refreshTtl = options.refreshTtlSeconds ?? 30 * 24 * 60 * 60;
  let keys: Promise<{ privateKey: CryptoKey; publicJwk: JWK; kid: string }> | undefined;

  const loadKeys = () =>
    (keys ??= (async () => {
      let jwk = await options.store.load();
      if (!jwk) {
        const pair = await generateKeyPair(ALG, { extractable: true });
        jwk = { ...(await exportJWK(pair.privateKey)), kid: randomUUID(), alg: ALG, use: 'sig' };
        await options.store.save(jwk);
      }
      const privateKey = (await importJWK(jwk, ALG)) as CryptoKey;
      const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...publicJwk } = jwk;
      return { privateKey, publicJwk: { ...publicJwk, alg: ALG, use: 'sig' }, kid: jwk.kid! };
    })().catch((err) => {
      keys = undefined;
      throw err;
    }));

  return {
    async issue(s) {
      const { privateKey, kid } = await loadKeys();
      const jti = randomUUID();
      const now = Math.floor(Date.now() / 1000);
      const base = { ...s.common, authorities: [...s.roles], scope: [...s.scope], client_id: s.clientId, user_name: s.subject };
      const access = await new SignJWT({ ...s.claims, ...base, typ: 'access' })
        .setProtectedHeader({ alg: ALG, kid })
        .setSubject(s.subject)
        .setIssuer(options.issuer)
        .setIssuedAt(now)
        .setExpirationTime(now + accessTtl)
        .setJti(jti)
        .sign(privateKey);
      const refresh = await new SignJWT({ ...base, typ: 'refresh', ati: jti })
        .setProtectedHeader({ alg: ALG, kid })
        .setSubject(s.subject)
        .setIssuer(options.issuer)
        .setIssuedAt(now)
        .setExpirationTime(now + refreshTtl)
        .setJti(s.refreshId ?? randomUUID())
        .sign(privateKey);
      return {
        access_token: access,
        token_type: 'bearer',
        refresh_token: refresh,
        expires_in: accessTtl,
        scope: s.scope.join(' '),
        authorities: [...s.roles],
        username: s.subject,
        jti,
      };
    },

    async verifyRefresh(token) {
      const { publicJwk } = await loadKeys();
      const key = await importJWK(publicJwk, ALG);
      try {
        // A token without exp would never expire: refused whoever signed it.
        const { payload } = await jwtVerify(token, key, { algorithms: [ALG], issuer: options.issuer, requiredClaims: ['exp'] });
        if (payload.typ !== 'refresh' || typeof payload.sub !== 'string') throw new Error('not a refresh token');
        return {
          id: payload.jti,
          payload,
          subject: payload.sub,
          roles: Array.isArray(payload.authorities) ? payload.authorities.map(String) : [],
          clientId: String(payload.client_id ?? ''),
          scope: Array.isArray(payload.scope) ? payload.scope.map(String) : [],
        };
      } catch (err) {
        throw new UnauthenticatedError(`invalid refresh token: ${(err as Error).message}`);
      }
    },

    async jwks() {
      return { keys: [(await loadKeys()).publicJwk] };
    },
  };
}
