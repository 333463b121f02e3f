/**
 * The outbox keeps a key's events in order when the bus fails for a while: an event written
 * after an earlier one of its key failed waits for that one, even though it is due first.
 */
import { afterEach, expect, test, vi } from 'vitest';
import { eventually, Kit, silentLog } from '../../test/fixtures/unit-kit.js';
import { UnavailableError } from '../kernel/errors.js';
import type { EventBus, EventEnvelope } from '../kernel/plugins.js';
import { SqliteStorage } from '../storage/sqlite.js';
import { createEventTables, OutboxDispatcher, writeOutbox } from './outbox.js';
import { z } from 'zod';

const kit = new Kit();
afterEach(() => kit.cleanup());

/** A bus that refuses every publish while `down`, and records what it accepted, in order. */
class FlakyBus implements EventBus {
  readonly name = 'flaky';
  down = false;
  readonly accepted: string[] = [];
  refused = 0;
  subscribe(): () => void {
    return () => undefined;
  }
  async publish(e: EventEnvelope): Promise<void> {
    if (this.down) {
      this.refused++;
      throw new UnavailableError('bus down');
    }
    this.accepted.push((e.payload as { n: string }).n);
  }
  async close(): Promise<void> {}
}

const placed = { topic: 'orders.placed', schema: z.object({ n: z.string() }) } as never;

interface Dispatching {
  readonly dispatcher: OutboxDispatcher;
  /** Writes `[n, key?]` events to the outbox and tells the dispatcher. */
  write(...events: [n: string, key?: string][]): Promise<void>;
}

/** Runs `body` with a started dispatcher of a fresh outbox publishing to `bus`; stops and closes both after. */
async function withDispatcher(bus: EventBus, body: (d: Dispatching) => Promise<void>, beforeStart?: (dispatcher: OutboxDispatcher) => void): Promise<void> {
  const store = await new SqliteStorage(kit.tmp('outbox')).open('orders');
  try {
    await createEventTables(store.db);
    const dispatcher = new OutboxDispatcher(store.db, 'orders', bus, silentLog);
    beforeStart?.(dispatcher);
    dispatcher.start();
    try {
      await body({
        dispatcher,
        write: async (...events) => {
          await writeOutbox(
            store.db,
            events.map(([n, key]) => ({ event: placed, payload: { n }, ...(key === undefined ? {} : { key }) })),
          );
          dispatcher.notify(Date.now());
        },
      });
    } finally {
      await dispatcher.stop();
    }
  } finally {
    await store.close();
  }
}

test('an event written after an earlier one of its key failed is not delivered before it', async () => {
  const bus = new FlakyBus();
  await withDispatcher(bus, async ({ write }) => {
    bus.down = true;
    await write(['k-1', 'k'], ['other', 'x']);
    await eventually(() => expect(bus.refused).toBeGreaterThanOrEqual(2));
    // The bus is back; a new event of the same key is due now, the failed one only after its backoff.
    bus.down = false;
    await write(['k-2', 'k'], ['free']);
    await eventually(() => expect(bus.accepted).toContain('k-2'), 5_000);
    const k = bus.accepted.filter((n) => n.startsWith('k-'));
    expect(k).toEqual(['k-1', 'k-2']);
    // Events without a key, or of another key, were not held up by k.
    await eventually(() => expect(bus.accepted).toEqual(expect.arrayContaining(['free', 'other'])), 5_000);
  });
});

test('once an event gets through after the bus was down, the events that failed meanwhile go at once, not after their backoff', async () => {
  const bus = new FlakyBus();
  await withDispatcher(bus, async ({ write }) => {
    bus.down = true;
    await write(['k-1', 'k']);
    // Four failures: its next try is 0.5-1 s away.
    await eventually(() => expect(bus.refused).toBeGreaterThanOrEqual(4), 5_000);
    bus.down = false;
    const t0 = performance.now();
    await write(['free']);
    await eventually(() => expect(bus.accepted).toEqual(['free', 'k-1']), 2_000, 5);
    expect(performance.now() - t0).toBeLessThan(300);
  });
});

test('while a key waits behind a failed event, the dispatcher sleeps until that event is due instead of spinning', async () => {
  // Refuses k-1 (a plain error: backed off for seconds), takes everything else.
  const bus = new FlakyBus();
  const refuseFirst: EventBus = {
    name: 'refuses k-1',
    subscribe: () => () => undefined,
    publish: async (e) => {
      if ((e.payload as { n: string }).n === 'k-1') {
        bus.refused++;
        throw new Error('refused');
      }
      return bus.publish(e);
    },
    close: async () => undefined,
  };
  let passes!: { mock: { calls: unknown[] } };
  await withDispatcher(
    refuseFirst,
    async ({ write }) => {
      await write(['k-1', 'k']);
      await eventually(() => expect(bus.refused).toBe(1));
      await write(['k-2', 'k']);
      const before = passes.mock.calls.length;
      await new Promise((r) => setTimeout(r, 300));
      // k-2 is due but blocked: a pass or two, not one per millisecond.
      expect(passes.mock.calls.length - before).toBeLessThan(10);
      expect(bus.accepted).toEqual([]);
    },
    (dispatcher) => {
      passes = vi.spyOn(dispatcher as unknown as { dispatchDue: () => Promise<number> }, 'dispatchDue');
    },
  );
});
