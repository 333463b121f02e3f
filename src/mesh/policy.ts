/**
 * The mesh traffic-policy file: what the control plane validates and pushes to every sidecar,
 * and the decisions a sidecar asks of it on each call (route, destination, authorization).
 *
 * Every section maps one-to-one onto an Istio resource (see docs/mesh-policy.md), so a
 * Kubernetes generator can translate the file without inventing semantics. Decisions are
 * compiled once per host: the per-call paths only walk precompiled arrays and sets and
 * return shared, frozen objects.
 */
import { existsSync, readFileSync } from 'node:fs';
import YAML from 'yaml';
import { z } from 'zod';
import { ConfigError } from '../kernel/errors.js';

/** The app the policy is checked against: its services, methods and running versions. */
export interface AppShape {
  readonly app: string;
  /** Every service of the app with its methods and whether each is idempotent. */
  readonly services: Readonly<Record<string, Readonly<Record<string, { idempotent: boolean }>>>>;
  /** Version labels that exist per service (e.g. { warehouse: ['v1','v2'] }); a service absent here runs one unlabelled version. */
  readonly versions: Readonly<Record<string, readonly string[]>>;
}

export type RetryOn = 'unavailable' | 'timeout' | 'overloaded';
export const RETRY_ON: readonly RetryOn[] = ['unavailable', 'timeout', 'overloaded'];
export const LOAD_BALANCERS = ['ROUND_ROBIN', 'LEAST_REQUEST', 'RANDOM'] as const;
/** Codes a fault may abort with; each has an Istio gRPC status and HTTP status (docs/mesh-policy.md). */
export const ABORT_CODES = ['UNAVAILABLE', 'TIMEOUT', 'FORBIDDEN', 'INTERNAL', 'NOT_FOUND'] as const;
/** The caller name of calls that enter through the public edge rather than from a service. */
export const EDGE_SOURCE = 'edge';

export interface RouteDecision {
  /** The route's name. */
  readonly name: string | undefined;
  /** Subset undefined = every endpoint of the host. */
  readonly destinations: readonly { subset: string | undefined; weight: number }[];
  readonly timeoutMs: number | undefined;
  readonly retries: { attempts: number; perTryTimeoutMs: number | undefined; retryOn: readonly RetryOn[] } | undefined;
  readonly fault: { delay?: { percent: number; ms: number }; abort?: { percent: number; code: string } } | undefined;
}

export interface DestinationPolicy {
  readonly loadBalancer: (typeof LOAD_BALANCERS)[number];
  /** Upstream connections per endpoint. */
  readonly maxConnections: number;
  /** Calls in flight per callee service before further calls are refused. */
  readonly maxPendingRequests: number;
  /** Calls one connection carries before it is replaced; 0 = no limit. */
  readonly maxRequestsPerConnection: number;
  /** The n-th ejection of an endpoint lasts n * baseEjectionMs. */
  readonly outlier: { consecutiveErrors: number; intervalMs: number; baseEjectionMs: number; maxEjectionPercent: number };
  /** Subset -> labels. */
  readonly subsets: Readonly<Record<string, Readonly<Record<string, string>>>>;
}

export type AuthorizeResult = { allowed: true } | { allowed: false; reason: string };

export interface MeshPolicy {
  /** The normalized, JSON-serializable policy (what the control plane pushes); parsing it again rebuilds an equal policy. */
  readonly document: unknown;
  readonly shape: AppShape;
  /** Whether the method may be retried by a sidecar; unknown methods are not. */
  idempotent(service: string, method: string): boolean;
  /** First matching route of the host's VirtualService; without one, every endpoint, no timeout, retries or fault. */
  route(service: string, method: string, source: string | undefined, headers: Readonly<Record<string, string>> | undefined): RouteDecision;
  /** The host's DestinationRule, or the defaults when it has none. */
  destination(service: string): DestinationPolicy;
  /**
   * Istio semantics: DENY rules first (a match denies); then if any ALLOW policy selects the
   * callee, the call must match one of its rules; with no ALLOW policy for the callee, allowed.
   */
  authorize(callee: string, source: string | undefined, method: string): AuthorizeResult;
}

