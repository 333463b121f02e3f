import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import fastifyFormbody from '@fastify/formbody';
import fastifyStatic from '@fastify/static';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Bindings, ChildLoggerOptions, Logger } from 'pino';
import type { AppDefinition, EdgeReply, EdgeRequest, RouteSpec } from '../app/define.js';
import { EvolithError, InternalError, toEvolithError, UnavailableError, ValidationError } from '../kernel/errors.js';
import type { Authenticator, Identity } from '../kernel/plugins.js';
import type { RootCall } from '../kernel/runtime.js';
import type { MethodDef } from '../contract/define.js';
import { parseTraceparent, withBaggage } from '../kernel/trace.js';

export interface GatewayOptions {
  app: AppDefinition;
  appDir: string;
  /** The kernel's client half: how the edge calls a method. */
  invoke: (method: MethodDef, input: unknown, root: RootCall) => Promise<unknown>;
  authenticator?: Authenticator;
  log: Logger;
  /** Largest accepted request body in bytes (413 beyond it). */
  bodyLimit?: number;
  /** A request (headers and body) must arrive within this many ms, or its connection is closed. Default 30 s. */
  requestTimeoutMs?: number;
  /** The headers of a request must arrive within this many ms. Default 10 s. */
  headersTimeoutMs?: number;
  /**
   * Whether a service can take calls now (microservices: an instance of it is registered).
   * A route whose service cannot is answered 503 with Retry-After instead of a misleading error.
   */
  ready?: (service: string) => boolean;
  /** What /health and /ready report. */
  health?: () => Promise<HealthReport>;
  /** Extra endpoints (metrics, OpenAPI) added by the deployer. */
  extras?: (server: FastifyInstance) => void;
}

/** Liveness and readiness as the edge reports them. */
export interface HealthReport {
  readonly architecture: string;
  /** Each dependency the edge needs, and whether it can take work now. */
  readonly dependencies: Readonly<Record<string, { readonly ready: boolean; readonly detail?: string }>>;
}

/**
 * A request's logger, made on first use. Fastify gives every request a child logger (bound to
 * its request id), yet with access logs off a request that goes well never logs, and making
 * a pino child costs more than the rest of the edge's work on a small request.
 */
class RequestLogger implements FastifyBaseLogger {
  private made: FastifyBaseLogger | undefined;

  constructor(
    private readonly parent: FastifyBaseLogger,
    private readonly bindings: Bindings,
    private readonly options: ChildLoggerOptions,
  ) {}

  private get logger(): FastifyBaseLogger {
    return (this.made ??= this.parent.child(this.bindings, this.options));
  }

  get level(): string {
    return this.made?.level ?? this.options.level ?? this.parent.level;
  }
  set level(level: string) {
    this.logger.level = level;
  }

  fatal(...args: unknown[]): void {
    (this.logger.fatal as (...a: unknown[]) => void)(...args);
  }
  error(...args: unknown[]): void {
    (this.logger.error as (...a: unknown[]) => void)(...args);
  }
  warn(...args: unknown[]): void {
    (this.logger.warn as (...a: unknown[]) => void)(...args);
  }
  info(...args: unknown[]): void {
    (this.logger.info as (...a: unknown[]) => void)(...args);
  }
  debug(...args: unknown[]): void {
    (this.logger.debug as (...a: unknown[]) => void)(...args);
  }
  trace(...args: unknown[]): void {
    (this.logger.trace as (...a: unknown[]) => void)(...args);
  }
  silent(...args: unknown[]): void {
    (this.logger.silent as (...a: unknown[]) => void)(...args);
  }
  child(bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    return this.logger.child(bindings, options);
  }
}

/** The CodedMessage body the bookstore's clients expect on failure. */
function codedError(err: EvolithError): EdgeReply {
  return { status: err.httpStatus, body: { code: 1, message: err.message } };
}

/** host:port, [v6]:port and URLs with ports: internal addresses a public answer must not show. */
const ADDRESS = /\b(?:https?:\/\/)?(?:\[[0-9a-f:.]+\]|(?:\d{1,3}\.){3}\d{1,3}|localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+):\d{1,5}\b/gi;

/**
 * A server-side failure as the public may see it: what failed, without the internal addresses
 * and ports it names (the log line with the same request id has them).
 */
export function publicFailure(err: EvolithError, requestId: string): EvolithError {
  const message = err instanceof InternalError ? 'internal error' : err.message.replace(ADDRESS, 'an instance');
  return new EvolithError(err.code, `${message} (request ${requestId})`, { httpStatus: err.httpStatus });
}

/**
 * The public HTTP edge: maps the app's declared routes to methods, parses JSON, forms and
 * query strings, authenticates bearer tokens, maps typed errors to status codes, limits body
 * size, tags every request with an id, logs it with pino and serves the app's static files.
 */
