/**
 * The identity field of a request header: who a call is made for.
 *
 * This is the only code that knows how an identity travels, so giving it another wire form
 * (a signed assertion instead of a plain map, say) changes this file and nothing else: frames,
 * the server, the client and the forwarder only carry what these two functions produce and
 * accept.
 *
 * Today's form: nil, or a map `{subject: string, roles: string[], claims?: map}`, believed as
 * sent (RPC listeners belong on trusted networks only).
 */
import type { Identity } from '../kernel/plugins.js';

/** The value the header holds for `identity` (nil when there is none). */
export function identityToWire(identity: Identity | undefined): unknown {
  if (!identity) return null;
  // A fresh map so that only these fields travel, whatever else the object carries.
  const { subject, roles, claims } = identity;
  return claims === undefined ? { subject, roles } : { subject, roles, claims };
}

/** The identity a header field holds; a string says why the field is malformed. */
export function identityFromWire(v: unknown): Identity | undefined | string {
  if (v == null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) return 'caller is not a map';
  const { subject, roles, claims } = v as Record<string, unknown>;
  if (typeof subject !== 'string') return 'caller.subject is not a string';
  if (!Array.isArray(roles) || !roles.every((r) => typeof r === 'string')) return 'caller.roles is not a list of strings';
  if (claims != null && (typeof claims !== 'object' || Array.isArray(claims))) return 'caller.claims is not a map';
  return claims == null ? { subject, roles } : { subject, roles, claims: claims as Record<string, unknown> };
}
