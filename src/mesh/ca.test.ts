import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, beforeAll, describe, expect, test } from 'vitest';
import { ConfigError, UnauthenticatedError } from '../kernel/errors.js';
import {
  clientTlsOptions,
  type IssuedCertificate,
  MeshAuthority,
  parseSpiffeId,
  peerIds,
  serverTlsOptions,
  SPIFFE_SCHEME,
  spiffeId,
} from './ca.js';

const HOUR = 60 * 60 * 1000;

/** Everything a test opened, closed afterwards whether it passed or not. */
const cleanup: Array<() => void> = [];
afterEach(() => {
  for (const close of cleanup.splice(0)) close();
});

interface MeshServer {
  server: tls.Server;
  port: number;
  /** Connections whose handshake completed, i.e. whose client the server accepted. */
  secured: tls.TLSSocket[];
  /** Handshakes the server refused, with the verification code when the refusal came from checking the client's chain. */
  refused: Array<{ error: Error; reason?: string }>;
}

/** An mTLS echo server on 127.0.0.1: each message comes back with the ids the server saw on its sender. */
async function startServer(options: tls.TlsOptions): Promise<MeshServer> {
  const secured: tls.TLSSocket[] = [];
  const refused: MeshServer['refused'] = [];
  const server = tls.createServer(options, (socket) => {
    secured.push(socket);
    socket.on('error', () => {});
    socket.on('data', (data) => socket.write(JSON.stringify({ ids: peerIds(socket), echo: data.toString() })));
  });
  // Node refuses an unverified client by closing the socket ('socket hang up'); why is left on the
  // socket as authorizationError.
  server.on('tlsClientError', (error, socket) => refused.push({ error, reason: socket.authorizationError?.toString() }));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanup.push(() => {
    for (const s of secured) s.destroy();
    server.close();
  });
  return { server, port: (server.address() as net.AddressInfo).port, secured, refused };
}