export async function createGateway(options: GatewayOptions): Promise<FastifyInstance> {
  const server = Fastify({
    loggerInstance: options.log.child({ component: 'edge' }) as unknown as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: process.env.EVOLITH_ACCESS_LOG !== '1' }),
    bodyLimit: options.bodyLimit ?? 1024 * 1024,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && /^[\w.-]{1,128}$/.test(given) ? given : randomUUID();
    },
    childLoggerFactory: (logger, bindings, options) => new RequestLogger(logger, bindings, options),
    forceCloseConnections: 'idle',
    return503OnClosing: true,
    // A client that trickles its request (or stops half-way) holds a connection and memory: it
    // gets deadlines, checked every second rather than Node's default 30 s.
    serverFactory: (handler) =>
      createServer(
        {
          requestTimeout: options.requestTimeoutMs ?? 30_000,
          headersTimeout: Math.min(options.headersTimeoutMs ?? 10_000, options.requestTimeoutMs ?? 30_000),
          connectionsCheckingInterval: 1_000,
        },
        handler,
      ),
  });

  await server.register(fastifyFormbody);
  // As Spring does, a JSON request with an empty body is a request without a body (clients send
  // `Content-Type: application/json` on PATCH requests that take none); anything else is parsed
  // by fastify's own parser, with its prototype-poisoning checks.
  const parseJson = server.getDefaultJsonParser('error', 'error');
  server.removeContentTypeParser('application/json');
  server.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    if ((body as string).trim() === '') return done(null, undefined);
    parseJson(req, body as string, done);
  });

  // While closing, answers in flight tell keep-alive clients to hang up, so that close()
  // does not wait out their idle timeout; idle connections are closed at once.
  let closing = false;
  server.addHook('preClose', async () => {
    closing = true;
  });
  server.addHook('onSend', (req, reply, payload, done) => {
    reply.header('x-request-id', req.id);
    if (closing) reply.header('connection', 'close');
    done(null, payload);
  });

  const bodyLimit = options.bodyLimit ?? 1024 * 1024;
  server.setErrorHandler(async (error: Error & { statusCode?: number; code?: string }, req, reply) => {
    // Errors raised by fastify itself (malformed JSON, body too large, bad content type).
    const status = error.statusCode && error.statusCode >= 400 && error.statusCode < 600 ? error.statusCode : 500;
    // The client is usually still sending the body it was refused for. A connection closed with
    // its request unread is reset, and over a real network the client then sees EPIPE or
    // ECONNRESET instead of the 413: read the rest and throw it away (a lingering close), within
    // bounds, before answering.
    if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE') await drainRequest(req.raw, Math.max(16 * 1024 * 1024, 4 * bodyLimit), 5_000);
    if (status >= 500) req.log.error({ err: error }, 'request failed');
    const message = status >= 500 ? `internal error (request ${req.id})` : describeFastifyError(error);
    reply.status(status).send({ code: 1, message });
  });

  server.setNotFoundHandler((req, reply) => {
    const fallback = options.app.edge?.static?.fallback;
    if (fallback && req.method === 'GET' && wantsHtml(req) && !/\.[a-z0-9]+$/i.test(req.url.split('?')[0]!)) {
      return reply.sendFile(fallback);
    }
    reply.status(404).send({ code: 1, message: `no route for ${req.method} ${req.url.split('?')[0]}` });
  });

  const staticSpec = options.app.edge?.static;
  if (staticSpec) {
    const root = resolve(options.appDir, staticSpec.dir);
    if (existsSync(root)) {
      await server.register(fastifyStatic, { root, prefix: staticSpec.prefix ?? '/', wildcard: true, index: ['index.html'] });
    } else {
      options.log.warn({ root }, 'static directory does not exist; no static files served');
    }
  }

  // Liveness: the process serves (200 while it runs); the dependencies are reported beside it.
  // Readiness: 200 only when every dependency the edge needs can take work, else 503.
  // Public: what each dependency says about itself, without where it is (that is in the log).
  const publicReport = async (): Promise<HealthReport | undefined> => {
    const report = await options.health?.();
    if (!report) return undefined;
    const dependencies = Object.fromEntries(
      Object.entries(report.dependencies).map(([name, d]) => [name, d.detail ? { ...d, detail: d.detail.replace(ADDRESS, 'an instance') } : d]),
    );
    return { ...report, dependencies };
  };
  server.get('/health', async () => {
    const report = await publicReport();
    const down = report ? Object.values(report.dependencies).some((d) => !d.ready) : false;
    return { status: down ? 'degraded' : 'ok', ...(report ?? {}) };
  });
  server.get('/ready', async (_req, reply) => {
    const report = await publicReport();
    const down = report ? Object.entries(report.dependencies).filter(([, d]) => !d.ready).map(([name]) => name) : [];
    if (down.length > 0) reply.status(503).header('retry-after', '1');
    return { ready: down.length === 0, ...(report ?? {}), ...(down.length ? { waitingFor: down } : {}) };
  });
  options.extras?.(server);

  for (const r of options.app.edge?.routes ?? []) {
    server.route({
      method: r.verb,
      url: r.path,
      handler: (req, reply) => handle(r, req, reply, options),
    });
  }
  return server;
}

