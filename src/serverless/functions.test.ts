/**
 * Function settings as the topology gives them: the platform's defaults, `serverless.defaults`
 * under each function's own section, the derived queue limit, and every problem reported at once.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { ServiceGroup } from '../deploy/microservices/groups.js';
import { loadTopology } from '../deploy/topology.js';
import { ConfigError } from '../kernel/errors.js';
import { DEFAULT_SCALING } from './autoscaler.js';
import { functionConfigs } from './functions.js';

const dir = mkdtempSync(join(tmpdir(), 'evolith-functions-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const groups: ServiceGroup[] = [
  { name: 'orders', services: ['orders'], replicas: 1 },
  { name: 'shop', services: ['catalog', 'cart'], replicas: 1 },
];

const topology = (...set: string[]) => loadTopology(dir, { architecture: 'serverless', set });

describe('functionConfigs', () => {
  it('fills in the platform defaults', () => {
    const [orders, shop] = functionConfigs(groups, topology());
    expect(orders).toEqual({
      ...DEFAULT_SCALING,
      name: 'orders',
      services: ['orders'],
      memoryMb: 256,
      maxConcurrency: 100,
      queueLimit: 1000,
      targetConcurrency: 70,
      timeoutMs: 30_000,
      minInstances: 0,
      maxInstances: 10,
    });
    expect(shop).toMatchObject({ name: 'shop', services: ['catalog', 'cart'], memoryMb: 256, stableWindowMs: DEFAULT_SCALING.stableWindowMs });
  });

  it('takes serverless.defaults, under each function section, and derives the queue limit and target', () => {
    const configs = functionConfigs(
      groups,
      topology(
        'serverless.defaults.memoryMb=512',
        'serverless.defaults.maxConcurrency=4',
        'serverless.defaults.timeoutMs=2000',
        'serverless.defaults.stableWindowMs=20000',
        'serverless.functions.orders.memoryMb=128',
        'serverless.functions.orders.maxConcurrency=20',
        'serverless.functions.orders.minInstances=1',
        'serverless.functions.orders.panicWindowMs=3000',
      ),
    );
    const orders = configs.find((c) => c.name === 'orders')!;
    const shop = configs.find((c) => c.name === 'shop')!;
    expect(orders).toMatchObject({
      memoryMb: 128,
      maxConcurrency: 20,
      queueLimit: 200,
      targetConcurrency: 14,
      timeoutMs: 2000,
      minInstances: 1,
      stableWindowMs: 20_000,
      panicWindowMs: 3000,
    });
    expect(shop).toMatchObject({
      memoryMb: 512,
      maxConcurrency: 4,
      queueLimit: 40,
      targetConcurrency: 2,
      timeoutMs: 2000,
      minInstances: 0,
      stableWindowMs: 20_000,
      // Not set anywhere: a tenth of the stable window, as Knative's panic-window-percentage.
      panicWindowMs: 2000,
    });
  });

  it('reports every problem at once, each with its path', () => {
    const t = topology(
      'serverless.functions.billing.memoryMb=128',
      'serverless.functions.orders.maxConcurrency=10',
      'serverless.functions.orders.targetConcurrency=20',
      'serverless.functions.shop.stableWindowMs=5000',
      'serverless.functions.shop.panicWindowMs=5000',
      'serverless.functions.shop.minInstances=4',
      'serverless.functions.shop.maxInstances=2',
    );
    let error: unknown;
    try {
      functionConfigs(groups, t);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = ((error as ConfigError).details as { problems: string[] }).problems;
    expect(problems).toHaveLength(4);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^serverless\.functions\.billing: no function .*functions: orders, shop$/),
        expect.stringMatching(/^serverless\.functions\.orders: targetConcurrency \(20\) is above maxConcurrency \(10\)/),
        expect.stringMatching(/^serverless\.functions\.shop: panicWindowMs \(5000\) must be shorter than stableWindowMs \(5000\)/),
        expect.stringMatching(/^serverless\.functions\.shop: maxInstances \(2\) is below minInstances \(4\)/),
      ]),
    );
    for (const p of problems) expect((error as Error).message).toContain(p);
  });
});
