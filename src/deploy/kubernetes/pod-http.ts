/**
 * A pod's RPC over HTTP (Istio and Knative route HTTP, not Evolith's TCP frames): one listener
 * on the rpc port that serves `POST /rpc/<service>/<method>` (http-transport.ts's format), the
 * kubelet's probes (`/health`, `/ready`) and, for a function, the waker's `POST /evolith/wake`.
 */
import type { Logger } from 'pino';
import type { InternalPlane } from '../../auth/internal-plane.js';
import type { MethodDef } from '../../contract/define.js';
import { UnavailableError } from '../../kernel/errors.js';
import type { Terminal } from '../../kernel/placement.js';
import { HttpTransport, rpcHttpPlugin } from '../../rpc/http-transport.js';
import type { RpcResolver } from '../../rpc/tcp-server.js';
import { HttpTerminal } from '../../rpc/terminals.js';
import type { PodProbes } from './pod-probes.js';

/** The path a waker posts its CloudEvent to (below the function's URL, `K_SINK`). */
export const WAKE_PATH = '/evolith/wake';

export interface PodHttpOptions {
  readonly host: string;
  readonly port: number;
  readonly resolve: RpcResolver;
  readonly plane: InternalPlane;
  readonly log: Logger;
  readonly timeoutFor: (method: MethodDef) => number;
  readonly drainMs: number;
  readonly probes: PodProbes;
  /** Serverless: answer the waker's `POST /evolith/wake` for this function (group). */
  readonly wake?: { readonly group: string };
}

export interface PodHttpListener {
  readonly port: number;
  /** New calls are refused (as not executed, so callers try again elsewhere); probes still answer. */
  drain(): Promise<void>;
  close(): Promise<void>;
}

/** The terminal a pod calls other groups' Services with over HTTP. */
export function podHttpTerminal(plane: InternalPlane): Terminal {
  return new HttpTerminal(new HttpTransport({ plane, format: 'msgpack' }));
}

export async function listenPodHttp(options: PodHttpOptions): Promise<PodHttpListener> {
  const { default: Fastify } = await import('fastify');
  const app = Fastify({ logger: false });
  let draining = false;
  const resolve: RpcResolver = (service, method) => {
    const target = options.resolve(service, method);
    if (!target || !draining) return target;
    return {
      method: target.method,
      host: { handle: () => Promise.reject(new UnavailableError(`this pod is stopping; call another instance`, { maybeExecuted: false })) },
    };
  };
  await app.register(rpcHttpPlugin, { resolve, plane: options.plane, log: options.log, timeoutFor: options.timeoutFor });
  for (const path of ['/health', '/ready']) {
    app.get(path, async (req, reply) => {
      const a = path === '/health' ? options.probes.health() : await options.probes.ready();
      return reply.status(a.status).header('cache-control', 'no-store').send(a.body);
    });
  }
  if (options.wake) {
    const group = options.wake.group;
    // Receiving the request is the point: Knative counts it and starts an instance; the
    // function's consumers and outbox then drain what waits.
    app.post(WAKE_PATH, async (req, reply) => {
      options.log.info({ function: group, wakeup: req.body, id: req.headers['ce-id'] }, 'woken: work waits for this function');
      return reply.status(202).send({ function: group, accepted: true });
    });
  }
  await app.listen({ host: options.host, port: options.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  options.log.info({ host: options.host, port }, 'rpc over http listening');
  return {
    port,
    async drain() {
      draining = true;
    },
    close: () => app.close(),
  };
}
