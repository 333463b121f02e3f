/**
 * The worker runtime: one runtime that hosts a group of services for every deployer (the
 * weavelet to a deployer's envelope, in Service Weaver's terms). A deployer hands it a small
 * environment — what to host, whether to serve the public edge, and an envelope that says how
 * to reach services hosted elsewhere and how to offer these ones to the rest — and the worker
 * does everything else the same way in every architecture: backends from the topology, the
 * kernel with its plugins, the edge, live policy changes from evolith.yaml, orderly shutdown.
 */
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { AppDefinition } from '../app/define.js';
import { watchTopology, type Topology, type TopologyOverrides, type TopologySource, type TopologyWatch } from '../deploy/topology.js';
import { MemoryEventBus } from '../events/memory-bus.js';
import { ConfigError } from '../kernel/errors.js';
import type { PlacementProvider } from '../kernel/placement.js';
import type { Identity } from '../kernel/plugins.js';
import { checkOverrides, PolicyTable } from '../kernel/policy-table.js';
import { Runtime } from '../kernel/runtime.js';
import { sql } from 'kysely';
import type { HealthReport } from '../edge/gateway.js';
import { withDeadline } from '../kernel/deadline.js';
import { dataPlugins, eventBusFor, storageFor } from './backends.js';
import type { PreparedBackends } from './prepared-backends.js';

/** What a deployer provides for one worker: how it reaches, and is reached by, the rest. */
export interface Envelope {
  /** Chains to the services this worker does not host (absent: it hosts every one it calls). */
  readonly placement?: PlacementProvider;
  /**
   * Turns an identity the edge verified into one a callee in another process can check (e.g.
   * by signing it for this deployment). Absent: identities never leave the process.
   */
  assertIdentity?(identity: Identity): Identity;
  /** Offers the running worker to the rest of the deployment (listeners, registration). */
  serve?(worker: ServedWorker): Promise<Offer>;
  /** A new valid topology arrived (the policy table is already updated). */
  reconfigure?(topology: Topology): void;
  /** Whether a service hosted elsewhere can take calls now (e.g. an instance of it is registered). */
  ready?(service: string): boolean;
  /**
   * For /health: why a service hosted elsewhere that is ready (registered) still cannot take
   * calls now (every endpoint's circuit open, say); undefined when it can.
   */
  unavailable?(service: string): string | undefined;
  /** More series for the edge's /metrics, from elsewhere in the deployment. */
  metrics?(): Promise<string>;
  /** Releases what the envelope holds, after the runtime stopped. */
  close?(): Promise<void>;
}

/** What an envelope offers of a worker to the rest of the deployment. */
export interface Offer {
  /** Where other workers (or operators) reach it, for logs and the start-up line. */
  readonly address: string;
  /** Stops new calls from arriving (deregister, close listeners), letting calls in flight finish. */
  withdraw(): Promise<void>;
}

/** The running worker as an envelope sees it. */
export interface ServedWorker {
  readonly runtime: Runtime;
  /** The edge's URL when this worker serves it. */
  readonly edgeUrl: string | undefined;
}

export interface WorkerEnvironment {
  readonly app: AppDefinition;
  readonly appDir: string;
  readonly topology: Topology;
  /** The command-line overrides the topology was loaded with, applied again on every reload. */
  readonly overrides: TopologyOverrides;
  /** Where the topology is read from on every reload, when not `<appDir>/evolith.yaml` (a mounted ConfigMap). */
  readonly topologySource?: TopologySource;
  readonly log: Logger;
  /** The architecture, as /health reports it. */
  readonly architecture: string;
  /** The services this worker hosts (none for an edge-only worker). */
  readonly services: readonly string[];
  /** Serve the app's public HTTP edge from this worker. */
  readonly edge: boolean;
  /** Events must reach other processes: use the topology's bus, not in-process delivery. */
  readonly crossProcess: boolean;
  /**
   * Another process (the control plane) watches the same `evolith.yaml` and reports an invalid
   * edit; this worker then notes it at debug level, so one typo is reported once, not per process.
   */
  readonly topologyErrorsReportedElsewhere?: boolean;
  /** Backends opened ahead (a pool runtime's): used instead of opening the topology's now. */
  readonly backends?: PreparedBackends;
  /** The deployer's envelope, made with the worker's live policy table. */
  envelope?(context: { policies: PolicyTable; log: Logger }): Envelope | Promise<Envelope>;
}

export interface RunningWorker {
  readonly runtime: Runtime;
  /** The edge's URL, when this worker serves it. */
  readonly url: string | undefined;
  /** Where the envelope offers this worker (RPC address), if it does. */
  readonly address: string | undefined;
  stop(): Promise<void>;
}

