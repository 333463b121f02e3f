import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { eventually, Kit } from '../../test/fixtures/unit-kit.js';
import { defineContract } from '../contract/define.js';
import { eventBacklog, type BacklogSource } from '../deploy/event-backlog.js';
import { NatsEventBus } from '../events/nats-bus.js';
import { sqlOutbox } from '../events/outbox.js';
import { SqliteEventBus } from '../events/sqlite-bus.js';
import type { OutboxStore } from '../kernel/plugins.js';
import { implement } from '../kernel/service.js';
import { nextWakeups } from './wakeups.js';
import { SHARED_NATS, sharedNatsUnreachable } from '../../test/support/nats-server.js';

const NATS = SHARED_NATS;

const natsSkip = await sharedNatsUnreachable();
if (natsSkip) console.warn(`[wakeups] skipping the NATS case: ${natsSkip}`);

const kit = new Kit();
const streams: string[] = [];
afterEach(async () => {
  await kit.cleanup();
  for (const stream of streams.splice(0)) {
    const nc = await connect({ servers: NATS });
    await (await jetstreamManager(nc)).streams.delete(stream).catch(() => undefined);
    await nc.close();
  }
});

const clock = defineContract({
  name: 'clock',
  version: '1',
  methods: {
    remind: { input: z.object({ inMs: z.number() }), output: z.number() },
    announce: { input: z.object({ id: z.string() }), output: z.null() },
  },
  events: { tick: z.object({ at: z.number() }), announced: z.object({ id: z.string() }) },
});
const mailer = defineContract({ name: 'mailer', version: '1', methods: {} });
const idle = defineContract({ name: 'idle', version: '1', methods: {} });

const clockService = implement(clock, {
  handlers: {
    async remind({ inMs }, ctx) {
      const at = Date.now() + inMs;
      await ctx.schedule(clock.events.tick, { at }, at);
      return at;
    },
    async announce({ id }, ctx) {
      await ctx.emit(clock.events.announced, { id });
      return null;
    },
  },
});
const mailed: string[] = [];
const mailerService = implement(mailer, { handlers: {} }).on(clock.events.announced, async ({ id }) => {
  mailed.push(id);
});
const idleService = implement(idle, { handlers: {} });

/** The outbox as every worker keeps it, but whose rows nothing hands to the bus: an instance stopped before it could. */
const unsentOutbox: OutboxStore = { ...sqlOutbox, dispatcher: () => ({ start() {}, notify() {}, async stop() {} }) };

const source = (data: string, services: string[]): BacklogSource => ({ data, storage: 'sqlite', events: 'sqlite', services });
const bus = (data: string) => new SqliteEventBus(join(data, 'events.sqlite'), { pollIntervalMs: 20 });

