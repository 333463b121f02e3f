import http from 'node:http';
import { afterEach, describe, expect, test } from 'vitest';
import { Registry } from './registry.js';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { RegistryServer, startRegistryServer } from './registry-server.js';
import type { RegistryStatus } from './registry-protocol.js';
import { authority } from '../../test/fixtures/plane-kit.js';
import { DeploymentAuthority } from '../auth/credentials.js';

/** The process the tests play: it hosts warehouse and may announce the instances the tests use. */
const worker = authority.issue({ sub: 'warehouse#1', svc: ['warehouse'], ins: ['warehouse-1', 'warehouse-2', 'w1', 'ghost'] });
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const inject = (app: FastifyInstance, o: InjectOptions, token = worker.token) => app.inject({ ...o, headers: { ...bearer(token), ...o.headers } });

const servers: RegistryServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

function server(options: Partial<ConstructorParameters<typeof RegistryServer>[0]> = {}): RegistryServer {
  const s = new RegistryServer({ trust: authority.trust, registry: new Registry({ sweepIntervalMs: 0 }), ...options });
  servers.push(s);
  return s;
}

const body = { service: 'warehouse', version: '1.0.0', address: '127.0.0.1:7001' };

describe('registry HTTP API', () => {
  test('register, list, readiness, heartbeat and deregister', async () => {
    const { app } = server();
    let res = await inject(app, { method: 'PUT', url: '/v1/instances/warehouse-1', payload: { ...body, ready: false, metadata: { zone: 'a' } } });
    expect(res.statusCode).toBe(200);
    expect(res.json().instance).toMatchObject({ id: 'warehouse-1', ready: false, health: 'passing' });

    res = await inject(app, { url: '/v1/services/warehouse' });
    expect(res.json()).toMatchObject({ service: 'warehouse', endpoints: [] });

    res = await inject(app, { method: 'PUT', url: '/v1/instances/warehouse-1/ready', payload: { ready: true } });
    expect(res.statusCode).toBe(200);
    res = await inject(app, { url: '/v1/services/warehouse' });
    expect(res.json().endpoints).toEqual([{ service: 'warehouse', id: 'warehouse-1', address: '127.0.0.1:7001', version: '1.0.0', metadata: { zone: 'a' } }]);

    res = await inject(app, { method: 'PUT', url: '/v1/instances/warehouse-1/heartbeat' });
    expect(res.json()).toEqual({ ok: true });

    res = await inject(app, { url: '/v1/services' });
    expect(res.json().services.map((l: { service: string }) => l.service)).toEqual(['warehouse']);

    res = await inject(app, { method: 'DELETE', url: '/v1/instances/warehouse-1' });
    expect(res.json()).toEqual({ removed: true });
    res = await inject(app, { method: 'DELETE', url: '/v1/instances/warehouse-1' });
    expect(res.json()).toEqual({ removed: false });
    res = await inject(app, { url: '/v1/services/warehouse' });
    expect(res.json().endpoints).toEqual([]);
  });

  test('a heartbeat from an instance the registry does not know is a 404 telling it to register again', async () => {
    const { app } = server();
    const res = await inject(app, { method: 'PUT', url: '/v1/instances/ghost/heartbeat' });
    expect(res.statusCode).toBe(404);
    expect(res.json().error).toMatchObject({ code: 'EVOLITH_NOT_FOUND', message: expect.stringMatching(/register it again/) });
    const ready = await inject(app, { method: 'PUT', url: '/v1/instances/ghost/ready', payload: { ready: true } });
    expect(ready.statusCode).toBe(404);
  });

  test('invalid registrations are a 400 naming the problem', async () => {
    const { app } = server();
    let res = await inject(app, { method: 'PUT', url: '/v1/instances/w1', payload: { ...body, address: 'nowhere' } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ code: 'EVOLITH_VALIDATION', message: expect.stringMatching(/address/) });
    res = await inject(app, { method: 'PUT', url: '/v1/instances/w1', payload: { ...body, extra: 1 } });
    expect(res.statusCode).toBe(400);
    res = await inject(app, { method: 'PUT', url: '/v1/instances/w1', headers: { 'content-type': 'application/json' }, payload: '{not json' });
    expect(res.statusCode).toBe(400);
  });

  test('GET /status lists instances with address, health, readiness, registered-at and last heartbeat', async () => {
    const s = server();
    await inject(s.app, { method: 'PUT', url: '/v1/instances/warehouse-1', payload: body });
    await inject(s.app, { method: 'PUT', url: '/v1/instances/warehouse-2', payload: { ...body, address: '127.0.0.1:7002', ready: false } });
    const status = (await inject(s.app, { url: '/status' })).json() as RegistryStatus;
    expect(status.bootId).toBe(s.bootId);
    expect(status.instances).toHaveLength(2);
    for (const i of status.instances) {
      expect(i).toMatchObject({ service: 'warehouse', health: 'passing', registeredAt: expect.any(Number), lastHeartbeat: expect.any(Number) });
      expect(i.heartbeatAgeMs).toBeGreaterThanOrEqual(0);
    }
    expect(status.instances.map((i) => [i.address, i.ready])).toEqual([
      ['127.0.0.1:7001', true],
      ['127.0.0.1:7002', false],
    ]);
  });

  test('the watch stream sends hello and a snapshot, then every change, then a snapshot when warm-up ends', async () => {
    const registry = new Registry({ sweepIntervalMs: 0 });
    registry.register({ ...body, id: 'warehouse-1' });
    const s = await startRegistryServer({ trust: authority.trust, registry, warmupMs: 600, pingIntervalMs: 50 });
    servers.push(s);
    const events: Array<{ event: string; data: any }> = [];
    let pings = 0;
    const req = http.get(`${s.url}/v1/watch?service=warehouse&service=orders`, { headers: bearer(worker.token) });
    req.on('response', (res) => {
      expect(res.headers['content-type']).toMatch(/text\/event-stream/);
      res.setEncoding('utf8');
      let buf = '';
      res.on('data', (chunk: string) => {
        buf += chunk;
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (block.startsWith(':')) pings++;
          else {
            const [ev, data] = block.split('\n');
            events.push({ event: ev!.slice(7), data: JSON.parse(data!.slice(6)) });
          }
        }
      });
    });
    await until(() => events.length >= 2);
    expect(events[0]).toMatchObject({ event: 'hello', data: { bootId: s.bootId, warming: true, pingIntervalMs: 50 } });
    expect(events[1]).toMatchObject({
      event: 'snapshot',
      data: { warming: true, services: { warehouse: { endpoints: [{ id: 'warehouse-1' }] }, orders: { endpoints: [] } } },
    });
    registry.register({ ...body, id: 'warehouse-2', address: '127.0.0.1:7002' });
    registry.register({ id: 'billing-1', service: 'billing', version: '1', address: '127.0.0.1:7003' }); // not watched
    await until(() => events.some((e) => e.event === 'endpoints'));
    const change = events.find((e) => e.event === 'endpoints')!;
    expect(change.data).toMatchObject({ service: 'warehouse', endpoints: [{ id: 'warehouse-1' }, { id: 'warehouse-2' }] });
    await until(() => events.some((e) => e.event === 'snapshot' && e.data.warming === false));
    expect(events.filter((e) => e.event === 'endpoints').map((e) => e.data.service)).toEqual(['warehouse']);
    await until(() => pings >= 1);
    req.destroy();
  });

  test('close() ends open watch streams instead of waiting on them', async () => {
    const s = await startRegistryServer({ trust: authority.trust, registry: new Registry({ sweepIntervalMs: 0 }) });
    const ended = new Promise<void>((resolve) => {
      http.get(`${s.url}/v1/watch`, { headers: bearer(worker.token) }, (res) => {
        res.resume();
        res.on('close', () => resolve());
      });
    });
    await until(() => (s as unknown as { streams: Set<unknown> }).streams.size === 1);
    const t0 = Date.now();
    await s.close();
    await ended;
    expect(Date.now() - t0).toBeLessThan(1_000);
  });
});

