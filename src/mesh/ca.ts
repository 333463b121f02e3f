/**
 * The mesh's certificate authority, run by the control plane. Sidecars talk to each other only
 * over TLS 1.3 where both ends present a short-lived certificate from it; a workload's identity
 * is not a hostname but the SPIFFE-style URIs in its certificate's subject alternative names
 * (`spiffe://<app>/<service>`), one per service it hosts (identity.ts: the ids and the TLS
 * settings, which is all a proxy needs).
 */
// @peculiar/x509 resolves its algorithms through tsyringe, which needs the Reflect metadata API
// installed before the library is first evaluated: this import must stay above it.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { KeyObject, X509Certificate, randomBytes, webcrypto } from 'node:crypto';
import { ConfigError } from '../kernel/errors.js';
import { NAME, spiffeId, type IssuedCertificate } from './identity.js';

// Node's WebCrypto is the standard one; only the type names differ from the DOM's.
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

// What proxies need (identities, TLS settings) lives apart, so that they do not load this toolkit.
export { clientTlsOptions, parseSpiffeId, peerIds, serverTlsOptions, spiffeId, SPIFFE_SCHEME, type IssuedCertificate } from './identity.js';

const DAY_MS = 24 * 60 * 60 * 1000;
/** Leaves start this long before they are issued, so a peer whose clock is a little behind still accepts them. */
const CLOCK_SKEW_MS = 60_000;
const EC_KEY: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGNING: webcrypto.EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };

export interface IssueOptions {
  /** The moment to issue as of, epoch ms (default: now); lets tests issue a certificate that has already expired. */
  readonly now?: number;
}

/**
 * One app's mesh CA: a self-signed root that may sign leaves only (path length 0), so a stolen
 * leaf key cannot mint further identities. Its private key never leaves this object.
 */
export class MeshAuthority {
  /** A new CA for one app's mesh (self-signed root, CA:true, pathLen 0, keyCertSign). */
  static async create(options: { app: string; ttlMs?: number }): Promise<MeshAuthority> {
    const { app } = options;
    if (!NAME.test(app)) throw new ConfigError(`invalid mesh app name: ${JSON.stringify(app)}`);
    const ttlMs = options.ttlMs ?? 30 * DAY_MS;
    checkTtl(ttlMs);
    const keys = (await webcrypto.subtle.generateKey(EC_KEY, false, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(),
      name: `CN=${app} mesh CA`,
      notBefore: new Date(now - CLOCK_SKEW_MS),
      notAfter: new Date(now + ttlMs),
      keys,
      signingAlgorithm: SIGNING,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    return new MeshAuthority(app, cert, keys);
  }

  /** The CA certificate, PEM: what every sidecar trusts. */
  readonly trustPem: string;
  /** When the CA itself expires, epoch ms: no leaf may outlive it. */
  readonly notAfter: number;

  private constructor(
    readonly app: string,
    private readonly cert: x509.X509Certificate,
    private readonly keys: webcrypto.CryptoKeyPair,
  ) {
    this.trustPem = cert.toString('pem');
    this.notAfter = cert.notAfter.getTime();
  }

  /**
   * A leaf for a workload hosting `services` (one URI SAN per service), valid from now-60s (clock
   * skew) for ttlMs, for both client and server authentication, with a fresh key pair.
   */
  async issue(services: readonly string[], ttlMs: number, options: IssueOptions = {}): Promise<IssuedCertificate> {
    if (services.length === 0) throw new ConfigError('a mesh certificate must name at least one service');
    const ids = [...new Set(services)].map((service) => spiffeId(this.app, service));
    checkTtl(ttlMs);
    const now = options.now ?? Date.now();
    const notAfter = now + ttlMs;
    if (notAfter > this.notAfter) {
      // Chain verification would refuse it the moment the CA expires; say so now rather than then.
      throw new ConfigError(`a mesh certificate may not outlive its CA (CA expires ${new Date(this.notAfter).toISOString()})`);
    }
    const keys = (await webcrypto.subtle.generateKey(EC_KEY, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: `CN=${services[0]}, O=${this.app}`,
      issuer: this.cert.subject,
      notBefore: new Date(now - CLOCK_SKEW_MS),
      notAfter: new Date(notAfter),
      publicKey: keys.publicKey,
      signingKey: this.keys.privateKey,
      signingAlgorithm: SIGNING,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension(ids.map((value) => ({ type: 'url' as const, value }))),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        await x509.AuthorityKeyIdentifierExtension.create(this.keys.publicKey),
      ],
    });
    const certPem = cert.toString('pem');
    const keyPem = KeyObject.from(keys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString();
    // Read back through node's own parser, so the numbers are exactly what peers will see.
    const parsed = new X509Certificate(certPem);
    return { certPem, keyPem, ids, notAfter: Date.parse(parsed.validTo), serial: parsed.serialNumber };
  }
}

function checkTtl(ttlMs: number): void {
  if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw new ConfigError(`certificate lifetime must be a positive number of ms, got ${ttlMs}`);
}

/** 16 random bytes, the top bit clear (serials are positive) and the next set (so DER keeps all 16 bytes). */
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x3f) | 0x40;
  return bytes.toString('hex');
}
