import { describe, it } from 'vitest';
import { clusterBookstoreTarget, clusterBookstoreUnavailable } from '../support/cluster-bookstore.js';
import { bookstoreSuite } from './bookstore.suite.js';

// The same suite, unchanged, against what `evolith deploy kubernetes --arch serverless` writes, run
// pod by pod in the local cluster simulation (test/support/cluster-bookstore.ts).
const NAME = 'kubernetes serverless · cluster simulation';
const unavailable = await clusterBookstoreUnavailable();
if (unavailable) {
  console.warn(`[acceptance] skipping "${NAME}": ${unavailable}`);
  describe.skip(`bookstore acceptance [${NAME}]`, () => {
    it(`needs the cluster simulation: ${unavailable}`, () => {});
  });
} else {
  bookstoreSuite(clusterBookstoreTarget('serverless'));
}
