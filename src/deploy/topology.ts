import { existsSync, readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import YAML from 'yaml';
import { z } from 'zod';
import { ConfigError } from '../kernel/errors.js';
import { watchDirectoryDebounced } from './directory-watch.js';

export const ARCHITECTURES = ['monolith', 'microservices', 'mesh', 'serverless', 'kubernetes'] as const;

const policy = z
  .object({
    timeoutMs: z.number().int().positive().optional(),
    /** Attempts after the first, for idempotent methods only. */
    retries: z.number().int().min(0).max(10).optional(),
    /** Concurrent calls allowed into a callee before further calls queue (bulkhead, per service). */
    maxConcurrent: z.number().int().positive().optional(),
    /** Calls waiting for a bulkhead slot before further calls are refused. */
    maxQueue: z.number().int().min(0).optional(),
  })
  .strict();

const serviceName = z.string().regex(/^[a-z][a-zA-Z0-9-]*$/, 'a service name');

const events = z.union([
  z.literal('memory'),
  z.literal('sqlite'),
  z.object({ driver: z.literal('sqlite'), file: z.string().optional() }).strict(),
  z
    .object({
      driver: z.literal('nats'),
      url: z.string().regex(/^nats:\/\//, 'must be a nats:// URL').default('nats://127.0.0.1:4222'),
      stream: z.string().regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, - and _ only').default('EVOLITH'),
      /** How soon an event held by a consumer that died goes to another (default 1.5 s). */
      ackWaitMs: z.number().int().min(300).optional(),
    })
    .strict(),
]);

const storage = z.union([
  z.literal('sqlite'),
  z.object({ driver: z.literal('sqlite') }).strict(),
  z
    .object({
      driver: z.literal('postgres'),
      url: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL'),
      schemaPrefix: z.string().regex(/^[a-z_][a-z0-9_]*$/i, 'letters, digits and underscores only').optional(),
      poolSize: z.number().int().positive().optional(),
      /** One connection attempt's time limit; the first store opened tries `startAttempts` times, `startRetryMs` apart. */
      connectTimeoutMs: z.number().int().positive().optional(),
      startAttempts: z.number().int().positive().optional(),
      startRetryMs: z.number().int().nonnegative().optional(),
    })
    .strict(),
]);

const versionLabel = z.string().regex(/^[a-z0-9][a-z0-9.-]*$/, 'a version label (e.g. v2)');

const mesh = z
  .object({
    /** `sidecar`: one proxy beside each app instance; `node`: one proxy for every instance on this machine. */
    mode: z.enum(['sidecar', 'node']).default('sidecar'),
    /** The traffic policy file (see docs/mesh-policy.md), relative to the app directory. */
    policy: z.string().min(1).default('mesh.yaml'),
    /** How long a proxy's certificate is valid; it is renewed when two thirds of that have passed. */
    certificateTtlMs: z.number().int().min(3_000).default(3_600_000),
    /**
     * Versions of a service group running side by side (a canary): per group, per version label,
     * the replicas with that label and the config that differs from the group's.
     */
    versions: z
      .record(
        z.string().regex(/^[a-z][a-z0-9-]*$/, 'a group name'),
        z.record(
          versionLabel,
          z
            .object({
              replicas: z.number().int().min(0).max(64).default(1),
              config: z.record(z.string(), z.record(z.string(), z.unknown())).default({}),
            })
            .strict(),
        ),
      )
      .default({}),
  })
  .strict();

/** One function's settings (serverless); every one optional, over `serverless.defaults`. */
const functionSettings = z
  .object({
    /** Memory the function is given (MB): its resident memory limit, and what GB-seconds are billed on. */
    memoryMb: z.number().int().min(32).max(10_240).optional(),
    /** Calls one instance runs at once; more wait in its queue (10 × this), beyond which a call is refused as not run. */
    maxConcurrency: z.number().int().min(1).max(10_000).optional(),
    /** Concurrent calls per instance the autoscaler aims at (default 70 % of maxConcurrency). */
    targetConcurrency: z.number().positive().optional(),
    /** One invocation's time limit (ms): past it the caller gets EVOLITH_TIMEOUT. */
    timeoutMs: z.number().int().positive().optional(),
    minInstances: z.number().int().min(0).max(64).optional(),
    maxInstances: z.number().int().min(1).max(64).optional(),
    /** After the last call, at least one instance stays this long (ms). */
    scaleToZeroGraceMs: z.number().int().min(0).optional(),
    /** The autoscaler's averaging window (ms, default 60 s) and its burst window (ms, default 6 s). */
    stableWindowMs: z.number().int().min(1000).optional(),
    panicWindowMs: z.number().int().min(1000).optional(),
    /** Panic when the burst window wants this many times the ready instances (default 2). */
    panicThreshold: z.number().optional(),
  })
  .strict();

const serverless = z
  .object({
    /** Generic runtimes started ahead, each taking on whichever function next needs an instance (0: none). */
    pool: z.number().int().min(0).max(32).default(2),
    /** Instances each function starts with when the deployment starts (Knative's initial scale). */
    initialInstances: z.number().int().min(0).max(64).default(1),
    /** How often the stores are read for due timers and waiting events of functions at zero (ms). */
    wakeupPollMs: z.number().int().min(50).default(1000),
    /** Settings every function has unless it says otherwise. */
    defaults: functionSettings.default({}),
    /** Per function (a service group, or a service in a group of its own). */
    functions: z.record(z.string().regex(/^[a-z][a-z0-9-]*$/, 'a function (service group) name'), functionSettings).default({}),
  })
  .strict();

/** A Kubernetes quantity: CPU (`100m`, `1`, `0.5`) or memory (`128Mi`, `1Gi`, `500M`). */
const quantity = z.union([z.number().positive(), z.string().regex(/^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$/, 'a Kubernetes quantity such as 100m, 1, 128Mi or 1Gi')]);
const resourceAmounts = z.object({ cpu: quantity.optional(), memory: quantity.optional() }).strict();
const resourceSpec = z.object({ requests: resourceAmounts.optional(), limits: resourceAmounts.optional() }).strict();

/** Kubernetes: what `evolith deploy kubernetes` generates; the command's flags override these. */
const kubernetes = z
  .object({
    /** Namespace of every object (default: the app's name). */
    namespace: z
      .string()
      .regex(/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/, 'a namespace: lower-case letters, digits and -, at most 63')
      .optional(),
    /** The app's image reference (default `<app>:latest`). */
    image: z.string().min(1).optional(),
    clusterDomain: z.string().regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'a DNS domain such as cluster.local').default('cluster.local'),
    /**
     * How service groups call each other: `tcp` (Evolith's own RPC, endpoints found through a
     * headless Service) or `http2` (HTTP/1.1 and h2c on one port, balanced per request by the
     * mesh or Knative). Default: tcp for microservices, http2 for mesh and serverless.
     */
    transport: z.enum(['tcp', 'http2']).optional(),
    /** How often a pod resolves a headless Service's addresses (tcp transport). */
    dnsRefreshMs: z.number().int().min(100).default(2000),
    /**
     * How long a stopping pod keeps taking calls before its SIGTERM, so that callers' discovery
     * (DNS refresh, endpoint propagation) has dropped it first; 0: no pre-stop pause.
     */
    preStopSeconds: z.number().int().min(0).max(300).default(5),
    /** Container requests and limits: for every workload, and per service group over those. */
    resources: z
      .object({ defaults: resourceSpec.optional(), groups: z.record(z.string(), resourceSpec).default({}) })
      .strict()
      .prefault({}),
    /** HorizontalPodAutoscaler of each Deployment (not Knative Services, which scale themselves). */
    autoscaling: z
      .object({
        /** Default: the group's replicas. */
        minReplicas: z.number().int().min(1).optional(),
        maxReplicas: z.number().int().min(1).default(10),
        cpuUtilization: z.number().int().min(1).max(100).default(70),
      })
      .strict()
      .prefault({}),
    /** The Ingress in front of the edge. */
    ingress: z.object({ className: z.string().min(1).optional(), host: z.string().min(1).optional() }).strict().prefault({}),
  })
  .strict();

/** The topology file (`evolith.yaml` beside the app): the only thing that changes between architectures. */
export const topologySchema = z
  .object({
    architecture: z.string().default('monolith'),
    /** Address the public edge listens on. */
    host: z.string().default('127.0.0.1'),
    /**
     * Address internal listeners (RPC, interop, registry) bind to: loopback unless a
     * deployment spans machines on a private network. Never the edge's `host`.
     */
    internalHost: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(8080),
    /** Data directory (SQLite files), relative to the app directory. */
    data: z.string().default('data'),
    storage: storage.default('sqlite'),
    policies: z.record(z.string(), policy).default({}),
    config: z.record(z.string(), z.record(z.string(), z.unknown())).default({}),
    edge: z
      .object({
        bodyLimit: z.number().int().positive().default(1024 * 1024),
        /** A request must arrive whole (headers and body) within this many ms, or the connection is closed. */
        requestTimeoutMs: z.number().int().positive().default(30_000),
        /** Its headers within this many ms. */
        headersTimeoutMs: z.number().int().positive().default(10_000),
      })
      .strict()
      .default({ bodyLimit: 1024 * 1024, requestTimeoutMs: 30_000, headersTimeoutMs: 10_000 }),
    /** Fail calls whose data would not survive a network hop (monolith). */
    checkSerializable: z.boolean().default(false),
    /** Microservices: which services share a process (default: one process per service). */
    groups: z.record(z.string().regex(/^[a-z][a-z0-9-]*$/, 'a group name'), z.array(serviceName).min(1)).default({}),
    /** Microservices: processes per service group (default 1). */
    replicas: z.record(z.string(), z.number().int().min(0).max(64)).default({}),
    /** Where events travel between processes: embedded SQLite (default) or NATS JetStream. */
    events: events.default('sqlite'),
    /** Consistent-hash affinity: `service.method: inputField`. */
    affinity: z.record(z.string(), z.string()).default({}),
    drainMs: z.number().int().positive().default(10_000),
    /** Mesh: the proxies, their certificates, the traffic policy and versions running side by side. */
    mesh: mesh.default({ mode: 'sidecar', policy: 'mesh.yaml', certificateTtlMs: 3_600_000, versions: {} }),
    /** Serverless: the function settings, the pool of generic runtimes, wake-ups. */
    serverless: serverless.default({ pool: 2, initialInstances: 1, wakeupPollMs: 1000, defaults: {}, functions: {} }),
    /** Kubernetes: namespace, image, transport, resources, autoscaling and ingress of generated manifests. */
    kubernetes: kubernetes.prefault({}),
  })
  .strict();

export type Topology = z.output<typeof topologySchema>;

export interface TopologyOverrides {
  architecture?: string;
  port?: number;
  host?: string;
  internalHost?: string;
  data?: string;
  storage?: string;
  schemaPrefix?: string;
  /** `dotted.path=value` pairs; values are parsed as YAML (numbers, booleans, strings). */
  set?: string[];
}

/** Where a topology is read from, when not `<appDir>/evolith.yaml`, and what is filled in before it is checked. */
export interface TopologySource {
  /**
   * The topology file (e.g. one mounted from a ConfigMap); relative paths in it (`data`) still
   * resolve from the app directory. Unlike `<appDir>/evolith.yaml`, it must exist.
   */
  readonly file?: string;
  /**
   * Adjusts the file's contents before overrides and validation: a runtime that takes some
   * values from elsewhere (backend URLs from its environment) fills them in, or refuses the
   * file with a ConfigError naming every problem.
   */
  readonly prepare?: (raw: Record<string, unknown>, file: string) => void;
}

/** Reads `<appDir>/evolith.yaml` (if any; or `source.file`), applies overrides, and validates the result. */
export function loadTopology(appDir: string, overrides: TopologyOverrides = {}, source: TopologySource = {}): Topology {
  const file = source.file ?? join(appDir, 'evolith.yaml');
  if (source.file !== undefined && !existsSync(file)) throw new ConfigError(`topology file ${file} does not exist`);
  let raw: Record<string, unknown> = {};
  if (existsSync(file)) {
    const doc = YAML.parseDocument(readFileSync(file, 'utf8'));
    if (doc.errors.length > 0) {
      throw new ConfigError(`${file} is not valid YAML: ${doc.errors.map((e) => e.message).join('; ')}`);
    }
    const value = doc.toJS();
    if (value !== null && (typeof value !== 'object' || Array.isArray(value))) throw new ConfigError(`${file} must hold a mapping at its top level`);
    raw = (value ?? {}) as Record<string, unknown>;
  }
  source.prepare?.(raw, file);
  if (overrides.architecture !== undefined) raw.architecture = overrides.architecture;
  if (overrides.port !== undefined) raw.port = overrides.port;
  if (overrides.host !== undefined) raw.host = overrides.host;
  if (overrides.internalHost !== undefined) raw.internalHost = overrides.internalHost;
  if (overrides.data !== undefined) raw.data = overrides.data;
  if (overrides.storage !== undefined) {
    raw.storage = overrides.storage === 'sqlite' ? 'sqlite' : { driver: 'postgres', url: overrides.storage };
  }
  if (overrides.schemaPrefix !== undefined) {
    if (typeof raw.storage !== 'object' || raw.storage === null) throw new ConfigError('--schema-prefix needs PostgreSQL storage');
    raw.storage = { ...(raw.storage as object), schemaPrefix: overrides.schemaPrefix };
  }
  for (const pair of overrides.set ?? []) applySet(raw, pair);
  const parsed = topologySchema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.') || '(top level)'}: ${i.message}`);
    throw new ConfigError(`invalid topology (${existsSync(file) ? file : 'defaults'}):\n${lines.join('\n')}`);
  }
  const t = parsed.data;
  return { ...t, data: isAbsolute(t.data) ? t.data : resolve(appDir, t.data) };
}

