import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import YAML from 'yaml';
import { Kit } from '../../test/fixtures/unit-kit.js';
import { ConfigError } from '../kernel/errors.js';
import { faultApplies, loadMeshPolicy, parseDuration, parseMeshPolicy, pickDestination, type AppShape, type MeshPolicy } from './policy.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

const shape: AppShape = {
  app: 'bookstore',
  services: {
    warehouse: { reserve: { idempotent: false }, getProduct: { idempotent: true }, getStock: { idempotent: true } },
    payment: { changeState: { idempotent: false }, get: { idempotent: true } },
    account: { signIn: { idempotent: false } },
  },
  versions: { warehouse: ['v1', 'v2'] },
};

const full = `
peerAuthentication:
  mode: STRICT
destinationRules:
  - host: warehouse
    trafficPolicy:
      loadBalancer: { simple: ROUND_ROBIN }
      connectionPool:
        tcp: { maxConnections: 4 }
        rpc: { maxPendingRequests: 64, maxRequestsPerConnection: 100 }
      outlierDetection:
        consecutiveErrors: 3
        interval: 2s
        baseEjectionTime: 1m
        maxEjectionPercent: 25
    subsets:
      - name: v1
        labels: { version: v1 }
      - name: v2
        labels: { version: v2 }
virtualServices:
  - hosts: [warehouse]
    routes:
      - name: canary-testers
        match:
          - headers: { canary: { exact: "1" } }
        route:
          - destination: { host: warehouse, subset: v2 }
      - name: canary
        match:
          - method: { exact: reserve }
            sourceService: payment
          - method: { prefix: get }
        route:
          - destination: { host: warehouse, subset: v1 }
            weight: 90
          - destination: { host: warehouse, subset: v2 }
            weight: 10
        timeout: 2s
        retries: { attempts: 3, perTryTimeout: 500ms, retryOn: "timeout, unavailable" }
        fault:
          delay: { percentage: { value: 10 }, fixedDelay: 200ms }
          abort: { percentage: { value: 5 }, code: UNAVAILABLE }
  - hosts: [payment]
    routes:
      - name: tenants
        match:
          - headers: { tenant: { regex: "acme-[0-9]+" } }
        timeout: 250
      - name: regions
        match:
          - headers: { region: { prefix: eu- } }
        timeout: 1500
authorizationPolicies:
  - name: payment-callers
    selector: payment
    action: ALLOW
    rules:
      - from: [{ source: { services: [edge] } }]
        to: [{ operation: { methods: [changeState, get] } }]
      - from: [{ source: { services: [warehouse] } }]
        to: [{ operation: { methods: [get] } }]
  - name: no-account-writes
    selector: payment
    action: DENY
    rules:
      - from: [{ source: { services: [account] } }]
        to: [{ operation: { methods: [changeState] } }]
  - name: warehouse-deny-edge
    selector: warehouse
    action: DENY
    rules:
      - from: [{ source: { services: [edge] } }]
        to: [{ operation: { methods: [reserve] } }]
`;

