/**
 * The handshake that opens a TCP RPC connection on a deployment's internal plane. Both ends
 * prove who they are once, and every call on the connection is then from a known process:
 *
 *   client → hello    its credential and a fresh nonce
 *   server → welcome  its credential, a fresh nonce, and its signature over both nonces
 *   client → proof    its signature over both nonces
 *
 * Each signature is made with the key the signer's credential names, so a copied credential
 * proves nothing without that key, and a recorded handshake cannot be replayed (the nonces are
 * new each time). The client sends no call before the server has proven itself, so nothing of
 * a call reaches a process outside the deployment. Costs per connection: a signature and a
 * verification or two on each side; per call, nothing.
 */
import { challenge, type CredentialClaims } from '../auth/credentials.js';
import type { InternalPlane } from '../auth/internal-plane.js';
import { UnauthenticatedError } from '../kernel/errors.js';
import type { HandshakeHeader } from './frame.js';

const SERVER = Buffer.from('evolith rpc handshake: server\n');
const CLIENT = Buffer.from('evolith rpc handshake: client\n');

/** What a side signs: its role and both nonces, so no signature can stand in for another. */
function transcript(role: Buffer, clientNonce: Uint8Array, serverNonce: Uint8Array): Buffer {
  return Buffer.concat([role, clientNonce, serverNonce]);
}

/** The accepting side of one connection's handshake. */
export class ServerHandshake {
  private clientNonce: Uint8Array | undefined;
  private serverNonce: Uint8Array | undefined;
  private claims: CredentialClaims | undefined;
  private done = false;

  constructor(private readonly plane: InternalPlane) {}

  /** The proven peer, once the handshake completed. */
  get peer(): CredentialClaims | undefined {
    return this.done ? this.claims : undefined;
  }

  /**
   * Takes the next handshake frame; returns the frame to answer with, if any. Throws an
   * UnauthenticatedError saying why the peer is refused.
   */
  step(header: HandshakeHeader): HandshakeHeader | undefined {
    if (header.kind === 'hello' && !this.clientNonce) {
      this.claims = this.plane.peer(header.credential);
      this.clientNonce = header.nonce;
      this.serverNonce = challenge();
      const credential = this.plane.credential;
      return { kind: 'welcome', id: 0, credential: credential.token, nonce: this.serverNonce, proof: credential.prove(transcript(SERVER, header.nonce, this.serverNonce)) };
    }
    if (header.kind === 'proof' && this.claims && !this.done) {
      if (!this.plane.credential.verifier.proves(this.claims, transcript(CLIENT, this.clientNonce!, this.serverNonce!), Buffer.from(header.proof))) {
        throw new UnauthenticatedError(`${this.claims.sub} presented a credential it could not prove it holds`);
      }
      this.done = true;
      return undefined;
    }
    throw new UnauthenticatedError(`unexpected ${header.kind} frame in the handshake`);
  }
}

/** The connecting side of one connection's handshake. */
export class ClientHandshake {
  private readonly nonce = challenge();
  private server: CredentialClaims | undefined;

  constructor(private readonly plane: InternalPlane) {}

  /** The proven server, once its welcome checked out. */
  get peer(): CredentialClaims | undefined {
    return this.server;
  }

  hello(): HandshakeHeader {
    return { kind: 'hello', id: 0, credential: this.plane.credential.token, nonce: this.nonce };
  }

  /** Checks the server's welcome; returns the proof to send. Throws an UnauthenticatedError. */
  welcome(header: HandshakeHeader): HandshakeHeader {
    if (header.kind !== 'welcome' || this.server) throw new UnauthenticatedError(`the server sent ${header.kind} where a welcome was due`);
    const claims = this.plane.peer(header.credential);
    if (!this.plane.credential.verifier.proves(claims, transcript(SERVER, this.nonce, header.nonce), Buffer.from(header.proof))) {
      throw new UnauthenticatedError(`the server presented ${claims.sub}'s credential without its key`);
    }
    this.server = claims;
    return { kind: 'proof', id: 0, proof: this.plane.credential.prove(transcript(CLIENT, this.nonce, header.nonce)) };
  }
}
