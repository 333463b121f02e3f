import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { Kit, sleep } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import { ConfigError, TimeoutError, UnavailableError } from './errors.js';
import { assemble, Call, describePlacement, type Link, type Next, type Placement, type PlacementProvider, type Terminal } from './placement.js';
import { PolicyTable } from './policy-table.js';
import { implement } from './service.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

const stock = defineContract({
  name: 'stock',
  version: '1.0.0',
  methods: {
    level: { input: z.object({ sku: z.string().transform((s) => s.toUpperCase()) }), output: z.object({ n: z.number() }), idempotent: true, timeoutMs: 700 },
    nap: { input: z.object({ ms: z.number() }), output: z.null() },
  },
});
const shop = defineContract({
  name: 'shop',
  version: '1.0.0',
  methods: {
    check: { input: z.object({ sku: z.string() }), output: z.object({ n: z.number() }) },
    napInStock: { input: z.object({ ms: z.number() }), output: z.null() },
  },
});
const shopService = implement(shop, {
  dependsOn: [stock],
  handlers: {
    check: async ({ sku }, ctx) => ctx.client(stock).level({ sku }),
    napInStock: async ({ ms }, ctx) => ctx.client(stock).nap({ ms }),
  },
});
const stockService = implement(stock, {
  handlers: {
    level: async () => ({ n: 1 }),
    nap: async ({ ms }, ctx) => {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, ms);
        ctx.signal.addEventListener('abort', () => (clearTimeout(t), resolve()));
      });
      return null;
    },
  },
});

class Recording implements Terminal {
  readonly name = 'recording';
  readonly calls: Call[] = [];
  readonly sentAt: number[] = [];
  constructor(private readonly answer: (call: Call) => Promise<unknown> = async () => ({ n: 7 })) {}
  send(call: Call): Promise<unknown> {
    this.calls.push(call);
    this.sentAt.push(Date.now());
    return this.answer(call);
  }
}

/** A link that notes the order in which calls pass it. */
const tracing = (name: string, seen: string[]): Link => ({ name, wrap: (next: Next) => (call) => (seen.push(name), next(call)) });

function provider(placement: Placement, asked: string[] = []): PlacementProvider {
  return {
    placement(service) {
      asked.push(service);
      return placement;
    },
  };
}

describe('placement: the chain a deployer assembles per callee', () => {
  it('runs calls to a service hosted elsewhere through the links, in order, to the terminal, with the caller’s original input', async () => {
    const seen: string[] = [];
    const terminal = new Recording();
    const asked: string[] = [];
    const rt = await kit.start([shopService], { placement: provider({ links: [tracing('outer', seen), tracing('inner', seen)], terminal }, asked) });
    const out = await rt.client(shop, undefined, { caller: { subject: 'ann', roles: ['ROLE_USER'] } }).check({ sku: 'a-1' });
    expect(out).toEqual({ n: 7 });
    expect(seen).toEqual(['outer', 'inner']);
    const call = terminal.calls[0]!;
    expect(call.method.fullName).toBe('stock.level');
    // What crosses a wire is what the caller gave; the parsed form is for in-process handlers.
    expect(call.input).toEqual({ sku: 'a-1' });
    expect(call.parsed).toEqual({ sku: 'A-1' });
    expect(call.caller).toMatchObject({ subject: 'ann' });
    expect(call.from).toBe('shop');
    // The hop's deadline comes from the callee's contract (700 ms from when the handler called it).
    const budget = call.deadline - terminal.sentAt[0]!;
    expect(budget).toBeLessThanOrEqual(700);
    expect(budget).toBeGreaterThan(600);
    // Assembled once, on the first call: later calls reuse it.
    await rt.client(shop).check({ sku: 'b' });
    await rt.client(shop).check({ sku: 'c' });
    expect(asked).toEqual(['stock']);
    expect(seen).toHaveLength(6);
  });

  it('gives hosted services no links: the terminal is the local host', async () => {
    const terminal = new Recording();
    const rt = await kit.start([shopService, stockService], { placement: provider({ links: [], terminal }) });
    await expect(rt.client(shop).check({ sku: 'x' })).resolves.toEqual({ n: 1 });
    expect(terminal.calls).toHaveLength(0);
  });

  it('names the callee as the origin of a failure raised on the way to it, and keeps an origin the callee gave', async () => {
    const down = new Recording(async () => {
      throw new UnavailableError('no instance of stock is registered');
    });
    const rt = await kit.start([shopService], { placement: provider({ links: [], terminal: down }) });
    const err = await rt.client(shop).check({ sku: 'x' }).catch((e) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    // Not "shop.check": a caller of shop must not blame shop for a dead stock service.
    expect(err.origin).toBe('stock.level');

    const deeper = new Recording(async () => {
      throw Object.assign(new UnavailableError('inner'), { origin: 'ledger.post' });
    });
    const rt2 = await kit.start([shopService], { placement: provider({ links: [], terminal: deeper }) });
    expect((await rt2.client(shop).check({ sku: 'x' }).catch((e) => e)).origin).toBe('ledger.post');
  });

  it('applies a live policy edit to the very next call, between services of the same process too', async () => {
    const policies = new PolicyTable({});
    const rt = await kit.start([shopService, stockService], { policies });
    await expect(rt.client(shop).napInStock({ ms: 150 })).resolves.toBeNull();
    policies.set({ 'stock.nap': { timeoutMs: 40 } });
    const started = Date.now();
    await expect(rt.client(shop).napInStock({ ms: 2_000 })).rejects.toBeInstanceOf(TimeoutError);
    expect(Date.now() - started).toBeLessThan(1_000);
    policies.set({});
    await sleep(1);
    await expect(rt.client(shop).napInStock({ ms: 100 })).resolves.toBeNull();
  });

  it('without a placement, a dependency that is not hosted here is a ConfigError', () => {
    expect(() => kit.runtime([shopService])).toThrow(ConfigError);
  });

  it('a call to a service nobody hosts is EVOLITH_UNAVAILABLE', async () => {
    const rt = kit.runtime([stockService]);
    await rt.start();
    await expect(rt.client(shop).check({ sku: 'x' })).rejects.toBeInstanceOf(UnavailableError);
  });

  it('assembles the first link outermost and names the chain', async () => {
    const seen: string[] = [];
    const terminal = new Recording();
    const placement = { links: [tracing('a', seen), tracing('b', seen), tracing('c', seen)], terminal };
    const run = assemble(placement);
    await run(new Call(stock.methods.level, { sku: 'q' }, { sku: 'Q' }, Date.now() + 1000, { traceId: 't', spanId: 's', sampled: true }, undefined, undefined));
    expect(seen).toEqual(['a', 'b', 'c']);
    expect(describePlacement(placement)).toBe('a → b → c → recording');
  });
});