function policyOf(yaml: string): MeshPolicy {
  return parseMeshPolicy(YAML.parse(yaml), shape, 'test');
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

/** The problem lines of a ConfigError's message (after its heading). */
function problemLines(fn: () => unknown): string[] {
  return configError(fn)
    .message.split('\n')
    .slice(1)
    .map((l) => l.trim());
}

/** Every decision the policy can give for the shape's services, methods and a few callers and headers. */
function decisions(p: MeshPolicy): unknown[] {
  const out: unknown[] = [];
  const sources = [undefined, 'edge', 'payment', 'account', 'warehouse'];
  const headerSets: (Record<string, string> | undefined)[] = [undefined, { canary: '1' }, { tenant: 'acme-42' }, { region: 'eu-west' }];
  for (const [service, methods] of Object.entries(shape.services)) {
    out.push(p.destination(service));
    for (const method of Object.keys(methods)) {
      out.push(p.idempotent(service, method));
      for (const source of sources) {
        out.push(p.authorize(service, source, method));
        for (const headers of headerSets) out.push(p.route(service, method, source, headers));
      }
    }
  }
  return out;
}

describe('defaults', () => {
  test('without a file: mutual TLS, every endpoint, default destination, allow-all', () => {
    const p = loadMeshPolicy(join(kit.tmp('mesh'), 'mesh-policy.yaml'), shape);
    expect(p.document).toEqual({ peerAuthentication: { mode: 'STRICT' }, destinationRules: [], virtualServices: [], authorizationPolicies: [] });
    expect(p.route('warehouse', 'reserve', 'payment', { canary: '1' })).toEqual({
      name: undefined,
      destinations: [{ subset: undefined, weight: 100 }],
      timeoutMs: undefined,
      retries: undefined,
      fault: undefined,
    });
    expect(p.destination('warehouse')).toEqual({
      loadBalancer: 'LEAST_REQUEST',
      maxConnections: 2,
      maxPendingRequests: 1024,
      maxRequestsPerConnection: 0,
      outlier: { consecutiveErrors: 5, intervalMs: 1000, baseEjectionMs: 30_000, maxEjectionPercent: 50 },
      subsets: {},
    });
    expect(p.authorize('payment', undefined, 'changeState')).toEqual({ allowed: true });
    expect(p.authorize('payment', 'account', 'changeState')).toEqual({ allowed: true });
  });

  test('an empty file is the empty policy; a rule with only a host takes every default', () => {
    const dir = kit.tmp('mesh');
    writeFileSync(join(dir, 'empty.yaml'), '# nothing yet\n');
    expect(loadMeshPolicy(join(dir, 'empty.yaml'), shape).document).toEqual(
      loadMeshPolicy(join(dir, 'absent.yaml'), shape).document,
    );
    const p = policyOf('destinationRules: [{ host: payment }]');
    expect(p.destination('payment')).toEqual(p.destination('account'));
  });

  test('idempotent follows the app shape; unknown services and methods are not retried', () => {
    const p = policyOf('{}');
    expect(p.idempotent('warehouse', 'getProduct')).toBe(true);
    expect(p.idempotent('warehouse', 'reserve')).toBe(false);
    expect(p.idempotent('warehouse', 'nope')).toBe(false);
    expect(p.idempotent('nope', 'getProduct')).toBe(false);
    expect(p.idempotent('warehouse', 'toString')).toBe(false);
  });
});

describe('a full document', () => {
  test('parses into the destination policy of its rule', () => {
    const p = policyOf(full);
    expect(p.destination('warehouse')).toEqual({
      loadBalancer: 'ROUND_ROBIN',
      maxConnections: 4,
      maxPendingRequests: 64,
      maxRequestsPerConnection: 100,
      outlier: { consecutiveErrors: 3, intervalMs: 2000, baseEjectionMs: 60_000, maxEjectionPercent: 25 },
      subsets: { v1: { version: 'v1' }, v2: { version: 'v2' } },
    });
    expect(p.destination('payment').loadBalancer).toBe('LEAST_REQUEST');
  });

  test('a route decision carries its name, weights, timeout, retries and fault in ms', () => {
    const d = policyOf(full).route('warehouse', 'getStock', 'edge', undefined);
    expect(d).toEqual({
      name: 'canary',
      destinations: [
        { subset: 'v1', weight: 90 },
        { subset: 'v2', weight: 10 },
      ],
      timeoutMs: 2000,
      retries: { attempts: 3, perTryTimeoutMs: 500, retryOn: ['unavailable', 'timeout'] },
      fault: { delay: { percent: 10, ms: 200 }, abort: { percent: 5, code: 'UNAVAILABLE' } },
    });
  });

  test('document is JSON and parsing it again gives the same document and the same decisions', () => {
    const p = policyOf(full);
    const pushed = JSON.parse(JSON.stringify(p.document)) as unknown;
    expect(pushed).toEqual(p.document);
    const again = parseMeshPolicy(pushed, shape, 'control plane');
    expect(again.document).toEqual(p.document);
    expect(decisions(again)).toEqual(decisions(p));
    expect(parseMeshPolicy(p.document, shape, 'control plane').document).toEqual(p.document);
    expect(() => {
      (p.document as { virtualServices: unknown[] }).virtualServices.pop();
    }).toThrow(TypeError);
    // Normalized: durations in ms, defaults and the implied destination written out.
    const doc = p.document as { virtualServices: { routes: { timeout?: unknown; route: unknown; retries?: { retryOn: string } }[] }[] };
    expect(doc.virtualServices[0]!.routes[1]!.timeout).toBe(2000);
    expect(doc.virtualServices[0]!.routes[1]!.retries!.retryOn).toBe('unavailable,timeout');
    expect(doc.virtualServices[1]!.routes[0]!.route).toEqual([{ destination: { host: 'payment' }, weight: 100 }]);
  });
});

describe('validation', () => {
  test('anything but STRICT mutual TLS is refused, saying plaintext is never accepted', () => {
    const lines = problemLines(() => policyOf('peerAuthentication: { mode: PERMISSIVE }'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^peerAuthentication\.mode: .*PERMISSIVE.*plaintext is never accepted between sidecars/);
  });

  test('shape problems are listed together, each with its path', () => {
    const err = configError(() =>
      policyOf(`
destinationRules:
  - host: warehouse
    trafficPolicy:
      loadBalancer: { simple: FASTEST }
      outlierDetection: { interval: 0ms, baseEjectionTime: soon, maxEjectionPercent: 120 }
    subsets: [{ name: v1, labels: { version: v1, zone: eu } }]
virtualServices:
  - hosts: [warehouse, payment]
  - hosts: [payment]
    routes:
      - match:
          - method: { exact: get, prefix: g }
            headers: { tenant: { regex: "acme-(" } }
        timeout: -5
        retries: { attempts: 2, retryOn: "unavailable,gateway-error" }
        fault:
          delay: { percentage: { value: 150 }, fixedDelay: 2s }
          abort: { percentage: { value: 5 }, code: TEAPOT }
authorizationPolicies:
  - { name: p, selector: payment, action: MAYBE }
surprise: true
`),
    );
    expect(err.message.split('\n')[0]).toBe('invalid mesh policy (test):');
    const lines = err.message.split('\n').slice(1).map((l) => l.trim());
    const expected: [string, RegExp][] = [
      ['destinationRules[0].trafficPolicy.loadBalancer.simple', /ROUND_ROBIN/],
      ['destinationRules[0].trafficPolicy.outlierDetection.interval', /positive/],
      ['destinationRules[0].trafficPolicy.outlierDetection.baseEjectionTime', /not a duration/],
      ['destinationRules[0].trafficPolicy.outlierDetection.maxEjectionPercent', /0\.\.100/],
      ['destinationRules[0].subsets[0].labels', /zone/],
      ['virtualServices[0].hosts', /exactly one service/],
      ['virtualServices[1].routes[0].match[0].method', /exactly one of exact, prefix/],
      ['virtualServices[1].routes[0].match[0].headers.tenant.regex', /does not compile/],
      ['virtualServices[1].routes[0].timeout', /positive/],
      ['virtualServices[1].routes[0].retries.retryOn', /unknown: gateway-error/],
      ['virtualServices[1].routes[0].fault.delay.percentage.value', /0\.\.100/],
      ['virtualServices[1].routes[0].fault.abort.code', /UNAVAILABLE/],
      ['authorizationPolicies[0].action', /ALLOW/],
      ['(top level)', /surprise/],
    ];
    for (const [path, message] of expected) {
      const line = lines.find((l) => l.startsWith(`${path}: `));
      expect(line, path).toBeDefined();
      expect(line).toMatch(message);
    }
    expect(err.details).toMatchObject({ issues: expect.arrayContaining([expect.objectContaining({ path: 'virtualServices[1].routes[0].timeout' })]) });
  });

  test('problems against the app are listed together, each with its path', () => {
    const lines = problemLines(() =>
      policyOf(`
destinationRules:
  - host: warehouse
    subsets:
      - { name: v1, labels: { version: v1 } }
      - { name: v3, labels: { version: v3 } }
      - { name: v1, labels: { version: v2 } }
  - host: warehouse
  - host: payment
    subsets: [{ name: blue, labels: { version: blue } }]
  - host: shipping
virtualServices:
  - hosts: [warehouse]
    routes:
      - match:
          - method: { exact: ship }
            sourceService: courier
          - method: { prefix: list }
        route:
          - destination: { host: warehouse, subset: v1 }
            weight: 90
          - destination: { host: warehouse, subset: v9 }
            weight: 5
      - route:
          - destination: { host: payment }
          - destination: { host: warehouse, subset: v2 }
            weight: 50
      - route:
          - destination: { host: warehouse }
            weight: 60
  - hosts: [warehouse]
  - hosts: [account]
    routes: [{ route: [{ destination: { host: account, subset: v1 } }] }]
authorizationPolicies:
  - name: p
    selector: payment
    rules:
      - from: [{ source: { services: [edge, stranger] } }]
        to: [{ operation: { methods: [get, refund] } }]
  - { name: p, selector: billing }
`),
    );
    expect(lines).toEqual(
      expect.arrayContaining([
        'destinationRules[0].subsets[1].labels.version: warehouse has no version v3 (versions: v1, v2)',
        'destinationRules[0].subsets[2].name: subset v1 is defined twice',
        expect.stringMatching(/^destinationRules\[1\]\.host: a second destination rule for warehouse \(the first is destinationRules\[0\]\)/),
        'destinationRules[2].subsets[0].labels.version: payment runs one unlabelled version; no endpoint has version blue',
        expect.stringMatching(/^destinationRules\[3\]\.host: "shipping" is not a service of bookstore/),
        expect.stringMatching(/^virtualServices\[0\]\.routes\[0\]\.match\[0\]\.method\.exact: warehouse has no method "ship"/),
        expect.stringMatching(/^virtualServices\[0\]\.routes\[0\]\.match\[0\]\.sourceService: "courier" is neither a service of bookstore nor edge/),
        expect.stringMatching(/^virtualServices\[0\]\.routes\[0\]\.match\[1\]\.method\.prefix: no method of warehouse starts with "list"/),
        expect.stringMatching(/^virtualServices\[0\]\.routes\[0\]\.route\[1\]\.destination\.subset: subset v9 is not defined in the destination rule for warehouse/),
        'virtualServices[0].routes[0].route: weights sum to 95, not 100',
        expect.stringMatching(/^virtualServices\[0\]\.routes\[1\]\.route\[0\]\.destination\.host: must be warehouse/),
        'virtualServices[0].routes[1].route[0].weight: required when a route has more than one destination',
        // The third subset reused the name v1, so v2 is not among the rule's subsets.
        expect.stringMatching(/^virtualServices\[0\]\.routes\[1\]\.route\[1\]\.destination\.subset: subset v2 is not defined .*\(subsets: v1, v3\)/),
        'virtualServices[0].routes[2].route: weights sum to 60, not 100',
        expect.stringMatching(/^virtualServices\[1\]\.hosts\[0\]: a second virtual service for warehouse/),
        expect.stringMatching(/^virtualServices\[2\]\.routes\[0\]\.route\[0\]\.destination\.subset: subset v1 is not defined: no destination rule for account/),
        expect.stringMatching(/^authorizationPolicies\[0\]\.rules\[0\]\.from\[0\]\.source\.services\[1\]: "stranger" is neither/),
        expect.stringMatching(/^authorizationPolicies\[0\]\.rules\[0\]\.to\[0\]\.operation\.methods\[1\]: payment has no method "refund"/),
        expect.stringMatching(/^authorizationPolicies\[1\]\.name: a second policy named p/),
        expect.stringMatching(/^authorizationPolicies\[1\]\.selector: "billing" is not a service/),
      ]),
    );
    expect(lines).toHaveLength(20);
  });

  test('a value of the wrong type is one problem, not one per check', () => {
    expect(problemLines(() => policyOf('virtualServices: [{ hosts: warehouse }]'))).toEqual([
      'virtualServices[0].hosts: Invalid input: expected array, received string',
    ]);
  });

  test('shape and app problems in one file are reported in one error', () => {
    const lines = problemLines(() => policyOf('destinationRules: [{ host: shipping, trafficPolicy: { loadBalancer: { simple: NONE } } }]'));
    expect(lines.map((l) => l.split(':')[0])).toEqual(['destinationRules[0].trafficPolicy.loadBalancer.simple', 'destinationRules[0].host']);
  });

  test('a top level that is not a mapping is refused', () => {
    expect(configError(() => parseMeshPolicy([1, 2], shape, 'test')).message).toMatch(/top level must be a mapping/);
  });
});

describe('durations', () => {
  test('"250ms", "2s", "1m" and integers of ms', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('2s')).toBe(2000);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('1m')).toBe(60_000);
    expect(parseDuration(750)).toBe(750);
    expect(parseDuration('0s')).toMatch(/positive/);
    expect(parseDuration(-1)).toMatch(/positive/);
    expect(parseDuration(1.5)).toMatch(/whole number/);
    expect(parseDuration('2h')).toMatch(/not a duration/);
    expect(parseDuration(true)).toMatch(/a duration must be/);
  });

  test('each duration field accepts every form', () => {
    const p = policyOf(`
destinationRules: [{ host: warehouse, trafficPolicy: { outlierDetection: { interval: 250ms, baseEjectionTime: 1m } } }]
virtualServices:
  - hosts: [warehouse]
    routes: [{ timeout: 2s, retries: { attempts: 1, perTryTimeout: 400 }, fault: { delay: { percentage: { value: 100 }, fixedDelay: 1m } } }]
`);
    expect(p.destination('warehouse').outlier).toMatchObject({ intervalMs: 250, baseEjectionMs: 60_000 });
    expect(p.route('warehouse', 'reserve', undefined, undefined)).toMatchObject({
      timeoutMs: 2000,
      retries: { attempts: 1, perTryTimeoutMs: 400, retryOn: ['unavailable'] },
      fault: { delay: { percent: 100, ms: 60_000 } },
    });
  });
});