export async function startWorker(env: WorkerEnvironment): Promise<RunningWorker> {
  const { app, topology, log } = env;
  const services = app.services.filter((s) => env.services.includes(s.contract.name));
  if (services.length !== env.services.length) {
    const known = new Set(app.services.map((s) => s.contract.name));
    throw new ConfigError(`a worker was asked to host services the app does not have: ${env.services.filter((s) => !known.has(s)).join(', ')}`);
  }
  const policies = new PolicyTable(topology.policies);
  const envelope: Envelope = (await env.envelope?.({ policies, log })) ?? {};
  // Calls are counted where they are shown: the edge serves /metrics. (Loaded only there, like
  // the edge itself: a worker carries no HTTP framework it does not serve.)
  const edgeModule = env.edge ? await import('../deploy/edge.js') : undefined;
  const telemetry = env.edge ? new (await import('../observe/telemetry.js')).PrometheusTelemetry({ collectDefault: true }) : undefined;
  const prepared = env.backends;
  await prepared?.release(env.services);
  const runtime = new Runtime({
    services,
    storage: prepared?.storage ?? (await storageFor(topology, undefined, log)),
    bus: prepared?.bus ?? (env.crossProcess ? await eventBusFor(topology, log) : new MemoryEventBus()),
    outbox: prepared?.outbox ?? dataPlugins.outbox,
    migrator: prepared?.migrator ?? dataPlugins.migrator,
    telemetry,
    log,
    config: topology.config,
    policies,
    placement: envelope.placement,
    checkSerializable: topology.checkSerializable,
    drainMs: topology.drainMs,
  });

  let gateway: FastifyInstance | undefined;
  let url: string | undefined;
  let offer: Offer | undefined;
  let watch: TopologyWatch | undefined;
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      watch?.close();
      // Callers first stop finding this worker, then the edge stops taking requests; calls
      // in flight finish; then the services drain and close their stores.
      await offer?.withdraw();
      await gateway?.close();
      await runtime.stop();
      await envelope.close?.();
    })());

  try {
    await runtime.start();
    if (edgeModule && telemetry) {
      const ready = (service: string): boolean => {
        const host = runtime.hosts.get(service);
        return host ? host.running : (envelope.ready?.(service) ?? true);
      };
      const edge = await edgeModule.startEdge(app, env.appDir, topology, runtime, telemetry, log, {
        assertIdentity: envelope.assertIdentity,
        metrics: envelope.metrics ? () => envelope.metrics!() : undefined,
        ready,
        health: () => healthReport(app, env.architecture, runtime, (service) => {
          if (!ready(service)) return { ready: false, detail: 'not ready' };
          if (runtime.hosts.has(service)) return { ready: true };
          const why = envelope.unavailable?.(service);
          return why ? { ready: false, detail: why } : { ready: true };
        }),
      });
      gateway = edge.gateway;
      url = `http://${topology.host}:${edge.port}`;
    }
    offer = await envelope.serve?.({ runtime, edgeUrl: url });
    // Timeouts, retries, bulkheads (and whatever the envelope follows) track evolith.yaml live.
    watch = watchTopology(
      env.appDir,
      env.overrides,
      (next) => {
        try {
          checkOverrides(next.policies);
          envelope.reconfigure?.(next);
          policies.set(next.policies);
          log.info({ policies: next.policies }, 'policies updated from the topology');
        } catch (err) {
          log.error({ err: (err as Error).message }, 'policy update refused; the previous policies stay');
        }
      },
      (err) =>
        env.topologyErrorsReportedElsewhere
          ? log.debug({ err: err.message }, 'topology change ignored: the file is invalid')
          : log.error({ err: err.message }, 'topology change ignored: the file is invalid'),
      100,
      env.topologySource,
    );
  } catch (err) {
    await stop().catch((e) => log.error({ err: e }, 'stop after a failed start failed'));
    throw err;
  }
  return { runtime, url, address: offer?.address, stop };
}

/**
 * What the edge needs, and whether each can take work: every service a route calls (and the
 * one that serves the token keys), the database of each service this worker hosts, and the
 * event bus it publishes to when that is not in process.
 */
async function healthReport(
  app: AppDefinition,
  architecture: string,
  runtime: Runtime,
  serviceState: (service: string) => { ready: boolean; detail?: string },
): Promise<HealthReport> {
  const needed = new Set((app.edge?.routes ?? []).map((r) => r.method.service));
  if (app.edge?.auth) needed.add(app.edge.auth.jwks.service);
  const dependencies: Record<string, { ready: boolean; detail?: string }> = {};
  for (const service of needed) dependencies[service] = serviceState(service);
  const probe = async (name: string, check: Promise<unknown>) => {
    try {
      await withDeadline(check, Date.now() + 1_000, name);
      dependencies[name] = { ready: true };
    } catch (err) {
      dependencies[name] = { ready: false, detail: (err as Error).message };
    }
  };
  const probes = [...runtime.hosts.values()].flatMap((host) => (host.store ? [probe(`${host.name} database`, sql`select 1`.execute(host.store.db))] : []));
  // An in-process bus has nothing that can be down, and no check.
  if (runtime.bus.check) probes.push(probe(`events (${runtime.bus.name})`, runtime.bus.check()));
  await Promise.all(probes);
  return { architecture, dependencies };
}
