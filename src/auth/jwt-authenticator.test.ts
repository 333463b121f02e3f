import { createHmac } from 'node:crypto';
import { exportSPKI, importJWK, SignJWT, type CryptoKey, type JWK } from 'jose';
import { afterEach, beforeAll, describe, expect, test, vi } from 'vitest';
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

  test('refuses a validly signed access token without exp (it would never expire)', async () => {
    const key = await importJWK(stored!, 'RS256');
    const forever = await new SignJWT({ typ: 'access', authorities: ['ROLE_USER'] })
      .setProtectedHeader({ alg: 'RS256', kid: stored!.kid })
      .setSubject('alice')
      .setIssuer(ISSUER)
      .setIssuedAt(now())
      .sign(key);
    const err = await refused(`bearer ${forever}`);
    expect(err.message).toMatch(/exp/);
    // Refused again on a second try: a refusal is not remembered as a success.
    await refused(`bearer ${forever}`);
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

describe('verified-token cache', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  const signed = async (claims: { exp?: number; sub?: string }) => {
    let jwt = new SignJWT({ typ: 'access', authorities: ['ROLE_USER'] })
      .setProtectedHeader({ alg: 'RS256', kid: stored!.kid })
      .setSubject(claims.sub ?? 'alice')
      .setIssuer(ISSUER);
    if (claims.exp !== undefined) jwt = jwt.setExpirationTime(claims.exp);
    return jwt.sign(await importJWK(stored!, 'RS256'));
  };

  test('a token presented again is accepted from the cache (the very identity, not a new verification)', async () => {
    const first = await auth.authenticate(`bearer ${valid}`);
    const again = await auth.authenticate(`Bearer ${valid}  `);
    expect(again).toBe(first);
    expect(Object.isFrozen(again)).toBe(true);
  });

  test('a cached token is refused once its exp has passed', async () => {
    const exp = now() + 30;
    const token = await signed({ exp });
    const fresh = createJwtAuthenticator({ fetchJwks: () => tokens.jwks(), issuer: ISSUER });
    await expect(fresh.authenticate(`bearer ${token}`)).resolves.toMatchObject({ subject: 'alice' });
    vi.useFakeTimers({ toFake: ['Date'] });
    // One millisecond before exp it is still valid (and served from the cache)...
    vi.setSystemTime(exp * 1000 - 1);
    await expect(fresh.authenticate(`bearer ${token}`)).resolves.toMatchObject({ subject: 'alice' });
    // ...and from exp on it is refused as expired, exactly as jose refuses it.
    vi.setSystemTime(exp * 1000);
    await expect(fresh.authenticate(`bearer ${token}`)).rejects.toThrow('token expired');
    vi.setSystemTime(exp * 1000 + 60_000);
    await expect(fresh.authenticate(`bearer ${token}`)).rejects.toThrow('token expired');
  });

  test('a token without exp is refused every time (neither accepted nor remembered)', async () => {
    const token = await signed({});
    expect((await refused(`bearer ${token}`)).message).toMatch(/"exp" claim/);
    await refused(`bearer ${token}`);
  });

  test('a refused token stays refused, and an altered copy of a cached token is refused', async () => {
    await auth.authenticate(`bearer ${valid}`);
    const [h, p, s] = valid.split('.');
    const claims = JSON.parse(Buffer.from(p!, 'base64url').toString());
    const altered = `bearer ${h}.${b64({ ...claims, authorities: ['ROLE_ADMIN', 'ROLE_ROOT'] })}.${s}`;
    await refused(altered);
    await refused(altered);
  });

  test('bounded: beyond its capacity the oldest token is verified again; 0 turns the cache off', async () => {
    const one = createJwtAuthenticator({ fetchJwks: () => tokens.jwks(), issuer: ISSUER, verifiedTokenCache: 1 });
    const a = await signed({ exp: now() + 600, sub: 'a' });
    const b = await signed({ exp: now() + 600, sub: 'b' });
    const a1 = await one.authenticate(`bearer ${a}`);
    const b1 = await one.authenticate(`bearer ${b}`);
    expect(await one.authenticate(`bearer ${b}`)).toBe(b1);
    const a2 = await one.authenticate(`bearer ${a}`);
    expect(a2).toEqual(a1);
    expect(a2).not.toBe(a1);

    const off = createJwtAuthenticator({ fetchJwks: () => tokens.jwks(), issuer: ISSUER, verifiedTokenCache: 0 });
    const x = await off.authenticate(`bearer ${a}`);
    expect(await off.authenticate(`bearer ${a}`)).not.toBe(x);
  });

  test('isActive is asked on every request, cached tokens included, and a false answer refuses the token', async () => {
    const asked: unknown[] = [];
    let active = true;
    const revocable = createJwtAuthenticator({
      fetchJwks: () => tokens.jwks(),
      issuer: ISSUER,
      isActive: async (claims) => {
        asked.push(claims.sub);
        return active;
      },
    });
    await expect(revocable.authenticate(`bearer ${valid}`)).resolves.toMatchObject({ subject: 'alice' });
    await expect(revocable.authenticate(`bearer ${valid}`)).resolves.toMatchObject({ subject: 'alice' });
    expect(asked).toEqual(['alice', 'alice']);
    active = false;
    const err = await revocable.authenticate(`bearer ${valid}`).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnauthenticatedError);
    expect((err as UnauthenticatedError).message).toBe('token revoked');
    // A token that fails its own checks is refused without asking.
    await expect(revocable.authenticate('bearer not.a.token')).rejects.toBeInstanceOf(UnauthenticatedError);
    expect(asked).toHaveLength(3);
    // Anonymous requests are not asked about either.
    await expect(revocable.authenticate(undefined)).resolves.toBeUndefined();
    expect(asked).toHaveLength(3);
  });
});