function applySet(target: Record<string, unknown>, pair: string): void {
  const eq = pair.indexOf('=');
  if (eq <= 0) throw new ConfigError(`--set expects path=value, got "${pair}"`);
  const segments = pair.slice(0, eq).split('.');
  // Policy keys are `service.method`: `policies.orders.place.timeoutMs` names the key `orders.place`.
  const path =
    segments[0] === 'policies' && segments.length > 3 ? ['policies', segments.slice(1, -1).join('.'), segments[segments.length - 1]!] : segments;
  const value = YAML.parse(pair.slice(eq + 1));
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (next === undefined) node[key] = {};
    else if (typeof next !== 'object' || next === null) throw new ConfigError(`--set ${pair}: ${key} is not a mapping`);
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1]!] = value;
}

export interface TopologyWatch {
  close(): void;
}

/**
 * Re-reads `evolith.yaml` whenever it changes (editors that replace the file included) and
 * hands each new valid topology to `onChange`. An invalid edit goes to `onError` and the
 * running topology stays as it was: a typo must not take a live system down.
 */
export function watchTopology(
  appDir: string,
  overrides: TopologyOverrides,
  onChange: (topology: Topology) => void,
  onError: (err: Error) => void,
  debounceMs = 100,
  source: TopologySource = {},
): TopologyWatch {
  const load = () => loadTopology(appDir, overrides, source);
  if (source.file !== undefined) {
    // A mounted ConfigMap is a directory of symlinks into a `..data` directory that Kubernetes
    // swaps on an edit: the file itself never changes, so any change in its directory counts.
    return watchDirectory(dirname(resolve(source.file)), () => true, load, onChange, onError, debounceMs);
  }
  return watchDirectory(appDir, (name) => name === 'evolith.yaml', load, onChange, onError, debounceMs);
}

/** Rereads with `load` after a change in `dir` that `relevant` accepts; hands on each new valid result. */
function watchDirectory(
  dir: string,
  relevant: (name: string) => boolean,
  load: () => Topology,
  onChange: (topology: Topology) => void,
  onError: (err: Error) => void,
  debounceMs: number,
): TopologyWatch {
  let current = JSON.stringify(load());
  const reread = () => {
    let next: Topology;
    try {
      next = load();
    } catch (err) {
      onError(err as Error);
      return;
    }
    const text = JSON.stringify(next);
    if (text === current) return;
    current = text;
    onChange(next);
  };
  // Watch the directory, not the file: many editors save by writing a new file and renaming it.
  return watchDirectoryDebounced(dir, relevant, debounceMs, reread);
}

/** The topology as one version of a group sees it: the version's config over the group's. */
export function withVersionConfig(topology: Topology, group: string, version: string): Topology {
  const own = topology.mesh.versions[group]?.[version]?.config;
  if (!own) return topology;
  const config = { ...topology.config };
  for (const [service, values] of Object.entries(own)) config[service] = { ...config[service], ...values };
  return { ...topology, config };
}
