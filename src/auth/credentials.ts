/**
 * Credentials of a deployment's internal plane.
 *
 * The control plane is the deployment's authority: at start it makes an Ed25519 key pair and
 * signs, for every process it starts, a credential naming what that process is (the services
 * it hosts, the registry instances it may announce, whether it is the edge or an operator) and
 * the public half of a key pair made for that process alone. A process proves its credential
 * by signing a fresh challenge with its own key (TCP: once per connection) or presents it as a
 * bearer token on loopback HTTP (registry, interop). Everyone checks credentials against the
 * authority's public key, which each process receives with its own credential.
 *
 * Format: `ev1.<base64url(JSON claims)>.<base64url(Ed25519 signature over "ev1.<claims>")>`.
 * Not a JWT: it is checked synchronously on the connection path, so node:crypto does it
 * directly; the claims are ours alone.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, randomUUID, sign, verify, type KeyObject } from 'node:crypto';
import { CheckedTokens, openToken, signToken } from './signed-token.js';
import { UnauthenticatedError } from '../kernel/errors.js';

const PREFIX = 'ev1.';

/** What a credential says about its holder. */
export interface CredentialClaims {
  /** The deployment that issued it. */
  readonly dep: string;
  /** Unique per issued credential: one process incarnation. */
  readonly jti: string;
  /** The holder, for logs: `warehouse#0`, `edge#0`, `operator`. */
  readonly sub: string;
  /** Services the holder hosts: the only names it may call as, or announce. */
  readonly svc: readonly string[];
  /** Registry instance ids it may announce. */
  readonly ins: readonly string[];
  /** The edge: mints user assertions, may announce the edge instance. */
  readonly edge?: boolean;
  /** An operator (the CLI): reads status, calls public methods, never as a service. */
  readonly op?: boolean;
  /**
   * A mesh proxy: the process slots (`warehouse#0`) whose calls it carries. Their apps take
   * calls from it alone, and it may relay any calling service, having checked each against the
   * caller's certificate.
   */
  readonly px?: readonly string[];
  /** The holder's own public key (raw Ed25519, base64url), for proofs of possession. */
  readonly key: string;
  /** Issued at and expiry, epoch ms. */
  readonly iat: number;
  readonly exp: number;
}

/** What every process of a deployment needs to check the others: the authority's public keys. */
export interface Trust {
  readonly deployment: string;
  /** Signs credentials (SPKI PEM). */
  readonly authority: string;
  /** Signs user assertions at the edge (SPKI PEM). */
  readonly assertions: string;
}

/** Everything one process receives at start (over its supervisor's private channel). */
export interface CredentialBundle {
  readonly trust: Trust;
  readonly token: string;
  /** The process's own private key (PKCS#8 PEM). */
  readonly privateKey: string;
  /** Edge processes only: the key that signs user assertions (PKCS#8 PEM). */
  readonly assertionKey?: string;
}

/** An authority's private keys (PKCS#8 PEM): what lets a deployment issue credentials again later. */
export interface AuthorityKeys {
  readonly deployment: string;
  readonly authorityKey: string;
  readonly assertionKey: string;
}

/** The authority of one deployment: lives in the control plane only. */
export class DeploymentAuthority {
  readonly trust: Trust;
  private readonly signingKey: KeyObject;
  private readonly assertionKey: KeyObject;

  constructor(readonly deployment: string = randomUUID(), keys?: { authority: KeyObject; assertions: KeyObject }) {
    this.signingKey = keys?.authority ?? generateKeyPairSync('ed25519').privateKey;
    this.assertionKey = keys?.assertions ?? generateKeyPairSync('ed25519').privateKey;
    this.trust = {
      deployment,
      authority: createPublicKey(this.signingKey).export({ type: 'spki', format: 'pem' }) as string,
      assertions: createPublicKey(this.assertionKey).export({ type: 'spki', format: 'pem' }) as string,
    };
  }

  /**
   * The authority whose keys `exportKeys` gave: a deployment generated again (Kubernetes
   * manifests) keeps the trust its running pods already hold. Throws on keys that are not Ed25519.
   */
  static fromKeys(keys: AuthorityKeys): DeploymentAuthority {
    const load = (pem: string, what: string) => {
      let key: KeyObject;
      try {
        key = createPrivateKey(pem);
      } catch (err) {
        throw new TypeError(`the ${what} is not a private key in PEM: ${(err as Error).message}`);
      }
      if (key.asymmetricKeyType !== 'ed25519') throw new TypeError(`the ${what} is ${key.asymmetricKeyType ?? 'not asymmetric'}, not Ed25519`);
      return key;
    };
    if (typeof keys.deployment !== 'string' || keys.deployment === '') throw new TypeError('the authority keys name no deployment');
    return new DeploymentAuthority(keys.deployment, { authority: load(keys.authorityKey, 'authority key'), assertions: load(keys.assertionKey, 'assertion key') });
  }

