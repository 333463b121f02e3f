import { afterEach, describe, expect, it } from 'vitest';
import { Kit } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import type { MethodDef } from '../contract/define.js';
import { z } from 'zod';
import { ConfigError, UnavailableError } from './errors.js';
import { LocalPolicy } from './local-plugins.js';
import type { CallMeta, Transport } from './plugins.js';
import { implement } from './service.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

const stock = defineContract({
  name: 'stock',
  version: '1.0.0',
  methods: { level: { input: z.object({ sku: z.string() }), output: z.object({ n: z.number() }), idempotent: true, timeoutMs: 700 } },
});
const shop = defineContract({
  name: 'shop',
  version: '1.0.0',
  methods: { check: { input: z.object({ sku: z.string() }), output: z.object({ n: z.number() }) } },
});
const shopService = implement(shop, {
  dependsOn: [stock],
  handlers: { check: async ({ sku }, ctx) => ctx.client(stock).level({ sku }) },
});

class RecordingTransport implements Transport {
  readonly name = 'recording';
  calls: { method: MethodDef; input: unknown; meta: CallMeta }[] = [];
  async invoke(method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown> {
    this.calls.push({ method, input, meta });
    return { n: 7 };
  }
}

describe('Runtime with services in other processes', () => {
  it('sends calls to services it does not host through the remote transport and policy', async () => {
    const remote = new RecordingTransport();
    let executed = 0;
    const policy = new LocalPolicy();
    const rt = kit.runtime([shopService], {
      remote: {
        transport: remote,
        policy: { timeoutFor: (m) => policy.timeoutFor(m), execute: (m, attempt, meta) => (executed++, attempt(meta)) },
      },
    });
    await rt.start();
    const before = Date.now();
    const out = await rt.client(shop, undefined, { caller: { subject: 'ann', roles: ['ROLE_USER'] } }).check({ sku: 'a-1' });
    expect(out).toEqual({ n: 7 });
    expect(executed).toBe(1);
    expect(remote.calls).toHaveLength(1);
    const call = remote.calls[0]!;
    expect(call.method.fullName).toBe('stock.level');
    expect(call.input).toEqual({ sku: 'a-1' });
    // The hop carries the caller, the calling service and a deadline from the callee's contract.
    expect(call.meta.caller).toMatchObject({ subject: 'ann' });
    expect(call.meta.from).toBe('shop');
    expect(call.meta.deadline).toBeGreaterThan(before);
    expect(call.meta.deadline).toBeLessThanOrEqual(Date.now() + 10_000);
  });

  it('without a remote transport, a dependency that is not hosted here is a ConfigError', () => {
    expect(() => kit.runtime([shopService])).toThrow(ConfigError);
  });

  it('a call to a service nobody hosts is EVOLITH_UNAVAILABLE', async () => {
    const rt = kit.runtime([implement(stock, { handlers: { level: async () => ({ n: 1 }) } })]);
    await rt.start();
    await expect(rt.client(shop).check({ sku: 'x' })).rejects.toBeInstanceOf(UnavailableError);
  });
});
