import { connect as tcpConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { afterEach, describe, expect, test } from 'vitest';
import { CERT_TTL_MS, echoContract, MeshBench, type BenchOptions } from '../../test/fixtures/mesh-kit.js';
import { eventually, rejection, silentLog, sleep } from '../../test/fixtures/unit-kit.js';
import { InternalPlane } from '../auth/internal-plane.js';
import { ForbiddenError, UnavailableError } from '../kernel/errors.js';
import { newTrace } from '../kernel/trace.js';
import { encodeFrame, FrameDecoder, decodePayload, type FrameHeader } from '../rpc/frame.js';
import { TcpTransport } from '../rpc/tcp-transport.js';
import { MeshAuthority, type IssuedCertificate } from './ca.js';

const benches: MeshBench[] = [];
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) c();
  for (const b of benches.splice(0)) await b.close();
});

async function bench(options: BenchOptions = {}): Promise<MeshBench> {
  const b = await MeshBench.start(options);
  benches.push(b);
  return b;
}

const split = (address: string) => {
  const i = address.lastIndexOf(':');
  return { host: address.slice(0, i), port: Number(address.slice(i + 1)) };
};

/** A request frame for echo.whoami, as any client could write it. */
function requestFrame(from: string | undefined): Buffer {
  return encodeFrame(
    { kind: 'request', id: 1, service: 'echo', method: 'whoami', deadline: Date.now() + 5_000, traceparent: undefined, caller: undefined, from },
    {},
  );
}

interface Exchange {
  frames: { header: FrameHeader; payload: unknown }[];
  /** Resolves once the connection is closed (either side). */
  closed: Promise<void>;
}

/** Writes `frame` on `socket` and records every frame that comes back until it closes. */
function exchange(socket: Socket, frame: Buffer): Exchange {
  const frames: Exchange['frames'] = [];
  const decoder = new FrameDecoder(
    (header, f, payloadStart) => frames.push({ header, payload: 'id' in header && (header.kind === 'ok' || header.kind === 'error') ? decodePayload(f, payloadStart) : undefined }),
    () => socket.destroy(),
  );
  socket.on('data', (chunk: Buffer) => decoder.push(chunk));
  socket.on('error', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  cleanups.push(() => socket.destroy());
  socket.write(frame);
  return { frames, closed };
}

/** A TLS client to a proxy's inbound port: any certificate (or none), trusting whatever it is shown. */
function tlsClient(address: string, cert?: IssuedCertificate): TLSSocket {
  return tlsConnect({ ...split(address), ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}), rejectUnauthorized: false, minVersion: 'TLSv1.3' });
}

describe('sidecar: the path of a call', () => {
  test('a call passes app → sidecar → mutual TLS → sidecar → app, and the callee sees the calling service and the trace', async () => {
    const b = await bench();
    const trace = newTrace();
    const out = await b.call('whoami', {}, { trace });
    expect(out).toEqual({ label: 'v1', from: 'audit', traceId: trace.traceId });
    expect(b.echo[0]!.calls).toEqual([{ method: 'whoami', from: 'audit', traceId: trace.traceId }]);
    // It did cross both proxies: one mutual-TLS connection in, one call relayed.
    expect(b.echo[0]!.sidecar.stats().inbound.accepted).toBe(1);
    expect(b.auditSidecar.stats().outbound.requests).toBe(1);
  });
});

