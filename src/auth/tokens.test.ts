import { createLocalJWKSet, decodeProtectedHeader, importJWK, jwtVerify, SignJWT, type CryptoKey, type JWK } from 'jose';
import { describe, expect, test } from 'vitest';
import { TEST_KEY_A, TEST_KEY_B } from '../../test/fixtures/rsa-keys.js';
import { UnauthenticatedError } from '../kernel/errors.js';
import { createTokenService, type SigningKeyStore, type TokenSubject } from './tokens.js';

class MemoryKeyStore implements SigningKeyStore {
  saves = 0;
  constructor(public jwk?: JWK) {}
  async load() {
    return this.jwk;
  }
  async save(jwk: JWK) {
    this.saves++;
    this.jwk = jwk;
  }
}

const ISSUER = 'https://auth.test';
// RSA key generation is slow: only the tests about making the key generate one.
const otherJwk: JWK = TEST_KEY_B;
const alice: TokenSubject = { subject: 'alice', roles: ['ROLE_USER', 'ROLE_ADMIN'], clientId: 'bookstore_frontend', scope: ['BROWSER'] };

async function failure(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a failure');
}

/** Signs with the store's own private key: a token the service could have issued, with chosen claims. */
async function signWithStoreKey(store: MemoryKeyStore, claims: Record<string, unknown>, exp: number, issuer = ISSUER): Promise<string> {
  const key = await importJWK(store.jwk!, 'RS256');
  return new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: store.jwk!.kid }).setSubject('alice').setIssuer(issuer).setIssuedAt(exp - 60).setExpirationTime(exp).sign(key);
}

