/**
 * The mesh as an operator meets it, in both proxy modes (a sidecar per instance; one proxy per
 * machine): a small app (test/fixtures/mesh-echo) with `echo` running as v1 and v2 side by
 * side, its traffic policy edited live, its proxies attacked, rotated and killed.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MeshAuthority, clientTlsOptions, spiffeId } from '../../src/mesh/ca.js';
import { encodeFrame } from '../../src/rpc/frame.js';
import { repoRoot, startBookstore, type Bookstore } from '../support/bookstore-process.js';
import { operatorAuth, readControlPlane, type ControlPlane } from '../support/control-plane.js';
import { eventually, sleep } from '../support/eventually.js';

const APP = 'test/fixtures/mesh-echo';
const START_MS = 90_000;

interface MeshStatus {
  mode: string;
  policy: { file: string; version: number; error?: string };
  proxies: {
    process: string;
    configVersion?: number;
    metrics?: string;
    proxied: { instance: string; inbound: string; appSocket?: string; ids: string[]; serial: string; notAfter: number }[];
  }[];
}

interface ProcessRow {
  name: string;
  replica: number;
  pid?: number;
  state: string;
  restarts: number;
}

const BASE_POLICY = `
peerAuthentication: { mode: STRICT }
authorizationPolicies:
  - name: echo-callers
    selector: echo
    action: ALLOW
    rules:
      - from: [{ source: { services: [edge] } }]
`;

/** v1 and v2 of echo, by the version label each replica carries. */
const SUBSETS = `
destinationRules:
  - host: echo
    subsets:
      - { name: v1, labels: { version: v1 } }
      - { name: v2, labels: { version: v2 } }
`;

