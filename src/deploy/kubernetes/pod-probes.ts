/**
 * What a pod answers to the kubelet's probes:
 *
 *   GET /health  200 while the process runs (startup and liveness: a pod that stops answering
 *                it is restarted);
 *   GET /ready   200 once the hosted services run and each of their stores answers; 503 before
 *                that, when a store does not answer, and from the moment the pod starts
 *                stopping (readiness: Kubernetes takes the pod out of its Services, and so out
 *                of the answers callers' DNS gives, while it drains).
 *
 * With TCP RPC the probes have a small HTTP/1.1 listener of their own; with HTTP RPC the same
 * answers are routes of the RPC listener.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { sql } from 'kysely';
import type { Logger } from 'pino';
import { withDeadline } from '../../kernel/deadline.js';
import type { Runtime } from '../../kernel/runtime.js';

export interface ProbeAnswer {
  readonly status: number;
  readonly body: { status: string; detail?: Record<string, string> };
}

/** The pod's readiness, fed by the worker's life: started, serving, stopping. */
export class PodProbes {
  private runtime: Runtime | undefined;
  private stopping = false;

  /** The hosted services run: readiness now depends on them and their stores. */
  serving(runtime: Runtime): void {
    this.runtime = runtime;
  }

  /** The pod is stopping: not ready from now on, whatever its services say. */
  stop(): void {
    this.stopping = true;
  }

  get isStopping(): boolean {
    return this.stopping;
  }

  health(): ProbeAnswer {
    return { status: 200, body: { status: this.stopping ? 'stopping' : 'up' } };
  }

  async ready(): Promise<ProbeAnswer> {
    if (this.stopping) return { status: 503, body: { status: 'stopping' } };
    const runtime = this.runtime;
    if (!runtime) return { status: 503, body: { status: 'starting' } };
    const detail: Record<string, string> = {};
    await Promise.all(
      [...runtime.hosts.values()].map(async (host) => {
        if (!host.running) {
          detail[host.name] = 'not running';
          return;
        }
        if (!host.store) return;
        try {
          await withDeadline(sql`select 1`.execute(host.store.db), Date.now() + 1_000, `${host.name} database`);
        } catch (err) {
          detail[`${host.name} database`] = (err as Error).message;
        }
      }),
    );
    // Stopping may have begun while the stores were asked.
    if (this.stopping) return { status: 503, body: { status: 'stopping' } };
    return Object.keys(detail).length === 0 ? { status: 200, body: { status: 'ready' } } : { status: 503, body: { status: 'not ready', detail } };
  }

  /** Answers a probe request, or returns false when `url` is not a probe's path. */
  async answer(method: string | undefined, url: string | undefined, res: ServerResponse): Promise<boolean> {
    const path = (url ?? '').split('?')[0];
    if ((method !== 'GET' && method !== 'HEAD') || (path !== '/health' && path !== '/ready')) return false;
    const a = path === '/health' ? this.health() : await this.ready();
    const text = JSON.stringify(a.body);
    res.writeHead(a.status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(method === 'HEAD' ? undefined : text);
    return true;
  }
}

/** The probes' own HTTP/1.1 listener (TCP RPC). */
export interface ProbeListener {
  readonly port: number;
  close(): Promise<void>;
}

/** Whatever answers the probes' paths (a worker's PodProbes, or a waker's own). */
export interface ProbeAnswerer {
  answer(method: string | undefined, url: string | undefined, res: ServerResponse): Promise<boolean>;
}

export async function listenProbes(probes: ProbeAnswerer, host: string, port: number, log: Logger): Promise<ProbeListener> {
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    probes.answer(req.method, req.url, res).then(
      (answered) => {
        if (answered) return;
        res.writeHead(404, { 'content-type': 'application/json; charset=utf-8' });
        res.end(JSON.stringify({ code: 'EVOLITH_NOT_FOUND', message: 'this port answers GET /health and GET /ready only' }));
      },
      (err: Error) => {
        log.error({ err }, 'probe failed');
        if (!res.headersSent) res.writeHead(500);
        res.end();
      },
    );
  });
  // The kubelet probes often and briefly: no connection should hold the pod's exit.
  server.keepAliveTimeout = 1_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = (server.address() as AddressInfo).port;
  log.info({ host, port: bound }, 'probes listening');
  return {
    port: bound,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