describe('createTokenService', () => {
  test('issues RS256 access and refresh tokens that its JWKS verifies', async () => {
    const store = new MemoryKeyStore();
    const tokens = createTokenService({ store, issuer: ISSUER, accessTtlSeconds: 600 });
    const pair = await tokens.issue({ ...alice, claims: { tenant: 't1' } });
    expect(pair).toMatchObject({ token_type: 'bearer', expires_in: 600, scope: 'BROWSER', authorities: alice.roles, username: 'alice' });

    const jwks = await tokens.jwks();
    expect(jwks.keys).toHaveLength(1);
    const [pub] = jwks.keys;
    expect(pub).toMatchObject({ kty: 'RSA', alg: 'RS256', use: 'sig', kid: store.jwk!.kid });
    // Only the public half is published.
    for (const secret of ['d', 'p', 'q', 'dp', 'dq', 'qi']) expect(pub).not.toHaveProperty(secret);

    expect(decodeProtectedHeader(pair.access_token)).toEqual({ alg: 'RS256', kid: pub!.kid });
    const { payload } = await jwtVerify(pair.access_token, createLocalJWKSet(jwks), { issuer: ISSUER, algorithms: ['RS256'] });
    expect(payload).toMatchObject({ sub: 'alice', typ: 'access', authorities: alice.roles, scope: ['BROWSER'], client_id: 'bookstore_frontend', jti: pair.jti, tenant: 't1' });
    expect(payload.exp! - payload.iat!).toBe(600);
    const refresh = await jwtVerify(pair.refresh_token, createLocalJWKSet(jwks), { issuer: ISSUER });
    expect(refresh.payload).toMatchObject({ typ: 'refresh', ati: pair.jti, sub: 'alice' });
  });

  test('makes the key once and keeps it in the store: a new instance verifies old tokens', async () => {
    const store = new MemoryKeyStore();
    const first = createTokenService({ store, issuer: ISSUER });
    const pair = await first.issue(alice);
    const [a, b] = await Promise.all([first.jwks(), first.jwks()]);
    expect(a).toEqual(b);
    expect(store.saves).toBe(1);

    const second = createTokenService({ store, issuer: ISSUER });
    expect(await second.jwks()).toEqual(await first.jwks());
    expect(store.saves).toBe(1);
    const holder = await second.verifyRefresh(pair.refresh_token);
    expect(holder).toMatchObject({ subject: 'alice', roles: alice.roles, clientId: 'bookstore_frontend', scope: ['BROWSER'] });
    expect(holder.id).toBe(holder.payload.jti);
    expect(typeof holder.id).toBe('string');
    await jwtVerify(pair.access_token, createLocalJWKSet(await second.jwks()), { issuer: ISSUER });
  });

  test('a service with another store has another key and refuses the first one’s tokens', async () => {
    const pair = await createTokenService({ store: new MemoryKeyStore(TEST_KEY_A), issuer: ISSUER }).issue(alice);
    const other = createTokenService({ store: new MemoryKeyStore(otherJwk), issuer: ISSUER });
    await expect(other.verifyRefresh(pair.refresh_token)).rejects.toBeInstanceOf(UnauthenticatedError);
  });

  describe('verifyRefresh refuses', () => {
    const store = new MemoryKeyStore(TEST_KEY_A);
    const tokens = createTokenService({ store, issuer: ISSUER });

    test('an access token', async () => {
      const { access_token } = await tokens.issue(alice);
      const err = await failure(tokens.verifyRefresh(access_token));
      expect(err).toBeInstanceOf(UnauthenticatedError);
      expect(err.message).toContain('not a refresh token');
    });

    test('a tampered token (payload changed, signature kept)', async () => {
      const { refresh_token } = await tokens.issue(alice);
      const [h, p, s] = refresh_token.split('.');
      const claims = JSON.parse(Buffer.from(p!, 'base64url').toString());
      claims.authorities = ['ROLE_ADMIN', 'ROLE_ROOT'];
      const forged = `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${s}`;
      const err = await failure(tokens.verifyRefresh(forged));
      expect(err).toBeInstanceOf(UnauthenticatedError);
      expect(err.message).toMatch(/signature/i);
    });

    test('a token with a flipped signature byte', async () => {
      const { refresh_token } = await tokens.issue(alice);
      const flipped = refresh_token.slice(0, -2) + (refresh_token.at(-2) === 'A' ? 'B' : 'A') + refresh_token.at(-1);
      await expect(tokens.verifyRefresh(flipped)).rejects.toBeInstanceOf(UnauthenticatedError);
    });

    test('an expired one', async () => {
      await tokens.jwks();
      const expired = await signWithStoreKey(store, { typ: 'refresh', authorities: [] }, Math.floor(Date.now() / 1000) - 10);
      const err = await failure(tokens.verifyRefresh(expired));
      expect(err).toBeInstanceOf(UnauthenticatedError);
      expect(err.message).toMatch(/exp/);
      // The same token, still valid, passes: it is the expiry that is refused.
      const fresh = await signWithStoreKey(store, { typ: 'refresh', authorities: [] }, Math.floor(Date.now() / 1000) + 60);
      await expect(tokens.verifyRefresh(fresh)).resolves.toMatchObject({ subject: 'alice' });
    });

    test('a validly signed one without exp (it would never expire)', async () => {
      await tokens.jwks();
      const key = await importJWK(store.jwk!, 'RS256');
      const forever = await new SignJWT({ typ: 'refresh', authorities: [] })
        .setProtectedHeader({ alg: 'RS256', kid: store.jwk!.kid })
        .setSubject('alice')
        .setIssuer(ISSUER)
        .setIssuedAt()
        .sign(key);
      const err = await failure(tokens.verifyRefresh(forever));
      expect(err).toBeInstanceOf(UnauthenticatedError);
      expect(err.message).toMatch(/exp/);
    });

    test('one issued with a negative lifetime', async () => {
      const shortLived = createTokenService({ store, issuer: ISSUER, refreshTtlSeconds: -5 });
      const { refresh_token } = await shortLived.issue(alice);
      await expect(tokens.verifyRefresh(refresh_token)).rejects.toBeInstanceOf(UnauthenticatedError);
    });

    test('one from another issuer', async () => {
      await tokens.jwks();
      const foreign = await signWithStoreKey(store, { typ: 'refresh' }, Math.floor(Date.now() / 1000) + 60, 'https://evil.test');
      await expect(tokens.verifyRefresh(foreign)).rejects.toBeInstanceOf(UnauthenticatedError);
    });

    test('one signed by another key', async () => {
      const privateKey = await importJWK(otherJwk, 'RS256');
      const other = await new SignJWT({ typ: 'refresh' })
        .setProtectedHeader({ alg: 'RS256', kid: store.jwk?.kid })
        .setSubject('alice')
        .setIssuer(ISSUER)
        .setExpirationTime('1h')
        .sign(privateKey);
      await expect(tokens.verifyRefresh(other)).rejects.toBeInstanceOf(UnauthenticatedError);
    });

    test('garbage', async () => {
      await expect(tokens.verifyRefresh('not-a-token')).rejects.toBeInstanceOf(UnauthenticatedError);
      await expect(tokens.verifyRefresh('')).rejects.toBeInstanceOf(UnauthenticatedError);
    });
  });

  test('a store that fails is retried on the next use instead of being cached', async () => {
    let calls = 0;
    const store: SigningKeyStore = {
      async load() {
        if (++calls === 1) throw new Error('db not ready');
        return otherJwk;
      },
      async save() {},
    };
    const tokens = createTokenService({ store, issuer: ISSUER });
    await expect(tokens.jwks()).rejects.toThrow('db not ready');
    await expect(tokens.jwks()).resolves.toMatchObject({ keys: [expect.objectContaining({ kty: 'RSA' })] });
  });

  test('the published key imports as a public key only', async () => {
    const tokens = createTokenService({ store: new MemoryKeyStore(otherJwk), issuer: ISSUER });
    const [pub] = (await tokens.jwks()).keys;
    const key = (await importJWK(pub!, 'RS256')) as CryptoKey;
    expect(key.type).toBe('public');
  });

  test('common claims travel in both tokens; the refresh id is the one asked for', async () => {
    const store = new MemoryKeyStore(TEST_KEY_A);
    const tokens = createTokenService({ store, issuer: ISSUER });
    const pair = await tokens.issue({ ...alice, common: { ver: 3, fam: 'family-1' }, refreshId: 'refresh-1' });
    const key = createLocalJWKSet(await tokens.jwks());
    const { payload: access } = await jwtVerify(pair.access_token, key, { issuer: ISSUER });
    expect(access).toMatchObject({ ver: 3, fam: 'family-1', typ: 'access' });
    const holder = await tokens.verifyRefresh(pair.refresh_token);
    expect(holder.id).toBe('refresh-1');
    expect(holder.payload).toMatchObject({ ver: 3, fam: 'family-1', typ: 'refresh', jti: 'refresh-1' });
    // The token's own claims win over common ones of the same name.
    const odd = await tokens.issue({ ...alice, common: { typ: 'access', sub: 'mallory' } });
    expect((await tokens.verifyRefresh(odd.refresh_token)).subject).toBe('alice');
  });
});