describe('sidecar: attacks', () => {
  test('(a) a process of the deployment that goes straight to an app socket is refused: the app takes calls from its own proxy only', async () => {
    const b = await bench();
    const intruder = new TcpTransport({ log: silentLog, plane: b.auditPlane });
    cleanups.push(() => void intruder.close());
    const err = await rejection(
      intruder.send(`unix:${b.echo[0]!.appPath}`, echoContract.methods.whoami, {}, { deadline: Date.now() + 2_000, trace: newTrace(), from: 'audit' }),
    );
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toContain('echo#0 takes calls through its mesh proxy only');
    expect(err.details).toMatchObject({ maybeExecuted: false });
    expect(b.echo[0]!.app.stats.refused).toBe(1);
    expect(b.echo[0]!.calls).toHaveLength(0);
  });

  test("(b) another app's credential cannot use a proxy's outbound socket: a proxy carries its own app's calls only", async () => {
    const b = await bench();
    const echoApp = new InternalPlane(b.authority.issue({ sub: 'echo#0', svc: ['echo'], ins: ['echo-0'] }));
    const intruder = new TcpTransport({ log: silentLog, plane: echoApp });
    cleanups.push(() => void intruder.close());
    const err = await rejection(intruder.send(b.auditOutbound, echoContract.methods.whoami, {}, { deadline: Date.now() + 2_000, trace: newTrace(), from: 'echo' }));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toContain('this proxy carries the calls of audit#0 only');
    expect(err.details).toMatchObject({ maybeExecuted: false });
    expect(b.auditSidecar.stats().outbound.refused).toBe(1);
    expect(b.echoCalls).toBe(0);
  });

  test('(c) an app that claims to call as another service is refused by its own proxy', async () => {
    const b = await bench();
    const err = await rejection(b.call('whoami', {}, { from: 'echo' }));
    expect(err).toBeInstanceOf(ForbiddenError);
    expect(err.message).toContain('audit#0 may not call as service echo');
    expect(b.echo[0]!.sidecar.stats().inbound.requests).toBe(0);
    expect(b.echoCalls).toBe(0);
  });

  const unanswered: [string, (b: MeshBench, address: string) => Promise<Socket>][] = [
    ['(d) a plaintext TCP client', async (_b, address) => tcpConnect(split(address))],
    [
      '(e) a TLS client with a certificate from another mesh authority',
      async (_b, address) => {
        // Same app name, same service name: only the authority differs.
        const foreign = await MeshAuthority.create({ app: 'meshecho' });
        return tlsClient(address, await foreign.issue(['audit'], CERT_TTL_MS));
      },
    ],
    ['(f) a TLS client with no certificate', async (_b, address) => tlsClient(address)],
  ];
  test.each(unanswered)("%s connecting to a proxy's inbound port is never answered, closed, and counted as refused", async (_name, open) => {
    const b = await bench();
    const proxy = b.echo[0]!.sidecar;
    const socket = await open(b, proxy.inboundAddress);
    const { frames, closed } = exchange(socket, requestFrame('audit'));
    await closed;
    expect(frames).toEqual([]);
    await eventually(() => expect(proxy.stats().inbound.refused).toBe(1));
    expect(proxy.stats().inbound.requests).toBe(0);
    expect(b.echoCalls).toBe(0);
  });

  test('(g) a valid mesh certificate naming audit cannot send a call that says it is from echo', async () => {
    const b = await bench();
    const proxy = b.echo[0]!.sidecar;
    const socket = tlsConnect({
      ...split(proxy.inboundAddress),
      ...(await b.ca.issue(['audit'], CERT_TTL_MS).then((c) => ({ cert: c.certPem, key: c.keyPem }))),
      ca: [b.ca.trustPem],
      checkServerIdentity: () => undefined,
      minVersion: 'TLSv1.3',
    });
    const { frames } = exchange(socket, requestFrame('echo'));
    await eventually(() => expect(frames).toHaveLength(1));
    expect(frames[0]!.header).toMatchObject({ kind: 'error', id: 1 });
    expect(frames[0]!.payload).toMatchObject({ code: 'EVOLITH_FORBIDDEN' });
    expect((frames[0]!.payload as { message: string }).message).toContain('may not call as echo');
    expect(b.echoCalls).toBe(0);
  });

  test("(h) a registry entry for echo that leads to another service's proxy gets no call: the callee's proxy must prove it is echo", async () => {
    const b = await bench();
    const impostor = b.auditSidecar;
    b.listed = [{ service: 'echo', id: 'echo-9', address: impostor.inboundAddress, version: '1.0.0', metadata: { version: 'v1' } }];
    const err = await rejection(b.call('whoami'));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.details).toMatchObject({ maybeExecuted: false });
    expect(impostor.stats().inbound.requests).toBe(0);
    expect(b.echoCalls).toBe(0);
  });
});

describe('sidecar: authorization', () => {
  test("an ALLOW policy that admits only the edge refuses audit at echo's proxy; a new policy admits it without a restart", async () => {
    const edgeOnly = { name: 'echo-from-edge', selector: 'echo', action: 'ALLOW', rules: [{ from: [{ source: { services: ['edge'] } }] }] };
    const b = await bench({ policy: { authorizationPolicies: [edgeOnly] } });
    const err = await rejection(b.call('secret'));
    expect(err).toBeInstanceOf(ForbiddenError);
    expect(err.code).toBe('EVOLITH_FORBIDDEN');
    expect(err.message).toContain('audit');
    expect(err.message).toContain('echo.secret');
    expect(b.echoCalls).toBe(0);

    const audit = { from: [{ source: { services: ['audit'] } }], to: [{ operation: { methods: ['secret'] } }] };
    b.setPolicy({ authorizationPolicies: [{ ...edgeOnly, rules: [...edgeOnly.rules, audit] }] });
    expect(await b.call('secret')).toEqual({ secret: 'for the edge' });
    expect(b.echoCalls).toBe(1);
  });
});

