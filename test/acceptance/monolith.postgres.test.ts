import { randomBytes } from 'node:crypto';
import { afterAll, describe, it } from 'vitest';
import { startBookstore, stopAllBookstores } from '../support/bookstore-process.js';
import { dropSchemas, postgresAvailable, postgresUrl } from '../support/postgres.js';
import { bookstoreSuite } from './bookstore.suite.js';

const NAME = 'monolith · postgres';
const unavailable = await postgresAvailable();

if (unavailable) {
  console.warn(`[acceptance] skipping "${NAME}": ${unavailable}`);
  describe.skip(`bookstore acceptance [${NAME}]`, () => {
    it(`needs PostgreSQL: ${unavailable}`, () => {});
  });
} else {
  const url = postgresUrl();
  // One prefix per run; each start gets its own schemas under it (fresh demo data), a
  // restart keeps its own. All of them are dropped when the file ends.
  const runPrefix = `evo_acc_${randomBytes(4).toString('hex')}_`;
  let starts = 0;
  afterAll(async () => {
    await stopAllBookstores(); // nothing may hold the schemas any more
    await dropSchemas(runPrefix, url);
  }, 30_000);

  bookstoreSuite({
    name: NAME,
    start: (opts) =>
      startBookstore({ arch: 'monolith', storage: url, schemaPrefix: `${runPrefix}${++starts}_`, ...opts }),
  });
}