// ---------------------------------------------------------------------------------------------
// Shape

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m)$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000 };

/** Milliseconds of `"250ms"`, `"2s"`, `"1m"` or an integer of ms; a message when it is not a positive whole number of ms. */
export function parseDuration(value: unknown): number | string {
  let ms: number;
  if (typeof value === 'number') ms = value;
  else if (typeof value === 'string') {
    const m = DURATION.exec(value.trim());
    if (m === null) return `"${value}" is not a duration (write "250ms", "2s", "1m" or an integer of milliseconds)`;
    ms = Number(m[1]) * UNIT_MS[m[2]!]!;
  } else return 'a duration must be a string such as "250ms", "2s", "1m" or an integer of milliseconds';
  if (!Number.isFinite(ms) || ms <= 0) return `a duration must be positive, got ${JSON.stringify(value)}`;
  if (!Number.isInteger(ms)) return `a duration must be a whole number of milliseconds, got ${JSON.stringify(value)}`;
  return ms;
}

const duration = z.union([z.number(), z.string()], { error: 'a duration: "250ms", "2s", "1m" or an integer of milliseconds' }).transform((v, ctx) => {
  const ms = parseDuration(v);
  if (typeof ms === 'string') {
    ctx.addIssue({ code: 'custom', message: ms });
    return z.NEVER;
  }
  return ms;
});

const percentage = z.object({ value: z.number().min(0, 'a percentage is 0..100').max(100, 'a percentage is 0..100') }).strict();

/** `{exact}` or `{prefix}` (methods) and also `{regex}` (headers): exactly one of them. */
function stringMatch(kinds: readonly ('exact' | 'prefix' | 'regex')[]) {
  const shape: Record<string, z.ZodOptional<z.ZodString>> = {};
  for (const k of kinds) shape[k] = z.string().optional();
  return z
    .object(shape)
    .strict()
    .superRefine((m, ctx) => {
      const given = kinds.filter((k) => m[k] !== undefined);
      if (given.length !== 1) ctx.addIssue({ code: 'custom', message: `exactly one of ${kinds.join(', ')} is required, got ${given.length}` });
      if (m.regex !== undefined) {
        try {
          new RegExp(m.regex);
        } catch (err) {
          ctx.addIssue({ code: 'custom', path: ['regex'], message: `does not compile: ${(err as Error).message}` });
        }
      }
    }) as z.ZodType<{ exact?: string; prefix?: string; regex?: string }>;
}

const retryOn = z.string().transform((v, ctx) => {
  const tokens = v
    .split(',')
    .map((t) => t.trim())
    .filter((t) => t !== '');
  const bad = tokens.filter((t) => !(RETRY_ON as readonly string[]).includes(t));
  if (bad.length > 0 || tokens.length === 0) {
    ctx.addIssue({ code: 'custom', message: `a comma list of ${RETRY_ON.join(' | ')}${bad.length > 0 ? `; unknown: ${bad.join(', ')}` : ''}` });
    return z.NEVER;
  }
  // Canonical order and no repeats, so equal policies have equal documents.
  return RETRY_ON.filter((r) => tokens.includes(r)).join(',');
});