describe('sidecar: fault injection', () => {
  const faulty = (fault: unknown) => ({ virtualServices: [{ hosts: ['echo'], routes: [{ name: 'chaos', fault }] }] });

  test('an injected delay holds the call at least that long, then it runs', async () => {
    const b = await bench({ policy: faulty({ delay: { percentage: { value: 100 }, fixedDelay: '200ms' } }) });
    const started = performance.now();
    expect(await b.call('whoami')).toMatchObject({ label: 'v1' });
    expect(performance.now() - started).toBeGreaterThanOrEqual(200);
    expect(b.echoCalls).toBe(1);
  });

  test('an injected abort answers UNAVAILABLE marked as injected, and the callee never sees the call', async () => {
    const b = await bench({ policy: faulty({ abort: { percentage: { value: 100 }, code: 'UNAVAILABLE' } }) });
    const err = await rejection(b.call('whoami'));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.details?.injected).toBe(true);
    expect(err.message).toContain('route chaos');
    expect(b.echoCalls).toBe(0);
    expect(b.echo[0]!.sidecar.stats().inbound.requests).toBe(0);
  });
});

describe('sidecar: routing and resilience', () => {
  test('a 90/10 weighted split sends about a tenth of the calls to v2', async () => {
    const b = await bench({
      echo: [{ version: 'v1' }, { version: 'v2' }],
      policy: {
        destinationRules: [{ host: 'echo', subsets: [{ name: 'stable', labels: { version: 'v1' } }, { name: 'canary', labels: { version: 'v2' } }] }],
        virtualServices: [{ hosts: ['echo'], routes: [{ name: 'canary', route: [{ destination: { subset: 'stable' }, weight: 90 }, { destination: { subset: 'canary' }, weight: 10 }] }] }],
      },
    });
    const labels: string[] = [];
    for (let batch = 0; batch < 40; batch++) {
      const out = await Promise.all(Array.from({ length: 50 }, () => b.call('whoami') as Promise<{ label: string }>));
      labels.push(...out.map((o) => o.label));
    }
    expect(labels).toHaveLength(2000);
    const v2 = labels.filter((l) => l === 'v2').length / labels.length;
    expect(v2).toBeGreaterThanOrEqual(0.07);
    expect(v2).toBeLessThanOrEqual(0.13);
    expect(b.echo[1]!.calls.length).toBe(labels.filter((l) => l === 'v2').length);
  });

  test('retries are budgeted: when every instance fails, retries add at most a fifth of the calls (plus a reserve), not two per call', async () => {
    // Ejection off (a huge threshold), so every call reaches a failing instance and wants retrying.
    const b = await bench({
      echo: [{ version: 'v1', failing: true }, { version: 'v2', failing: true }],
      policy: { destinationRules: [{ host: 'echo', trafficPolicy: { outlierDetection: { consecutiveErrors: 1000 } } }] },
    });
    const calls = 100;
    for (let i = 0; i < calls; i++) await expect(b.call('flaky')).rejects.toMatchObject({ code: 'EVOLITH_UNAVAILABLE' });
    const attempts = b.echo.reduce((n, e) => n + e.calls.length, 0);
    // Without a budget: 3 attempts per call (300). With it: 100 first attempts + 10 reserve + 20 % of 100.
    expect(attempts).toBeGreaterThan(calls);
    expect(attempts).toBeLessThanOrEqual(calls + 10 + 0.2 * calls);
  });

  test('a failing instance is ejected (its calls retried on the healthy one) and comes back when its ejection ends', async () => {
    const b = await bench({
      echo: [{ version: 'v1' }, { version: 'v2', failing: true }],
      policy: { destinationRules: [{ host: 'echo', trafficPolicy: { outlierDetection: { consecutiveErrors: 3, baseEjectionTime: '500ms' } } }] },
    });
    const [healthy, failing] = b.echo as [(typeof b.echo)[0], (typeof b.echo)[0]];
    for (let i = 0; i < 30; i++) expect(await b.call('flaky')).toEqual({ label: 'v1' });
    expect(failing.calls.length).toBeGreaterThanOrEqual(3);
    expect(b.auditSidecar.ejected()).toEqual({ echo: [failing.endpoint.address] });
    // Ejected: no call reaches it while the ejection lasts.
    for (let i = 0; i < 10; i++) {
      const seen = failing.calls.length;
      await b.call('flaky');
      if (b.auditSidecar.ejected().echo !== undefined) expect(failing.calls.length).toBe(seen);
    }
    expect(healthy.calls.length).toBeGreaterThan(0);
    const before = failing.calls.length;

    await eventually(() => expect(b.auditSidecar.ejected()).toEqual({}), 3_000);
    // Back in the pool: calls reach it again (and are still retried on the healthy one).
    await eventually(async () => {
      expect(await b.call('flaky')).toEqual({ label: 'v1' });
      expect(failing.calls.length).toBeGreaterThan(before);
    }, 3_000);
  });

  test('an idempotent call whose instance hangs up mid-call is retried on the other', async () => {
    const b = await bench({ echo: [{ version: 'v1' }, { version: 'v2' }] });
    b.hangUpNext = true;
    const out = (await b.call('touch')) as { label: string };
    const [cut, other] = b.echo[0]!.calls.length === 1 && b.echo[0]!.version !== out.label ? [b.echo[0]!, b.echo[1]!] : [b.echo[1]!, b.echo[0]!];
    expect(cut.calls).toHaveLength(1);
    expect(other.calls).toHaveLength(1);
    expect(out.label).toBe(other.version);
  });

  test('a non-idempotent call whose instance hangs up mid-call is not retried: the caller gets EVOLITH_UNAVAILABLE', async () => {
    const b = await bench({ echo: [{ version: 'v1' }, { version: 'v2' }] });
    b.hangUpNext = true;
    const err = await rejection(b.call('write'));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.code).toBe('EVOLITH_UNAVAILABLE');
    expect(b.echoCalls).toBe(1);
  });

  test('with maxPendingRequests 1, a second concurrent call is refused at the caller’s proxy', async () => {
    const b = await bench({ policy: { destinationRules: [{ host: 'echo', trafficPolicy: { connectionPool: { rpc: { maxPendingRequests: 1 } } } }] } });
    const results = await Promise.allSettled([b.call('slow', { ms: 300 }), b.call('slow', { ms: 300 })]);
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as UnavailableError] : []));
    expect(ok).toHaveLength(1);
    expect(refused).toHaveLength(1);
    expect(refused[0]!.code).toBe('EVOLITH_UNAVAILABLE');
    expect(refused[0]!.message).toContain('1 calls to echo are already pending');
    expect(b.echoCalls).toBe(1);
    // The limit counts calls in flight: once the first answered, the next goes through.
    expect(await b.call('slow', { ms: 1 })).toEqual({ label: 'v1' });
  });
});

