/**
 * The server side of one bench:rpc contender, run as its own process so it does not share an
 * event loop with the load generator:
 *
 *   node bin/run-ts.mjs bench/support/rpc-servers.ts <evolith-tcp|evolith-http|grpc|moleculer|raw-echo> [codec]
 *   node bin/run-ts.mjs bench/support/rpc-servers.ts forwarder <upstream host:port>
 *
 * `forwarder` is Evolith's RPC forwarder in front of an evolith-tcp server: every call is routed
 * by its header to the upstream and its payload relayed as bytes, never decoded.
 *
 * `raw-echo` is the floor, not a contender: a node:net server that writes every chunk it
 * reads straight back (no framing, no codec, no handler), showing what one round trip costs on
 * this machine before any RPC library does anything.
 *
 * Prints "listening on <host:port>" once ready; exits on SIGTERM. Every server answers on
 * 127.0.0.1 only (Moleculer's TCP transporter has no bind option: it listens on all interfaces,
 * but the bench reaches it, and it replies, over 127.0.0.1).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import Fastify from 'fastify';
import Moleculer from 'moleculer';
import pino from 'pino';
import type { CredentialBundle } from '../../src/auth/credentials.js';
import { InternalPlane } from '../../src/auth/internal-plane.js';
import { MemoryEventBus } from '../../src/events/memory-bus.js';
import { ServiceHost, type HostEnvironment } from '../../src/kernel/host.js';
import { dataPlugins } from '../../src/worker/backends.js';
import { rpcHttpPlugin } from '../../src/rpc/http-transport.js';
import { Forwarder } from '../../src/rpc/forwarder.js';
import { hostResolver, RpcServer } from '../../src/rpc/tcp-server.js';
import { SqliteStorage } from '../../src/storage/sqlite.js';
import { benchService, grpcDefinition, moleculerSerializer, type Codec, type MoleculerSerializer } from './rpc-echo.js';

// The second argument is the codec, or for the forwarder its upstream.
const [kind, codec] = process.argv.slice(2);
/** The internal credential the bench issued this server, if it runs with one. */
const bundle = process.env.EVOLITH_BENCH_CREDENTIAL;
const plane = bundle ? new InternalPlane(JSON.parse(bundle) as CredentialBundle) : undefined;
const log = pino({ level: 'warn' });
const cleanup: (() => Promise<unknown>)[] = [];

/**
 * A real kernel host for the echo service, validating input and output with zod as a process
 * serving remote callers must (Runtime builds hosts for in-process callers only, which skip the
 * input check: see the RPC notes on the kernel change this needs).
 */
async function echoHost(): Promise<ServiceHost> {
  const dir = mkdtempSync(join(tmpdir(), 'evolith-bench-rpc-'));
  const bus = new MemoryEventBus();
  const env: HostEnvironment = {
    client: () => {
      throw new Error('the bench service makes no calls');
    },
    bus,
    ...dataPlugins,
    telemetry: undefined,
    log,
    config: () => ({}),
    eventTimeoutMs: 30_000,
  };
  const host = new ServiceHost(benchService, env);
  await host.init((s) => new SqliteStorage(dir).open(s));
  await host.start();
  cleanup.push(async () => {
    await host.stop(1_000);
    rmSync(dir, { recursive: true, force: true });
  });
  return host;
}

async function main(): Promise<string> {
  switch (kind) {
    case 'evolith-tcp': {
      const server = new RpcServer({ resolve: hostResolver([await echoHost()]), log, plane });
      cleanup.unshift(() => server.close(1_000));
      return server.listen();
    }
    case 'forwarder': {
      const upstream = codec;
      if (!upstream) throw new Error('forwarder needs the upstream host:port');
      const forwarder = new Forwarder({ route: () => upstream, log, plane, upstream: { plane } });
      cleanup.unshift(() => forwarder.close(1_000));
      return forwarder.listen();
    }
    case 'evolith-http': {
      const app = Fastify();
      await app.register(rpcHttpPlugin, { resolve: hostResolver([await echoHost()]) });
      cleanup.unshift(() => app.close());
      return (await app.listen({ host: '127.0.0.1', port: 0 })).replace('http://', '');
    }
    case 'grpc': {
      const server = new grpc.Server();
      server.addService(grpcDefinition((codec ?? 'msgpackr') as Codec), {
        echo: (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => callback(null, call.request),
      });
      const port = await new Promise<number>((resolve, reject) =>
        server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
      );
      cleanup.unshift(() => new Promise<void>((r) => server.tryShutdown(() => r())));
      return `127.0.0.1:${port}`;
    }
    case 'moleculer': {
      const broker = new Moleculer.ServiceBroker({
        nodeID: 'bench-server',
        transporter: { type: 'TCP', options: { udpDiscovery: false } },
        serializer: moleculerSerializer((codec ?? 'msgpackr') as MoleculerSerializer),
        logger: false,
      });
      broker.createService({ name: 'bench', actions: { echo: (ctx: Moleculer.Context) => ctx.params } });
      await broker.start();
      cleanup.unshift(() => broker.stop());
      const port = (broker.transit!.tx as unknown as { opts: { port: number } }).opts.port;
      return `127.0.0.1:${port}`;
    }
    case 'raw-echo': {
      const server = createServer({ noDelay: true }, (socket) => {
        socket.on('data', (chunk) => socket.write(chunk));
        socket.on('error', () => undefined);
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      cleanup.unshift(() => new Promise<void>((r) => server.close(() => r())));
      return `127.0.0.1:${(server.address() as { port: number }).port}`;
    }
    default:
      throw new Error(`unknown server kind ${kind}: use evolith-tcp, forwarder, evolith-http, grpc, moleculer or raw-echo`);
  }
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    void (async () => {
      for (const c of cleanup) await c().catch(() => undefined);
      process.exit(0);
    })();
  });
}

console.log(`listening on ${await main()}`);
