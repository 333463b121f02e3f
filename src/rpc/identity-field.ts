/**
 * The identity field of a request header: who a call is made for, as the caller claims it. The
 * receiving side believes none of it until the internal plane checks it against the peer's
 * proven credential (see auth/internal-plane.ts): nil (anonymous), `service` (the calling
 * service acting as itself) or a user assertion signed by the deployment's edge.
 */

/** Longer than any assertion the edge makes; anything longer is refused before it is read. */
const MAX_CLAIM_LENGTH = 12 * 1024;

/** The value the header holds for a caller claim (nil when there is none). */
export function identityToWire(claim: string | undefined): unknown {
  return claim ?? null;
}

/** The caller claim a header field holds; `{ problem }` says why the field is malformed. */
export function identityFromWire(v: unknown): string | undefined | { problem: string } {
  if (v == null) return undefined;
  if (typeof v !== 'string') return { problem: 'caller is not a string (a user assertion or "service")' };
  if (v.length === 0 || v.length > MAX_CLAIM_LENGTH) return { problem: `caller must be 1 to ${MAX_CLAIM_LENGTH} characters` };
  return v;
}