describe('sidecar: certificates and telemetry', () => {
  test('certificates rotated every 200 ms under load fail no call, and a new connection sees the new serial', async () => {
    const b = await bench();
    const echoProxy = b.echo[0]!.sidecar;
    const first = echoProxy.currentCertificate.serial;
    let running = true;
    let ok = 0;
    const failures: unknown[] = [];
    const callers = Array.from({ length: 8 }, async () => {
      while (running) {
        try {
          await b.call('whoami');
          ok++;
        } catch (err) {
          failures.push(err);
        }
      }
    });
    let rotations = 0;
    const until = Date.now() + 2_000;
    while (Date.now() < until) {
      await sleep(200);
      const [audit, echo] = await Promise.all([b.ca.issue(['audit'], CERT_TTL_MS), b.ca.issue(['echo'], CERT_TTL_MS)]);
      b.auditSidecar.rotate(audit);
      echoProxy.rotate(echo);
      rotations++;
    }
    running = false;
    await Promise.all(callers);
    expect(failures).toEqual([]);
    expect(ok).toBeGreaterThan(100);
    expect(rotations).toBeGreaterThanOrEqual(5);

    const latest = echoProxy.currentCertificate.serial;
    expect(latest).not.toBe(first);
    const client = await b.ca.issue(['audit'], CERT_TTL_MS);
    const socket = tlsConnect({ ...split(echoProxy.inboundAddress), cert: client.certPem, key: client.keyPem, ca: [b.ca.trustPem], checkServerIdentity: () => undefined, minVersion: 'TLSv1.3' });
    cleanups.push(() => socket.destroy());
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    expect(socket.getPeerCertificate().serialNumber).toBe(latest);
  });

  test('each call is counted by the source and the destination proxy, with caller, callee, method and outcome', async () => {
    const b = await bench({ policy: { authorizationPolicies: [{ name: 'no-secrets', selector: 'echo', action: 'DENY', rules: [{ to: [{ operation: { methods: ['secret'] } }] }] }] } });
    await b.call('whoami');
    await b.call('whoami');
    await rejection(b.call('secret'));
    const text = await b.telemetry.metrics();
    const lines = text.split('\n').filter((l) => l.startsWith('evolith_mesh_requests_total{'));
    const count = (labels: Record<string, string>) => {
      const line = lines.find((l) => Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
      return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
    };
    const edge = { source: 'audit', destination: 'echo' };
    expect(count({ reporter: 'source', ...edge, method: 'whoami', outcome: 'ok' })).toBe(2);
    expect(count({ reporter: 'destination', ...edge, method: 'whoami', outcome: 'ok' })).toBe(2);
    // The denial: answered by echo's proxy, relayed as an error by audit's.
    expect(count({ reporter: 'destination', ...edge, method: 'secret', outcome: 'EVOLITH_FORBIDDEN' })).toBe(1);
    expect(count({ reporter: 'source', ...edge, method: 'secret', outcome: 'error' })).toBe(1);
  });
});
