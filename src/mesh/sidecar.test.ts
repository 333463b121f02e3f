import { connect as tcpConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { afterEach, describe, expect, test } from 'vitest';
import { CERT_TTL_MS, echoContract, MeshBench, type BenchOptions } from '../../test/fixtures/mesh-kit.js';
import { eventually, sleep, silentLog } from '../../test/fixtures/unit-kit.js';
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

async function rejection(p: Promise<unknown>): Promise<any> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the call to fail, but it succeeded');
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
      async () => {
        const foreign = await MeshAuthority.create({ app: 'meshecho' });
        return tlsClient(inbound, await foreign.issue(['audit'], CERT_TTL_MS));
      },
    ],
    ['(f) a TLS client with no certificate', async (_b, address) => tlsClient(address)],
  ];
  let inbound = '';
  test.each(unanswered)("%s connecting to a proxy's inbound port is never answered, closed, and counted as refused", async (_name, open) => {
    const b = await bench();
    const proxy = b.echo[0]!.sidecar;
    inbound = proxy.inboundAddress;
    const socket = await open(b, inbound);
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
});
