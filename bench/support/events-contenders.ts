/**
 * The bench:events contenders as seen from one peer process: each opens its bus (or, for the
 * baseline, the JetStream client itself) on the storage a trial names, publishes or consumes,
 * and closes it again, so every trial starts from empty storage.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages } from '@nats-io/jetstream';
import pino from 'pino';
import { NatsEventBus } from '../../src/events/nats-bus.js';
import { SqliteEventBus } from '../../src/events/sqlite-bus.js';
import type { EventEnvelope } from '../../src/kernel/plugins.js';

export type ContenderName = 'sqlite' | 'nats' | 'jetstream';

/** Where one trial's events live: a fresh SQLite file or a fresh JetStream stream. */
export interface TrialStorage {
  /** SQLite file (sqlite). */
  file?: string;
  synchronous?: 'full' | 'normal';
  /** NATS servers, stream and subject prefix (nats, jetstream). */
  servers?: string;
  stream?: string;
  prefix?: string;
}

/** What a peer needs from a contender: publish, consume, close. */
export interface PeerBus {
  publish(event: EventEnvelope): Promise<void>;
  /** Starts consuming `topic`; `handler` runs once per delivery and acknowledges by returning. */
  subscribe(topic: string, group: string, handler: (event: EventEnvelope) => void): Promise<void>;
  close(): Promise<void>;
}

const quiet = pino({ level: 'warn' });

export async function openContender(name: ContenderName, s: TrialStorage): Promise<PeerBus> {
  switch (name) {
    case 'sqlite': {
      // The microservices deployer's settings: synchronous 'normal' survives a process crash.
      const bus = new SqliteEventBus(s.file!, { synchronous: s.synchronous ?? 'normal', log: quiet });
      return {
        publish: (e) => bus.publish(e),
        subscribe: async (topic, group, handler) => {
          bus.subscribe(topic, group, async (e) => handler(e));
        },
        close: () => bus.close(),
      };
    }
    case 'nats': {
      const bus = await NatsEventBus.connect({ servers: s.servers, stream: s.stream, prefix: s.prefix, log: quiet });
      return {
        publish: (e) => bus.publish(e),
        subscribe: async (topic, group, handler) => {
          bus.subscribe(topic, group, async (e) => handler(e));
        },
        close: () => bus.close(),
      };
    }
    case 'jetstream':
      return rawJetStream(s);
  }
}

/**
 * The baseline: the @nats-io/jetstream client used directly, as an app without Evolith would:
 * publish awaits the stream's PubAck; one durable pull consumer with explicit acks and the
 * client's default consume() settings; no ordering partitions, no deduplication id, no ack
 * confirmation.
 */
async function rawJetStream(s: TrialStorage): Promise<PeerBus> {
  const nc: NatsConnection = await connect({ servers: s.servers, name: 'bench-events-jetstream' });
  const js = jetstream(nc);
  let messages: ConsumerMessages | undefined;
  let loop: Promise<void> = Promise.resolve();
  return {
    publish: async (e) => {
      await js.publish(`${s.prefix}.${e.topic}`, JSON.stringify(e));
    },
    subscribe: async (topic, group, handler) => {
      const jsm = await jetstreamManager(nc);
      await jsm.consumers.add(s.stream!, {
        durable_name: group,
        filter_subject: `${s.prefix}.${topic}`,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
      });
      const consumer = await js.consumers.get(s.stream!, group);
      const m = await consumer.consume();
      messages = m;
      loop = (async () => {
        for await (const msg of m) {
          handler(msg.json<EventEnvelope>());
          msg.ack();
        }
      })();
    },
    close: async () => {
      messages?.stop();
      await loop.catch(() => undefined);
      await nc.drain().catch(() => nc.close());
    },
  };
}
