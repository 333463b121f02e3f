import { afterEach, describe, expect, test } from 'vitest';
import { InstanceAgent } from './instance-agent.js';
import { Registry } from './registry.js';
import { RegistryClient } from './registry-client.js';
import { RegistryServer, startRegistryServer, type RegistryServerOptions } from './registry-server.js';
import { authority } from '../../test/fixtures/plane-kit.js';

const worker = authority.issue({ sub: 'warehouse', svc: ['warehouse'], ins: Array.from({ length: 10 }, (_, n) => `warehouse-${n}`) });

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function registry(options: Partial<RegistryServerOptions> & { port?: number } = {}): Promise<RegistryServer> {
  const s = await startRegistryServer({ trust: authority.trust, registry: new Registry({ sweepIntervalMs: 20, defaultTtlMs: 300 }), pingIntervalMs: 200, ...options });
  cleanups.push(() => s.close());
  return s;
}

function client(url: string, services?: string[]): RegistryClient {
  const c = new RegistryClient({ url, token: worker.token, services, reconnectInitialMs: 20, reconnectMaxMs: 100 }).start();
  cleanups.push(() => c.close());
  return c;
}

function agent(url: string, n: number, options: Partial<ConstructorParameters<typeof InstanceAgent>[0]> = {}): InstanceAgent {
  const a = new InstanceAgent({
    url,
    token: worker.token,
    instance: { id: `warehouse-${n}`, service: 'warehouse', version: '1.0.0', address: `127.0.0.1:${7000 + n}` },
    ttlMs: 300,
    heartbeatMs: 50,
    ...options,
  });
  cleanups.push(() => a.stop({ deregister: false }));
  return a;
}

const ids = (c: RegistryClient, service = 'warehouse') => c.endpoints(service).map((e) => e.id);

describe('RegistryClient', () => {
  test('syncs from the watch stream and tells watchers about every change', async () => {
    const s = await registry();
    s.registry.register({ id: 'warehouse-1', service: 'warehouse', version: '1', address: '127.0.0.1:7001', ttlMs: 60_000 });
    const c = client(s.url!);
    expect(await c.whenSynced()).toBe(true);
    expect(ids(c)).toEqual(['warehouse-1']);
    const seen: string[][] = [];
    c.watch('warehouse', (l) => seen.push(l.map((e) => e.id)));
    s.registry.register({ id: 'warehouse-2', service: 'warehouse', version: '1', address: '127.0.0.1:7002', ttlMs: 60_000 });
    await until(() => seen.length === 1);
    s.registry.deregister('warehouse-1');
    await until(() => seen.length === 2);
    expect(seen).toEqual([['warehouse-1', 'warehouse-2'], ['warehouse-2']]);
    expect(c.status()).toMatchObject({ connected: true, bootId: s.bootId, services: { warehouse: 1 } });
  });

  test('keeps serving the last known list while the registry is down, and picks up changes after it restarts', async () => {
    let s = await registry({ warmupMs: 400 });
    const url = s.url!;
    const port = Number(new URL(url).port);
    const a1 = agent(url, 1);
    const a2 = agent(url, 2);
    expect(await a1.start()).toBe(true);
    expect(await a2.start()).toBe(true);
    const c = client(url);
    await c.whenSynced();
    await until(() => ids(c).length === 2);

    await s.close();
    await until(() => !c.connected);
    // Longer than the TTL and several reconnect attempts: the cache is all the client has.
    await sleep(400);
    expect(ids(c)).toEqual(['warehouse-1', 'warehouse-2']);
    expect(c.status().reconnects).toBeGreaterThan(1);

    // A new, empty registry on the same address; warehouse-2 died meanwhile, warehouse-3 is new.
    await a2.stop({ deregister: false });
    s = await registry({ port, warmupMs: 1_000 });
    const a3 = agent(url, 3);
    await a3.start();
    // During warm-up the client merges: warehouse-2 may still be alive and not re-registered yet.
    await until(() => c.connected && ids(c).includes('warehouse-3'));
    expect(c.status().bootId).toBe(s.bootId);
    await until(() => s.registry.endpoints('warehouse').some((e) => e.id === 'warehouse-1'), 2_000);
    expect(ids(c)).toContain('warehouse-2');
    // Once warm-up ends the registry's word is final: warehouse-2 never came back.
    await until(() => ids(c).join() === 'warehouse-1,warehouse-3', 3_000);
  });

  test('follows only the services it was asked for', async () => {
    const s = await registry();
    s.registry.register({ id: 'warehouse-1', service: 'warehouse', version: '1', address: '127.0.0.1:7001', ttlMs: 60_000 });
    s.registry.register({ id: 'orders-1', service: 'orders', version: '1', address: '127.0.0.1:7002', ttlMs: 60_000 });
    const c = client(s.url!, ['orders']);
    await c.whenSynced();
    expect(ids(c, 'orders')).toEqual(['orders-1']);
    expect(ids(c)).toEqual([]);
  });

  test('whenSynced reports false while no registry answers', async () => {
    const c = client('http://127.0.0.1:1');
    expect(await c.whenSynced(150)).toBe(false);
    expect(c.connected).toBe(false);
  });
});

describe('InstanceAgent', () => {
  test('heartbeats keep the instance alive past its TTL; readiness hides it; stop deregisters', async () => {
    const s = await registry();
    const a = agent(s.url!, 1, { ready: false });
    expect(await a.start()).toBe(true);
    expect(s.registry.instance('warehouse-1')).toMatchObject({ ready: false, health: 'passing', ttlMs: 300 });
    await sleep(600);
    expect(s.registry.instance('warehouse-1')).toMatchObject({ health: 'passing' });
    expect(await a.setReady(true)).toBe(true);
    expect(s.registry.endpoints('warehouse').map((e) => e.id)).toEqual(['warehouse-1']);
    await a.setReady(false);
    expect(s.registry.endpoints('warehouse')).toEqual([]);
    await a.stop();
    expect(s.registry.instance('warehouse-1')).toBeUndefined();
  });

  test('registers again when the registry forgets it, keeping its readiness', async () => {
    const s = await registry();
    const a = agent(s.url!, 1, { ready: false });
    await a.start();
    s.registry.deregister('warehouse-1');
    await until(() => s.registry.instance('warehouse-1') !== undefined);
    expect(s.registry.instance('warehouse-1')).toMatchObject({ ready: false });
  });

  test('starts without a registry and registers once one answers', async () => {
    const probe = await registry();
    const port = Number(new URL(probe.url!).port);
    await probe.close();
    const a = agent(probe.url!, 1);
    expect(await a.start()).toBe(false);
    const s = await registry({ port });
    await until(() => a.registered);
    expect(s.registry.endpoints('warehouse').map((e) => e.id)).toEqual(['warehouse-1']);
  });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(check: () => boolean, timeoutMs = 3_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(5);
  }
}
