/**
 * kube-proxy in its old userspace mode: a TCP listener on each ClusterIP Service port that
 * forwards every connection to one ready endpoint, round robin, chosen when the connection is
 * made (so a pod that turns unready takes no new connections, while established ones go on, as
 * in a cluster). Also the forwarders that let pods reach backends on the host's loopback at the
 * bridge's host address.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { pipeSockets } from '../tcp-proxy.js';

export interface Endpoint {
  host: string;
  port: number;
}

/** One listener and the connections through it. */
export class Forwarder {
  private readonly sockets = new Set<Socket>();
  private next = 0;

  private constructor(
    private readonly server: Server,
    readonly host: string,
    readonly port: number,
  ) {}

  /**
   * Listens on host:port; `endpoints()` is asked on every connection. With none, the connection
   * is closed at once (a Service without ready endpoints refuses, as kube-proxy's reject rule does).
   */
  static async listen(host: string, port: number, endpoints: () => Endpoint[]): Promise<Forwarder> {
    let self: Forwarder | undefined;
    const server = createServer((client) => {
      const f = self!;
      const list = endpoints();
      if (list.length === 0) {
        client.destroy();
        return;
      }
      const target = list[f.next++ % list.length]!;
      const upstream = connect(target.port, target.host);
      f.sockets.add(client);
      f.sockets.add(upstream);
      pipeSockets(client, upstream, () => {
        f.sockets.delete(client);
        f.sockets.delete(upstream);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    self = new Forwarder(server, host, (server.address() as { port: number }).port);
    return self;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** Parses `host:port` (a forwarder's target). */
export function parseTarget(target: string): Endpoint {
  const m = /^(.+):(\d+)$/.exec(target);
  if (!m) throw new Error(`forwarder target "${target}" is not host:port`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}
