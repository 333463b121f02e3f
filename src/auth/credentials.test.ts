import { describe, expect, test } from 'vitest';
import { generateKeyPairSync } from 'node:crypto';
import { ForbiddenError, UnauthenticatedError } from '../kernel/errors.js';
import { AssertionSigner, AssertionVerifier } from './assertions.js';
import { challenge, Credential, CredentialVerifier, DeploymentAuthority } from './credentials.js';
import { InternalPlane, SELF } from './internal-plane.js';

const authority = new DeploymentAuthority('dep-1');
const verifier = new CredentialVerifier(authority.trust);

function tamper(token: string, edit: (claims: Record<string, unknown>) => void): string {
  const [prefix, body, sig] = [token.slice(0, 4), token.slice(4, token.lastIndexOf('.')), token.slice(token.lastIndexOf('.') + 1)];
  const claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Record<string, unknown>;
  edit(claims);
  return `${prefix}${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${sig}`;
}

describe('deployment credentials', () => {
  test('a credential says what its holder hosts and may announce, and is checked against the authority', () => {
    const b = authority.issue({ sub: 'warehouse#0', svc: ['warehouse'], ins: ['warehouse-0'] });
    expect(verifier.verify(b.token)).toMatchObject({ dep: 'dep-1', sub: 'warehouse#0', svc: ['warehouse'], ins: ['warehouse-0'] });
  });

  test('forged, tampered, foreign and expired credentials are refused', () => {
    const b = authority.issue({ sub: 'warehouse#0', svc: ['warehouse'] });
    expect(() => verifier.verify('ev1.nonsense.sig')).toThrow(UnauthenticatedError);
    expect(() => verifier.verify('Bearer x')).toThrow(UnauthenticatedError);
    // Granting itself another service breaks the signature.
    expect(() => verifier.verify(tamper(b.token, (c) => (c.svc = ['warehouse', 'auth'])))).toThrow(/not signed by this deployment/);
    const foreign = new DeploymentAuthority('dep-2').issue({ sub: 'warehouse#0', svc: ['warehouse'] });
    expect(() => verifier.verify(foreign.token)).toThrow(UnauthenticatedError);
    // Another authority claiming the same deployment id: its key is not this deployment's.
    const twin = new DeploymentAuthority('dep-1').issue({ sub: 'x' });
    expect(() => verifier.verify(twin.token)).toThrow(UnauthenticatedError);
    const expired = authority.issue({ sub: 'old' }, -1);
    expect(() => verifier.verify(expired.token)).toThrow(/expired/);
  });

  test('a holder proves its key; a stolen token without the key proves nothing', () => {
    const mine = new Credential(authority.issue({ sub: 'payment#0', svc: ['payment'] }));
    const other = new Credential(authority.issue({ sub: 'account#0', svc: ['account'] }));
    const c = challenge();
    expect(verifier.proves(mine.claims, c, mine.prove(c))).toBe(true);
    expect(verifier.proves(mine.claims, c, other.prove(c))).toBe(false);
    expect(verifier.proves(mine.claims, challenge(), mine.prove(c))).toBe(false);
  });

  test('renewal extends the same credential; a process refuses a renewal of another one', () => {
    const bundle = authority.issue({ sub: 'auth#0', svc: ['auth'] }, 1_000);
    const mine = new Credential(bundle);
    const renewed = authority.renew(bundle.token, 60_000);
    mine.renewed(renewed);
    expect(mine.token).toBe(renewed);
    expect(mine.claims.exp - mine.claims.iat).toBe(60_000);
    expect(mine.claims.jti).toBe(verifier.verify(bundle.token).jti);
    const stranger = authority.issue({ sub: 'auth#0', svc: ['auth'] });
    expect(() => mine.renewed(stranger.token)).toThrow(UnauthenticatedError);
    expect(() => new DeploymentAuthority('dep-1').renew(bundle.token)).toThrow(UnauthenticatedError);
  });
});

describe('user assertions', () => {
  const edge = authority.issue({ sub: 'edge#0', edge: true });
  const signer = new AssertionSigner(edge.assertionKey!);
  const check = new AssertionVerifier(authority.trust.assertions);

  test('only edge credentials carry the assertion key', () => {
    expect(authority.issue({ sub: 'warehouse#0', svc: ['warehouse'] }).assertionKey).toBeUndefined();
    expect(edge.assertionKey).toBeDefined();
  });

  test('an assertion round-trips the identity, without the service role', () => {
    const asserted = signer.assert({ subject: 'ann', roles: ['ROLE_USER', 'ROLE_SERVICE'], claims: { jti: 't1', exp: Math.floor(Date.now() / 1000) + 600 } });
    expect(asserted.roles).toEqual(['ROLE_USER']);
    expect(check.verify(asserted.assertion!)).toMatchObject({ subject: 'ann', roles: ['ROLE_USER'], claims: { jti: 't1' } });
    // Made once per token while it stays fresh.
    expect(signer.assert({ subject: 'ann', roles: ['ROLE_USER'], claims: { jti: 't1', exp: Math.floor(Date.now() / 1000) + 600 } })).toBe(asserted);
  });

  test('never outlives the token it vouches for', () => {
    const soon = Math.floor(Date.now() / 1000) + 1;
    const a = signer.assert({ subject: 'bob', roles: [], claims: { jti: 't2', exp: soon } });
    const body = JSON.parse(Buffer.from(a.assertion!.slice(4, a.assertion!.lastIndexOf('.')), 'base64url').toString('utf8')) as { exp: number };
    expect(body.exp).toBe(soon * 1000);
  });

  test('forged, tampered and expired assertions are refused', () => {
    const rogue = new AssertionSigner(new DeploymentAuthority('x').issue({ sub: 'e', edge: true }).assertionKey!);
    expect(() => check.verify(rogue.assert({ subject: 'root', roles: ['ROLE_ADMIN'] }).assertion!)).toThrow(UnauthenticatedError);
    const real = signer.assert({ subject: 'cy', roles: ['ROLE_USER'] }).assertion!;
    expect(() => check.verify(tamper(real.replace(/^ua1\./, 'ua1.'), (c) => (c.roles = ['ROLE_ADMIN'])))).toThrow(UnauthenticatedError);
    const past = signer.assert({ subject: 'dee', roles: [], claims: { jti: 't3', exp: Math.floor(Date.now() / 1000) - 5 } }).assertion!;
    expect(() => check.verify(past)).toThrow(UnauthenticatedError);
  });
});

