/**
 * User assertions: how an end user's identity crosses a hop between processes. The edge
 * verified the user's token; it signs what it found (subject, roles, claims, an expiry) with the
 * deployment's assertion key, which only edge processes hold. Every other process checks the
 * signature with the public half, so no service can invent a user or a role, and none can
 * carry the service role, which is never part of an assertion.
 *
 * Format: `ua1.<base64url(JSON)>.<base64url(Ed25519 signature over "ua1.<JSON part>")>`.
 * The edge signs once per token (and again shortly before expiry); callees check once per
 * assertion: calls after the first cost a map lookup.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { CheckedTokens, openToken, signToken } from './signed-token.js';
import { UnauthenticatedError } from '../kernel/errors.js';
import type { Identity } from '../kernel/plugins.js';

const PREFIX = 'ua1.';
/** An assertion lives at most this long, whatever the token's own expiry. */
const MAX_LIFE_MS = 15 * 60 * 1000;
/** Made again once less than this is left, so a call chain never carries one about to lapse. */
const RENEW_BEFORE_MS = 2 * 60 * 1000;

interface AssertedClaims {
  sub: string;
  roles: string[];
  claims?: Record<string, unknown>;
  exp: number;
}

export class AssertionSigner {
  private readonly key: KeyObject;
  private readonly made = new CheckedTokens<Identity>();

  constructor(privateKeyPem: string) {
    this.key = createPrivateKey(privateKeyPem);
  }

  /** The identity with an assertion attached (made once per token while it stays fresh). */
  assert(identity: Identity): Identity {
    const claims = identity.claims;
    const cacheKey = typeof claims?.jti === 'string' ? `jti:${claims.jti}` : `id:${identity.subject}\n${identity.roles.join(',')}`;
    const now = Date.now();
    const known = this.made.get(cacheKey);
    if (known && expiryOf(known.assertion!) - now > RENEW_BEFORE_MS) return known;
    const tokenExp = typeof claims?.exp === 'number' ? claims.exp * 1000 : Infinity;
    const body: AssertedClaims = {
      sub: identity.subject,
      roles: identity.roles.filter((r) => r !== 'ROLE_SERVICE'),
      ...(claims ? { claims: { ...claims } } : {}),
      exp: Math.min(tokenExp, now + MAX_LIFE_MS),
    };
    const assertion = signToken(PREFIX, body, this.key);
    const out: Identity = { subject: body.sub, roles: body.roles, ...(claims ? { claims } : {}), assertion };
    this.made.set(cacheKey, out);
    return out;
  }
}

function expiryOf(assertion: string): number {
  const part = assertion.slice(PREFIX.length, assertion.lastIndexOf('.'));
  return (JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as AssertedClaims).exp;
}

export class AssertionVerifier {
  private readonly key: KeyObject;
  private readonly checked = new CheckedTokens<{ identity: Identity; exp: number }>();

  constructor(publicKeyPem: string) {
    this.key = createPublicKey(publicKeyPem);
  }

  /** The identity an assertion vouches for; UnauthenticatedError when it is forged, malformed or expired. */
  verify(assertion: string): Identity {
    const known = this.checked.get(assertion);
    if (known) {
      if (known.exp <= Date.now()) throw new UnauthenticatedError(`the user assertion for ${known.identity.subject} expired`);
      return known.identity;
    }
    if (typeof assertion !== 'string' || !assertion.startsWith(PREFIX)) throw new UnauthenticatedError('not a user assertion');
    const body = openToken<AssertedClaims>(PREFIX, assertion, this.key, 16_384);
    if (!body) throw new UnauthenticatedError('user assertion not signed by this deployment’s edge');
    if (typeof body.sub !== 'string' || !Array.isArray(body.roles) || !(body.exp > Date.now())) throw new UnauthenticatedError('user assertion malformed or expired');
    const identity: Identity = {
      subject: body.sub,
      roles: body.roles.filter((r) => typeof r === 'string' && r !== 'ROLE_SERVICE'),
      ...(body.claims ? { claims: body.claims } : {}),
      assertion,
    };
    this.checked.set(assertion, { identity, exp: body.exp });
    return identity;
  }
}