describe('routing', () => {
  const p = policyOf(full);
  const nameOf = (service: string, method: string, source?: string, headers?: Record<string, string>) => p.route(service, method, source, headers).name;

  test('first match wins: the header route comes before the method routes', () => {
    expect(nameOf('warehouse', 'reserve', 'payment', { canary: '1' })).toBe('canary-testers');
    expect(p.route('warehouse', 'reserve', 'payment', { canary: '1' }).destinations).toEqual([{ subset: 'v2', weight: 100 }]);
    expect(nameOf('warehouse', 'reserve', 'payment', { canary: '2' })).toBe('canary');
  });

  test('an exact method with a source matches only that caller; entries are alternatives', () => {
    expect(nameOf('warehouse', 'reserve', 'payment')).toBe('canary');
    expect(nameOf('warehouse', 'reserve', 'account')).toBeUndefined();
    expect(nameOf('warehouse', 'reserve', undefined)).toBeUndefined();
    // The second entry (prefix get) matches any caller.
    expect(nameOf('warehouse', 'getProduct', 'account')).toBe('canary');
    expect(nameOf('warehouse', 'getStock', undefined)).toBe('canary');
    expect(p.route('warehouse', 'reserve', 'account', undefined).destinations).toEqual([{ subset: undefined, weight: 100 }]);
  });

  test('header matches: exact, prefix and a regex over the whole value; a missing header never matches', () => {
    expect(nameOf('payment', 'get', 'edge', { tenant: 'acme-42' })).toBe('tenants');
    expect(nameOf('payment', 'get', 'edge', { tenant: 'acme-x' })).toBeUndefined();
    expect(nameOf('payment', 'get', 'edge', { tenant: 'big-acme-42' })).toBeUndefined();
    expect(nameOf('payment', 'get', 'edge', { region: 'eu-west' })).toBe('regions');
    expect(nameOf('payment', 'get', 'edge', { region: 'us-east' })).toBeUndefined();
    expect(nameOf('payment', 'get', 'edge', { tenant: 'acme-1', region: 'eu-west' })).toBe('tenants');
    expect(nameOf('payment', 'get', 'edge', {})).toBeUndefined();
    expect(nameOf('payment', 'get', 'edge', undefined)).toBeUndefined();
    expect(p.route('payment', 'get', 'edge', { tenant: 'acme-7' }).timeoutMs).toBe(250);
  });

  test('a route without match matches every call; hosts without a virtual service get the default', () => {
    const q = policyOf('virtualServices: [{ hosts: [account], routes: [{ name: all, timeout: 1s }, { name: never }] }]');
    expect(q.route('account', 'signIn', undefined, undefined).name).toBe('all');
    expect(q.route('warehouse', 'reserve', 'payment', undefined).name).toBeUndefined();
  });

  test('decisions are computed once: the same call gets the same object', () => {
    expect(p.route('warehouse', 'getStock', 'edge', undefined)).toBe(p.route('warehouse', 'getProduct', 'payment', undefined));
    expect(p.route('account', 'signIn', 'edge', undefined)).toBe(p.route('warehouse', 'reserve', 'account', undefined));
  });

  test('pickDestination over random 0.000..0.999 gives exactly 90/10', () => {
    const d = p.route('warehouse', 'getStock', undefined, undefined);
    const counts: Record<string, number> = {};
    for (let i = 0; i < 1000; i++) {
      const { subset } = pickDestination(d, i / 1000);
      counts[String(subset)] = (counts[String(subset)] ?? 0) + 1;
    }
    expect(counts).toEqual({ v1: 900, v2: 100 });
    expect(pickDestination(d, 0.8999).subset).toBe('v1');
    expect(pickDestination(d, 0.9).subset).toBe('v2');
  });

  test('pickDestination never picks a zero weight, and a single destination always', () => {
    const q = policyOf(`
destinationRules: [{ host: warehouse, subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }] }]
virtualServices:
  - hosts: [warehouse]
    routes: [{ route: [{ destination: { host: warehouse, subset: v1 }, weight: 0 }, { destination: { host: warehouse, subset: v2 }, weight: 100 }] }]
`);
    const d = q.route('warehouse', 'reserve', undefined, undefined);
    for (const r of [0, 0.001, 0.5, 0.999]) expect(pickDestination(d, r).subset).toBe('v2');
    expect(pickDestination(p.route('account', 'signIn', undefined, undefined), 0.3)).toEqual({ subset: undefined, weight: 100 });
  });

  test('faultApplies: percent/100 > random', () => {
    expect(faultApplies(10, 0.05)).toBe(true);
    expect(faultApplies(10, 0.1)).toBe(false);
    expect(faultApplies(100, 0.999)).toBe(true);
    expect(faultApplies(0, 0)).toBe(false);
  });
});

