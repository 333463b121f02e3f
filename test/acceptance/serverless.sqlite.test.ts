import { startBookstore } from '../support/bookstore-process.js';
import { bookstoreSuite } from './bookstore.suite.js';

// The same suite, unchanged: every service a function that the platform starts on demand,
// scales with load and stops when idle, behind the same edge on the same port.
bookstoreSuite({
  name: 'serverless · sqlite events',
  start: (opts) => startBookstore({ arch: 'serverless', storage: 'sqlite', ...opts, set: { events: 'sqlite', ...opts?.set } }),
});
