/**
 * The serverless platform's decisions with fake hooks: no process is started, every hook call is
 * recorded, and the supervisor's reports and the processes' messages are fed in by hand.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { InstanceInfo } from '../../discovery/registry.js';
import type { GateReport } from '../../serverless/gate.js';
import type { ServiceGroup } from '../microservices/groups.js';
import type { ProcessStatus } from '../supervisor.js';
import { loadTopology } from '../topology.js';
import { ACTIVATE, ACTIVATED, REPORT, SERVING, type ActivatedMessage } from './instance.js';
import { ServerlessPlatform, type PlatformHooks } from './platform.js';

const dir = mkdtempSync(join(tmpdir(), 'evolith-platform-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const groups: ServiceGroup[] = [
  { name: 'orders', services: ['orders'], replicas: 1 },
  { name: 'shop', services: ['catalog', 'cart'], replicas: 1 },
];

type Call = [hook: keyof PlatformHooks, ...args: unknown[]];

/** Hooks that do nothing but remember how they were called. */
function fakeHooks(): PlatformHooks & { calls: Call[]; of(hook: keyof PlatformHooks): unknown[][] } {
  const calls: Call[] = [];
  const record =
    (hook: keyof PlatformHooks) =>
    (...args: unknown[]): void => {
      calls.push([hook, ...args]);
    };
  return {
    calls,
    of: (hook) => calls.filter((c) => c[0] === hook).map((c) => c.slice(1)),
    spawnInstance: record('spawnInstance'),
    spawnPool: record('spawnPool'),
    takeOn: record('takeOn'),
    stop: async (...args: unknown[]) => void calls.push(['stop', ...args]),
    register: record('register'),
    deregister: record('deregister'),
    send: (...args: unknown[]) => {
      calls.push(['send', ...args]);
      return true;
    },
  };
}

const info = (service: string, id: string): InstanceInfo => ({ id, service, version: '1.0.0', address: '127.0.0.1:7000' });

function status(name: string, replica: number, over: Partial<ProcessStatus>): ProcessStatus {
  return { name, replica, pid: undefined, state: 'running', restarts: 0, startedAt: 1, lastExit: undefined, lastLines: [], ...over };
}

const gate = (over: Partial<GateReport>): GateReport => ({ concurrency: 0, inFlight: 0, invocations: 0, billedMs: 0, coldStarts: 0, refused: 0, ...over });

let platform: ServerlessPlatform | undefined;
afterEach(async () => {
  await platform?.stop();
  platform = undefined;
});

/** orders scales from zero (no initial instance); shop keeps two; two pool runtimes wait. */
function setUp() {
  const topology = loadTopology(dir, {
    architecture: 'serverless',
    set: ['serverless.initialInstances=0', 'serverless.pool=2', 'serverless.functions.shop.minInstances=2', 'serverless.functions.shop.memoryMb=512'],
  });
  platform = ServerlessPlatform.create(groups, topology, pino({ level: 'silent' }));
  const hooks = fakeHooks();
  platform.begin(hooks);
  return { p: platform, hooks };
}

const activate = (p: ServerlessPlatform, id: number, service: string) => p.onMessage('edge', 0, { type: ACTIVATE, id, service });

