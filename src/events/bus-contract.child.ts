/**
 * A consumer process for the bus contract tests: subscribes one group to one topic, handles each
 * event slowly and reports on stdout (`got <id>` when a handler starts, `done <id>` when it
 * returns), until the test kills it. After `hangAfter` events its handlers stop returning. Run with `node bin/run-ts.mjs <this file> '<json config>'`.
 */
import type { EventBus } from '../kernel/plugins.js';
import type { ChildConfig } from './bus-contract.test-helpers.js';
import { NatsEventBus } from './nats-bus.js';
import { SqliteEventBus } from './sqlite-bus.js';

const config = JSON.parse(process.argv[2] ?? '{}') as ChildConfig;
// stdout to a pipe is synchronous on Linux: a line written before SIGKILL is not lost.
const say = (line: string) => process.stdout.write(`${line}\n`);

const bus: EventBus = config.bus.kind === 'sqlite' ? new SqliteEventBus(config.bus.file, config.bus.options) : await NatsEventBus.connect(config.bus.options);
let finished = 0;
bus.subscribe(config.topic, config.group, async (e) => {
  say(`got ${e.id}`);
  // Past the quota, handlers never return: the kill is sure to find events in flight.
  if (finished >= config.hangAfter) await new Promise(() => undefined);
  await new Promise((r) => setTimeout(r, config.delayMs));
  finished++;
  say(`done ${e.id}`);
});
say('ready');
// The bus's timers do not hold the process open; the test ends it.
setInterval(() => undefined, 60_000);
