/**
 * The registry over HTTP (fastify). The protocol is described in registry-protocol.ts; the
 * supervisor hosts this as the control plane on one machine.
 */
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import pino, { type Logger } from 'pino';
import { z } from 'zod';
import { CredentialVerifier, type CredentialClaims, type Trust } from '../auth/credentials.js';
import { EvolithError, ForbiddenError, NotFoundError, serializeError, UnauthenticatedError, ValidationError } from '../kernel/errors.js';
import { parseOrThrow } from '../kernel/validate.js';
import { Registry, type ServiceList } from './registry.js';
import type { EndpointsEvent, ErrorBody, HelloEvent, RegistryStatus, SnapshotEvent } from './registry-protocol.js';

export interface RegistryServerOptions {
  /** The deployment's trust: every request must present a credential it vouches for. */
  trust: Trust;
  /** The registry to serve; a new one (default options) when omitted. */
  registry?: Registry;
  log?: Logger;
  /** Comment lines sent on every watch stream this often. Default 10 s. */
  pingIntervalMs?: number;
  /** How long after start clients are told the registry is still learning. Default: the registry's default TTL. */
  warmupMs?: number;
}

const registerBody = z
  .object({
    service: z.string(),
    version: z.string(),
    address: z.string(),
    metadata: z.record(z.string(), z.string()).optional(),
    ttlMs: z.number().int().positive().optional(),
    ready: z.boolean().optional(),
  })
  .strict();
const readyBody = z.object({ ready: z.boolean() }).strict();

interface Stream {
  res: ServerResponse;
  /** undefined: every service. */
  services: Set<string> | undefined;
}

export class RegistryServer {
  readonly app: FastifyInstance;
  readonly registry: Registry;
  readonly bootId = randomUUID();
  readonly startedAt = Date.now();
  private readonly pingIntervalMs: number;
  private readonly streams = new Set<Stream>();
  private readonly ownsRegistry: boolean;
  private warming = true;
  private readonly warmupTimer: NodeJS.Timeout;
  private readonly pingTimer: NodeJS.Timeout;
  private readonly unsubscribe: () => void;
  private addressUrl: string | undefined;

  private readonly verifier: CredentialVerifier;
  private readonly log: Logger;

  constructor(options: RegistryServerOptions) {
    this.ownsRegistry = options.registry === undefined;
    this.registry = options.registry ?? new Registry();
    this.pingIntervalMs = options.pingIntervalMs ?? 10_000;
    const log = options.log ?? pino({ level: 'silent' });
    this.log = log;
    this.verifier = new CredentialVerifier(options.trust);
    this.app = Fastify({
      loggerInstance: log.child({ component: 'registry' }) as unknown as FastifyBaseLogger,
      logController: new LogController({ disableRequestLogging: true }),
      // Watch streams never go idle: close() must cut them rather than wait.
      forceCloseConnections: true,
    });

    this.warmupTimer = setTimeout(() => this.endWarmup(), options.warmupMs ?? this.registry.defaultTtlMs);
    this.warmupTimer.unref();
    this.pingTimer = setInterval(() => this.ping(), this.pingIntervalMs);
    this.pingTimer.unref();
    this.unsubscribe = this.registry.onChange((list) => this.broadcast(list));
    this.app.decorateRequest('peer', null);
    // Nothing is served to a caller that has not proven it belongs to this deployment.
    this.app.addHook('onRequest', async (req) => {
      const m = /^bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
      try {
        if (!m) throw new UnauthenticatedError('the registry needs a credential of this deployment (authorization: Bearer <credential>)');
        (req as unknown as RequestWithPeer).peer = this.verifier.verify(m[1]!);
      } catch (err) {
        this.log.warn({ remote: req.ip, url: req.url, reason: (err as Error).message }, 'registry request refused');
        throw err;
      }
    });
    this.routes();
    this.app.addHook('preClose', async () => {
      for (const s of this.streams) s.res.end();
      this.streams.clear();
    });
  }

  /** Starts listening; resolves with the base URL (`http://host:port`). */
  async listen(port = 0, host = '127.0.0.1'): Promise<string> {
    await this.app.listen({ port, host });
    const addr = this.app.server.address();
    if (addr === null || typeof addr === 'string') throw new Error('registry server has no TCP address');
    this.addressUrl = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
    return this.addressUrl;
  }

  get url(): string | undefined {
    return this.addressUrl;
  }

  get isWarming(): boolean {
    return this.warming;
  }

  async close(): Promise<void> {
    clearTimeout(this.warmupTimer);
    clearInterval(this.pingTimer);
    this.unsubscribe();
    await this.app.close();
    if (this.ownsRegistry) this.registry.close();
  }

  status(): RegistryStatus {
    const now = Date.now();
    return {
      bootId: this.bootId,
      startedAt: this.startedAt,
      warming: this.warming,
      instances: this.registry.status().map((i) => ({ ...i, heartbeatAgeMs: now - i.lastHeartbeat })),
    };
  }

