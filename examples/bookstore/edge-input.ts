import { ErrorCodes, type EdgeReply, type EdgeRequest, type EvolithError } from 'evolith';

/** One query or form value: repeated parameters count by their first occurrence. */
export function first(value: unknown): string | undefined {
  if (Array.isArray(value)) return first(value[0]);
  return typeof value === 'string' ? value : undefined;
}

/** A number from the query string; absent or empty stays undefined so the contract can say "required". */
export function numeric(value: unknown): number {
  const s = first(value);
  return (s === undefined || s.trim() === '' ? undefined : Number(s)) as number;
}

const oauthFields = ['grant_type', 'username', 'password', 'refresh_token', 'client_id', 'client_secret'] as const;

/**
 * An OAuth2 token request from a query string or a form (or JSON) body. Clients may also
 * authenticate with HTTP Basic (RFC 6749 §2.3.1), which is what most OAuth libraries do.
 */
export function tokenRequest(source: unknown, req: EdgeRequest): Partial<Record<(typeof oauthFields)[number] | 'client_address', string>> {
  const fields = (source ?? {}) as Record<string, unknown>;
  const out: Partial<Record<(typeof oauthFields)[number] | 'client_address', string>> = {};
  // Sign-ins are throttled per client address too: the TCP peer's, never one a client sends.
  if (req.remoteAddress) out.client_address = req.remoteAddress;
  for (const f of oauthFields) {
    const v = first(fields[f]);
    if (v !== undefined) out[f] = v;
  }
  const basic = /^basic\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  if (basic && out.client_id === undefined) {
    const decoded = Buffer.from(basic[1]!, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon > 0) {
      out.client_id = decodeURIComponent(decoded.slice(0, colon));
      out.client_secret = decodeURIComponent(decoded.slice(colon + 1));
    }
  }
  return out;
}

/** OAuth clients expect `{error, error_description}` (RFC 6749 §5.2), not the bookstore's CodedMessage. */
export function oauthError(err: EvolithError): EdgeReply | undefined {
  if (err.code === ErrorCodes.VALIDATION) return { status: 400, body: { error: 'invalid_request', error_description: err.message } };
  if (err.code.startsWith('EVOLITH_')) return undefined;
  const reply: EdgeReply = { status: err.httpStatus, body: { error: err.code, error_description: err.message } };
  if (err.httpStatus === 401) reply.headers = { 'www-authenticate': 'Basic realm="bookstore"' };
  const wait = (err.details as { retryAfterSeconds?: unknown } | undefined)?.retryAfterSeconds;
  if (err.httpStatus === 429 && typeof wait === 'number') reply.headers = { 'retry-after': String(wait) };
  return reply;
}

/** A throttled request (429) in the bookstore's `{code, message}` form, telling the client when to retry. */
export function retryLater(err: EvolithError): EdgeReply | undefined {
  const wait = (err.details as { retryAfterSeconds?: unknown } | undefined)?.retryAfterSeconds;
  if (err.httpStatus !== 429 || typeof wait !== 'number') return undefined;
  return { status: 429, body: { code: 1, message: err.message }, headers: { 'retry-after': String(wait) } };
}