describe('ServerlessPlatform', () => {
  it('starts the initial instances of each function and the pool runtimes', () => {
    const { p, hooks } = setUp();
    expect(hooks.of('spawnInstance')).toEqual([
      ['shop', 0, { EVOLITH_SERVERLESS: JSON.stringify(p.role('shop')) }, 512],
      ['shop', 1, { EVOLITH_SERVERLESS: JSON.stringify(p.role('shop')) }, 512],
    ]);
    expect(hooks.of('spawnPool')).toEqual([[0], [1]]);
    expect(hooks.of('takeOn')).toEqual([]);
    const s = p.status();
    expect(s.pool).toEqual({ size: 2, waiting: [0, 1] });
    expect(s.functions.find((f) => f.name === 'orders')!.instances).toEqual([]);
    expect(s.functions.find((f) => f.name === 'shop')!.instances.map((i) => [i.name, i.state, i.cause, i.fromPool])).toEqual([
      ['shop#0', 'starting', 'initial', false],
      ['shop#1', 'starting', 'initial', false],
    ]);
  });

  it('activates a function at zero from the pool, once, and answers the caller', () => {
    const { p, hooks } = setUp();
    activate(p, 7, 'orders');
    expect(hooks.of('takeOn')).toEqual([[0, 'orders', 0, p.role('orders'), 256]]);
    expect(hooks.of('send')).toEqual([['edge', 0, { type: ACTIVATED, id: 7 }]]);
    expect(p.status().pool.waiting).toEqual([1]);
    // A second caller while the instance starts: answered, nothing more started.
    activate(p, 8, 'orders');
    expect(hooks.of('takeOn')).toHaveLength(1);
    expect(hooks.of('spawnInstance')).toHaveLength(2);
    expect(hooks.of('send')[1]).toEqual(['edge', 0, { type: ACTIVATED, id: 8 }]);
    const orders = p.status().functions.find((f) => f.name === 'orders')!;
    expect(orders.instances).toMatchObject([{ name: 'orders#0', state: 'starting', cause: 'activation', fromPool: true }]);
  });

  it('answers an activation for an unknown service with a typed error', () => {
    const { p, hooks } = setUp();
    activate(p, 3, 'nowhere');
    const answer = hooks.of('send')[0]![2] as ActivatedMessage;
    expect(answer).toMatchObject({ type: ACTIVATED, id: 3, error: { code: 'EVOLITH_UNAVAILABLE' } });
    expect(hooks.of('takeOn')).toEqual([]);
  });

  it('registers what an instance announces for its own services and slot, and starts the pool runtime behind it', () => {
    const { p, hooks } = setUp();
    activate(p, 1, 'orders');
    const announced = [info('orders', 'orders-0')];
    p.onMessage('orders', 0, { type: SERVING, initMs: 12.4, instances: announced });
    expect(hooks.of('register')).toEqual([['orders#0', announced]]);
    expect(p.status().functions.find((f) => f.name === 'orders')!.instances).toMatchObject([{ name: 'orders#0', state: 'ready', initMs: 12 }]);
    // The pool is back to its size: runtime 2 replaces the one orders#0 took over.
    expect(hooks.of('spawnPool')).toEqual([[0], [1], [2]]);
    expect(p.status().pool.waiting).toEqual([1, 2]);
  });

  it("refuses and stops an instance that announces another function's service or another slot's id", () => {
    const { p, hooks } = setUp();
    // shop#0 claims to serve orders: calls for orders would reach it.
    p.onMessage('shop', 0, { type: SERVING, initMs: 5, instances: [info('orders', 'orders-0')] });
    // shop#1 claims the id of shop#0's catalog.
    p.onMessage('shop', 1, { type: SERVING, initMs: 5, instances: [info('catalog', 'catalog-0'), info('cart', 'cart-1')] });
    expect(hooks.of('register')).toEqual([]);
    expect(hooks.of('stop')).toEqual([
      ['shop', 0],
      ['shop', 1],
    ]);
    // Its own services with its own ids are accepted, for comparison.
    activate(p, 1, 'orders');
    p.onMessage('orders', 0, { type: SERVING, initMs: 5, instances: [info('orders', 'orders-0')] });
    expect(hooks.of('register')).toHaveLength(1);
  });

  it('shows an instance killed for its memory as the last kill, and forgets it', async () => {
    const { p, hooks } = setUp();
    activate(p, 1, 'orders');
    p.onMessage('orders', 0, { type: SERVING, initMs: 5, instances: [info('orders', 'orders-0')] });
    p.onChange(status('orders', 0, { state: 'exited', lastExit: { code: null, signal: 'SIGKILL', at: 4242, reason: 'memory', memoryMb: 300 } }));
    const orders = p.status().functions.find((f) => f.name === 'orders')!;
    expect(orders.lastKill).toEqual({ at: 4242, instance: 'orders#0', reason: 'resident memory 300 MB over its limit of 256 MB' });
    expect(orders.instances).toEqual([]);
    expect(hooks.of('deregister')).toContainEqual(['orders#0', ['orders-0']]);
    expect(hooks.of('stop')).toContainEqual(['orders', 0]);
  });

  it('refuses later activations of a function whose instance cannot start, naming why', () => {
    const { p, hooks } = setUp();
    activate(p, 1, 'orders');
    p.onChange(status('orders', 0, { state: 'failed', lastExit: { code: 78, signal: null, at: 1 }, lastLines: ['starting', 'evolith: database orders.db is locked'] }));
    const orders = p.status().functions.find((f) => f.name === 'orders')!;
    expect(orders.broken).toBe('database orders.db is locked');
    expect(orders.instances).toEqual([]);
    activate(p, 2, 'orders');
    const answer = hooks.of('send').at(-1)![2] as ActivatedMessage;
    expect(answer.id).toBe(2);
    expect(answer.error).toMatchObject({ code: 'EVOLITH_UNAVAILABLE' });
    expect(answer.error!.message).toContain('orders cannot start: database orders.db is locked');
    // Nothing was started for the refused activation.
    expect(hooks.of('takeOn')).toHaveLength(1);
    expect(hooks.of('spawnInstance')).toHaveLength(2);
  });

  it("meters what instances report, priced as invocations × $0.20/M plus GB-seconds at the function's memory", () => {
    const { p } = setUp();
    activate(p, 1, 'orders');
    p.onMessage('orders', 0, { type: SERVING, initMs: 5, instances: [info('orders', 'orders-0')] });
    p.onMessage('shop', 0, { type: SERVING, initMs: 5, instances: [info('catalog', 'catalog-0'), info('cart', 'cart-0')] });
    p.onMessage('orders', 0, { type: REPORT, held: {}, gate: gate({ invocations: 1200, billedMs: 30_500, coldStarts: 1, concurrency: 2.5, inFlight: 5 }) });
    p.onMessage('orders', 0, { type: REPORT, held: {}, gate: gate({ invocations: 800, billedMs: 9_500, concurrency: 3.2, inFlight: 3 }) });
    p.onMessage('shop', 0, { type: REPORT, held: {}, gate: gate({ invocations: 10, billedMs: 2_000, coldStarts: 1 }) });
    // A report of nothing adds nothing.
    p.onMessage('shop', 0, { type: REPORT, held: {}, gate: gate({}) });

    const { report } = p.metering();
    const orders = report.functions.find((f) => f.fn === 'orders')!;
    const shop = report.functions.find((f) => f.fn === 'shop')!;
    expect(orders).toMatchObject({ invocations: 2000, billedMs: 40_000, coldStarts: 1, memoryMb: 256 });
    expect(shop).toMatchObject({ invocations: 10, billedMs: 2_000, coldStarts: 1, memoryMb: 512 });
    const cost = (invocations: number, billedMs: number, memoryMb: number) =>
      (invocations * 0.2) / 1e6 + ((billedMs * memoryMb) / 1024 / 1000) * 0.0000166667;
    expect(orders.cost).toBeCloseTo(cost(2000, 40_000, 256), 12);
    expect(shop.cost).toBeCloseTo(cost(10, 2_000, 512), 12);
    expect(report.total.cost).toBeCloseTo(cost(2000, 40_000, 256) + cost(10, 2_000, 512), 12);
    // In flight now: from the latest report.
    expect(p.status().functions.find((f) => f.name === 'orders')!.concurrency).toBe(3);
  });
  it('meters a function resized by a topology change apart, without failing on the reports of either size', () => {
    const { p, hooks } = setUp();
    activate(p, 1, 'orders');
    p.onMessage('orders', 0, { type: SERVING, initMs: 5, instances: [info('orders', 'orders-0')] });
    p.onMessage('orders', 0, { type: REPORT, held: {}, gate: gate({ invocations: 100, billedMs: 1_000 }) });
    const resized = loadTopology(dir, {
      architecture: 'serverless',
      set: ['serverless.initialInstances=0', 'serverless.pool=2', 'serverless.functions.shop.minInstances=2', 'serverless.functions.shop.memoryMb=512', 'serverless.functions.orders.memoryMb=1024'],
    });
    p.reconfigure(resized, groups);
    // The instance started at 256 MB keeps reporting; it is billed at its own size.
    p.onMessage('orders', 0, { type: REPORT, held: {}, gate: gate({ invocations: 50, billedMs: 500 }) });
    // It is killed over the limit it runs under (256 MB, not the new size); the next one
    // starts at the new size and is billed at it.
    p.onChange(status('orders', 0, { state: 'exited', lastExit: { code: null, signal: 'SIGKILL', at: 1, reason: 'memory', memoryMb: 300 } }));
    expect(p.status().functions.find((f) => f.name === 'orders')!.lastKill?.reason).toBe('resident memory 300 MB over its limit of 256 MB');
    activate(p, 2, 'orders');
    expect(hooks.of('takeOn').at(-1)).toEqual([1, 'orders', 1, p.role('orders'), 1024]);
    p.onMessage('orders', 1, { type: SERVING, initMs: 5, instances: [info('orders', 'orders-1')] });
    p.onMessage('orders', 1, { type: REPORT, held: {}, gate: gate({ invocations: 10, billedMs: 200, coldStarts: 1 }) });

    const { report } = p.metering();
    const rows = report.functions.filter((f) => f.fn.startsWith('orders'));
    expect(rows.map((f) => [f.fn, f.memoryMb, f.invocations, f.billedMs, f.coldStarts])).toEqual([
      ['orders', 256, 150, 1_500, 0],
      ['orders@1024MB', 1024, 10, 200, 1],
    ]);
    expect(report.total.invocations).toBe(160);
  });
  it('ignores malformed reports instead of failing on them, and keeps its figures sound', () => {
    const { p } = setUp();
    activate(p, 1, 'orders');
    p.onMessage('orders', 0, { type: SERVING, initMs: 5, instances: [info('orders', 'orders-0')] });
    const bad: unknown[] = [
      { type: REPORT },
      { type: REPORT, held: null },
      { type: REPORT, held: { orders: 'many' } },
      { type: REPORT, held: { orders: -5 } },
      { type: REPORT, held: {}, gate: gate({ invocations: 1.5, billedMs: 2 }) },
      { type: REPORT, held: {}, gate: gate({ invocations: 1, billedMs: -100 }) },
      { type: REPORT, held: {}, gate: gate({ invocations: 1, billedMs: 5, coldStarts: 2 }) },
      { type: REPORT, held: {}, gate: { ...gate({}), inFlight: 'x' } },
      { type: REPORT, held: {}, gate: 'nothing' },
    ];
    for (const m of bad) {
      expect(() => p.onMessage('orders', 0, m)).not.toThrow();
      expect(() => p.onMessage('edge', 0, m)).not.toThrow();
    }
    const orders = p.status().functions.find((f) => f.name === 'orders')!;
    expect(orders.held).toBe(0);
    expect(orders.concurrency).toBe(0);
    expect(p.metering().report.functions.find((f) => f.fn === 'orders')).toMatchObject({ invocations: 0, billedMs: 0 });
    // A sound report after them is taken as usual.
    p.onMessage('edge', 0, { type: REPORT, held: { orders: 4 } });
    p.onMessage('orders', 0, { type: REPORT, held: {}, gate: gate({ invocations: 3, billedMs: 30, inFlight: 2 }) });
    expect(p.status().functions.find((f) => f.name === 'orders')).toMatchObject({ held: 4, concurrency: 2 });
    expect(p.metering().report.functions.find((f) => f.fn === 'orders')).toMatchObject({ invocations: 3, billedMs: 30 });
  });
  it('refuses and stops an instance whose announcement is malformed, without failing on it', () => {
    const { p, hooks } = setUp();
    const malformed: unknown[] = [
      { type: SERVING, initMs: 5 },
      { type: SERVING, initMs: 5, instances: 'catalog-0' },
      { type: SERVING, initMs: 5, instances: [null] },
    ];
    expect(() => p.onMessage('shop', 0, malformed[0])).not.toThrow();
    expect(() => p.onMessage('shop', 1, malformed[1])).not.toThrow();
    activate(p, 1, 'orders');
    expect(() => p.onMessage('orders', 0, malformed[2])).not.toThrow();
    expect(hooks.of('register')).toEqual([]);
    expect(hooks.of('stop')).toEqual([
      ['shop', 0],
      ['shop', 1],
      ['orders', 0],
    ]);
  });
});
