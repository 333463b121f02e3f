/**
 * Who is calling, on the internal plane. A call between processes carries two things about its
 * caller: the calling service (`from`), which must be one the peer's credential names, and the
 * identity the callee's handler will see, which is one of
 *
 *   - nothing (an anonymous call),
 *   - `service`: the calling service acting on its own behalf (events, timers, start-up), which
 *     the callee derives from the peer's proven credential, never from what the frame says,
 *   - a user assertion signed by the deployment's edge (see assertions.ts).
 *
 * Anything else is refused with EVOLITH_UNAUTHENTICATED. The same rules serve TCP (the peer is
 * proven once per connection) and HTTP (the peer presents its credential per request).
 */
import { ForbiddenError, UnauthenticatedError } from '../kernel/errors.js';
import type { CallMeta, Identity } from '../kernel/plugins.js';
import { AssertionSigner, AssertionVerifier } from './assertions.js';
import { Credential, type CredentialBundle, type CredentialClaims } from './credentials.js';

/** The caller field that means "the calling service itself". */
export const SELF = 'service';

export class InternalPlane {
  readonly credential: Credential;
  readonly assertions: AssertionVerifier;
  /** Edge processes only: signs the users it verified. */
  readonly signer: AssertionSigner | undefined;

  constructor(bundle: CredentialBundle) {
    this.credential = new Credential(bundle);
    this.assertions = new AssertionVerifier(bundle.trust.assertions);
    this.signer = bundle.assertionKey ? new AssertionSigner(bundle.assertionKey) : undefined;
  }

  get claims(): CredentialClaims {
    return this.credential.claims;
  }

  /** A peer's credential, checked (signature, deployment, expiry). */
  peer(token: string): CredentialClaims {
    return this.credential.verifier.verify(token);
  }

  /**
   * What a caller sends about the identity in `meta`: undefined, SELF or an assertion. An
   * identity this process cannot prove to another (no assertion, not itself) is refused here,
   * before anything is sent.
   */
  callerField(meta: CallMeta): string | undefined {
    const caller = meta.caller;
    if (!caller) return undefined;
    if (caller.service !== undefined && caller.service === meta.from) return SELF;
    if (caller.assertion) return caller.assertion;
    throw new UnauthenticatedError(
      `${caller.subject} cannot be vouched for in another process: only identities the edge verified, or a service acting as itself, cross the internal plane`,
    );
  }

  /** The calling service and identity a peer's call carries, or a typed refusal. */
  identify(peer: CredentialClaims, field: unknown, from: string | undefined): { caller: Identity | undefined; from: string | undefined } {
    // A mesh proxy relays calls from other processes: it checked each calling service against
    // the caller's certificate before it passed the call on.
    if (from !== undefined && !(peer.svc.includes(from) || (from === 'edge' && peer.edge === true) || peer.px !== undefined)) {
      throw new ForbiddenError(`${peer.sub} may not call as service ${from}`);
    }
    if (field === undefined || field === null || field === '') return { caller: undefined, from };
    if (field === SELF) {
      if (from === undefined || from === 'edge') throw new UnauthenticatedError(`${peer.sub} claims to act as a service without naming one it hosts`);
      return { caller: { subject: `service:${from}`, roles: ['ROLE_SERVICE'], service: from }, from };
    }
    if (typeof field !== 'string') throw new UnauthenticatedError('the caller must be a user assertion or "service"');
    return { caller: this.assertions.verify(field), from };
  }
}