  /** The private keys, to be kept as secret as the authority itself. */
  exportKeys(): AuthorityKeys {
    return {
      deployment: this.deployment,
      authorityKey: this.signingKey.export({ type: 'pkcs8', format: 'pem' }) as string,
      assertionKey: this.assertionKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    };
  }

  /**
   * The same credential (holder, key, id) with a new expiry: what a long-running process is
   * sent before its credential lapses. Refuses tokens this authority did not issue.
   */
  renew(token: string, ttlMs = 24 * 60 * 60 * 1000): string {
    const claims = new CredentialVerifier(this.trust).verify(token);
    const now = Date.now();
    return this.sign({ ...claims, iat: now, exp: now + ttlMs });
  }

  /** The claims of a credential this authority issued (checked). */
  claimsOf(token: string): CredentialClaims {
    return new CredentialVerifier(this.trust).verify(token);
  }

  private sign(claims: CredentialClaims): string {
    return signToken(PREFIX, claims, this.signingKey);
  }

  /** A new credential and key pair for one process. */
  issue(holder: { sub: string; svc?: readonly string[]; ins?: readonly string[]; edge?: boolean; op?: boolean; px?: readonly string[] }, ttlMs = 24 * 60 * 60 * 1000): CredentialBundle {
    const pair = generateKeyPairSync('ed25519');
    const raw = pair.publicKey.export({ format: 'jwk' }).x!;
    const now = Date.now();
    const claims: CredentialClaims = {
      dep: this.deployment,
      jti: randomUUID(),
      sub: holder.sub,
      svc: holder.svc ?? [],
      ins: holder.ins ?? [],
      ...(holder.edge ? { edge: true } : {}),
      ...(holder.op ? { op: true } : {}),
      ...(holder.px ? { px: holder.px } : {}),
      key: raw,
      iat: now,
      exp: now + ttlMs,
    };
    return {
      trust: this.trust,
      token: this.sign(claims),
      privateKey: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
      ...(holder.edge ? { assertionKey: this.assertionKey.export({ type: 'pkcs8', format: 'pem' }) as string } : {}),
    };
  }
}

/** Checks credentials against a deployment's trust; remembers the tokens it has checked. */
export class CredentialVerifier {
  private readonly authority: KeyObject;
  private readonly checked = new CheckedTokens<CredentialClaims>();

  constructor(readonly trust: Trust) {
    this.authority = createPublicKey(trust.authority);
  }

  /** The claims of a valid, unexpired credential of this deployment; UnauthenticatedError otherwise. */
  verify(token: string): CredentialClaims {
    const known = this.checked.get(token);
    if (known) {
      if (known.exp <= Date.now()) throw new UnauthenticatedError(`credential of ${known.sub} expired`);
      return known;
    }
    if (typeof token !== 'string' || !token.startsWith(PREFIX)) throw new UnauthenticatedError('not an internal credential');
    const claims = openToken<CredentialClaims>(PREFIX, token, this.authority, 4096);
    if (!claims) throw new UnauthenticatedError('credential not signed by this deployment');
    if (claims.dep !== this.trust.deployment) throw new UnauthenticatedError('credential of another deployment');
    if (!(claims.exp > Date.now())) throw new UnauthenticatedError(`credential of ${claims.sub} expired`);
    this.checked.set(token, claims);
    return claims;
  }

  /** True when `signature` over `challenge` was made by the holder of `claims`. */
  proves(claims: CredentialClaims, challenge: Buffer, signature: Buffer): boolean {
    try {
      return verify(null, challenge, createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: claims.key }, format: 'jwk' }), signature);
    } catch {
      return false;
    }
  }
}

/** A process's own credential, ready to present and prove. */
export class Credential {
  readonly verifier: CredentialVerifier;
  private readonly key: KeyObject;
  private current: string;
  private currentClaims: CredentialClaims;

  constructor(readonly bundle: CredentialBundle) {
    this.verifier = new CredentialVerifier(bundle.trust);
    this.currentClaims = this.verifier.verify(bundle.token);
    this.current = bundle.token;
    this.key = createPrivateKey(bundle.privateKey);
  }

  get token(): string {
    return this.current;
  }

  get claims(): CredentialClaims {
    return this.currentClaims;
  }

  /** Takes a renewed token: it must be this same credential (holder, key, id), checked like any other. */
  renewed(token: string): void {
    const claims = this.verifier.verify(token);
    if (claims.jti !== this.currentClaims.jti || claims.key !== this.currentClaims.key) throw new UnauthenticatedError('a renewal must be of the same credential');
    this.current = token;
    this.currentClaims = claims;
  }

  /** Signs a peer's challenge, proving this process holds the credential's key. */
  prove(challenge: Buffer): Buffer {
    return sign(null, challenge, this.key);
  }
}

/** A fresh random challenge for a proof of possession. */
export function challenge(): Buffer {
  return randomBytes(32);
}
