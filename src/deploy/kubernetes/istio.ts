/**
 * The app's mesh policy file as Istio resources (docs/mesh-policy.md, "Istio mapping"), for a
 * cluster where Istio, not Evolith's own sidecars, carries the calls.
 *
 * On a cluster the workloads are service groups: a host is `<group>.<ns>.svc.<domain>` and
 * every service of the group answers on it, its calls told apart by their path
 * `/rpc/<service>/<method>`. The policy file speaks of services, so each of its rules is
 * narrowed to its service's paths, and the rules of a group's services are merged into the
 * group's one DestinationRule, VirtualService and set of AuthorizationPolicies.
 *
 * Over the `tcp` transport Istio sees opaque connections: only the layer-4 parts apply (mutual
 * TLS, authorization by principal and port, route weights, connection limits, outlier detection
 * on connect errors), and every dropped part is named in a warning.
 */
import type { AppDefinition } from '../../app/define.js';
import { ConfigError } from '../../kernel/errors.js';
import { EDGE_SOURCE, type AppShape, type MeshPolicy, type RetryOn } from '../../mesh/policy.js';
import type { ServiceGroup } from '../microservices/groups.js';
import { commonLabels, duration, EDGE_WORKLOAD, PORTS, type ClusterTransport, type K8sObject } from './objects.js';

export interface IstioContext {
  readonly app: AppDefinition;
  readonly namespace: string;
  readonly clusterDomain: string;
  readonly transport: ClusterTransport;
  readonly groups: readonly ServiceGroup[];
  readonly policy: MeshPolicy;
}

export interface IstioResult {
  readonly objects: K8sObject[];
  /** Parts of the policy that could not be applied (tcp transport), each naming the part. */
  readonly warnings: string[];
}

/** The policy document as `parseMeshPolicy` normalises it (every default written out, durations in ms). */
interface PolicyDocument {
  peerAuthentication: { mode: string };
  destinationRules: {
    host: string;
    trafficPolicy: {
      loadBalancer: { simple: string };
      connectionPool: { tcp: { maxConnections: number }; rpc: { maxPendingRequests: number; maxRequestsPerConnection: number } };
      outlierDetection: { consecutiveErrors: number; interval: number; baseEjectionTime: number; maxEjectionPercent: number };
    };
    subsets: { name: string; labels: { version: string } }[];
  }[];
  virtualServices: { hosts: string[]; routes: PolicyRoute[] }[];
  authorizationPolicies: {
    name: string;
    selector: string;
    action: 'ALLOW' | 'DENY';
    rules: { from?: { source: { services: string[] } }[]; to?: { operation: { methods: string[] } }[] }[];
  }[];
}

type StringMatch = { exact?: string; prefix?: string; regex?: string };

interface PolicyRoute {
  name?: string;
  match?: { method?: StringMatch; sourceService?: string; headers?: Record<string, StringMatch> }[];
  route?: { destination: { host?: string; subset?: string }; weight?: number }[];
  timeout?: number;
  retries?: { attempts: number; perTryTimeout?: number; retryOn: string };
  fault?: { delay?: { percentage: { value: number }; fixedDelay: number }; abort?: { percentage: { value: number }; code: string } };
}

/** Istio's retry conditions for ours; the HTTP statuses are what the app's HTTP transport answers them with. */
const RETRY_ON: Record<RetryOn, string> = {
  unavailable: 'unavailable,connect-failure,refused-stream,503',
  timeout: 'deadline-exceeded,504',
  overloaded: 'resource-exhausted',
};

/**
 * Retries of a call that never reached the callee (no connection, or a stream the callee
 * refused unprocessed): safe for every method. Written on every route that has no retries of
 * its own, because Istio's default would otherwise retry any method on a 503.
 */
const SAFE_RETRIES = Object.freeze({ attempts: 2, retryOn: 'connect-failure,refused-stream' });

/** A fault's code as the HTTP status the app's transport reads it back as. */
const ABORT_STATUS: Record<string, number> = { UNAVAILABLE: 503, TIMEOUT: 504, FORBIDDEN: 403, INTERNAL: 500, NOT_FOUND: 404 };

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * A baggage entry's match as a regex on the whole `baggage` header (W3C baggage: entries
 * `key=value;properties` separated by commas), in the RE2 syntax Istio takes.
 */
export function baggageRegex(key: string, match: StringMatch): string {
  const value = match.exact !== undefined ? escapeRegex(match.exact) : match.prefix !== undefined ? `${escapeRegex(match.prefix)}[^,;]*` : `(?:${match.regex!})`;
  return `(.*,)?\\s*${escapeRegex(key)}\\s*=\\s*${value}\\s*([;,].*)?`;
}

