/**
 * The internal plane of a microservices deployment, attacked the ways that used to work: a
 * local process forging a caller over the HTTP interop port and over the TCP RPC port, taking
 * over a registered instance, reaching internal ports through a public address, reading the
 * internal endpoint list from the public edge. Each must be refused (and the refusal logged).
 */
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { join } from 'node:path';
import { networkInterfaces } from 'node:os';
import { pack } from 'msgpackr';
import { decodePayload, FrameDecoder } from '../../src/rpc/frame.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN } from '../support/bookstore.js';
import { repoRoot, startBookstore, type Bookstore } from '../support/bookstore-process.js';
import { live, operatorAuth, readControlPlane, registryStatus, waitFor, waitForInstances, type ControlPlane, type RegistryInstance } from '../support/control-plane.js';
import { Http, login } from '../support/http.js';

const START_MS = 90_000;

/** An IPv4 address of this machine that is not loopback, if it has one. */
function publicAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) for (const i of list ?? []) if (i.family === 'IPv4' && !i.internal) return i.address;
  return undefined;
}

function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

/** Resolves true when a TCP connection to host:port opens, false when it is refused or times out. */
function reachable(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(2_000, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** One RPC frame with the given header tuple (see src/rpc/frame.ts), as a rogue client would write it. */
function rawRequest(header: unknown[], input: unknown): Buffer {
  const h = pack(header);
  const p = pack(input);
  const frame = Buffer.alloc(6 + h.length + p.length);
  frame.writeUInt32BE(2 + h.length + p.length, 0);
  frame.writeUInt16BE(h.length, 4);
  h.copy(frame, 6);
  p.copy(frame, 6 + h.length);
  return frame;
}

describe('microservices internal plane, attacked', () => {
  let app: Bookstore;
  let cp: ControlPlane;
  let instances: RegistryInstance[];
  const pub = publicAddress();

  beforeAll(async () => {
    // The edge is exposed on every interface, as a user would to serve the world.
    app = await startBookstore({ arch: 'microservices', readyTimeoutMs: START_MS, host: '0.0.0.0' });
    cp = readControlPlane(app.dataDir);
    instances = (await waitForInstances(cp.registryUrl, { edge: 1, account: 1, auth: 1, warehouse: 1, payment: 1 }, 30_000)).instances;
  }, START_MS + 40_000);
  afterAll(() => app?.stop(20_000), 30_000);

  const instance = (service: string) => live({ bootId: '', warming: false, instances }, service)[0]!;

  it('serves nothing internal on the public edge', async () => {
    const r = await fetch(`${app.baseUrl}/evolith/endpoints`);
    expect(r.status).toBe(404);
    expect(await r.text()).not.toMatch(/127\.0\.0\.1:\d+/);
  });

  it('binds internal listeners to loopback even when the edge listens on every interface', async () => {
    for (const i of instances.filter((x) => x.service !== 'edge')) {
      expect(i.address.startsWith('127.0.0.1:'), i.address).toBe(true);
      expect(i.metadata?.http?.startsWith('http://127.0.0.1:'), i.metadata?.http).toBe(true);
    }
    expect(cp.registryUrl.startsWith('http://127.0.0.1:')).toBe(true);
    if (!pub) {
      console.warn('[internal-plane] this machine has no non-loopback IPv4 address: only the bound addresses were checked');
      return;
    }
    // The edge answers on the public address; no internal port does.
    expect(await reachable(pub, Number(new URL(app.baseUrl).port))).toBe(true);
    const internal = [
      ...instances.filter((x) => x.service !== 'edge').map((x) => portOf(x.address)),
      ...instances.map((x) => Number(new URL(x.metadata!.http!).port)),
      Number(new URL(cp.registryUrl).port),
    ];
    for (const port of internal) expect(await reachable(pub, port), `internal port ${port} on ${pub}`).toBe(false);
  });

  it('refuses a forged caller over HTTP interop: no password reset, no payment as someone else', async () => {
    const auth = instance('auth').metadata!.http!;
    const reset = await fetch(`${auth}/rpc/auth/setCredentials`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-evolith-caller': '{"subject":"service:account","roles":["ROLE_SERVICE"]}', 'x-evolith-from': 'account' },
      body: JSON.stringify({ username: ADMIN.username, password: 'owned-by-an-attacker' }),
    });
    expect(reset.status).toBe(401);
    expect(((await reset.json()) as { code: string }).code).toBe('EVOLITH_UNAUTHENTICATED');
    // The real password still works; the attacker's does not.
    const http = new Http(app.baseUrl);
    await expect(login(http, ADMIN.username, 'owned-by-an-attacker')).rejects.toThrow();
    expect((await login(http, ADMIN.username, ADMIN.password)).access_token).toBeTruthy();

    const payment = instance('payment').metadata!.http!;
    const settle = await fetch(`${payment}/rpc/payment/settle`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-evolith-caller': '{"subject":"icyfenix","roles":["ROLE_USER"]}' },
      body: JSON.stringify({ items: [{ id: 1, amount: 1 }], purchase: { delivery: true, pay: 'wechat', name: 'x', telephone: '18888888888', location: 'x' } }),
    });
    expect(settle.status).toBe(401);
  });

  it('refuses a forged caller over TCP RPC: no call runs for a client that has not proven itself', async () => {
    const auth = instance('auth').address;
    /** Writes one frame on a fresh connection; resolves what came back and whether the server hung up. */
    const exchange = (frame: Buffer) =>
      new Promise<{ closed: boolean; frames: { kind: string; payload: unknown }[] }>((resolve) => {
        const frames: { kind: string; payload: unknown }[] = [];
        const decoder = new FrameDecoder(
          (h, f, start) => frames.push({ kind: h.kind, payload: start < f.length ? decodePayload(f, start) : undefined }),
          (reason) => frames.push({ kind: 'broken', payload: reason }),
        );
        const socket = connect({ host: '127.0.0.1', port: portOf(auth) });
        socket.on('data', (d) => decoder.push(d));
        socket.on('error', () => undefined);
        socket.once('close', () => resolve({ closed: true, frames }));
        socket.setTimeout(5_000, () => {
          socket.destroy();
          resolve({ closed: false, frames });
        });
        socket.once('connect', () => socket.write(frame));
      });
    const reset = { username: ADMIN.username, password: 'owned-over-tcp' };
    // The attack that used to work: a frame claiming the service role for the account service.
    const old = await exchange(rawRequest([0, 1, 'auth', 'setCredentials', Date.now() + 5_000, null, { subject: 'service:account', roles: ['ROLE_SERVICE'] }, 'account'], reset));
    expect(old.closed).toBe(true);
    expect(old.frames).toEqual([]);
    // The same claim in today's form, without the handshake: answered with a refusal, then goaway and hang-up.
    const now = await exchange(rawRequest([0, 1, 'auth', 'setCredentials', Date.now() + 5_000, null, 'service', 'account'], reset));
    expect(now.closed).toBe(true);
    expect(now.frames.map((f) => f.kind)).toEqual(['error', 'goaway']);
    expect(now.frames[0]!.payload).toMatchObject({ code: 'EVOLITH_UNAUTHENTICATED' });
    const http = new Http(app.baseUrl);
    await expect(login(http, ADMIN.username, 'owned-over-tcp')).rejects.toThrow();
    expect((await login(http, ADMIN.username, ADMIN.password)).access_token).toBeTruthy();
    // Both attempts are in the log, with the reason (the worker's lines reach us through its supervisor).
    const logged = (what: string, why: RegExp) => app.output().split('\n').some((l) => l.includes(what) && why.test(l));
    await waitFor('the refusals in the log', async () => (logged('rpc connection closed: protocol error', /caller is not a string/) && logged('rpc connection refused', /before the peer proved itself/)) || undefined, 5_000, 100);
  });

  it('evolith status finds the deployment without --data and lists every process through the registry, as the operator', async () => {
    const out = await new Promise<string>((resolve) => {
      const child = spawn(process.execPath, [join(repoRoot, 'bin', 'evolith.mjs'), 'status', 'examples/bookstore'], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
      let text = '';
      child.stdout.on('data', (d) => (text += d));
      child.stderr.on('data', (d) => (text += d));
      child.once('close', () => resolve(text));
    });
    expect(out).toContain(`microservices at http://0.0.0.0:`);
    expect(out).toContain(`pid ${app.pid}`);
    for (const p of ['account#0', 'auth#0', 'warehouse#0', 'payment#0', 'edge#0']) expect(out).toMatch(new RegExp(`${p}\\s+\\d+\\s+running`));
  });

  it('refuses to let anyone but its owner take over a registered instance', async () => {
    const wh = instance('warehouse');
    const body = JSON.stringify({ service: 'warehouse', version: '1.0.0', address: '127.0.0.1:1' });
    const anonymous = await fetch(`${cp.registryUrl}/v1/instances/${wh.id}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body });
    expect(anonymous.status).toBe(401);
    const asOperator = await fetch(`${cp.registryUrl}/v1/instances/${wh.id}`, { method: 'PUT', headers: { 'content-type': 'application/json', ...operatorAuth(cp.registryUrl) }, body });
    expect(asOperator.status).toBe(403);
    const now = live(await registryStatus(cp.registryUrl), 'warehouse');
    expect(now.map((i) => i.address)).toEqual([wh.address]);
    // Reading the registry needs a credential too.
    expect((await fetch(`${cp.registryUrl}/status`)).status).toBe(401);
  });
});