const destinationRule = z
  .object({
    host: z.string(),
    trafficPolicy: z
      .object({
        loadBalancer: z.object({ simple: z.enum(LOAD_BALANCERS).default('LEAST_REQUEST') }).strict().prefault({}),
        connectionPool: z
          .object({
            tcp: z.object({ maxConnections: z.number().int().min(1).default(2) }).strict().prefault({}),
            rpc: z
              .object({
                maxPendingRequests: z.number().int().min(1).default(1024),
                maxRequestsPerConnection: z.number().int().min(0).default(0),
              })
              .strict()
              .prefault({}),
          })
          .strict()
          .prefault({}),
        outlierDetection: z
          .object({
            consecutiveErrors: z.number().int().min(1).default(5),
            interval: duration.default(1000),
            baseEjectionTime: duration.default(30_000),
            maxEjectionPercent: z.number().min(0, 'a percentage is 0..100').max(100, 'a percentage is 0..100').default(50),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    subsets: z
      .array(
        z
          .object({
            name: z.string().regex(/^[a-z0-9][a-z0-9-]*$/i, 'a subset name: letters, digits and -'),
            // Endpoints are told apart by their version only; any other label could not be honoured.
            labels: z.object({ version: z.string().min(1) }).strict(),
          })
          .strict(),
      )
      .default([]),
  })
  .strict();

const routeMatch = z
  .object({
    method: stringMatch(['exact', 'prefix']).optional(),
    sourceService: z.string().optional(),
    headers: z.record(z.string(), stringMatch(['exact', 'prefix', 'regex'])).optional(),
  })
  .strict();

const httpRoute = z
  .object({
    name: z.string().min(1).optional(),
    match: z.array(routeMatch).optional(),
    route: z
      .array(
        z
          .object({
            destination: z.object({ host: z.string().optional(), subset: z.string().optional() }).strict(),
            weight: z.number().int('a whole number').min(0, 'a weight is 0..100').max(100, 'a weight is 0..100').optional(),
          })
          .strict(),
      )
      .min(1, 'at least one destination')
      .optional(),
    timeout: duration.optional(),
    retries: z
      .object({
        attempts: z.number().int().min(0).max(10),
        perTryTimeout: duration.optional(),
        retryOn: retryOn.default('unavailable'),
      })
      .strict()
      .optional(),
    fault: z
      .object({
        delay: z.object({ percentage, fixedDelay: duration }).strict().optional(),
        abort: z.object({ percentage, code: z.enum(ABORT_CODES) }).strict().optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

const virtualService = z
  .object({
    hosts: z.array(z.string()).length(1, 'exactly one service'),
    routes: z.array(httpRoute).default([]),
  })
  .strict();

const authorizationPolicy = z
  .object({
    name: z.string().regex(/^[a-z0-9][a-z0-9.-]*$/i, 'a policy name: letters, digits, . and -'),
    selector: z.string(),
    action: z.enum(['ALLOW', 'DENY']).default('ALLOW'),
    rules: z
      .array(
        z
          .object({
            from: z.array(z.object({ source: z.object({ services: z.array(z.string()).min(1) }).strict() }).strict()).optional(),
            to: z.array(z.object({ operation: z.object({ methods: z.array(z.string()).min(1) }).strict() }).strict()).optional(),
          })
          .strict(),
      )
      .default([]),
  })
  .strict();

/** The policy file's schema; semantic checks against the app come after it (`parseMeshPolicy`). */
export const meshPolicySchema = z
  .object({
    peerAuthentication: z
      .object({
        mode: z
          .string()
          .refine((m) => m === 'STRICT', {
            error: (i) => `mode ${JSON.stringify(i.input)} is refused: plaintext is never accepted between sidecars, only STRICT (mutual TLS)`,
          })
          .default('STRICT'),
      })
      .strict()
      .prefault({}),
    destinationRules: z.array(destinationRule).default([]),
    virtualServices: z.array(virtualService).default([]),
    authorizationPolicies: z.array(authorizationPolicy).default([]),
  })
  .strict();

type Parsed = z.output<typeof meshPolicySchema>;

// ---------------------------------------------------------------------------------------------
// Validation

interface Problem {
  path: string;
  message: string;
}

function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) out += typeof seg === 'number' ? `[${seg}]` : out === '' ? String(seg) : `.${String(seg)}`;
  return out || '(top level)';
}

const asRecord = (v: unknown): Record<string, unknown> | undefined =>
  typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
const asList = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const asText = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/**
 * Checks against the app, walking the raw input defensively so they run even when the shape
 * has problems elsewhere: one reading of the file reports everything wrong with it.
 */
function semanticProblems(raw: Record<string, unknown>, shape: AppShape): Problem[] {
  const problems: Problem[] = [];
  const add = (path: string, message: string) => problems.push({ path, message });
  const isService = (s: string) => Object.hasOwn(shape.services, s);
  const methodsOf = (s: string) => Object.keys(shape.services[s] ?? {});
  const notAService = (s: string) => `${JSON.stringify(s)} is not a service of ${shape.app} (services: ${Object.keys(shape.services).join(', ') || 'none'})`;
  const checkSource = (path: string, s: string) => {
    if (s !== EDGE_SOURCE && !isService(s)) add(path, `${JSON.stringify(s)} is neither a service of ${shape.app} nor ${EDGE_SOURCE}`);
  };
  const checkMethod = (path: string, service: string, method: string) => {
    if (isService(service) && !Object.hasOwn(shape.services[service]!, method)) {
      add(path, `${service} has no method ${JSON.stringify(method)} (methods: ${methodsOf(service).join(', ') || 'none'})`);
    }
  };

  // DestinationRules: one per host, subsets named once, each on a version that runs.
  const subsetsByHost = new Map<string, Set<string>>();
  const ruleIndex = new Map<string, number>();
  asList(raw.destinationRules).forEach((r, i) => {
    const rule = asRecord(r);
    const host = asText(rule?.host);
    if (rule === undefined || host === undefined) return;
    const at = `destinationRules[${i}]`;
    if (!isService(host)) add(`${at}.host`, notAService(host));
    const first = ruleIndex.get(host);
    if (first !== undefined) add(`${at}.host`, `a second destination rule for ${host} (the first is destinationRules[${first}]); one per host`);
    else ruleIndex.set(host, i);
    const names = new Set<string>();
    asList(rule.subsets).forEach((s, j) => {
      const subset = asRecord(s);
      const name = asText(subset?.name);
      if (name !== undefined) {
        if (names.has(name)) add(`${at}.subsets[${j}].name`, `subset ${name} is defined twice`);
        names.add(name);
      }
      const version = asText(asRecord(subset?.labels)?.version);
      if (version !== undefined && isService(host)) {
        const versions = shape.versions[host] ?? [];
        if (!versions.includes(version)) {
          add(
            `${at}.subsets[${j}].labels.version`,
            versions.length === 0
              ? `${host} runs one unlabelled version; no endpoint has version ${version}`
              : `${host} has no version ${version} (versions: ${versions.join(', ')})`,
          );
        }
      }
    });
    if (first === undefined) subsetsByHost.set(host, names);
  });

  // VirtualServices: one per host; matches name real methods and callers; destinations are the host's own subsets.
  const serviceIndex = new Map<string, number>();
  asList(raw.virtualServices).forEach((v, i) => {
    const vs = asRecord(v);
    const hosts = asList(vs?.hosts);
    const host = hosts.length === 1 ? asText(hosts[0]) : undefined;
    if (vs === undefined || host === undefined) return;
    const at = `virtualServices[${i}]`;
    const known = isService(host);
    if (!known) add(`${at}.hosts[0]`, notAService(host));
    const first = serviceIndex.get(host);
    if (first !== undefined) add(`${at}.hosts[0]`, `a second virtual service for ${host} (the first is virtualServices[${first}]); one per host`);
    else serviceIndex.set(host, i);
    asList(vs.routes).forEach((r, k) => {
      const route = asRecord(r);
      if (route === undefined) return;
      const rat = `${at}.routes[${k}]`;
      asList(route.match).forEach((m, n) => {
        const match = asRecord(m);
        const method = asRecord(match?.method);
        const exact = asText(method?.exact);
        const prefix = asText(method?.prefix);
        if (exact !== undefined) checkMethod(`${rat}.match[${n}].method.exact`, host, exact);
        if (prefix !== undefined && known && !methodsOf(host).some((name) => name.startsWith(prefix))) {
          add(`${rat}.match[${n}].method.prefix`, `no method of ${host} starts with ${JSON.stringify(prefix)} (methods: ${methodsOf(host).join(', ') || 'none'})`);
        }
        const source = asText(match?.sourceService);
        if (source !== undefined) checkSource(`${rat}.match[${n}].sourceService`, source);
      });
      const destinations = asList(route.route);
      let sum = 0;
      let weighed = true;
      destinations.forEach((d, j) => {
        const dest = asRecord(d);
        const target = asRecord(dest?.destination);
        const dat = `${rat}.route[${j}]`;
        const dhost = asText(target?.host);
        if (dhost !== undefined && dhost !== host) {
          add(`${dat}.destination.host`, `must be ${host}, the virtual service's host: a route picks among the host's own endpoints`);
        }
        const subset = asText(target?.subset);
        if (subset !== undefined && known) {
          const defined = subsetsByHost.get(host);
          if (defined === undefined) add(`${dat}.destination.subset`, `subset ${subset} is not defined: no destination rule for ${host} defines subsets`);
          else if (!defined.has(subset)) {
            add(`${dat}.destination.subset`, `subset ${subset} is not defined in the destination rule for ${host} (subsets: ${[...defined].join(', ') || 'none'})`);
          }
        }
        const weight = dest?.weight;
        if (typeof weight === 'number') sum += weight;
        else {
          weighed = false;
          if (weight === undefined && destinations.length > 1) add(`${dat}.weight`, 'required when a route has more than one destination');
        }
      });
      if (weighed && destinations.length > 0 && sum !== 100) add(`${rat}.route`, `weights sum to ${sum}, not 100`);
    });
  });

  // AuthorizationPolicies: named once, selecting a real callee, naming real callers and methods.
  const policyNames = new Map<string, number>();
  asList(raw.authorizationPolicies).forEach((p, i) => {
    const policy = asRecord(p);
    if (policy === undefined) return;
    const at = `authorizationPolicies[${i}]`;
    const name = asText(policy.name);
    if (name !== undefined) {
      const first = policyNames.get(name);
      if (first !== undefined) add(`${at}.name`, `a second policy named ${name} (the first is authorizationPolicies[${first}])`);
      else policyNames.set(name, i);
    }
    const selector = asText(policy.selector);
    if (selector !== undefined && !isService(selector)) add(`${at}.selector`, notAService(selector));
    asList(policy.rules).forEach((r, k) => {
      const rule = asRecord(r);
      asList(rule?.from).forEach((f, n) => {
        asList(asRecord(asRecord(f)?.source)?.services).forEach((s, m) => {
          const source = asText(s);
          if (source !== undefined) checkSource(`${at}.rules[${k}].from[${n}].source.services[${m}]`, source);
        });
      });
      asList(rule?.to).forEach((t, n) => {
        asList(asRecord(asRecord(t)?.operation)?.methods).forEach((x, m) => {
          const method = asText(x);
          if (method !== undefined && selector !== undefined) checkMethod(`${at}.rules[${k}].to[${n}].operation.methods[${m}]`, selector, method);
        });
      });
    });
  });
  return problems;
}

/** The parsed file with every default written out and durations in ms: what sidecars receive. */
function normalize(p: Parsed): Parsed {
  return {
    peerAuthentication: { mode: p.peerAuthentication.mode },
    destinationRules: p.destinationRules.map((r) => ({
      host: r.host,
      trafficPolicy: {
        loadBalancer: { simple: r.trafficPolicy.loadBalancer.simple },
        connectionPool: {
          tcp: { maxConnections: r.trafficPolicy.connectionPool.tcp.maxConnections },
          rpc: { ...r.trafficPolicy.connectionPool.rpc },
        },
        outlierDetection: { ...r.trafficPolicy.outlierDetection },
      },
      subsets: r.subsets.map((s) => ({ name: s.name, labels: { version: s.labels.version } })),
    })),
    virtualServices: p.virtualServices.map((v) => ({
      hosts: [v.hosts[0]!],
      routes: v.routes.map((r) => {
        const out: Parsed['virtualServices'][number]['routes'][number] = {};
        if (r.name !== undefined) out.name = r.name;
        if (r.match !== undefined) {
          out.match = r.match.map((m) => {
            const mo: NonNullable<typeof r.match>[number] = {};
            if (m.method !== undefined) mo.method = { ...m.method };
            if (m.sourceService !== undefined) mo.sourceService = m.sourceService;
            if (m.headers !== undefined) mo.headers = Object.fromEntries(Object.entries(m.headers).map(([k, h]) => [k, { ...h }]));
            return mo;
          });
        }
        // A route without destinations sends everything to the host; written out so sidecars need no defaults.
        out.route = (r.route ?? [{ destination: {} }]).map((d) => {
          const dest: { host?: string; subset?: string } = { host: v.hosts[0]! };
          if (d.destination.subset !== undefined) dest.subset = d.destination.subset;
          return { destination: dest, weight: d.weight ?? 100 };
        });
        if (r.timeout !== undefined) out.timeout = r.timeout;
        if (r.retries !== undefined) {
          out.retries = { attempts: r.retries.attempts, retryOn: r.retries.retryOn };
          if (r.retries.perTryTimeout !== undefined) out.retries.perTryTimeout = r.retries.perTryTimeout;
        }
        if (r.fault !== undefined) {
          out.fault = {};
          if (r.fault.delay !== undefined) out.fault.delay = { percentage: { value: r.fault.delay.percentage.value }, fixedDelay: r.fault.delay.fixedDelay };
          if (r.fault.abort !== undefined) out.fault.abort = { percentage: { value: r.fault.abort.percentage.value }, code: r.fault.abort.code };
        }
        return out;
      }),
    })),
    authorizationPolicies: p.authorizationPolicies.map((a) => ({
      name: a.name,
      selector: a.selector,
      action: a.action,
      rules: a.rules.map((r) => {
        const out: (typeof a.rules)[number] = {};
        if (r.from !== undefined) out.from = r.from.map((f) => ({ source: { services: [...f.source.services] } }));
        if (r.to !== undefined) out.to = r.to.map((t) => ({ operation: { methods: [...t.operation.methods] } }));
        return out;
      }),
    })),
  };
}

/**
 * Validates a policy document against the app and compiles its decisions. Throws one
 * ConfigError listing every problem, one per line, each with its path; `source` names where
 * the document came from (a file, or the control plane) in that message.
 */
export function parseMeshPolicy(raw: unknown, shape: AppShape, source: string): MeshPolicy {
  const input = raw ?? {};
  const record = asRecord(input);
  if (record === undefined) throw new ConfigError(`invalid mesh policy (${source}): the top level must be a mapping`);
  const parsed = meshPolicySchema.safeParse(record);
  const problems: Problem[] = [];
  // A value of the wrong type is one problem: checks zod still runs on it (a string's length for a list) would only add noise.
  const wrongType = new Set<string>();
  for (const issue of parsed.success ? [] : parsed.error.issues) {
    const path = formatPath(issue.path);
    if (wrongType.has(path)) continue;
    if (issue.code === 'invalid_type') wrongType.add(path);
    problems.push({ path, message: issue.message });
  }
  problems.push(...semanticProblems(record, shape));
  if (problems.length > 0 || !parsed.success) {
    const seen = new Set<string>();
    const lines = problems.map((p) => `  ${p.path}: ${p.message}`).filter((l) => !seen.has(l) && seen.add(l));
    throw new ConfigError(`invalid mesh policy (${source}):\n${lines.join('\n')}`, { issues: problems });
  }
  return compile(normalize(parsed.data), shape);
}

/**
 * Reads the policy file. A missing file is the empty policy (every default, authorization
 * allow-all: a mesh without a policy behaves as one without a mesh, but with mutual TLS).
 */
export function loadMeshPolicy(file: string, shape: AppShape): MeshPolicy {
  if (!existsSync(file)) return parseMeshPolicy({}, shape, `${file} (absent: defaults)`);
  const doc = YAML.parseDocument(readFileSync(file, 'utf8'));
  if (doc.errors.length > 0) throw new ConfigError(`${file} is not valid YAML: ${doc.errors.map((e) => e.message).join('; ')}`);
  return parseMeshPolicy(doc.toJS(), shape, file);
}

// ---------------------------------------------------------------------------------------------
// Decisions

/** Picks one destination by weight; `random` in [0,1). */
export function pickDestination(decision: RouteDecision, random: number): { subset: string | undefined } {
  const list = decision.destinations;
  let cumulative = 0;
  let last = list[0]!;
  for (const d of list) {
    if (d.weight <= 0) continue;
    cumulative += d.weight;
    last = d;
    // cumulative/100 rather than random*100: equal thresholds for equal decimal inputs (0.9 < 0.9 is false).
    if (random < cumulative / 100) return d;
  }
  return last;
}

/** Whether a fault applies this time: percent/100 > random. */
export function faultApplies(percent: number, random: number): boolean {
  return percent / 100 > random;
}

type Matcher = (value: string) => boolean;

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

function stringMatcher(m: { exact?: string; prefix?: string; regex?: string }): Matcher {
  if (m.exact !== undefined) {
    const exact = m.exact;
    return (v) => v === exact;
  }
  if (m.prefix !== undefined) {
    const prefix = m.prefix;
    return (v) => v.startsWith(prefix);
  }
  // Istio's regex matches the whole value, not a part of it.
  const re = new RegExp(`^(?:${m.regex!})$`);
  return (v) => re.test(v);
}

interface CompiledMatch {
  readonly method: Matcher | undefined;
  readonly source: string | undefined;
  readonly headers: readonly (readonly [string, Matcher])[];
}

interface CompiledRoute {
  /** Empty = matches every call. */
  readonly matches: readonly CompiledMatch[];
  readonly decision: RouteDecision;
}

interface CompiledRule {
  /** Undefined = any caller / any method. */
  readonly sources: ReadonlySet<string> | undefined;
  readonly methods: ReadonlySet<string> | undefined;
}

interface CompiledAuthz {
  readonly deny: readonly { name: string; rules: readonly CompiledRule[] }[];
  readonly allow: readonly CompiledRule[];
  readonly allowNames: string;
}

const DEFAULT_ROUTE: RouteDecision = Object.freeze({
  name: undefined,
  destinations: Object.freeze([Object.freeze({ subset: undefined, weight: 100 })]),
  timeoutMs: undefined,
  retries: undefined,
  fault: undefined,
});

const DEFAULT_DESTINATION: DestinationPolicy = Object.freeze({
  loadBalancer: 'LEAST_REQUEST',
  maxConnections: 2,
  maxPendingRequests: 1024,
  maxRequestsPerConnection: 0,
  outlier: Object.freeze({ consecutiveErrors: 5, intervalMs: 1000, baseEjectionMs: 30_000, maxEjectionPercent: 50 }),
  subsets: Object.freeze({}),
});

const ALLOWED: AuthorizeResult = Object.freeze({ allowed: true });

function matches(m: CompiledMatch, method: string, source: string | undefined, headers: Readonly<Record<string, string>> | undefined): boolean {
  if (m.method !== undefined && !m.method(method)) return false;
  if (m.source !== undefined && m.source !== source) return false;
  for (const [name, test] of m.headers) {
    const value = headers === undefined || !Object.hasOwn(headers, name) ? undefined : headers[name];
    if (value === undefined || !test(value)) return false;
  }
  return true;
}

function ruleMatches(rule: CompiledRule, source: string | undefined, method: string): boolean {
  if (rule.sources !== undefined && (source === undefined || !rule.sources.has(source))) return false;
  return rule.methods === undefined || rule.methods.has(method);
}

function compileRules(rules: Parsed['authorizationPolicies'][number]['rules']): CompiledRule[] {
  return rules.map((r) => ({
    sources: r.from === undefined ? undefined : new Set(r.from.flatMap((f) => f.source.services)),
    methods: r.to === undefined ? undefined : new Set(r.to.flatMap((t) => t.operation.methods)),
  }));
}

function compile(doc: Parsed, shape: AppShape): MeshPolicy {
  const destinations = new Map<string, DestinationPolicy>();
  for (const r of doc.destinationRules) {
    const t = r.trafficPolicy;
    destinations.set(
      r.host,
      Object.freeze({
        loadBalancer: t.loadBalancer.simple,
        maxConnections: t.connectionPool.tcp.maxConnections,
        maxPendingRequests: t.connectionPool.rpc.maxPendingRequests,
        maxRequestsPerConnection: t.connectionPool.rpc.maxRequestsPerConnection,
        outlier: Object.freeze({
          consecutiveErrors: t.outlierDetection.consecutiveErrors,
          intervalMs: t.outlierDetection.interval,
          baseEjectionMs: t.outlierDetection.baseEjectionTime,
          maxEjectionPercent: t.outlierDetection.maxEjectionPercent,
        }),
        subsets: Object.freeze(Object.fromEntries(r.subsets.map((s) => [s.name, Object.freeze({ ...s.labels })]))),
      }),
    );
  }

  const routes = new Map<string, readonly CompiledRoute[]>();
  for (const vs of doc.virtualServices) {
    routes.set(
      vs.hosts[0]!,
      vs.routes.map((r) => {
        const fault: { delay?: { percent: number; ms: number }; abort?: { percent: number; code: string } } = {};
        if (r.fault?.delay !== undefined) fault.delay = Object.freeze({ percent: r.fault.delay.percentage.value, ms: r.fault.delay.fixedDelay });
        if (r.fault?.abort !== undefined) fault.abort = Object.freeze({ percent: r.fault.abort.percentage.value, code: r.fault.abort.code });
        const decision: RouteDecision = Object.freeze({
          name: r.name,
          destinations: Object.freeze((r.route ?? []).map((d) => Object.freeze({ subset: d.destination.subset, weight: d.weight ?? 100 }))),
          timeoutMs: r.timeout,
          retries:
            r.retries === undefined
              ? undefined
              : Object.freeze({
                  attempts: r.retries.attempts,
                  perTryTimeoutMs: r.retries.perTryTimeout,
                  retryOn: Object.freeze(r.retries.retryOn.split(',') as RetryOn[]),
                }),
          fault: r.fault === undefined ? undefined : Object.freeze(fault),
        });
        const compiledMatches = (r.match ?? []).map((m) => ({
          method: m.method === undefined ? undefined : stringMatcher(m.method),
          source: m.sourceService,
          headers: Object.entries(m.headers ?? {}).map(([name, h]) => [name, stringMatcher(h)] as const),
        }));
        return { matches: compiledMatches, decision };
      }),
    );
  }

  const authz = new Map<string, CompiledAuthz>();
  const bySelector = new Map<string, Parsed['authorizationPolicies']>();
  for (const p of doc.authorizationPolicies) bySelector.set(p.selector, [...(bySelector.get(p.selector) ?? []), p]);
  for (const [callee, policies] of bySelector) {
    const allowPolicies = policies.filter((p) => p.action === 'ALLOW');
    authz.set(callee, {
      deny: policies.filter((p) => p.action === 'DENY').map((p) => ({ name: p.name, rules: compileRules(p.rules) })),
      allow: allowPolicies.flatMap((p) => compileRules(p.rules)),
      allowNames: allowPolicies.length === 0 ? '' : `${allowPolicies.length === 1 ? 'policy' : 'policies'} ${allowPolicies.map((p) => p.name).join(', ')}`,
    });
  }

  const caller = (source: string | undefined) => source ?? 'an unidentified caller';
  return Object.freeze({
    // Frozen: a caller editing the pushed document must not leave it disagreeing with the decisions.
    document: deepFreeze(doc),
    shape,
    idempotent(service: string, method: string): boolean {
      const methods = Object.hasOwn(shape.services, service) ? shape.services[service]! : undefined;
      return methods !== undefined && Object.hasOwn(methods, method) && methods[method]!.idempotent === true;
    },
    route(service: string, method: string, source: string | undefined, headers: Readonly<Record<string, string>> | undefined): RouteDecision {
      const list = routes.get(service);
      if (list === undefined) return DEFAULT_ROUTE;
      for (const r of list) {
        if (r.matches.length === 0) return r.decision;
        for (const m of r.matches) if (matches(m, method, source, headers)) return r.decision;
      }
      return DEFAULT_ROUTE;
    },
    destination(service: string): DestinationPolicy {
      return destinations.get(service) ?? DEFAULT_DESTINATION;
    },
    authorize(callee: string, source: string | undefined, method: string): AuthorizeResult {
      const a = authz.get(callee);
      if (a === undefined) return ALLOWED;
      for (const d of a.deny) {
        for (const rule of d.rules) {
          if (ruleMatches(rule, source, method)) {
            return { allowed: false, reason: `${caller(source)} may not call ${callee}.${method}: DENY policy ${d.name} matches` };
          }
        }
      }
      if (a.allowNames === '') return ALLOWED;
      for (const rule of a.allow) if (ruleMatches(rule, source, method)) return ALLOWED;
      return { allowed: false, reason: `${caller(source)} may not call ${callee}.${method}: no ALLOW rule of ${a.allowNames} matches` };
    },
  });
}