describe('authorization', () => {
  const p = policyOf(full);

  test('an ALLOW policy admits only what its rules list', () => {
    expect(p.authorize('payment', 'edge', 'changeState')).toEqual({ allowed: true });
    expect(p.authorize('payment', 'edge', 'get')).toEqual({ allowed: true });
    expect(p.authorize('payment', 'warehouse', 'get')).toEqual({ allowed: true });
    expect(p.authorize('payment', 'warehouse', 'changeState')).toEqual({
      allowed: false,
      reason: 'warehouse may not call payment.changeState: no ALLOW rule of policy payment-callers matches',
    });
  });

  test('a matching DENY rule wins over any ALLOW and names its policy', () => {
    const q = policyOf(`
authorizationPolicies:
  - { name: open, selector: payment, action: ALLOW, rules: [{}] }
  - name: no-account-writes
    selector: payment
    action: DENY
    rules: [{ from: [{ source: { services: [account] } }], to: [{ operation: { methods: [changeState] } }] }]
`);
    expect(q.authorize('payment', 'account', 'changeState')).toEqual({
      allowed: false,
      reason: 'account may not call payment.changeState: DENY policy no-account-writes matches',
    });
    expect(q.authorize('payment', 'account', 'get')).toEqual({ allowed: true });
    expect(q.authorize('payment', 'edge', 'changeState')).toEqual({ allowed: true });
  });

  test('a callee with only DENY policies, or none, admits everything else', () => {
    expect(p.authorize('warehouse', 'edge', 'reserve')).toMatchObject({ allowed: false, reason: expect.stringContaining('DENY policy warehouse-deny-edge') });
    expect(p.authorize('warehouse', 'edge', 'getProduct')).toEqual({ allowed: true });
    expect(p.authorize('warehouse', undefined, 'reserve')).toEqual({ allowed: true });
    expect(p.authorize('account', undefined, 'signIn')).toEqual({ allowed: true });
    expect(p.authorize('account', 'payment', 'signIn')).toEqual({ allowed: true });
  });

  test('an unknown or unidentified caller is denied once an ALLOW policy selects the callee', () => {
    expect(p.authorize('payment', 'stranger', 'get')).toEqual({
      allowed: false,
      reason: 'stranger may not call payment.get: no ALLOW rule of policy payment-callers matches',
    });
    const anonymous = p.authorize('payment', undefined, 'get');
    expect(anonymous.allowed).toBe(false);
    expect(!anonymous.allowed && anonymous.reason).toMatch(/unidentified caller may not call payment\.get/);
  });

  test('as in Istio: an ALLOW policy without rules admits nothing, a rule without from/to admits everything', () => {
    const closed = policyOf('authorizationPolicies: [{ name: closed, selector: account }]');
    expect(closed.authorize('account', 'edge', 'signIn')).toMatchObject({ allowed: false });
    const open = policyOf('authorizationPolicies: [{ name: open, selector: account, rules: [{}] }, { name: closed, selector: account }]');
    expect(open.authorize('account', undefined, 'signIn')).toEqual({ allowed: true });
    const several = policyOf(`
authorizationPolicies:
  - { name: a, selector: account, rules: [{ from: [{ source: { services: [edge] } }] }] }
  - { name: b, selector: account, rules: [{ from: [{ source: { services: [payment] } }] }] }
`);
    expect(several.authorize('account', 'payment', 'signIn')).toEqual({ allowed: true });
    expect(several.authorize('account', 'warehouse', 'signIn')).toEqual({
      allowed: false,
      reason: 'warehouse may not call account.signIn: no ALLOW rule of policies a, b matches',
    });
  });
});

