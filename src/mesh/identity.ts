/**
 * Who a mesh workload is, and the mutual-TLS settings that prove it: identities are the
 * SPIFFE-style URIs in a certificate's subject alternative names (`spiffe://<app>/<service>`),
 * not hostnames. What every proxy needs, without the certificate authority (ca.ts), which only
 * the control plane runs: a proxy does not load the X.509 toolkit.
 */
import type { ConnectionOptions, PeerCertificate, TLSSocket, TlsOptions } from 'node:tls';
import { ConfigError, UnauthenticatedError } from '../kernel/errors.js';

export const SPIFFE_SCHEME = 'spiffe://';

/** App and service names: what may appear between the slashes of an id, and nothing that needs escaping. */
export const NAME = /^[a-z][a-zA-Z0-9-]*$/;

export function spiffeId(app: string, service: string): string {
  if (!NAME.test(app)) throw new ConfigError(`invalid mesh app name: ${JSON.stringify(app)}`);
  if (!NAME.test(service)) throw new ConfigError(`invalid mesh service name: ${JSON.stringify(service)}`);
  return `${SPIFFE_SCHEME}${app}/${service}`;
}

/** Strict: exactly `spiffe://<app>/<service>` with both names well-formed; anything else is no mesh identity. */
export function parseSpiffeId(uri: string): { app: string; service: string } | undefined {
  if (!uri.startsWith(SPIFFE_SCHEME)) return undefined;
  const parts = uri.slice(SPIFFE_SCHEME.length).split('/');
  if (parts.length !== 2) return undefined;
  const [app, service] = parts as [string, string];
  return NAME.test(app) && NAME.test(service) ? { app, service } : undefined;
}

export interface IssuedCertificate {
  /** The leaf certificate, PEM. */
  readonly certPem: string;
  /** The leaf's PKCS#8 private key, PEM. */
  readonly keyPem: string;
  /** The SPIFFE ids it names (its URI SANs). */
  readonly ids: readonly string[];
  /** Epoch ms (whole seconds: that is all a certificate records). */
  readonly notAfter: number;
  /** Upper-case hex, as `getPeerCertificate().serialNumber` and `X509Certificate.serialNumber` report it. */
  readonly serial: string;
}

/** The SPIFFE ids among a certificate's subject alternative names, as node:tls prints them. */
function spiffeIdsOf(cert: PeerCertificate | undefined): string[] {
  const san = cert?.subjectaltname;
  if (!san) return [];
  // Entries are `TYPE:value` joined by ", "; a value that needs escaping is quoted, and no
  // well-formed id does, so such entries are simply not ids.
  return san
    .split(', ')
    .filter((entry) => entry.startsWith('URI:'))
    .map((entry) => entry.slice('URI:'.length))
    .filter((uri) => parseSpiffeId(uri) !== undefined);
}

/**
 * The SPIFFE ids a verified TLS peer presented (from getPeerCertificate().subjectaltname URI
 * entries); [] when none, and [] when the peer's chain was not verified, so a server configured
 * without `rejectUnauthorized` can never mistake a self-made certificate for an identity.
 */
export function peerIds(socket: TLSSocket): string[] {
  if (!socket.authorized) return [];
  return spiffeIdsOf(socket.getPeerCertificate());
}

/** Options for a mesh TLS server: our cert/key, trust only `trustPem`, requestCert + rejectUnauthorized, TLS 1.3 minimum. */
export function serverTlsOptions(cert: IssuedCertificate, trustPem: string): TlsOptions {
  return {
    cert: cert.certPem,
    key: cert.keyPem,
    ca: [trustPem],
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
  };
}

/**
 * Options for a mesh TLS client that expects the server to be `expect` (a SPIFFE id). The chain must
 * lead to `trustPem` alone; in place of a hostname check, the server's URI SANs must include
 * `expect`, since an address says nothing about which workload answers on it.
 */
export function clientTlsOptions(cert: IssuedCertificate, trustPem: string, expect: string): ConnectionOptions {
  if (parseSpiffeId(expect) === undefined) throw new ConfigError(`not a mesh identity: ${JSON.stringify(expect)}`);
  return {
    cert: cert.certPem,
    key: cert.keyPem,
    ca: [trustPem],
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
    checkServerIdentity: (_host, peer) => {
      const got = spiffeIdsOf(peer);
      if (got.includes(expect)) return undefined;
      return new UnauthenticatedError(
        `mesh peer is not ${expect}: it presented ${got.length > 0 ? got.join(', ') : 'no mesh identity'}`,
        { expected: expect, got },
      );
    },
  };
}
