/**
 * One set of services reachable four ways, for tests that must see the same behaviour in each:
 * in-process (the monolith's chain), over TCP, over HTTP/1.1 and over HTTP/2 without TLS (a
 * caller runtime whose chain ends in the RPC terminal, and a server runtime hosting the
 * services behind the RPC listener).
 */
import type { AddressInfo } from 'node:net';
import Fastify from 'fastify';
import type { AnyContract, MethodDef } from '../../src/contract/define.js';
import type { PlacementProvider, Terminal } from '../../src/kernel/placement.js';
import type { CallMeta } from '../../src/kernel/plugins.js';
import type { RootCall, Runtime } from '../../src/kernel/runtime.js';
import type { Client, ServiceDefinition } from '../../src/kernel/service.js';
import { newTrace } from '../../src/kernel/trace.js';
import { HttpTransport, rpcHttpPlugin } from '../../src/rpc/http-transport.js';
import { hostResolver, RpcServer } from '../../src/rpc/tcp-server.js';
import { Http2Transport } from '../../src/rpc/http2-transport.js';
import { listenRpcHttp } from '../../src/rpc/http-listener.js';
import { Http2Terminal, HttpTerminal, TcpTerminal } from '../../src/rpc/terminals.js';
import { TcpTransport } from '../../src/rpc/tcp-transport.js';
import { silentLog, type Kit } from '../fixtures/unit-kit.js';
import { edgePlane, planeFor } from '../fixtures/plane-kit.js';

export interface CallMode {
  readonly name: 'in-process' | 'tcp' | 'http' | 'http2';
  /** A typed client, as a handler or the edge would use it. */
  client<C extends AnyContract>(contract: C, root?: RootCall, from?: string): Client<C>;
  /** Hands `input` to the callee's side as a peer that skipped the caller's checks would. */
  raw(method: MethodDef, input: unknown, meta?: Partial<CallMeta>): Promise<unknown>;
}

const placementTo = (terminal: Terminal): PlacementProvider => ({ placement: () => ({ links: [], terminal }) });
const metaOf = (m: Partial<CallMeta> | undefined): CallMeta => ({ deadline: Date.now() + 5_000, trace: newTrace(), ...m });

export async function inProcess(kit: Kit, services: readonly ServiceDefinition[]): Promise<CallMode> {
  const rt = await kit.start(services);
  return {
    name: 'in-process',
    client: (contract, root, from) => rt.client(contract, undefined, root, from),
    raw: (method, input, meta) => rt.host(method.service).handle(method, input, metaOf(meta), true),
  };
}

async function server(kit: Kit, services: readonly ServiceDefinition[]): Promise<Runtime> {
  return kit.start(services);
}

export async function overTcp(kit: Kit, services: readonly ServiceDefinition[], cleanup: (fn: () => Promise<unknown>) => void): Promise<CallMode> {
  const rt = await server(kit, services);
  const rpc = new RpcServer({ resolve: hostResolver(rt.hosts.values()), log: silentLog, plane: planeFor('server#0', { svc: services.map((s) => s.contract.name) }) });
  const address = await rpc.listen();
  // The caller plays the edge: it may call as 'edge' and vouch for the users it verified.
  const tcp = new TcpTransport({ log: silentLog, plane: edgePlane });
  const caller = await kit.start([], { placement: placementTo(new TcpTerminal(tcp, address)) });
  cleanup(async () => {
    await tcp.close();
    await rpc.close(100);
  });
  return {
    name: 'tcp',
    client: (contract, root, from) => caller.client(contract, undefined, root, from),
    raw: (method, input, meta) => tcp.send(address, method, input, metaOf(meta)),
  };
}

export async function overHttp(kit: Kit, services: readonly ServiceDefinition[], cleanup: (fn: () => Promise<unknown>) => void): Promise<CallMode> {
  const rt = await server(kit, services);
  const http = Fastify({ logger: false });
  const plane = planeFor('server#0', { svc: services.map((s) => s.contract.name) });
  await http.register(rpcHttpPlugin, { resolve: hostResolver(rt.hosts.values()), timeoutFor: (m: MethodDef) => rt.policies.timeoutFor(m), plane });
  await http.listen({ port: 0, host: '127.0.0.1' });
  const address = `127.0.0.1:${(http.server.address() as AddressInfo).port}`;
  // The caller plays the edge: it may call as 'edge' and vouch for the users it verified.
  const transport = new HttpTransport({ plane: edgePlane });
  const caller = await kit.start([], { placement: placementTo(new HttpTerminal(transport, address)) });
  cleanup(() => http.close());
  return {
    name: 'http',
    client: (contract, root, from) => caller.client(contract, undefined, root, from),
    raw: (method, input, meta) => transport.send(address, method, input, metaOf(meta)),
  };
}

export async function overHttp2(kit: Kit, services: readonly ServiceDefinition[], cleanup: (fn: () => Promise<unknown>) => void): Promise<CallMode> {
  const rt = await server(kit, services);
  const plane = planeFor('server#0', { svc: services.map((s) => s.contract.name) });
  const listener = await listenRpcHttp({ host: '127.0.0.1', port: 0, resolve: hostResolver(rt.hosts.values()), timeoutFor: (m: MethodDef) => rt.policies.timeoutFor(m), plane, log: silentLog });
  // The caller plays the edge: it may call as 'edge' and vouch for the users it verified.
  const transport = new Http2Transport({ plane: edgePlane });
  const caller = await kit.start([], { placement: placementTo(new Http2Terminal(transport, listener.address)) });
  cleanup(async () => {
    await transport.close();
    await listener.close();
  });
  return {
    name: 'http2',
    client: (contract, root, from) => caller.client(contract, undefined, root, from),
    raw: (method, input, meta) => transport.send(listener.address, method, input, metaOf(meta)),
  };
}