describe('loadMeshPolicy', () => {
  test('reads a YAML file', () => {
    const file = join(kit.tmp('mesh'), 'mesh-policy.yaml');
    writeFileSync(file, full);
    expect(loadMeshPolicy(file, shape).document).toEqual(policyOf(full).document);
  });

  test('a YAML syntax error is a ConfigError naming the file', () => {
    const file = join(kit.tmp('mesh'), 'mesh-policy.yaml');
    writeFileSync(file, 'virtualServices:\n  - hosts: [warehouse\n    routes: {\n');
    const err = configError(() => loadMeshPolicy(file, shape));
    expect(err.message).toContain(`${file} is not valid YAML`);
  });

  test('a validation error names the file', () => {
    const file = join(kit.tmp('mesh'), 'mesh-policy.yaml');
    writeFileSync(file, 'peerAuthentication: { mode: DISABLE }\n');
    expect(configError(() => loadMeshPolicy(file, shape)).message).toMatch(new RegExp(`^invalid mesh policy \\(${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\):\n  peerAuthentication\\.mode:`));
  });
});

describe('docs/mesh-policy.md', () => {
  const text = readFileSync(new URL('../../docs/mesh-policy.md', import.meta.url), 'utf8');
  const blocks = [...text.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);

  test('every YAML example is a valid policy for the bookstore shape', () => {
    expect(blocks).toHaveLength(3);
    for (const block of blocks) expect(() => policyOf(block)).not.toThrow();
  });

  test('the canary example sends testers to v2 and others 90/10', () => {
    const p = policyOf(blocks[1]!);
    expect(p.route('warehouse', 'reserve', 'payment', { canary: '1' }).destinations).toEqual([{ subset: 'v2', weight: 100 }]);
    expect(p.route('warehouse', 'reserve', 'payment', undefined).destinations).toEqual([
      { subset: 'v1', weight: 90 },
      { subset: 'v2', weight: 10 },
    ]);
  });

  test('the fault example delays every getProduct by 200 ms and fails half of changeState', () => {
    const p = policyOf(blocks[2]!);
    expect(p.route('warehouse', 'getProduct', 'edge', undefined).fault).toEqual({ delay: { percent: 100, ms: 200 } });
    expect(p.route('payment', 'changeState', 'edge', undefined).fault).toEqual({ abort: { percent: 50, code: 'UNAVAILABLE' } });
    expect(p.route('warehouse', 'reserve', 'edge', undefined).fault).toBeUndefined();
    expect(p.route('payment', 'get', 'edge', undefined).fault).toBeUndefined();
  });
});