describe('nextWakeups', () => {
  it('wakes a service at its durable timer, counting only what is due by then; idle and unknown services are absent', async () => {
    const data = kit.tmp('wake');
    const rt = await kit.start([clockService, idleService], { dir: data, bus: bus(data) });
    const at = await rt.client(clock).remind({ inMs: 5_000 });
    await rt.client(clock).remind({ inMs: 60_000 });
    await rt.stop();

    const now = Date.now();
    expect(await nextWakeups(source(data, ['clock', 'idle', 'ghost']), now)).toEqual([{ service: 'clock', at, why: 'timer', count: 1 }]);
    // Still a timer once overdue; past the second one both wait.
    expect(await nextWakeups(source(data, ['clock']), at + 1)).toEqual([{ service: 'clock', at, why: 'timer', count: 1 }]);
    expect(await nextWakeups(source(data, ['clock']), now + 61_000)).toEqual([{ service: 'clock', at, why: 'timer', count: 2 }]);
  });

  it('wakes a service whose committed event was not handed to the bus at that event’s time, as outbox', async () => {
    const data = kit.tmp('wake');
    const rt = await kit.start([clockService], { dir: data, bus: bus(data), outbox: unsentOutbox });
    const before = Date.now();
    await rt.client(clock).announce({ id: 'a' });
    const after = Date.now();
    await rt.client(clock).remind({ inMs: 30_000 });
    await rt.stop();

    const [w, ...rest] = await nextWakeups(source(data, ['clock']), after + 10);
    expect(rest).toEqual([]);
    expect(w).toMatchObject({ service: 'clock', why: 'outbox', count: 1 });
    expect(w!.at).toBeGreaterThanOrEqual(before);
    expect(w!.at).toBeLessThanOrEqual(after);
  });

  it('wakes a subscriber at zero at once, with the count of events waiting on the SQLite bus for its group', async () => {
    const data = kit.tmp('wake');
    // mailer ran once, so its group exists on the bus; then it scaled to zero.
    const first = await kit.start([clockService, mailerService], { dir: data, bus: bus(data) });
    await first.stop();
    const rt = await kit.start([clockService], { dir: data, bus: bus(data) });
    await rt.client(clock).announce({ id: 'b1' });
    await rt.client(clock).announce({ id: 'b2' });
    await eventually(async () => expect((await eventBacklog(source(data, ['clock']))).unsent).toEqual({ clock: 0 }), 10_000, 20);
    await rt.stop();

    const now = Date.now();
    expect(await nextWakeups(source(data, ['clock', 'mailer']), now)).toEqual([{ service: 'mailer', at: now, why: 'event', count: 2 }]);
    expect(mailed).toEqual([]);

    // Once it ran and handled them, nothing wakes it.
    const woken = await kit.start([mailerService], { dir: data, bus: bus(data) });
    await eventually(() => expect(mailed.sort()).toEqual(['b1', 'b2']), 10_000, 20);
    await eventually(async () => expect(await nextWakeups(source(data, ['clock', 'mailer']))).toEqual([]), 10_000, 20);
    await woken.stop();
  });

  it.skipIf(natsSkip !== undefined)('wakes a subscriber at zero for the events its consumers hold on NATS JetStream, and no one else', async () => {
    const data = kit.tmp('wake');
    const stream = `EVOLITH_WAKE_${randomUUID().replace(/-/g, '').slice(0, 10)}`;
    streams.push(stream);
    const natsBus = () => NatsEventBus.connect({ servers: NATS, stream, prefix: stream.toLowerCase(), partitions: 2 });
    // A group whose name is a prefix of mailer's own must not take its events.
    const mail = defineContract({ name: 'mail', version: '1', methods: {} });
    const mailService = implement(mail, { handlers: {} }).on(clock.events.announced, async () => {});
    const first = await kit.start([clockService, mailerService, mailService], { dir: data, bus: await natsBus() });
    await first.stop();
    const rt = await kit.start([clockService, mailService], { dir: data, bus: await natsBus() });
    for (const id of ['n1', 'n2', 'n3']) await rt.client(clock).announce({ id });
    const nats: BacklogSource = { data, storage: 'sqlite', events: { driver: 'nats', url: `nats://${NATS}`, stream }, services: ['clock', 'mail', 'mailer'] };
    // Sent by clock and handled by mail: only mailer's consumers hold them.
    await eventually(async () => expect(await eventBacklog(nats)).toEqual({ unsent: { clock: 0, mail: 0, mailer: 0 }, unhandled: 3 }), 10_000, 50);
    await rt.stop();

    const now = Date.now();
    expect(await nextWakeups(nats, now)).toEqual([{ service: 'mailer', at: now, why: 'event', count: 3 }]);
  });

  it('names no one when nothing was ever stored', async () => {
    const data = kit.tmp('wake');
    expect(await nextWakeups(source(data, ['clock', 'mailer']))).toEqual([]);
    expect(await nextWakeups({ ...source(data, ['clock']), events: 'memory' })).toEqual([]);
  });
});
