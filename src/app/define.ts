import type { IncomingHttpHeaders } from 'node:http';
import type { EvolithError } from '../kernel/errors.js';
import type { MethodDef, MethodInput, MethodOutput } from '../contract/define.js';
import type { ServiceDefinition } from '../kernel/service.js';

export type HttpVerb = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** What a route sees of an HTTP request. */
export interface EdgeRequest {
  readonly params: Readonly<Record<string, string>>;
  readonly query: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: unknown;
  readonly headers: IncomingHttpHeaders;
  /**
   * The address of the TCP peer that sent the request (the client, or the last proxy in front
   * of the edge). Never taken from a header such as X-Forwarded-For: clients can write those.
   */
  readonly remoteAddress?: string;
}

export interface EdgeReply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

export interface RouteSpec<M extends MethodDef = MethodDef> {
  readonly verb: HttpVerb;
  /** Path with `:name` parameters, e.g. `/restful/products/:id`. */
  readonly path: string;
  readonly method: M;
  /** Builds the method's input. Default: path params and query (GET, DELETE) or the body merged with path params. */
  readonly input?: (req: EdgeRequest) => MethodInput<M>;
  /** Shapes the answer. Default: 200 with the output as JSON; 204 when the output is null. */
  readonly reply?: (output: MethodOutput<M>, req: EdgeRequest) => EdgeReply;
  /** Shapes an error answer; return undefined for the default `{code: 1, message}` body. */
  readonly error?: (err: EvolithError, req: EdgeRequest) => EdgeReply | undefined;
  readonly summary?: string;
}

/** Maps a public HTTP route to a contract method. */
export function route<M extends MethodDef>(
  spec: `${HttpVerb} /${string}`,
  method: M,
  options: Omit<RouteSpec<M>, 'verb' | 'path' | 'method'> = {},
): RouteSpec<M> {
  const [verb, path] = spec.split(' ', 2) as [HttpVerb, string];
  if (!['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].includes(verb) || !path?.startsWith('/')) {
    throw new TypeError(`route "${spec}" must look like "GET /path/:param"`);
  }
  return { verb, path, method, ...options };
}

export interface EdgeSpec {
  readonly routes: readonly RouteSpec<any>[];
  /** Static files, relative to the app directory. */
  readonly static?: { readonly dir: string; readonly prefix?: string; readonly fallback?: string };
  /** Verifies bearer tokens at the edge with keys from this method (it returns a JWKS). */
  readonly auth?: {
    readonly jwks: MethodDef;
    readonly issuer?: string;
    readonly audience?: string;
    /**
     * Asked (as the edge, so it may be internal) on every request whose token passed the
     * checks, with the token's claims as input (parsed by its input schema; a token whose
     * claims it refuses is refused): `{ active: false }` refuses the token (401). This is how
     * the issuer revokes tokens before they expire; it costs one call per authenticated request.
     */
    readonly active?: MethodDef;
  };
}

export interface AppDefinition {
  readonly kind: 'app';
  readonly name: string;
  readonly services: readonly ServiceDefinition[];
  readonly edge?: EdgeSpec;
}

export function defineApp(spec: { name: string; services: readonly ServiceDefinition[]; edge?: EdgeSpec }): AppDefinition {
  if (spec.services.length === 0) throw new TypeError(`app ${spec.name} has no services`);
  return { kind: 'app', ...spec };
}
