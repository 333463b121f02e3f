import { startBookstore } from '../support/bookstore-process.js';
import { bookstoreSuite } from './bookstore.suite.js';

// The same suite, unchanged: each service in its own process, events over the embedded SQLite bus.
bookstoreSuite({
  name: 'microservices · sqlite events',
  start: (opts) => startBookstore({ arch: 'microservices', storage: 'sqlite', ...opts, set: { events: 'sqlite', ...opts?.set } }),
});