async function handle(r: RouteSpec, req: FastifyRequest, reply: FastifyReply, options: GatewayOptions): Promise<void> {
  const edgeReq: EdgeRequest = {
    params: (req.params ?? {}) as Record<string, string>,
    query: (req.query ?? {}) as Record<string, string | string[] | undefined>,
    body: req.body,
    headers: req.headers,
    remoteAddress: req.socket.remoteAddress,
  };
  let out: EdgeReply;
  try {
    const ready = options.ready;
    if (ready && !ready(r.method.service)) {
      reply.header('retry-after', '1');
      throw new UnavailableError(`${r.method.service} has no instance ready to take calls yet; retry shortly`, { service: r.method.service });
    }
    const caller: Identity | undefined = options.authenticator ? await options.authenticator.authenticate(req.headers.authorization) : undefined;
    let input: unknown;
    try {
      input = r.input ? r.input(edgeReq) : defaultInput(r, edgeReq);
    } catch (err) {
      if (err instanceof EvolithError) throw err;
      throw new ValidationError(`invalid request: ${(err as Error).message}`, [{ path: '(request)', message: (err as Error).message }]);
    }
    const traceHeader = req.headers.traceparent;
    const baggageHeader = req.headers.baggage;
    const result = await options.invoke(r.method, input, {
      caller,
      trace: withBaggage(parseTraceparent(typeof traceHeader === 'string' ? traceHeader : undefined), typeof baggageHeader === 'string' ? baggageHeader : undefined),
    });
    out = r.reply ? r.reply(result as never, edgeReq) : result === null || result === undefined ? { status: 204 } : { status: 200, body: result };
  } catch (thrown) {
    const err = toEvolithError(thrown);
    const failed = err.httpStatus >= 500;
    // Unavailable and timed-out callees may well answer a retry.
    const retryable = err.httpStatus === 503 || err.httpStatus === 504;
    // A callee or database that is down is an expected trouble: one line saying why, without a
    // stack (during an outage every request fails alike). Anything else is a fault, with its stack.
    if (failed && retryable) req.log.warn({ code: err.code, origin: err.origin, reason: err.message }, 'call failed');
    else if (failed) req.log.error({ err: thrown, code: err.code, origin: err.origin }, 'call failed');
    if (retryable) reply.header('retry-after', '1');
    const shown = failed ? publicFailure(err, req.id) : err;
    out = r.error?.(shown, edgeReq) ?? codedError(shown);
  }
  if (out.headers) reply.headers(out.headers);
  reply.status(out.status);
  if (out.status === 204 || out.body === undefined) return reply.send();
  return reply.send(out.body);
}

function defaultInput(r: RouteSpec, req: EdgeRequest): unknown {
  if (r.verb === 'GET' || r.verb === 'DELETE') return { ...req.query, ...req.params };
  if (req.body === undefined || req.body === null) return { ...req.params };
  if (typeof req.body !== 'object' || Array.isArray(req.body)) return req.body;
  return { ...(req.body as object), ...req.params };
}

function wantsHtml(req: FastifyRequest): boolean {
  const accept = req.headers.accept ?? '';
  return accept.includes('text/html');
}

/**
 * Reads what is left of a request and discards it: at most `maxBytes` (a body declared larger is
 * not waited for) and for at most `timeoutMs`.
 */
function drainRequest(raw: IncomingMessage, maxBytes: number, timeoutMs: number): Promise<void> {
  if (raw.complete || raw.destroyed) return Promise.resolve();
  const declared = Number(raw.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) return Promise.resolve();
  return new Promise((resolve) => {
    let seen = 0;
    const done = () => {
      clearTimeout(timer);
      raw.off('data', onData).off('end', done).off('close', done).off('error', done);
      resolve();
    };
    const onData = (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > maxBytes) done();
    };
    const timer = setTimeout(done, timeoutMs);
    raw.on('data', onData).once('end', done).once('close', done).once('error', done);
    raw.resume();
  });
}

function describeFastifyError(error: Error & { code?: string; statusCode?: number }): string {
  switch (error.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return `malformed JSON body: ${error.message}`;
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return 'request body is larger than the limit';
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return `unsupported content type: ${error.message}`;
    default:
      return error.message;
  }
}
