import { createHmac } from 'node:crypto';
import { exportSPKI, importJWK, SignJWT, type CryptoKey, type JWK } from 'jose';
import { beforeAll, describe, expect, test } from 'vitest';
import { TEST_KEY_A, TEST_KEY_B } from '../../test/fixtures/rsa-keys.js';
import { UnauthenticatedError } from '../kernel/errors.js';
import { createJwtAuthenticator } from './jwt-authenticator.js';
import { createTokenService, type SigningKeyStore } from './tokens.js';

const ISSUER = 'https://auth.test';
let stored: JWK | undefined = TEST_KEY_A;
const store: SigningKeyStore = {
  load: async () => stored,
  save: async (jwk) => {
    stored = jwk;
  },
};
const tokens = createTokenService({ store, issuer: ISSUER });
let fetches = 0;
const auth = createJwtAuthenticator({
  fetchJwks: async () => {
    fetches++;
    return tokens.jwks();
  },
  issuer: ISSUER,
});

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);

async function refused(header: string): Promise<UnauthenticatedError> {
  try {
    const id = await auth.authenticate(header);
    throw new Error(`expected a refusal, got ${JSON.stringify(id)}`);
  } catch (err) {
    expect(err).toBeInstanceOf(UnauthenticatedError);
    expect((err as UnauthenticatedError).httpStatus).toBe(401);
    return err as UnauthenticatedError;
  }
}

let valid: string;
beforeAll(async () => {
  valid = (await tokens.issue({ subject: 'alice', roles: ['ROLE_USER', 'ROLE_ADMIN'], clientId: 'web', scope: ['BROWSER'] })).access_token;
});

describe('createJwtAuthenticator', () => {
  test('accepts a valid access token and returns its subject and roles', async () => {
    const id = await auth.authenticate(`bearer ${valid}`);
    expect(id?.subject).toBe('alice');
    expect(id?.roles).toEqual(['ROLE_USER', 'ROLE_ADMIN']);
    expect(id?.claims).toMatchObject({ iss: ISSUER, typ: 'access', client_id: 'web' });
    // The scheme is case-insensitive.
    await expect(auth.authenticate(`Bearer ${valid}`)).resolves.toMatchObject({ subject: 'alice' });
  });

  test('no header means an anonymous caller', async () => {
    await expect(auth.authenticate(undefined)).resolves.toBeUndefined();
    await expect(auth.authenticate('')).resolves.toBeUndefined();
  });

  test('fetches the JWKS once, not per request', async () => {
    await auth.authenticate(`bearer ${valid}`);
    const before = fetches;
    for (let i = 0; i < 5; i++) await auth.authenticate(`bearer ${valid}`);
    expect(fetches).toBe(before);
    expect(fetches).toBeGreaterThanOrEqual(1);
  });

  test('refuses alg: none', async () => {
    const claims = { sub: 'alice', typ: 'access', authorities: ['ROLE_ADMIN'], iss: ISSUER, exp: now() + 600 };
    await refused(`bearer ${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`);
    await refused(`bearer ${b64({ alg: 'none', typ: 'JWT', kid: stored!.kid })}.${b64(claims)}.`);
  });

  test('refuses HS256 signed with the public key material (algorithm confusion)', async () => {
    const publicKey = await importJWK((await tokens.jwks()).keys[0]!, 'RS256');
    const pem = await exportSPKI(publicKey as CryptoKey);
    const claims = { sub: 'mallory', typ: 'access', authorities: ['ROLE_ADMIN'], iss: ISSUER, exp: now() + 600 };
    for (const secret of [pem, JSON.stringify((await tokens.jwks()).keys[0])]) {
      const head = `${b64({ alg: 'HS256', typ: 'JWT', kid: stored!.kid })}.${b64(claims)}`;
      const sig = createHmac('sha256', secret).update(head).digest('base64url');
      const err = await refused(`bearer ${head}.${sig}`);
      expect(err.message).toMatch(/invalid token/);
    }
  });

  test('refuses a token signed by another key (same kid)', async () => {
    const privateKey = await importJWK(TEST_KEY_B, 'RS256');
    const forged = await new SignJWT({ typ: 'access', authorities: ['ROLE_ADMIN'] })
      .setProtectedHeader({ alg: 'RS256', kid: stored!.kid })
      .setSubject('mallory')
      .setIssuer(ISSUER)
      .setExpirationTime('1h')
      .sign(privateKey);
    const err = await refused(`bearer ${forged}`);
    expect(err.message).toMatch(/signature/);
  });

  test('refuses a token whose payload was altered', async () => {
    const [h, p, s] = valid.split('.');
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString());
    claims.sub = 'root';
    await refused(`bearer ${h}.${b64(claims)}.${s}`);
  });

  test('refuses an expired token, saying so', async () => {
    const key = await importJWK(stored!, 'RS256');
    const expired = await new SignJWT({ typ: 'access', authorities: [] })
      .setProtectedHeader({ alg: 'RS256', kid: stored!.kid })
      .setSubject('alice')
      .setIssuer(ISSUER)
      .setIssuedAt(now() - 120)
      .setExpirationTime(now() - 60)
      .sign(key);
    const err = await refused(`bearer ${expired}`);
    expect(err.message).toBe('token expired');
  });

  test('refuses a refresh token used as an access token', async () => {
    const { refresh_token } = await tokens.issue({ subject: 'alice', roles: [], clientId: 'web', scope: [] });
    const err = await refused(`bearer ${refresh_token}`);
    expect(err.message).toBe('not an access token');
  });

  test('refuses a token from another issuer', async () => {
    const key = await importJWK(stored!, 'RS256');
    const foreign = await new SignJWT({ typ: 'access' })
      .setProtectedHeader({ alg: 'RS256', kid: stored!.kid })
      .setSubject('alice')
      .setIssuer('https://elsewhere.test')
      .setExpirationTime('1h')
      .sign(key);
    await refused(`bearer ${foreign}`);
  });

  test.each(['bearer garbage', 'bearer a.b.c', 'bearer', 'bearer    ', `bearer ${'x'.repeat(40)}.${'y'.repeat(40)}`])('refuses garbage: %j', async (header) => {
    await refused(header);
  });
});