/** Connects and resolves once the client side of the handshake is done (or rejects with its error). */
function connect(port: number, options: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ ...options, host: '127.0.0.1', port });
    cleanup.push(() => socket.destroy());
    socket.once('secureConnect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** Resolves when the socket closes, whatever went wrong first (`events.once` would reject on an 'error'). */
function closed(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

async function ask(socket: tls.TLSSocket, message: string): Promise<{ ids: string[]; echo: string }> {
  socket.write(message);
  const [data] = (await once(socket, 'data')) as [Buffer];
  return JSON.parse(data.toString()) as { ids: string[]; echo: string };
}

/**
 * What a client the server should refuse ends up with. Under TLS 1.3 the client finishes its half
 * of the handshake before the server has judged its certificate, so `connect` may well succeed;
 * the refusal shows as an alert or a reset, and no answer ever comes back.
 */
async function refusedOutcome(port: number, options: tls.ConnectionOptions): Promise<{ answered: boolean; error?: Error }> {
  const socket = tls.connect({ ...options, host: '127.0.0.1', port });
  cleanup.push(() => socket.destroy());
  let answered = false;
  let error: Error | undefined;
  socket.on('secureConnect', () => socket.write('hello'));
  socket.on('data', () => (answered = true));
  socket.on('error', (err) => (error = err));
  await closed(socket);
  return { answered, error };
}

let ca: MeshAuthority;
let warehouse: IssuedCertificate;
let storefront: IssuedCertificate;

beforeAll(async () => {
  ca = await MeshAuthority.create({ app: 'bookstore' });
  [warehouse, storefront] = await Promise.all([ca.issue(['warehouse'], HOUR), ca.issue(['storefront', 'search'], HOUR)]);
});

describe('SPIFFE ids', () => {
  test('spiffeId and parseSpiffeId round-trip', () => {
    const id = spiffeId('bookstore', 'warehouse');
    expect(id).toBe('spiffe://bookstore/warehouse');
    expect(id.startsWith(SPIFFE_SCHEME)).toBe(true);
    expect(parseSpiffeId(id)).toEqual({ app: 'bookstore', service: 'warehouse' });
    expect(parseSpiffeId(spiffeId('bookStore-2', 'read-Model9'))).toEqual({ app: 'bookStore-2', service: 'read-Model9' });
  });

  test('parseSpiffeId refuses other schemes, extra or missing path segments, empty parts and bad names', () => {
    for (const bad of [
      'https://bookstore/warehouse',
      'SPIFFE://bookstore/warehouse',
      'spiffe:/bookstore/warehouse',
      'spiffe://bookstore/warehouse/extra',
      'spiffe://bookstore/warehouse/',
      'spiffe://bookstore',
      'spiffe://bookstore/',
      'spiffe:///warehouse',
      'spiffe://',
      'spiffe://Bookstore/warehouse',
      'spiffe://bookstore/9warehouse',
      'spiffe://bookstore/ware_house',
      'spiffe://bookstore/ware house',
      'spiffe://book.store/warehouse',
      'spiffe://bookstore/warehouse?x=1',
      ' spiffe://bookstore/warehouse',
    ]) {
      expect(parseSpiffeId(bad), bad).toBeUndefined();
    }
  });

  test('spiffeId refuses names that would not parse back', () => {
    expect(() => spiffeId('bookstore', 'a/b')).toThrow(ConfigError);
    expect(() => spiffeId('', 'warehouse')).toThrow(ConfigError);
    expect(() => spiffeId('bookstore', '-x')).toThrow(ConfigError);
  });
});

describe('MeshAuthority', () => {
  test('the root is a CA that may sign leaves only', () => {
    const root = new x509.X509Certificate(ca.trustPem);
    const constraints = root.getExtension(x509.BasicConstraintsExtension)!;
    expect(constraints.ca).toBe(true);
    expect(constraints.pathLength).toBe(0);
    expect(constraints.critical).toBe(true);
    const usages = root.getExtension(x509.KeyUsagesExtension)!.usages;
    expect(usages & x509.KeyUsageFlags.keyCertSign).toBeTruthy();
    expect(usages & x509.KeyUsageFlags.digitalSignature).toBeFalsy();
    expect(ca.app).toBe('bookstore');
    expect(new X509Certificate(ca.trustPem).ca).toBe(true);
    // Default lifetime: 30 days.
    expect(Math.abs(ca.notAfter - (Date.now() + 30 * 24 * HOUR))).toBeLessThan(60_000);
  });

  test('an issued leaf verifies against the CA, names its services, is EC P-256 and lives for its ttl', async () => {
    const ttl = 10 * 60_000;
    const before = Date.now();
    const leaf = await ca.issue(['storefront', 'search'], ttl);
    const cert = new X509Certificate(leaf.certPem);
    const root = new X509Certificate(ca.trustPem);
    expect(cert.verify(root.publicKey)).toBe(true);
    expect(cert.checkIssued(root)).toBe(true);
    expect(cert.ca).toBe(false);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(cert.subjectAltName).toBe('URI:spiffe://bookstore/storefront, URI:spiffe://bookstore/search');
    expect(leaf.ids).toEqual(['spiffe://bookstore/storefront', 'spiffe://bookstore/search']);
    expect(cert.keyUsage).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']));
    // Certificates record whole seconds.
    expect(Math.abs(Date.parse(cert.validTo) - (before + ttl))).toBeLessThan(2_000);
    expect(leaf.notAfter).toBe(Date.parse(cert.validTo));
    expect(Math.abs(Date.parse(cert.validFrom) - (before - 60_000))).toBeLessThan(2_000);
    expect(leaf.serial).toBe(cert.serialNumber);
    expect(leaf.serial).toMatch(/^[0-9A-F]{32}$/);
    // The key matches the certificate, and node:tls takes both PEMs as they are.
    expect(cert.checkPrivateKey((await import('node:crypto')).createPrivateKey(leaf.keyPem))).toBe(true);
    expect(() => tls.createSecureContext(serverTlsOptions(leaf, ca.trustPem))).not.toThrow();
    expect(() => tls.createSecureContext({ ca: ca.trustPem })).not.toThrow();
  });

  test('every leaf gets its own key and serial', async () => {
    const [a, b] = await Promise.all([ca.issue(['warehouse'], HOUR), ca.issue(['warehouse'], HOUR)]);
    expect(a.serial).not.toBe(b.serial);
    expect(a.keyPem).not.toBe(b.keyPem);
  });

  test('issue refuses empty, malformed or over-long requests', async () => {
    await expect(ca.issue([], HOUR)).rejects.toThrow(ConfigError);
    await expect(ca.issue(['ware/house'], HOUR)).rejects.toThrow(ConfigError);
    await expect(ca.issue(['warehouse'], 0)).rejects.toThrow(ConfigError);
    await expect(ca.issue(['warehouse'], Number.NaN)).rejects.toThrow(ConfigError);
    await expect(ca.issue(['warehouse'], 31 * 24 * HOUR)).rejects.toThrow(/outlive its CA/);
    await expect(MeshAuthority.create({ app: 'Book store' })).rejects.toThrow(ConfigError);
  });
});

describe('mutual TLS', () => {
  test('a server and client from the same CA connect; the server sees the client ids and data flows', async () => {
    const s = await startServer(serverTlsOptions(warehouse, ca.trustPem));
    const client = await connect(s.port, clientTlsOptions(storefront, ca.trustPem, 'spiffe://bookstore/warehouse'));
    expect(client.authorized).toBe(true);
    expect(client.getProtocol()).toBe('TLSv1.3');
    expect(peerIds(client)).toEqual(['spiffe://bookstore/warehouse']);
    expect(await ask(client, 'reserve 3')).toEqual({
      ids: ['spiffe://bookstore/storefront', 'spiffe://bookstore/search'],
      echo: 'reserve 3',
    });
    expect(await ask(client, 'again')).toMatchObject({ echo: 'again' });
    expect(s.secured).toHaveLength(1);
    expect(s.refused).toEqual([]);
  });

  test('a plaintext client gets nothing through and the server reports the failed handshake', async () => {
    const s = await startServer(serverTlsOptions(warehouse, ca.trustPem));
    const refused = once(s.server, 'tlsClientError');
    const socket = net.connect(s.port, '127.0.0.1');
    cleanup.push(() => socket.destroy());
    const received: Buffer[] = [];
    socket.on('data', (d: Buffer) => received.push(d));
    socket.on('error', () => {});
    socket.write('GET /warehouse HTTP/1.1\r\nHost: x\r\n\r\n');
    const [err] = (await refused) as [Error];
    expect(err).toBeInstanceOf(Error);
    await closed(socket);
    const bytes = Buffer.concat(received);
    // At most a TLS alert record (content type 21); never an answer.
    expect(bytes.length === 0 || bytes[0] === 21).toBe(true);
    expect(bytes.toString('latin1')).not.toContain('echo');
    expect(s.secured).toHaveLength(0);
  });

  test('a client whose certificate comes from another CA is refused', async () => {
    const s = await startServer(serverTlsOptions(warehouse, ca.trustPem));
    const other = await MeshAuthority.create({ app: 'bookstore' });
    const impostor = await other.issue(['storefront'], HOUR);
    // It trusts our CA, so the server's certificate is fine to it; only its own is wrong.
    const outcome = await refusedOutcome(s.port, clientTlsOptions(impostor, ca.trustPem, 'spiffe://bookstore/warehouse'));
    expect(outcome.answered).toBe(false);
    expect(s.secured).toHaveLength(0);
    expect(s.refused).toHaveLength(1);
    expect(s.refused[0]!.reason).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });

  test('a client with no certificate at all is refused', async () => {
    const s = await startServer(serverTlsOptions(warehouse, ca.trustPem));
    const { cert: _cert, key: _key, ...anonymous } = clientTlsOptions(storefront, ca.trustPem, 'spiffe://bookstore/warehouse');
    const outcome = await refusedOutcome(s.port, anonymous);
    expect(outcome.answered).toBe(false);
    expect(s.secured).toHaveLength(0);
    expect(s.refused).toHaveLength(1);
    expect(s.refused[0]!.error.message).toMatch(/peer did not return a certificate/);
    expect(outcome.error?.message).toMatch(/certificate required/);
  });

  test('a client refuses a server that is not the service it expects, naming both', async () => {
    const s = await startServer(serverTlsOptions(warehouse, ca.trustPem));
    const attempt = connect(s.port, clientTlsOptions(storefront, ca.trustPem, 'spiffe://bookstore/payment'));
    await expect(attempt).rejects.toThrow(UnauthenticatedError);
    await expect(attempt).rejects.toThrow(/spiffe:\/\/bookstore\/payment.*spiffe:\/\/bookstore\/warehouse/);
    expect(s.secured).toHaveLength(0);
  });

  test('a client accepts a server hosting the expected service among others', async () => {
    const s = await startServer(serverTlsOptions(storefront, ca.trustPem));
    const client = await connect(s.port, clientTlsOptions(warehouse, ca.trustPem, 'spiffe://bookstore/search'));
    expect(await ask(client, 'q')).toEqual({ ids: ['spiffe://bookstore/warehouse'], echo: 'q' });
  });

  test('a client refuses a server whose certificate comes from another CA', async () => {
    const other = await MeshAuthority.create({ app: 'bookstore' });
    const impostor = await other.issue(['warehouse'], HOUR);
    const s = await startServer(serverTlsOptions(impostor, other.trustPem));
    await expect(connect(s.port, clientTlsOptions(storefront, ca.trustPem, 'spiffe://bookstore/warehouse'))).rejects.toMatchObject({
      // The server sends its chain up to its own root, which the client does not trust.
      code: 'SELF_SIGNED_CERT_IN_CHAIN',
    });
  });

  test('an expired client certificate is refused by the server', async () => {
    const expired = await ca.issue(['storefront'], 60_000, { now: Date.now() - HOUR });
    expect(expired.notAfter).toBeLessThan(Date.now());
    const s = await startServer(serverTlsOptions(warehouse, ca.trustPem));
    const outcome = await refusedOutcome(s.port, clientTlsOptions(expired, ca.trustPem, 'spiffe://bookstore/warehouse'));
    expect(outcome.answered).toBe(false);
    expect(s.secured).toHaveLength(0);
    expect(s.refused).toHaveLength(1);
    expect(s.refused[0]!.reason).toBe('CERT_HAS_EXPIRED');
  });

  test('an expired server certificate is refused by the client', async () => {
    const expired = await ca.issue(['warehouse'], 60_000, { now: Date.now() - HOUR });
    const s = await startServer(serverTlsOptions(expired, ca.trustPem));
    await expect(connect(s.port, clientTlsOptions(storefront, ca.trustPem, 'spiffe://bookstore/warehouse'))).rejects.toMatchObject({
      code: 'CERT_HAS_EXPIRED',
    });
    expect(s.secured).toHaveLength(0);
  });

  test('a server rotates its certificate: new connections see the new serial, existing ones keep working', async () => {
    const s = await startServer(serverTlsOptions(warehouse, ca.trustPem));
    const expectWarehouse = clientTlsOptions(storefront, ca.trustPem, 'spiffe://bookstore/warehouse');
    const early = await connect(s.port, expectWarehouse);
    expect(early.getPeerCertificate().serialNumber).toBe(warehouse.serial);

    const renewed = await ca.issue(['warehouse'], HOUR);
    expect(renewed.serial).not.toBe(warehouse.serial);
    s.server.setSecureContext(serverTlsOptions(renewed, ca.trustPem));

    const late = await connect(s.port, expectWarehouse);
    expect(late.getPeerCertificate().serialNumber).toBe(renewed.serial);
    expect(await ask(late, 'after')).toMatchObject({ echo: 'after', ids: storefront.ids });
    expect(await ask(early, 'still here')).toMatchObject({ echo: 'still here', ids: storefront.ids });
    expect(early.getPeerCertificate().serialNumber).toBe(warehouse.serial);
    // Rotation kept the server's demand for client certificates.
    const { cert: _cert, key: _key, ...anonymous } = expectWarehouse;
    expect((await refusedOutcome(s.port, anonymous)).answered).toBe(false);
    expect(s.refused).toHaveLength(1);
  });

  test('peerIds is empty for a peer that presented no certificate or an unverified one', async () => {
    const s = await startServer({ ...serverTlsOptions(warehouse, ca.trustPem), rejectUnauthorized: false });
    const seen = new Promise<tls.TLSSocket>((resolve) => s.server.once('secureConnection', resolve));
    const other = await MeshAuthority.create({ app: 'bookstore' });
    const impostor = await other.issue(['storefront'], HOUR);
    const client = await connect(s.port, clientTlsOptions(impostor, ca.trustPem, 'spiffe://bookstore/warehouse'));
    const serverSide = await seen;
    expect(serverSide.authorized).toBe(false);
    expect(serverSide.getPeerCertificate().subjectaltname).toBe('URI:spiffe://bookstore/storefront');
    expect(peerIds(serverSide)).toEqual([]);
    expect(await ask(client, 'x')).toEqual({ ids: [], echo: 'x' });
  });
});