async function until(check: () => boolean, timeoutMs = 3_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('registry HTTP API, attacked', () => {
  test('nothing is served without a credential of this deployment', async () => {
    const { app } = server();
    for (const o of [
      { url: '/v1/services' },
      { url: '/status' },
      { url: '/v1/watch' },
      { method: 'PUT' as const, url: '/v1/instances/warehouse-1', payload: body },
    ]) {
      expect((await app.inject(o)).statusCode, o.url).toBe(401);
      const stranger = new DeploymentAuthority('elsewhere').issue({ sub: 'x', svc: ['warehouse'], ins: ['warehouse-1'] });
      expect((await inject(app, o, stranger.token)).statusCode, o.url).toBe(401);
    }
    expect(app.server.listening).toBe(false);
  });

  test('a process announces only the instances and services its credential names', async () => {
    const { app } = server();
    let res = await inject(app, { method: 'PUT', url: '/v1/instances/payment-1', payload: { ...body, service: 'payment' } });
    expect(res.statusCode).toBe(403);
    res = await inject(app, { method: 'PUT', url: '/v1/instances/warehouse-1', payload: { ...body, service: 'payment' } });
    expect(res.statusCode).toBe(403);
    const edge = authority.issue({ sub: 'edge#0', edge: true, ins: ['edge-0'] });
    res = await inject(app, { method: 'PUT', url: '/v1/instances/edge-0', payload: { ...body, service: 'edge' } }, edge.token);
    expect(res.statusCode).toBe(200);
  });

  test('a live instance cannot be taken over: not by re-registering it elsewhere, nor renewed or removed by another', async () => {
    const s = server();
    expect((await inject(s.app, { method: 'PUT', url: '/v1/instances/warehouse-1', payload: body })).statusCode).toBe(200);
    // Another process whose credential also names warehouse-1 and warehouse (a thief, or a bug).
    const other = authority.issue({ sub: 'payment#1', svc: ['warehouse'], ins: ['warehouse-1'] });
    const hijack = await inject(s.app, { method: 'PUT', url: '/v1/instances/warehouse-1', payload: { ...body, address: '127.0.0.1:6666' } }, other.token);
    expect(hijack.statusCode).toBe(409);
    expect(hijack.json().error.code).toBe('EVOLITH_CONFLICT');
    expect((await inject(s.app, { method: 'PUT', url: '/v1/instances/warehouse-1/heartbeat' }, other.token)).statusCode).toBe(409);
    expect((await inject(s.app, { method: 'DELETE', url: '/v1/instances/warehouse-1' }, other.token)).statusCode).toBe(409);
    expect(s.registry.endpoints('warehouse').map((e) => e.address)).toEqual(['127.0.0.1:7001']);
    // The slot's next incarnation (a restarted process, with a new credential for the same slot) takes it back.
    const restarted = authority.issue({ sub: 'warehouse#1', svc: ['warehouse'], ins: ['warehouse-1'] });
    expect((await inject(s.app, { method: 'PUT', url: '/v1/instances/warehouse-1', payload: { ...body, address: '127.0.0.1:7009' } }, restarted.token)).statusCode).toBe(200);
    expect(s.registry.endpoints('warehouse').map((e) => e.address)).toEqual(['127.0.0.1:7009']);
  });
});