  private routes(): void {
    const app = this.app;
    const registry = this.registry;
    app.setErrorHandler((error: Error & { statusCode?: number }, _req, reply) => {
      const err =
        error instanceof EvolithError
          ? error
          : error.statusCode && error.statusCode < 500
            ? new ValidationError(error.message, [])
            : new EvolithError('EVOLITH_INTERNAL', 'registry failed: ' + error.message);
      reply.status(err.httpStatus).send({ error: serializeError(err) } satisfies ErrorBody);
    });

    app.put<{ Params: { id: string } }>('/v1/instances/:id', async (req) => {
      const body = parseOrThrow(registerBody, req.body ?? {}, 'registration');
      const peer = announcer(req, req.params.id);
      if (!(peer.svc.includes(body.service) || (body.service === 'edge' && peer.edge === true))) {
        throw this.refuse(req, new ForbiddenError(`${peer.sub} does not host ${body.service}`));
      }
      return { instance: registry.register({ ...body, id: req.params.id, owner: peer.sub }) };
    });

    app.put<{ Params: { id: string } }>('/v1/instances/:id/heartbeat', async (req) => {
      if (!registry.heartbeat(req.params.id, announcer(req, req.params.id).sub)) throw unknownInstance(req.params.id);
      return { ok: true };
    });

    app.put<{ Params: { id: string } }>('/v1/instances/:id/ready', async (req) => {
      const { ready } = parseOrThrow(readyBody, req.body ?? {}, 'readiness');
      if (!registry.setReady(req.params.id, ready, announcer(req, req.params.id).sub)) throw unknownInstance(req.params.id);
      return { instance: registry.instance(req.params.id) };
    });

    app.delete<{ Params: { id: string } }>('/v1/instances/:id', async (req) => ({ removed: registry.deregister(req.params.id, announcer(req, req.params.id).sub) }));

    app.get('/v1/services', async () => ({ services: registry.allLists() }));

    app.get<{ Params: { service: string } }>('/v1/services/:service', async (req) => registry.list(req.params.service));

    app.get('/status', async () => this.status());

    app.get<{ Querystring: { service?: string | string[] } }>('/v1/watch', (req, reply) => {
      const q = req.query.service;
      const services = q === undefined ? undefined : new Set(Array.isArray(q) ? q : [q]);
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-store',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
      });
      const stream: Stream = { res, services };
      this.streams.add(stream);
      req.raw.on('close', () => this.streams.delete(stream));
      const hello: HelloEvent = { bootId: this.bootId, startedAt: this.startedAt, warming: this.warming, pingIntervalMs: this.pingIntervalMs };
      res.write(sse('hello', hello));
      res.write(sse('snapshot', this.snapshot(services)));
    });
  }

  /** Logs a refusal (attacks and misconfigurations both deserve a line) and returns it. */
  refuse(req: { ip: string; url: string }, err: EvolithError): EvolithError {
    this.log.warn({ remote: req.ip, url: req.url, reason: err.message }, 'registry request refused');
    return err;
  }

  private snapshot(services: Set<string> | undefined): SnapshotEvent {
    const out: SnapshotEvent = { warming: this.warming, services: {} };
    const names = services ?? this.registry.services();
    for (const name of names) {
      const l = this.registry.list(name);
      out.services[name] = { index: l.index, endpoints: [...l.endpoints] };
    }
    return out;
  }

  private broadcast(list: ServiceList): void {
    const event: EndpointsEvent = { service: list.service, index: list.index, warming: this.warming, endpoints: [...list.endpoints] };
    const frame = sse('endpoints', event);
    for (const s of this.streams) if (!s.services || s.services.has(list.service)) s.res.write(frame);
  }

  private endWarmup(): void {
    this.warming = false;
    for (const s of this.streams) s.res.write(sse('snapshot', this.snapshot(s.services)));
  }

  private ping(): void {
    for (const s of this.streams) s.res.write(': ping\n\n');
  }
}

/** Creates a registry server and starts listening; `port` 0 picks a free port. */
export async function startRegistryServer(options: RegistryServerOptions & { port?: number; host?: string }): Promise<RegistryServer> {
  const server = new RegistryServer(options);
  await server.listen(options.port ?? 0, options.host ?? '127.0.0.1');
  return server;
}

function sse(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

interface RequestWithPeer {
  peer: CredentialClaims;
}

/** The credential a request proved (every route has one: see the onRequest hook). */
export function peerOf(req: unknown): CredentialClaims {
  return (req as RequestWithPeer).peer;
}

/** Only the process whose credential names an instance id may announce or change it. */
function announcer(req: unknown, id: string): CredentialClaims {
  const peer = peerOf(req);
  if (!peer.ins.includes(id)) throw new ForbiddenError(`${peer.sub} may not announce instance ${id}`);
  return peer;
}

/** For routes meant for operators (the CLI), not for workers. */
export function requireOperator(req: unknown): void {
  if (peerOf(req).op !== true) throw new ForbiddenError('only an operator credential may read this');
}

function unknownInstance(id: string): NotFoundError {
  return new NotFoundError(`instance ${id} is not registered (it expired, or the registry restarted): register it again`);
}
