import { setTimeout as sleep } from 'node:timers/promises';
import { liveRecord } from '../../src/deploy/deployment-record.js';
import { eventBacklog, totalBacklog, type EventBacklog } from '../../src/deploy/event-backlog.js';

/**
 * Resolves once every event the deployment on `dataDir` committed so far has been handled: two
 * readings in a row with nothing waiting to be sent and nothing waiting to be handled (the
 * second also covers events that handlers committed while the first was taken). This is what
 * a check that "nothing moved afterwards" waits on: a refused request that wrongly committed an
 * event would have had it applied by then. Due events only: timers set for later are not waited on.
 */
export async function eventsApplied(dataDir: string, timeoutMs = 15_000): Promise<void> {
  const record = liveRecord(dataDir);
  if (!record?.events) throw new Error(`no running deployment with an event record on ${dataDir}`);
  const deadline = Date.now() + timeoutMs;
  let quiet = 0;
  let last: EventBacklog | undefined;
  while (quiet < 2) {
    last = await eventBacklog(record.events);
    quiet = totalBacklog(last) === 0 ? quiet + 1 : 0;
    if (quiet >= 2) return;
    if (Date.now() > deadline) throw new Error(`events still waiting after ${timeoutMs} ms: ${JSON.stringify(last)}`);
    await sleep(quiet ? 20 : 100);
  }
}
