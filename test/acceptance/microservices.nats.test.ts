import { randomBytes } from 'node:crypto';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, describe, it } from 'vitest';
import { startBookstore, stopAllBookstores } from '../support/bookstore-process.js';
import { bookstoreSuite } from './bookstore.suite.js';

const NAME = 'microservices · nats events';
const SERVERS = '127.0.0.1:4222';

async function natsUnavailable(): Promise<string | undefined> {
  try {
    const nc = await connect({ servers: SERVERS, timeout: 2_000, maxReconnectAttempts: 0 });
    try {
      await (await jetstreamManager(nc)).getAccountInfo();
    } finally {
      await nc.close();
    }
    return undefined;
  } catch (err) {
    return `NATS JetStream at ${SERVERS} is not reachable: ${(err as Error).message}`;
  }
}

const unavailable = await natsUnavailable();
if (unavailable) {
  console.warn(`[acceptance] skipping "${NAME}": ${unavailable}`);
  describe.skip(`bookstore acceptance [${NAME}]`, () => {
    it(`needs NATS: ${unavailable}`, () => {});
  });
} else {
  // One stream per run (and so one subject prefix), deleted when the file ends.
  const stream = `EVOACC_${randomBytes(4).toString('hex')}`;
  afterAll(async () => {
    await stopAllBookstores();
    const nc = await connect({ servers: SERVERS });
    try {
      await (await jetstreamManager(nc)).streams.delete(stream).catch(() => undefined);
    } finally {
      await nc.close();
    }
  }, 30_000);

  // The same suite, unchanged: each service in its own process, events over NATS JetStream.
  bookstoreSuite({
    name: NAME,
    start: (opts) =>
      startBookstore({
        arch: 'microservices',
        storage: 'sqlite',
        ...opts,
        set: { 'events.driver': 'nats', 'events.url': `nats://${SERVERS}`, 'events.stream': stream, ...opts?.set },
      }),
  });
}
