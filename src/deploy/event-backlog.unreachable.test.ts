import { createServer } from 'node:net';
import { expect, it } from 'vitest';
import { eventBacklog } from './event-backlog.js';

/** A port nobody listens on (found free, then released). */
async function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

it('the backlog of a deployment whose PostgreSQL is unreachable fails at once, saying so (no start-up retries)', async () => {
  const url = `postgres://nobody@127.0.0.1:${await closedPort()}/test`;
  const t0 = performance.now();
  await expect(eventBacklog({ data: '/nonexistent', storage: { driver: 'postgres', url }, events: 'memory', services: ['orders'] })).rejects.toMatchObject({
    code: 'EVOLITH_UNAVAILABLE',
    message: expect.stringMatching(/unreachable.*after 1 attempt\b/),
  });
  expect(performance.now() - t0).toBeLessThan(2_000);
});