/** Everything Istio needs for the app's policy, or a ConfigError naming every part it cannot express. */
export function istioObjects(ctx: IstioContext): IstioResult {
  const { app, namespace: ns, clusterDomain, transport, groups } = ctx;
  const doc = ctx.policy.document as PolicyDocument;
  const shape: AppShape = ctx.policy.shape;
  const warnings: string[] = [];
  const problems: string[] = [];
  const groupOf = new Map<string, ServiceGroup>();
  for (const g of groups) for (const s of g.services) groupOf.set(s, g);
  const host = (group: string) => `${group}.${ns}.svc.${clusterDomain}`;
  const workloadOf = (source: string) => (source === EDGE_SOURCE ? EDGE_WORKLOAD : groupOf.get(source)!.name);
  const principal = (source: string) => `cluster.local/ns/${ns}/sa/${workloadOf(source)}`;
  const meta = (name: string, workload: string) => ({ name, namespace: ns, labels: commonLabels(app.name, workload) });
  const objects: K8sObject[] = [];

  // Mutual TLS everywhere, except where callers outside the mesh must reach the edge: the
  // ingress controller, and istiod fetching the JWKS the edge serves.
  objects.push({
    apiVersion: 'security.istio.io/v1beta1',
    kind: 'PeerAuthentication',
    metadata: meta('default', app.name),
    spec: { mtls: { mode: doc.peerAuthentication.mode } },
  });
  objects.push({
    apiVersion: 'security.istio.io/v1beta1',
    kind: 'PeerAuthentication',
    metadata: meta(EDGE_WORKLOAD, EDGE_WORKLOAD),
    spec: { selector: { matchLabels: { app: EDGE_WORKLOAD } }, mtls: { mode: 'STRICT' }, portLevelMtls: { [PORTS.http]: { mode: 'PERMISSIVE' } } },
  });

  // DestinationRules: one per group host.
  const rulesByGroup = new Map<string, PolicyDocument['destinationRules'][number]>();
  for (const r of doc.destinationRules) {
    const g = groupOf.get(r.host)!;
    const taken = rulesByGroup.get(g.name);
    if (taken) problems.push(`destination rules for ${taken.host} and ${r.host}: both run in group ${g.name}, which has one host on a cluster; keep one`);
    else rulesByGroup.set(g.name, r);
  }
  for (const g of groups) {
    const r = rulesByGroup.get(g.name);
    if (r === undefined) continue;
    const t = r.trafficPolicy;
    const http2 = transport === 'http2';
    if (!http2 && (t.connectionPool.rpc.maxPendingRequests !== 1024 || t.connectionPool.rpc.maxRequestsPerConnection !== 0)) {
      warnings.push(`destinationRules (${r.host}): connectionPool.rpc needs the http2 transport; over tcp only connectionPool.tcp applies`);
    }
    objects.push({
      apiVersion: 'networking.istio.io/v1beta1',
      kind: 'DestinationRule',
      metadata: meta(g.name, g.name),
      spec: {
        host: host(g.name),
        trafficPolicy: {
          loadBalancer: { simple: t.loadBalancer.simple },
          connectionPool: {
            tcp: { maxConnections: t.connectionPool.tcp.maxConnections },
            ...(http2 && {
              http: {
                http2MaxRequests: t.connectionPool.rpc.maxPendingRequests,
                http1MaxPendingRequests: t.connectionPool.rpc.maxPendingRequests,
                ...(t.connectionPool.rpc.maxRequestsPerConnection > 0 && { maxRequestsPerConnection: t.connectionPool.rpc.maxRequestsPerConnection }),
              },
            }),
          },
          // Over tcp, Istio counts connect failures and timeouts as these errors.
          outlierDetection: {
            consecutive5xxErrors: t.outlierDetection.consecutiveErrors,
            interval: duration(t.outlierDetection.interval),
            baseEjectionTime: duration(t.outlierDetection.baseEjectionTime),
            maxEjectionPercent: t.outlierDetection.maxEjectionPercent,
          },
        },
        ...(r.subsets.length > 0 && { subsets: r.subsets.map((s) => ({ name: s.name, labels: { version: s.labels.version } })) }),
      },
    });
  }

  // VirtualServices: one per group host, its services' routes in the file's order.
  const routesOf = new Map<string, PolicyRoute[]>();
  for (const vs of doc.virtualServices) routesOf.set(vs.hosts[0]!, vs.routes);
  for (const g of groups) {
    const own = g.services.filter((s) => routesOf.has(s));
    if (transport === 'http2') {
      const http: Record<string, unknown>[] = [];
      for (const s of own) http.push(...httpRoutes(s, routesOf.get(s)!));
      http.push({ name: 'default', route: [{ destination: { host: host(g.name) } }], retries: { ...SAFE_RETRIES } });
      objects.push({ apiVersion: 'networking.istio.io/v1beta1', kind: 'VirtualService', metadata: meta(g.name, g.name), spec: { hosts: [host(g.name)], http } });
    } else if (own.length > 0) {
      let weights: { destination: Record<string, unknown>; weight: number }[] | undefined;
      for (const s of own) {
        routesOf.get(s)!.forEach((r, i) => {
          const at = `virtualServices (${s}) routes[${i}]${r.name ? ` (${r.name})` : ''}`;
          const dropped = [r.match && 'match', r.timeout !== undefined && 'timeout', r.retries && 'retries', r.fault && 'fault'].filter(Boolean);
          if (r.match) {
            warnings.push(`${at}: a tcp connection carries calls of every method and caller, so a route with a match cannot apply; dropped`);
            return;
          }
          if (dropped.length > 0) warnings.push(`${at}: ${dropped.join(', ')} need the http2 transport; dropped`);
          if (weights !== undefined) {
            warnings.push(`${at}: group ${g.name} already has its connection split from an earlier route; dropped`);
            return;
          }
          weights = (r.route ?? [{ destination: {} }]).map((d) => ({
            destination: { host: host(g.name), ...(d.destination.subset !== undefined && { subset: d.destination.subset }), port: { number: PORTS.rpc } },
            weight: d.weight ?? 100,
          }));
        });
      }
      if (weights !== undefined) {
        objects.push({
          apiVersion: 'networking.istio.io/v1beta1',
          kind: 'VirtualService',
          metadata: meta(g.name, g.name),
          spec: { hosts: [host(g.name)], tcp: [{ match: [{ port: PORTS.rpc }], route: weights }] },
        });
      }
    }
  }

  // AuthorizationPolicies: one per policy, narrowed to its service's paths.
  const allowSelected = new Set(doc.authorizationPolicies.filter((p) => p.action === 'ALLOW').map((p) => p.selector));
  for (const [i, p] of doc.authorizationPolicies.entries()) {
    const g = groupOf.get(p.selector)!;
    const at = `authorizationPolicies[${i}] (${p.name})`;
    const rules: Record<string, unknown>[] = [];
    for (const r of p.rules) {
      const from = r.from?.map((f) => ({ source: { principals: [...new Set(f.source.services.map(principal))] } }));
      let to: Record<string, unknown>[];
      if (transport === 'http2') {
        const paths = r.to === undefined ? [`/rpc/${p.selector}/*`] : r.to.flatMap((t) => t.operation.methods.map((m) => `/rpc/${p.selector}/${m}`));
        to = [{ operation: { paths } }];
      } else {
        if (r.to !== undefined && p.action === 'DENY') {
          warnings.push(`${at}: a DENY rule naming methods needs the http2 transport (over tcp it would deny every method); not applied`);
          continue;
        }
        if (r.to !== undefined) warnings.push(`${at}: methods need the http2 transport; over tcp the rule admits every method of ${g.name}`);
        to = [{ operation: { ports: [String(PORTS.rpc)] } }];
      }
      rules.push({ ...(from && { from }), to });
    }
    if (transport === 'tcp' && g.services.length > 1) {
      warnings.push(`${at}: over tcp a policy on ${p.selector} applies to every service of group ${g.name} (${g.services.join(', ')})`);
    }
    objects.push({
      apiVersion: 'security.istio.io/v1',
      kind: 'AuthorizationPolicy',
      metadata: meta(p.name, g.name),
      spec: { selector: { matchLabels: { app: g.name } }, action: p.action, rules },
    });
  }
  // Istio denies whatever no ALLOW policy of a workload admits; a group's other services, which
  // the file leaves open, stay open.
  if (transport === 'http2') {
    for (const g of groups) {
      if (!g.services.some((s) => allowSelected.has(s))) continue;
      for (const s of g.services.filter((x) => !allowSelected.has(x))) {
        objects.push({
          apiVersion: 'security.istio.io/v1',
          kind: 'AuthorizationPolicy',
          metadata: meta(`${s}-open`, g.name),
          spec: { selector: { matchLabels: { app: g.name } }, action: 'ALLOW', rules: [{ to: [{ operation: { paths: [`/rpc/${s}/*`] } }] }] },
        });
      }
    }
  }

  // The edge's bearer tokens, checked by Istio against the JWKS the edge itself serves.
  const auth = app.edge?.auth;
  if (auth) {
    const jwksRoute = app.edge!.routes.find((r) => r.method === auth.jwks && r.verb === 'GET');
    const path = jwksRoute?.path ?? '/.well-known/jwks.json';
    if (auth.issuer === undefined) {
      warnings.push('the edge has no token issuer configured (edge.auth.issuer): no RequestAuthentication written');
    } else {
      objects.push({
        apiVersion: 'security.istio.io/v1',
        kind: 'RequestAuthentication',
        metadata: meta(EDGE_WORKLOAD, EDGE_WORKLOAD),
        spec: {
          selector: { matchLabels: { app: EDGE_WORKLOAD } },
          jwtRules: [{ issuer: auth.issuer, jwksUri: `http://${EDGE_WORKLOAD}.${ns}.svc.${clusterDomain}${path}`, forwardOriginalToken: true }],
        },
      });
    }
  }

  if (problems.length > 0) throw new ConfigError(`the mesh policy cannot be expressed in Istio:\n${problems.map((p) => `  ${p}`).join('\n')}`, { problems });
  return { objects, warnings };

  function httpRoutes(service: string, routes: PolicyRoute[]): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    const methods = Object.entries(shape.services[service] ?? {});
    routes.forEach((r, i) => {
      const matches = r.match ?? [{}];
      const base = (match: Record<string, unknown>[]) => ({
        ...(r.name !== undefined && { name: r.name }),
        match,
        route: (r.route ?? [{ destination: {} }]).map((d) => ({
          destination: { host: host(groupOf.get(service)!.name), ...(d.destination.subset !== undefined && { subset: d.destination.subset }) },
          weight: d.weight ?? 100,
        })),
        ...(r.timeout !== undefined && { timeout: duration(r.timeout) }),
        ...(r.fault && {
          fault: {
            ...(r.fault.delay && { delay: { percentage: { value: r.fault.delay.percentage.value }, fixedDelay: duration(r.fault.delay.fixedDelay) } }),
            ...(r.fault.abort && { abort: { percentage: { value: r.fault.abort.percentage.value }, httpStatus: ABORT_STATUS[r.fault.abort.code] } }),
          },
        }),
      });
      const converted = matches.map((m) => istioMatch(service, m, `virtualServices (${service}) routes[${i}]`));
      if (r.retries !== undefined && r.retries.attempts > 0) {
        // Istio retries any method; ours retry idempotent ones only: those get a route of their own.
        const retries = {
          attempts: r.retries.attempts,
          ...(r.retries.perTryTimeout !== undefined && { perTryTimeout: duration(r.retries.perTryTimeout) }),
          retryOn: r.retries.retryOn
            .split(',')
            .map((x) => RETRY_ON[x as RetryOn])
            .join(','),
        };
        const idempotentMatches = matches.flatMap((m) =>
          methods
            .filter(([name, info]) => info.idempotent && (m.method === undefined || (m.method.exact !== undefined ? m.method.exact === name : name.startsWith(m.method.prefix!))))
            .map(([name]) => istioMatch(service, { ...m, method: { exact: name } }, `virtualServices (${service}) routes[${i}]`)),
        );
        if (idempotentMatches.length > 0) out.push({ ...base(idempotentMatches), ...(r.name !== undefined && { name: `${r.name}-idempotent` }), retries });
      }
      out.push({ ...base(converted), retries: { ...SAFE_RETRIES } });
    });
    return out;
  }

  function istioMatch(service: string, m: NonNullable<PolicyRoute['match']>[number], at: string): Record<string, unknown> {
    const headers = Object.entries(m.headers ?? {});
    if (headers.length > 1) {
      problems.push(`${at}: matches ${headers.length} baggage entries (${headers.map(([k]) => k).join(', ')}); Istio sees them in one baggage header, matched by one regex: give each its own match`);
    }
    const source = m.sourceService;
    return {
      uri:
        m.method === undefined
          ? { prefix: `/rpc/${service}/` }
          : m.method.exact !== undefined
            ? { exact: `/rpc/${service}/${m.method.exact}` }
            : { prefix: `/rpc/${service}/${m.method.prefix}` },
      ...(source !== undefined && { sourceLabels: { app: workloadOf(source) } }),
      ...(headers.length === 1 && { headers: { baggage: { regex: baggageRegex(headers[0]![0], headers[0]![1]) } } }),
    };
  }
}
