import http from 'node:http';
import { afterEach, describe, expect, test } from 'vitest';
import { Registry } from './registry.js';
import { RegistryServer, startRegistryServer } from './registry-server.js';
import type { RegistryStatus } from './registry-protocol.js';

const servers: RegistryServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

function server(options: ConstructorParameters<typeof RegistryServer>[0] = {}): RegistryServer {
  const s = new RegistryServer({ registry: new Registry({ sweepIntervalMs: 0 }), ...options });
  servers.push(s);
  return s;
}

const body = { service: 'warehouse', version: '1.0.0', address: '127.0.0.1:7001' };

describe('registry HTTP API', () => {
  test('register, list, readiness, heartbeat and deregister', async () => {
    const { app } = server();
    let res = await app.inject({ method: 'PUT', url: '/v1/instances/warehouse-1', payload: { ...body, ready: false, metadata: { zone: 'a' } } });
    expect(res.statusCode).toBe(200);
    expect(res.json().instance).toMatchObject({ id: 'warehouse-1', ready: false, health: 'passing' });

    res = await app.inject({ url: '/v1/services/warehouse' });
    expect(res.json()).toMatchObject({ service: 'warehouse', endpoints: [] });

    res = await app.inject({ method: 'PUT', url: '/v1/instances/warehouse-1/ready', payload: { ready: true } });
    expect(res.statusCode).toBe(200);
    res = await app.inject({ url: '/v1/services/warehouse' });
    expect(res.json().endpoints).toEqual([{ service: 'warehouse', id: 'warehouse-1', address: '127.0.0.1:7001', version: '1.0.0', metadata: { zone: 'a' } }]);

    res = await app.inject({ method: 'PUT', url: '/v1/instances/warehouse-1/heartbeat' });
    expect(res.json()).toEqual({ ok: true });

    res = await app.inject({ url: '/v1/services' });
    expect(res.json().services.map((l: { service: string }) => l.service)).toEqual(['warehouse']);

    res = await app.inject({ method: 'DELETE', url: '/v1/instances/warehouse-1' });
    expect(res.json()).toEqual({ removed: true });
    res = await app.inject({ method: 'DELETE', url: '/v1/instances/warehouse-1' });
    expect(res.json()).toEqual({ removed: false });
    res = await app.inject({ url: '/v1/services/warehouse' });
    expect(res.json().endpoints).toEqual([]);
  });

  test('a heartbeat from an instance the registry does not know is a 404 telling it to register again', async () => {
    const { app } = server();
    const res = await app.inject({ method: 'PUT', url: '/v1/instances/ghost/heartbeat' });
    expect(res.statusCode).toBe(404);
    expect(res.json().error).toMatchObject({ code: 'EVOLITH_NOT_FOUND', message: expect.stringMatching(/register it again/) });
    const ready = await app.inject({ method: 'PUT', url: '/v1/instances/ghost/ready', payload: { ready: true } });
    expect(ready.statusCode).toBe(404);
  });

  test('invalid registrations are a 400 naming the problem', async () => {
    const { app } = server();
    let res = await app.inject({ method: 'PUT', url: '/v1/instances/w1', payload: { ...body, address: 'nowhere' } });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ code: 'EVOLITH_VALIDATION', message: expect.stringMatching(/address/) });
    res = await app.inject({ method: 'PUT', url: '/v1/instances/w1', payload: { ...body, extra: 1 } });
    expect(res.statusCode).toBe(400);
    res = await app.inject({ method: 'PUT', url: '/v1/instances/w1', headers: { 'content-type': 'application/json' }, payload: '{not json' });
    expect(res.statusCode).toBe(400);
  });

  test('GET /status lists instances with address, health, readiness, registered-at and last heartbeat', async () => {
    const s = server();
    await s.app.inject({ method: 'PUT', url: '/v1/instances/warehouse-1', payload: body });
    await s.app.inject({ method: 'PUT', url: '/v1/instances/warehouse-2', payload: { ...body, address: '127.0.0.1:7002', ready: false } });
    const status = (await s.app.inject({ url: '/status' })).json() as RegistryStatus;
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
    const s = await startRegistryServer({ registry, warmupMs: 600, pingIntervalMs: 50 });
    servers.push(s);
    const events: Array<{ event: string; data: any }> = [];
    let pings = 0;
    const req = http.get(`${s.url}/v1/watch?service=warehouse&service=orders`);
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
    const s = await startRegistryServer({ registry: new Registry({ sweepIntervalMs: 0 }) });
    const ended = new Promise<void>((resolve) => {
      http.get(`${s.url}/v1/watch`, (res) => {
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