describe.each(['sidecar', 'node'] as const)('mesh (%s proxies): policy, identity and operations', (mode) => {
  let app: Bookstore;
  let cp: ControlPlane;
  let policyDir: string;
  let policyFile: string;

  const get = async (path: string, headers: Record<string, string> = {}) => {
    const res = await fetch(`${app.baseUrl}${path}`, { headers, signal: AbortSignal.timeout(10_000) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  };
  const mesh = async (): Promise<MeshStatus> => {
    const res = await fetch(`${cp.registryUrl}/mesh`, { headers: operatorAuth(cp.registryUrl) });
    expect(res.status).toBe(200);
    return (await res.json()) as MeshStatus;
  };
  const processes = async (): Promise<ProcessRow[]> => {
    const res = await fetch(`${cp.registryUrl}/processes`, { headers: operatorAuth(cp.registryUrl) });
    return ((await res.json()) as { processes: ProcessRow[] }).processes;
  };
  /** Writes the policy and waits until every proxy runs the version it became. */
  const applyPolicy = async (text: string): Promise<number> => {
    const before = (await mesh()).policy.version;
    writeFileSync(policyFile, text);
    return eventually(async () => {
      const m = await mesh();
      expect(m.policy.error).toBeUndefined();
      expect(m.policy.version).toBeGreaterThan(before);
      for (const p of m.proxies) expect(p.configVersion).toBe(m.policy.version);
      return m.policy.version;
    });
  };
  const proxyFor = async (instance: string) => {
    const m = await mesh();
    const p = m.proxies.find((x) => x.proxied.some((y) => y.instance === instance));
    if (!p) throw new Error(`no proxy reports ${instance}: ${JSON.stringify(m)}`);
    return { proxy: p, proxied: p.proxied.find((y) => y.instance === instance)! };
  };

  beforeAll(async () => {
    policyDir = mkdtempSync(join(tmpdir(), 'evolith-mesh-policy-'));
    policyFile = join(policyDir, 'mesh.yaml');
    writeFileSync(policyFile, BASE_POLICY);
    app = await startBookstore({
      arch: 'mesh',
      app: APP,
      set: { 'mesh.mode': mode, 'mesh.policy': policyFile, 'mesh.certificateTtlMs': 6_000 },
      readyTimeoutMs: START_MS,
    });
    cp = readControlPlane(app.dataDir);
    await eventually(async () => {
      for (const p of (await mesh()).proxies) expect(p.proxied.length).toBeGreaterThan(0);
    });
  }, START_MS + 10_000);

  afterAll(async () => {
    await app?.stop();
    rmSync(policyDir, { recursive: true, force: true });
  });

  it('a call crosses two proxies with its W3C trace context; every proxy has a SPIFFE identity from the mesh CA', async () => {
    const traceId = '0af7651916cd43dd8448eb211c80319c';
    const { status, body } = await get('/whoami', { traceparent: `00-${traceId}-b7ad6b7169203331-01` });
    expect(status).toBe(200);
    expect(body.traceId).toBe(traceId);
    const m = await mesh();
    expect(m.mode).toBe(mode);
    const ids = m.proxies.flatMap((p) => p.proxied.flatMap((x) => x.ids)).sort();
    expect(ids).toEqual(['spiffe://meshecho/audit', 'spiffe://meshecho/echo', 'spiffe://meshecho/echo', 'spiffe://meshecho/edge']);
    expect(m.proxies).toHaveLength(mode === 'sidecar' ? 4 : 1);
  });

  it('evolith status shows each proxy: whom it speaks for, its identity, certificate expiry and policy version', async () => {
    const out = execFileSync(process.execPath, [join(repoRoot, 'bin', 'evolith.mjs'), 'status', APP, '--data', app.dataDir], { cwd: repoRoot, encoding: 'utf8' });
    expect(out).toMatch(/^mesh at http/m);
    expect(out).toContain(`mesh (${mode} proxies)`);
    expect(out).toMatch(/echo#1\s+spiffe:\/\/meshecho\/echo\s+127\.0\.0\.1:\d+\s+[0-9A-F]{12}\s+in \d+ s\s+v\d+/);
    expect(out).toMatch(/edge#0\s+spiffe:\/\/meshecho\/edge/);
  });

  it('a service without an ALLOW rule is denied (audit may not call echo.secret); the edge may', async () => {
    const denied = await get('/peek');
    expect(denied.status).toBe(403);
    expect(String(denied.body.message)).toContain('audit may not call echo.secret');
    expect(app.output()).toContain('call denied by the mesh policy');
    expect((await get('/secret')).status).toBe(200);
  });

  it('a 90/10 canary split between v1 and v2 lands within ±3 % over 2000 calls, applied live', async () => {
    const pids = (await processes()).map((p) => p.pid);
    await applyPolicy(`${BASE_POLICY}${SUBSETS}virtualServices:
  - hosts: [echo]
    routes:
      - name: canary
        match: [{ method: { exact: whoami } }]
        route:
          - { destination: { host: echo, subset: v1 }, weight: 90 }
          - { destination: { host: echo, subset: v2 }, weight: 10 }
`);
    const counts: Record<string, number> = {};
    for (let i = 0; i < 2000; i += 20) {
      const batch = await Promise.all(Array.from({ length: 20 }, () => get('/whoami')));
      for (const r of batch) {
        expect(r.status).toBe(200);
        counts[String(r.body.label)] = (counts[String(r.body.label)] ?? 0) + 1;
      }
    }
    expect((counts.v1 ?? 0) + (counts.v2 ?? 0)).toBe(2000);
    expect(counts.v2! / 2000).toBeGreaterThanOrEqual(0.07);
    expect(counts.v2! / 2000).toBeLessThanOrEqual(0.13);
    // Nothing was restarted to apply it.
    expect((await processes()).map((p) => p.pid)).toEqual(pids);
  }, 60_000);

  it('a route can match W3C baggage the request came in with: canary=1 goes to v2, everything else to v1', async () => {
    await applyPolicy(`${BASE_POLICY}${SUBSETS}virtualServices:
  - hosts: [echo]
    routes:
      - name: canary-testers
        match: [{ headers: { canary: { exact: "1" } } }]
        route: [{ destination: { host: echo, subset: v2 } }]
      - name: everyone-else
        route: [{ destination: { host: echo, subset: v1 } }]
`);
    for (let i = 0; i < 10; i++) {
      expect((await get('/whoami', { baggage: 'tenant=acme,canary=1;ttl=5' })).body.label).toBe('v2');
      expect((await get('/whoami', { baggage: 'canary=0' })).body.label).toBe('v1');
      expect((await get('/whoami')).body.label).toBe('v1');
    }
  });

  it('an injected 200 ms delay shows in the callers’ latency; an injected abort answers its typed error', async () => {
    await applyPolicy(`${BASE_POLICY}
virtualServices:
  - hosts: [echo]
    routes:
      - name: slow-whoami
        match: [{ method: { exact: whoami } }]
        fault: { delay: { percentage: { value: 100 }, fixedDelay: 200ms } }
      - name: broken-secret
        match: [{ method: { exact: secret } }]
        fault: { abort: { percentage: { value: 100 }, code: UNAVAILABLE } }
`);
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      expect((await get('/whoami')).status).toBe(200);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(200);
    }
    const aborted = await get('/secret');
    expect(aborted.status).toBe(503);
    expect(String(aborted.body.message)).toContain('fault injected by route broken-secret');
  });

  it('an invalid policy edit is refused with its reasons; the running policy stays', async () => {
    const running = (await mesh()).policy.version;
    writeFileSync(
      policyFile,
      `${BASE_POLICY}
virtualServices:
  - hosts: [echo]
    routes:
      - route:
          - { destination: { host: echo, subset: v9 }, weight: 60 }
`,
    );
    const refused = await eventually(async () => {
      const m = await mesh();
      expect(m.policy.error).toBeDefined();
      return m;
    });
    expect(refused.policy.version).toBe(running);
    expect(refused.policy.error).toMatch(/subset/);
    expect(refused.policy.error).toMatch(/weight/);
    // The delay of the running policy still applies.
    const t0 = performance.now();
    expect((await get('/whoami')).status).toBe(200);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(200);
    await applyPolicy(BASE_POLICY);
  });

  it('an instance that keeps failing is ejected, its calls retried elsewhere, and it returns after its ejection time', async () => {
    await applyPolicy(`${BASE_POLICY}
destinationRules:
  - host: echo
    trafficPolicy:
      loadBalancer: { simple: ROUND_ROBIN }
      outlierDetection: { consecutiveErrors: 2, interval: 1s, baseEjectionTime: 1500ms, maxEjectionPercent: 50 }
`);
    // echo v2 (echo#1) is configured to fail: the edge's proxy retries each failure on v1.
    for (let i = 0; i < 12; i++) expect((await get('/flaky')).body.label).toBe('v1');
    const { proxy } = await proxyFor('edge#0');
    const statusUrl = proxy.metrics!.replace(/\/metrics$/, '/status');
    const ejectedNow = async () => {
      const res = await fetch(statusUrl, { headers: operatorAuth(cp.registryUrl) });
      const body = (await res.json()) as { sidecars: { instance: string; ejected: Record<string, string[]> }[] };
      return body.sidecars.find((s) => s.instance === 'edge#0')!.ejected.echo ?? [];
    };
    const v2 = (await proxyFor('echo#1')).proxied.inbound;
    expect(await ejectedNow()).toEqual([v2]);
    await eventually(async () => expect(await ejectedNow()).toEqual([]), { timeoutMs: 5_000 });
  });

  it('certificates rotate under steady load without a failed request', async () => {
    const before = (await proxyFor('echo#0')).proxied.serial;
    let ok = 0;
    const failures: string[] = [];
    const end = Date.now() + 6_000;
    await Promise.all(
      Array.from({ length: 6 }, async () => {
        while (Date.now() < end) {
          try {
            const r = await get('/whoami');
            if (r.status === 200) ok++;
            else failures.push(`${r.status} ${JSON.stringify(r.body)}`);
          } catch (err) {
            failures.push(String(err));
          }
        }
      }),
    );
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(100);
    const after = (await proxyFor('echo#0')).proxied;
    expect(after.serial).not.toBe(before);
    expect(after.notAfter).toBeGreaterThan(Date.now());
  }, 30_000);

  it('a plaintext client and a client with a certificate from another CA are refused at a proxy, and the refusal is logged', async () => {
    const { inbound } = (await proxyFor('echo#0')).proxied;
    const [host, port] = [inbound.slice(0, inbound.lastIndexOf(':')), Number(inbound.slice(inbound.lastIndexOf(':') + 1))];
    const request = encodeFrame(
      { kind: 'request', id: 1, service: 'echo', method: 'secret', deadline: Date.now() + 5_000, traceparent: undefined, caller: undefined, from: 'edge' },
      {},
    );
    const answerOf = (socket: import('node:net').Socket, onOpen: string) =>
      new Promise<string>((resolve) => {
        let received = Buffer.alloc(0);
        socket.on(onOpen, () => socket.write(request));
        socket.on('data', (d: Buffer) => (received = Buffer.concat([received, d])));
        socket.on('error', () => {});
        socket.on('close', () => resolve(received.includes(Buffer.from('only the edge')) ? 'answered' : 'closed unanswered'));
        socket.setTimeout(5_000, () => socket.destroy());
      });
    expect(await answerOf(netConnect({ host, port }), 'connect')).toBe('closed unanswered');
    const foreign = await MeshAuthority.create({ app: 'meshecho' });
    const forged = await foreign.issue(['edge'], 60_000);
    const tls = tlsConnect({ ...clientTlsOptions(forged, foreign.trustPem, spiffeId('meshecho', 'echo')), host, port });
    expect(await answerOf(tls, 'secureConnect')).toBe('closed unanswered');
    await eventually(() => expect(app.output().match(/no valid mutual TLS/g)?.length ?? 0).toBeGreaterThanOrEqual(2));
  });

  it('a killed proxy is restarted and its app serves again; nothing else restarts', async () => {
    const name = mode === 'sidecar' ? 'echo.proxy' : 'node-proxy';
    const before = await processes();
    const victim = before.find((p) => p.name === name && p.replica === 0)!;
    process.kill(victim.pid!, 'SIGKILL');
    await eventually(
      async () => {
        const now = await processes();
        const again = now.find((p) => p.name === name && p.replica === 0)!;
        expect(again.pid).not.toBe(victim.pid);
        expect(again.state).toBe('running');
      },
      { timeoutMs: 15_000 },
    );
    await eventually(async () => {
      const r = await get('/whoami');
      expect(r.status).toBe(200);
    }, { timeoutMs: 15_000 });
    const after = await processes();
    for (const p of before.filter((x) => !(x.name === name && x.replica === 0))) {
      expect(after.find((x) => x.name === p.name && x.replica === p.replica)?.pid).toBe(p.pid);
    }
  }, 40_000);

  it('each proxy counts requests, errors and latency per edge on its metrics page, for the deployment only', async () => {
    await get('/whoami');
    const { proxy } = await proxyFor('edge#0');
    expect((await fetch(proxy.metrics!)).status).toBe(401);
    const text = await (await fetch(proxy.metrics!, { headers: operatorAuth(cp.registryUrl) })).text();
    expect(text).toMatch(/evolith_mesh_requests_total\{[^}]*reporter="source"[^}]*source="edge"[^}]*destination="echo"[^}]*method="whoami"[^}]*outcome="ok"[^}]*\} \d+/);
    expect(text).toMatch(/evolith_mesh_request_duration_seconds_bucket\{[^}]*destination="echo"/);
    await sleep(0);
  });
});