describe('the internal plane decides who is calling from what the peer proved', () => {
  const plane = new InternalPlane(authority.issue({ sub: 'warehouse#0', svc: ['warehouse'] }));
  const payment = verifier.verify(authority.issue({ sub: 'payment#0', svc: ['payment'] }).token);
  const edgeBundle = authority.issue({ sub: 'edge#0', edge: true });
  const edgePeer = verifier.verify(edgeBundle.token);

  test('"service" is the peer’s own service; a peer may not speak for a service it does not host', () => {
    expect(plane.identify(payment, SELF, 'payment').caller).toEqual({ subject: 'service:payment', roles: ['ROLE_SERVICE'], service: 'payment' });
    expect(() => plane.identify(payment, SELF, 'account')).toThrow(ForbiddenError);
    expect(() => plane.identify(payment, SELF, undefined)).toThrow(UnauthenticatedError);
    expect(() => plane.identify(edgePeer, SELF, 'edge')).toThrow(UnauthenticatedError);
    expect(plane.identify(edgePeer, undefined, 'edge')).toEqual({ caller: undefined, from: 'edge' });
  });

  test('anything but an assertion of this deployment is refused as an identity', () => {
    expect(() => plane.identify(payment, '{"subject":"root","roles":["ROLE_ADMIN"]}', 'payment')).toThrow(UnauthenticatedError);
    expect(() => plane.identify(payment, { subject: 'root', roles: ['ROLE_SERVICE'] }, 'payment')).toThrow(UnauthenticatedError);
    const user = new InternalPlane(edgeBundle).signer!.assert({ subject: 'ann', roles: ['ROLE_USER'] });
    expect(plane.identify(payment, user.assertion, 'payment').caller).toMatchObject({ subject: 'ann', roles: ['ROLE_USER'] });
  });

  test('a caller sends only what it can prove', () => {
    const meta = (caller: object | undefined, from?: string) => ({ deadline: Date.now() + 1000, trace: { traceId: 't', spanId: 's', sampled: true }, caller: caller as never, from });
    expect(plane.callerField(meta(undefined))).toBeUndefined();
    expect(plane.callerField(meta({ subject: 'service:warehouse', roles: ['ROLE_SERVICE'], service: 'warehouse' }, 'warehouse'))).toBe(SELF);
    // Relaying another service's identity is not acting as itself.
    expect(() => plane.callerField(meta({ subject: 'service:payment', roles: ['ROLE_SERVICE'], service: 'payment' }, 'warehouse'))).toThrow(UnauthenticatedError);
    expect(() => plane.callerField(meta({ subject: 'ann', roles: ['ROLE_USER'] }, 'warehouse'))).toThrow(UnauthenticatedError);
    expect(plane.callerField(meta({ subject: 'ann', roles: [], assertion: 'ua1.x.y' }, 'warehouse'))).toBe('ua1.x.y');
  });
});

describe('DeploymentAuthority keys', () => {
  test('an authority rebuilt from its exported keys has the same trust and issues credentials the first one verifies', () => {
    const first = new DeploymentAuthority('dep-k');
    const again = DeploymentAuthority.fromKeys(first.exportKeys());
    expect(again.trust).toEqual(first.trust);
    const bundle = again.issue({ sub: 'warehouse', svc: ['warehouse'] });
    expect(first.claimsOf(bundle.token).sub).toBe('warehouse');
    const edge = again.issue({ sub: 'edge', edge: true });
    expect(edge.assertionKey).toBe(first.exportKeys().assertionKey);
  });

  test('keys that are not Ed25519 private keys are refused with what is wrong', () => {
    const keys = new DeploymentAuthority('dep-k').exportKeys();
    expect(() => DeploymentAuthority.fromKeys({ ...keys, authorityKey: 'not a key' })).toThrow(/authority key is not a private key in PEM/);
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    expect(() => DeploymentAuthority.fromKeys({ ...keys, assertionKey: rsa })).toThrow(/assertion key is rsa, not Ed25519/);
  });
});
