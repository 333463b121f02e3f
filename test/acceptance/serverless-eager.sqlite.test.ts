import { startBookstore } from '../support/bookstore-process.js';
import { bookstoreSuite } from './bookstore.suite.js';

// The same suite with functions that scale to zero after half a second without calls: most
// requests find some function at zero and wait for an instance (from the pool, or a new
// process), and timers and events reach functions that have none.
bookstoreSuite({
  name: 'serverless · eager scale to zero',
  start: (opts) =>
    startBookstore({
      arch: 'serverless',
      storage: 'sqlite',
      ...opts,
      set: {
        events: 'sqlite',
        'serverless.defaults.scaleToZeroGraceMs': 500,
        'serverless.defaults.stableWindowMs': 2000,
        'serverless.defaults.panicWindowMs': 1000,
        'serverless.wakeupPollMs': 200,
        ...opts?.set,
      },
    }),
});