describe('mesh: a policy file that does not fit the app', () => {
  it('stops the start, naming every problem, before any process is started', () => {
    const dir = mkdtempSync(join(tmpdir(), 'evolith-mesh-policy-'));
    try {
      const file = join(dir, 'mesh.yaml');
      writeFileSync(file, 'virtualServices:\n  - hosts: [nosuch]\nauthorizationPolicies:\n  - { name: x, selector: echo, action: MAYBE }\n');
      let failure: { status: number; stderr: string } | undefined;
      try {
        execFileSync(process.execPath, [join(repoRoot, 'bin', 'evolith.mjs'), 'run', APP, '--port', '0', '--data', join(dir, 'data'), '--set', `mesh.policy=${file}`], {
          cwd: repoRoot,
          encoding: 'utf8',
          stdio: 'pipe',
          timeout: 30_000,
        });
      } catch (err) {
        failure = err as { status: number; stderr: string };
      }
      expect(failure?.status).toBe(2);
      expect(failure?.stderr).toContain(`invalid mesh policy (${file})`);
      expect(failure?.stderr).toMatch(/virtualServices\[0\]\.hosts\[0\]: "nosuch" is not a service of meshecho/);
      expect(failure?.stderr).toMatch(/authorizationPolicies\[0\]\.action/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
