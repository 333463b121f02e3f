/**
 * A pod's RPC over HTTP (Istio and Knative route HTTP, not Evolith's TCP frames): one listener
 * on the rpc port taking HTTP/1.1 and h2c (listenRpcHttp), which serves
 * `POST /rpc/<service>/<method>`, the kubelet's probes (`/health`, `/ready`) and, for a
 * function, the waker's `POST /evolith/wake`. Calls to other groups go out over h2c, one
 * multiplexed session per callee Service.
 */
import { isIP } from 'node:net';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { InternalPlane } from '../../auth/internal-plane.js';
import type { MethodDef } from '../../contract/define.js';
import { UnavailableError } from '../../kernel/errors.js';
import type { Call, Terminal } from '../../kernel/placement.js';
import { listenRpcHttp } from '../../rpc/http-listener.js';
import { Http2Transport } from '../../rpc/http2-transport.js';
import type { RpcResolver } from '../../rpc/tcp-server.js';
import { Http2Terminal } from '../../rpc/terminals.js';
import type { Resolve4 } from './dns-discovery.js';
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

/** The client side of a pod's RPC over HTTP: its terminal, and what closes its sessions. */
export interface PodHttpClient {
  readonly terminal: Terminal;
  close(): Promise<void>;
}

/**
 * How a pod calls other groups' Services: over h2c. With `resolve4` (a DNS server of the pod's
 * own, see EVOLITH_DNS_SERVER) a Service's name is resolved through it rather than the system's
 * resolver, which knows nothing of a local cluster's names.
 */
export function podHttpClient(plane: InternalPlane, resolve4?: Resolve4): PodHttpClient {
  const transport = new Http2Transport({ plane, format: 'msgpack' });
  const terminal = new Http2Terminal(transport);
  return { terminal: resolve4 ? new ResolvingTerminal(terminal, resolve4) : terminal, close: () => transport.close() };
}

/**
 * Sends each call to an address its endpoint's host name resolves to (one of them, at random),
 * asking `resolve4` at most once per `ttlMs` per name. A name with no address is a failure the
 * call was not sent for, so a retry may try again.
 */
export class ResolvingTerminal implements Terminal {
  readonly name: string;
  private readonly cache = new Map<string, { at: number; addresses: Promise<string[]> }>();

  constructor(
    private readonly inner: Terminal,
    private readonly resolve4: Resolve4,
    private readonly ttlMs = 2_000,
  ) {
    this.name = inner.name;
  }

  async send(call: Call): Promise<unknown> {
    const endpoint = call.endpoint;
    if (!endpoint || !endpoint.address.includes('://')) return this.inner.send(call);
    const url = new URL(endpoint.address);
    if (isIP(url.hostname)) return this.inner.send(call);
    const addresses = await this.addresses(url.hostname);
    if (addresses.length === 0) throw new UnavailableError(`${url.hostname} has no address: no pod behind it is ready`, { maybeExecuted: false });
    url.hostname = addresses[Math.floor(Math.random() * addresses.length)]!;
    call.endpoint = { ...endpoint, address: url.origin };
    try {
      return await this.inner.send(call);
    } finally {
      call.endpoint = endpoint;
    }
  }

  private addresses(host: string): Promise<string[]> {
    const now = Date.now();
    const known = this.cache.get(host);
    if (known && now - known.at < this.ttlMs) return known.addresses;
    const addresses = this.resolve4(host).catch((err: NodeJS.ErrnoException) => {
      this.cache.delete(host);
      if (err.code === 'ENOTFOUND' || err.code === 'ENODATA') return [];
      throw new UnavailableError(`${host} cannot be resolved: ${err.message}`, { maybeExecuted: false });
    });
    this.cache.set(host, { at: now, addresses });
    return addresses;
  }
}

export async function listenPodHttp(options: PodHttpOptions): Promise<PodHttpListener> {
  let draining = false;
  const resolve: RpcResolver = (service, method) => {
    const target = options.resolve(service, method);
    if (!target || !draining) return target;
    return {
      method: target.method,
      host: { handle: () => Promise.reject(new UnavailableError('this pod is stopping; call another instance', { maybeExecuted: false })) },
    };
  };
  const extra = (app: FastifyInstance): void => {
    for (const path of ['/health', '/ready']) {
      app.get(path, async (_req, reply) => {
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
  };
  const listener = await listenRpcHttp({
    host: options.host,
    port: options.port,
    resolve,
    plane: options.plane,
    log: options.log,
    timeoutFor: options.timeoutFor,
    drainMs: options.drainMs,
    extra,
  });
  options.log.info({ address: listener.address }, 'rpc over http/1.1 and h2c listening');
  return {
    port: listener.port,
    async drain() {
      // The listener keeps answering (probes say 503) until the worker has drained; then `close`.
      draining = true;
    },
    close: () => listener.close(),
  };
}
