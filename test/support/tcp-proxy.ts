/**
 * A small TCP proxy for outage tests: it forwards connections to a target, and can be cut
 * (listener closed, every connection destroyed: new connections are refused) and restored on
 * the same port, so a test simulates a database or broker going away without touching the
 * shared server itself.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface TcpProxy {
  readonly port: number;
  /** The local ports of the proxy's connections to the target (to find them on the server). */
  upstreamPorts(): number[];
  /** Closes the listener and destroys every connection through it. */
  cut(): Promise<void>;
  /**
   * A black hole: destroys every connection, then accepts new ones and never forwards or answers
   * (a host that went away without a word); `restore()` forwards again.
   */
  hang(): Promise<void>;
  /** Listens again on the same port. */
  restore(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Pipes two sockets into each other until either ends: an error or close on one destroys both,
 * and `onDrop` (called once per event, so it must be idempotent) forgets the pair.
 */
export function pipeSockets(client: Socket, upstream: Socket, onDrop: () => void): void {
  const drop = () => {
    onDrop();
    client.destroy();
    upstream.destroy();
  };
  client.on('error', drop).on('close', drop);
  upstream.on('error', drop).on('close', drop);
  client.pipe(upstream);
  upstream.pipe(client);
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const pairs = new Set<{ client: Socket; upstream: Socket }>();
  let server: Server | undefined;
  let port = 0;

  let hanging = false;
  const held = new Set<Socket>();
  const listen = async (): Promise<void> => {
    const s = createServer((client) => {
      if (hanging) {
        held.add(client);
        client.on('error', () => undefined).on('close', () => held.delete(client));
        return;
      }
      const upstream = connect(target.port, target.host);
      const pair = { client, upstream };
      pairs.add(pair);
      pipeSockets(client, upstream, () => pairs.delete(pair));
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => resolve());
    });
    port = (s.address() as { port: number }).port;
    server = s;
  };

  const cut = async (): Promise<void> => {
    const s = server;
    server = undefined;
    hanging = false;
    for (const c of [...held]) c.destroy();
    held.clear();
    for (const p of [...pairs]) {
      p.client.destroy();
      p.upstream.destroy();
    }
    pairs.clear();
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  };

  await listen();
  return {
    get port() {
      return port;
    },
    upstreamPorts: () => [...pairs].map((p) => p.upstream.localPort).filter((n): n is number => typeof n === 'number'),
    cut,
    hang: async () => {
      await cut();
      hanging = true;
      await listen();
    },
    restore: async () => {
      if (hanging) {
        hanging = false;
        for (const c of [...held]) c.destroy();
        held.clear();
      }
      if (!server) await listen();
    },
    close: cut,
  };
}
