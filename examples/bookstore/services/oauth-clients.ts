import { createHash, timingSafeEqual } from 'node:crypto';
import { BusinessError } from 'evolith';

export interface OAuthClient {
  id: string;
  secret: string;
  grants: readonly string[];
  scope: readonly string[];
}

/** The applications allowed to ask for tokens; the bookstore has one, its browser front end. */
const clients: readonly OAuthClient[] = [
  { id: 'bookstore_frontend', secret: 'bookstore_secret', grants: ['password', 'refresh_token'], scope: ['BROWSER'] },
];

// Comparing digests keeps the comparison constant-time whatever the lengths.
function sameSecret(a: string, b: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(a), digest(b));
}

/** The client named by the request, if its secret matches; `invalid_client` (401) otherwise. */
export function authenticateClient(id: string | undefined, secret: string | undefined): OAuthClient {
  const client = clients.find((c) => c.id === id);
  if (!client || secret === undefined || !sameSecret(secret, client.secret)) {
    throw new BusinessError('invalid_client', id ? `client ${id} is unknown or its secret is wrong` : 'client_id and client_secret are required', {
      httpStatus: 401,
    });
  }
  return client;
}
