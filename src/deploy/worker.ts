import { join } from 'node:path';
import type { Logger } from 'pino';
import type { AppDefinition } from '../app/define.js';
import { createBalancer } from '../discovery/balancers.js';
import { EndpointStats } from '../discovery/endpoint-stats.js';
import { InstanceAgent } from '../discovery/instance-agent.js';
import { RegistryClient } from '../discovery/registry-client.js';
import { NatsEventBus } from '../events/nats-bus.js';
import { SqliteEventBus } from '../events/sqlite-bus.js';
import { MemoryEventBus } from '../events/memory-bus.js';
import { ConfigError } from '../kernel/errors.js';
import type { EventBus } from '../kernel/plugins.js';
import { Runtime } from '../kernel/runtime.js';
import { PrometheusTelemetry } from '../observe/telemetry.js';
import { ResilientPolicy } from '../resilience/policy.js';
import { resilientRemote } from '../resilience/remote.js';
import { rpcHttpPlugin } from '../rpc/http-transport.js';
import { RpcServer, type RpcResolver } from '../rpc/tcp-server.js';
import Fastify from 'fastify';
import { TcpTransport } from '../rpc/tcp-transport.js';
import { startEdge } from './edge.js';
import { storageFor } from './monolith.js';
import { watchTopology, type Topology, type TopologyOverrides } from './topology.js';

/** What one process of a microservices deployment runs: a service group, or the edge. */
export type WorkerRole = { kind: 'group'; group: string; services: readonly string[]; replica: number } | { kind: 'edge'; replica: number };

export interface RunningWorker {
  /** The RPC address (groups) or the HTTP URL (edge). */
  readonly address: string;
  stop(): Promise<void>;
}

export async function eventBusFor(topology: Topology, log: Logger): Promise<EventBus> {
  const e = topology.events;
  if (e === 'memory') return new MemoryEventBus();
  if (e === 'sqlite' || e.driver === 'sqlite') {
    const file = typeof e === 'object' && e.file ? e.file : join(topology.data, 'events.sqlite');
    return new SqliteEventBus(file, { log, synchronous: 'normal' });
  }
  // The subject prefix follows the stream, so two apps on one server never claim the same subjects.
  return NatsEventBus.connect({ servers: e.url.replace(/^nats:\/\//, ''), stream: e.stream, prefix: e.stream.toLowerCase(), log });
}

/**
 * One process of the microservices architecture: hosts its group's services behind the TCP
 * RPC server (or the HTTP edge), registers each of them with the registry, and reaches every
 * other service through discovery, a balancer and the resilience policy.
 */
export async function runWorker(
  app: AppDefinition,
  appDir: string,
  topology: Topology,
  role: WorkerRole,
  registryUrl: string,
  log: Logger,
  overrides: TopologyOverrides = {},
): Promise<RunningWorker> {
  const local = role.kind === 'group' ? app.services.filter((s) => role.services.includes(s.contract.name)) : [];
  if (role.kind === 'group' && local.length !== role.services.length) {
    const known = new Set(app.services.map((s) => s.contract.name));
    throw new ConfigError(`group ${role.group} names services the app does not have: ${role.services.filter((s) => !known.has(s)).join(', ')}`);
  }
  const registry = new RegistryClient({ url: registryUrl, log }).start();
  const stats = new EndpointStats();
  const policy = new ResilientPolicy({
    discovery: registry,
    stats,
    balancer: createBalancer({ kind: 'p2c', stats, affinity: topology.affinity }),
    overrides: topology.policies,
    log,
  });
  const tcp = new TcpTransport({ log });
  const remote = resilientRemote(policy, { name: 'tcp', send: (endpoint, method, input, meta) => tcp.send(endpoint.address, method, input, meta), close: () => tcp.close() });
  const bus = await eventBusFor(topology, log);
  const telemetry = new PrometheusTelemetry({ collectDefault: true });
  const runtime = new Runtime({
    services: local,
    storage: storageFor(topology),
    bus,
    telemetry,
    log,
    config: topology.config,
    policies: topology.policies,
    checkSerializable: topology.checkSerializable,
    drainMs: topology.drainMs,
    remote,
  });
  await registry.whenSynced(5_000);
  await runtime.start();
  // Timeouts, retries, bulkheads and affinity follow evolith.yaml while the process runs.
  const config = watchTopology(
    appDir,
    overrides,
    (next) => {
      try {
        policy.configure({ policies: next.policies, affinity: next.affinity });
        log.info({ policies: next.policies }, 'policies updated from the topology');
      } catch (err) {
        log.error({ err: (err as Error).message }, 'policy update refused; the previous policies stay');
      }
    },
    (err) => log.error({ err: err.message }, 'topology change ignored: the file is invalid'),
  );

  if (role.kind === 'edge') {
    const { gateway, port } = await startEdge(app, appDir, topology, runtime, telemetry, log, (server) => {
      server.get('/evolith/endpoints', async () => policy.health());
    });
    const agent = new InstanceAgent({
      url: registryUrl,
      instance: { id: `edge-${role.replica}`, service: 'edge', version: '1', address: `${topology.host}:${port}`, metadata: { pid: String(process.pid) } },
      log,
    });
    await agent.start();
    return {
      address: `http://${topology.host}:${port}`,
      async stop() {
        config.close();
        await agent.stop();
        await gateway.close();
        await runtime.stop();
        registry.close();
      },
    };
  }

  // Calls that arrive over the wire come from clients this process does not trust: validate again.
  const resolve: RpcResolver = (service, method) => {
    const host = runtime.hosts.get(service);
    const def = host ? Object.hasOwn(host.definition.contract.methods, method) ? host.definition.contract.methods[method] : undefined : undefined;
    if (!host || !def) return undefined;
    return { method: def, host: { handle: (m, input, meta) => host.handle(m, input, meta, true) } };
  };
  const server = new RpcServer({ resolve, log, host: topology.host, drainMs: topology.drainMs });
  await server.listen();
  // The same methods over HTTP (`POST /rpc/<service>/<method>`, JSON or msgpack) for interop and
  // debugging with curl. It believes the caller headers it is sent, so it listens on loopback only.
  const http = Fastify({ logger: false });
  await http.register(rpcHttpPlugin, { resolve });
  await http.listen({ port: 0, host: '127.0.0.1' });
  const httpAddress = http.server.address();
  const httpUrl = typeof httpAddress === 'object' && httpAddress ? `http://127.0.0.1:${httpAddress.port}` : '';
  const agents = local.map(
    (s) =>
      new InstanceAgent({
        url: registryUrl,
        instance: {
          id: `${s.contract.name}-${role.replica}`,
          service: s.contract.name,
          version: s.contract.version,
          address: server.address,
          metadata: { group: role.group, replica: String(role.replica), pid: String(process.pid), http: httpUrl },
        },
        log,
      }),
  );
  await Promise.all(agents.map((a) => a.start()));
  return {
    address: server.address,
    async stop() {
      config.close();
      // Leave the registry first so callers stop choosing this instance, then drain.
      await Promise.all(agents.map((a) => a.stop()));
      await Promise.all([server.close(), http.close()]);
      await runtime.stop();
      registry.close();
    },
  };
}
