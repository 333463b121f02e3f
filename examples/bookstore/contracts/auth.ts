import { defineContract, z } from 'evolith';
import { CodedMessage } from './coded-message.js';
import { requiredText, username } from './fields.js';

/** The `iss` of every token the auth service signs; the edge accepts no other. */
export const tokenIssuer = 'evolith-bookstore';

export const Role = z.enum(['ROLE_USER', 'ROLE_ADMIN']);

/**
 * An OAuth2 token request (RFC 6749 §4.3 and §6) as it arrives from a query string or form.
 * Every field is optional here so the service can answer with the OAuth error a client expects
 * (`invalid_request`, `invalid_client`, ...) rather than a schema violation.
 */
export const TokenRequest = z.object({
  grant_type: z.string().optional(),
  username: z.string().max(200, 'username must be at most 200 characters').optional(),
  password: z.string().optional(),
  refresh_token: z.string().optional(),
  client_id: z.string().optional(),
  client_secret: z.string().optional(),
  /**
   * The client's address, for throttling sign-ins. Set by the edge from the TCP connection
   * (edge-input.ts); a value a client sends under this name is never copied into the request.
   */
  client_address: z.string().max(100).optional(),
});

export const TokenPair = z.object({
  access_token: z.string(),
  token_type: z.literal('bearer'),
  refresh_token: z.string(),
  expires_in: z.number().int(),
  scope: z.string(),
  authorities: z.array(z.string()),
  username: z.string(),
  jti: z.string(),
});

export const Jwks = z.object({
  keys: z.array(z.looseObject({ kty: z.string(), kid: z.string().optional(), alg: z.string().optional(), use: z.string().optional() })),
});

export const authContract = defineContract({
  name: 'auth',
  version: '1.0.0',
  description: 'OAuth2 token endpoint, the JWT signing key and the credentials of every account.',
  methods: {
    token: {
      input: TokenRequest,
      output: TokenPair,
      description: 'grant_type=password or refresh_token, for a registered client.',
    },
    jwks: {
      input: z.object({}),
      output: Jwks,
      idempotent: true,
      description: 'The public signing keys, for whoever verifies access tokens (the edge).',
    },
    checkToken: {
      input: z.object({ sub: z.string(), ver: z.number().int().optional(), fam: z.string().optional() }),
      output: z.object({ active: z.boolean() }),
      idempotent: true,
      internal: true,
      description:
        'Whether an access token (its claims) is still honoured: false once a password change (or a reused refresh token) revoked it. The edge asks on every authenticated request.',
    },
    changePassword: {
      input: z.object({
        currentPassword: z.string({ error: (i) => (i.input === undefined || i.input === null ? 'currentPassword is required' : 'currentPassword must be text') }),
        newPassword: requiredText('newPassword', 200),
      }),
      output: CodedMessage,
      roles: ['ROLE_USER'],
      description: 'Changes the signed-in account\'s password, given the current one; every token issued before is revoked.',
    },
    setCredentials: {
      input: z.object({
        username: username(50),
        // Empty: the account has no password, and nobody can sign in to it with one.
        password: z.string().max(200, 'password must be at most 200 characters'),
        roles: z.array(Role).min(1, 'roles must not be empty').optional(),
      }),
      output: CodedMessage,
      // Internal: only the account service calls it, also for anonymous registrations, so the
      // handler decides who may overwrite existing credentials (their owner, an admin or a service).
      internal: true,
      description: 'Creates credentials (default role ROLE_USER); an administrator or a service may also reset existing ones.',
    },
  },
});
