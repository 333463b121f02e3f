import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { sleep } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import { TimeoutError, UnavailableError, ConfigError } from '../kernel/errors.js';
import { assemble, Call, type Next } from '../kernel/placement.js';
import type { Endpoint } from '../kernel/plugins.js';
import { newTrace } from '../kernel/trace.js';
import { ActivateLink, type Activator, type WatchedDiscovery } from './activate-link.js';

const fn = defineContract({ name: 'thumbs', version: '1.0.0', methods: { make: { input: z.object({ n: z.number() }), output: z.object({ n: z.number() }) } } });

/** Discovery whose endpoints the test sets, telling watchers as the registry client does. */
class FakeDiscovery implements WatchedDiscovery {
  list: Endpoint[] = [];
  private readonly listeners = new Set<(e: readonly Endpoint[]) => void>();
  endpoints(): readonly Endpoint[] {
    return this.list;
  }
  watch(_service: string, onChange: (e: readonly Endpoint[]) => void): () => void {
    this.listeners.add(onChange);
    return () => this.listeners.delete(onChange);
  }
  set(list: Endpoint[]): void {
    this.list = list;
    for (const l of this.listeners) l(list);
  }
  get watchers(): number {
    return this.listeners.size;
  }
}

const instance: Endpoint = { service: 'thumbs', id: 'thumbs-0', address: '127.0.0.1:7001' };

function call(n: number, deadlineMs = 5_000): Call {
  return new Call(fn.methods.make, { n }, { n }, Date.now() + deadlineMs, newTrace(), undefined, 'gallery');
}

function chain(discovery: FakeDiscovery, activator: Activator, options = {}) {
  const link = new ActivateLink('thumbs', discovery, activator, options);
  const delivered: number[] = [];
  const terminal = { name: 'record', send: async (c: Call) => (delivered.push((c.input as { n: number }).n), { n: (c.input as { n: number }).n, at: c.endpoint }) };
  const next: Next = assemble({ links: [link], terminal });
  return { link, next, delivered };
}

describe('the activate link', () => {
  it('passes a call straight through while the service has an instance, asking for nothing', async () => {
    const d = new FakeDiscovery();
    d.list = [instance];
    let asked = 0;
    const { next, link } = chain(d, { activate: async () => void asked++ });
    expect(await next(call(1))).toMatchObject({ n: 1 });
    expect(asked).toBe(0);
    expect(link.held).toBe(0);
    expect(d.watchers).toBe(0);
  });

  it('at zero, holds a burst of 200 calls, asks for one instance once, and delivers every call when it shows', async () => {
    const d = new FakeDiscovery();
    const asked: string[] = [];
    const { next, link, delivered } = chain(d, { activate: async (s) => void asked.push(s) });
    const calls = Array.from({ length: 200 }, (_, i) => next(call(i)));
    await sleep(20);
    expect(link.held).toBe(200);
    expect(asked).toEqual(['thumbs']);
    expect(delivered).toEqual([]);
    d.set([instance]);
    const answers = await Promise.all(calls);
    expect(answers.map((a) => (a as { n: number }).n)).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect(delivered).toHaveLength(200);
    expect(link.held).toBe(0);
    expect(d.watchers).toBe(0);
  });

  it('a held call fails with EVOLITH_TIMEOUT at its own deadline; the others keep waiting', async () => {
    const d = new FakeDiscovery();
    const { next, link } = chain(d, { activate: async () => undefined });
    const short = next(call(1, 100));
    const long = next(call(2, 5_000));
    const err = await short.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as Error).message).toContain('no instance of thumbs started');
    expect(link.held).toBe(1);
    d.set([instance]);
    expect(await long).toMatchObject({ n: 2 });
  });

  it('refuses a call at once, as surely not run, when the hold queue is full', async () => {
    const d = new FakeDiscovery();
    const { next, link } = chain(d, { activate: async () => undefined }, { maxHeld: 5 });
    const held = Array.from({ length: 5 }, (_, i) => next(call(i)));
    const refused = await next(call(9)).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(UnavailableError);
    expect((refused as UnavailableError).details).toMatchObject({ maybeExecuted: false });
    expect(link.held).toBe(5);
    d.set([instance]);
    await Promise.all(held);
  });

  it("the platform's refusal reaches every held call with its type", async () => {
    const d = new FakeDiscovery();
    const { next, link } = chain(d, { activate: async () => Promise.reject(new ConfigError('thumbs may run at most 0 instances')) });
    const results = await Promise.all([next(call(1)), next(call(2))].map((p) => p.catch((e: unknown) => e)));
    for (const r of results) expect(r).toBeInstanceOf(ConfigError);
    expect(link.held).toBe(0);
  });

  it('asks again while calls wait and no instance shows (one that crashed while starting is replaced)', async () => {
    const d = new FakeDiscovery();
    let asked = 0;
    const { next, link } = chain(d, { activate: async () => void asked++ }, { reaskMs: 50 });
    const p = next(call(1, 2_000));
    await sleep(180);
    expect(asked).toBeGreaterThanOrEqual(3);
    expect(link.activations).toBe(asked);
    d.set([instance]);
    await p;
    const before = asked;
    await sleep(120);
    expect(asked).toBe(before);
  });

  it('with a capacity, lets through at most capacity × instances calls at once; the rest are held (as demand) and go, in order, as calls end or instances appear', async () => {
    const d = new FakeDiscovery();
    d.list = [instance];
    let asked = 0;
    const link = new ActivateLink('thumbs', d, { activate: async () => void asked++ }, { capacity: 3 });
    const release: (() => void)[] = [];
    const started: number[] = [];
    const terminal = {
      name: 'slow',
      send: (c: Call) =>
        new Promise((resolve) => {
          started.push((c.input as { n: number }).n);
          release.push(() => resolve({ n: (c.input as { n: number }).n }));
        }),
    };
    const next = assemble({ links: [link], terminal });
    const calls = Array.from({ length: 10 }, (_, i) => next(call(i)));
    await sleep(20);
    expect(started).toEqual([0, 1, 2]);
    expect(link.held).toBe(7);
    release.shift()!();
    await sleep(20);
    expect(started).toEqual([0, 1, 2, 3]);
    expect(link.held).toBe(6);
    // A second instance: room for three more at once.
    d.set([instance, { ...instance, id: 'thumbs-1', address: '127.0.0.1:7002' }]);
    await sleep(20);
    expect(started).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(link.held).toBe(3);
    while (started.length < 10 || release.length > 0) {
      release.shift()?.();
      await sleep(5);
    }
    expect((await Promise.all(calls)).map((a) => (a as { n: number }).n)).toEqual(Array.from({ length: 10 }, (_, i) => i));
    expect(link.held).toBe(0);
    // Waiting for room is not waiting for an instance: the platform was never asked.
    expect(asked).toBe(0);
    expect(d.watchers).toBe(0);
  });
});
