import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { AppDefinition } from '../app/define.js';
import type { MethodDef } from '../contract/define.js';
import { createJwtAuthenticator } from '../auth/jwt-authenticator.js';
import { openApiDocument } from '../edge/openapi.js';
import { createGateway, type HealthReport } from '../edge/gateway.js';
import { ConfigError, UnavailableError } from '../kernel/errors.js';
import type { Authenticator, Identity } from '../kernel/plugins.js';
import type { Runtime } from '../kernel/runtime.js';
import type { PrometheusTelemetry } from '../observe/telemetry.js';
import type { Topology } from './topology.js';

/**
 * The app's HTTP edge over a runtime, as every architecture runs it: routes, token checks with
 * keys from the app's JWKS method, metrics and OpenAPI. Listens on the topology's host and port.
 */
export async function startEdge(
  app: AppDefinition,
  appDir: string,
  topology: Topology,
  runtime: Runtime,
  telemetry: PrometheusTelemetry,
  log: Logger,
  options: {
    assertIdentity?: (identity: Identity) => Identity;
    ready?: (service: string) => boolean;
    health?: () => Promise<HealthReport>;
    /** More series for /metrics, from outside this process (a serverless platform's meter). */
    metrics?: () => Promise<string>;
  } = {},
): Promise<{ gateway: FastifyInstance; port: number }> {
  const { assertIdentity } = options;
  const edgeAuth = app.edge?.auth;
  const gateway = await createGateway({
    app,
    appDir,
    invoke: (method, input, root) => runtime.invoke(method, input, undefined, root),
    authenticator: edgeAuth
      ? outsideIdentities(edgeAuth.jwks.service, options.ready, createJwtAuthenticator({
          // The edge asks as a service: the JWKS method may be internal.
          fetchJwks: async () => (await runtime.invoke(edgeAuth.jwks, {}, undefined, undefined, undefined, 'edge')) as never,
          issuer: edgeAuth.issuer,
          audience: edgeAuth.audience,
          isActive: edgeAuth.active ? activeCheck(runtime, edgeAuth.active) : undefined,
        }), assertIdentity)
      : undefined,
    log,
    bodyLimit: topology.edge.bodyLimit,
    requestTimeoutMs: topology.edge.requestTimeoutMs,
    headersTimeoutMs: topology.edge.headersTimeoutMs,
    ready: options.ready,
    health: options.health,
    extras: (server) => {
      server.get('/metrics', async (_req, reply) => {
        const [own, more] = await Promise.all([telemetry.metrics(), options.metrics?.()]);
        return reply.type('text/plain; version=0.0.4').send(more ? `${own}${own.endsWith('\n') ? '' : '\n'}${more}` : own);
      });
      server.get('/openapi.json', async () => openApiDocument(app));
    },
  });
  try {
    await gateway.listen({ port: topology.port, host: topology.host });
  } catch (err) {
    await gateway.close();
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new ConfigError(`port ${topology.port} on ${topology.host} is already in use; stop whatever holds it or choose another with --port`);
    }
    throw err;
  }
  return { gateway, port: (gateway.server.address() as AddressInfo).port };
}

/**
 * Identities from outside are users, whatever a token says: the service role is never one of
 * their roles (only a service proving itself on the internal plane acts as a service). Where
 * calls leave the process, `assertIdentity` attaches the form a callee can verify.
 */
function outsideIdentities(
  keyService: string,
  ready: ((service: string) => boolean) | undefined,
  inner: Authenticator,
  assertIdentity: ((identity: Identity) => Identity) | undefined,
): Authenticator {
  return {
    async authenticate(header) {
      // Without the service that holds the keys, a token can be neither accepted nor refused.
      if (header && ready && !ready(keyService)) {
        throw new UnavailableError(`${keyService} has no instance ready to check tokens yet; retry shortly`, { service: keyService });
      }
      const identity = await inner.authenticate(header);
      if (!identity) return undefined;
      const roles = identity.roles.filter((r) => r !== 'ROLE_SERVICE');
      const user: Identity = { subject: identity.subject, roles, ...(identity.claims ? { claims: identity.claims } : {}) };
      return assertIdentity ? assertIdentity(user) : user;
    },
  };
}

/** The app's `auth.active` method as the authenticator asks it: claims it cannot parse are not active. */
function activeCheck(runtime: Runtime, method: MethodDef): (claims: Readonly<Record<string, unknown>>) => Promise<boolean> {
  return async (claims) => {
    const input = method.input.safeParse(claims);
    if (!input.success) return false;
    const answer = (await runtime.invoke(method, input.data, undefined, undefined, undefined, 'edge')) as { active?: unknown } | null;
    return answer?.active === true;
  };
}
