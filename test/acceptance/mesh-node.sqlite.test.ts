import { startBookstore } from '../support/bookstore-process.js';
import { bookstoreSuite } from './bookstore.suite.js';

// The same suite, unchanged, with one mesh proxy for the whole machine instead of one per instance.
bookstoreSuite({
  name: 'mesh · node proxy · sqlite events',
  start: (opts) => startBookstore({ arch: 'mesh', storage: 'sqlite', ...opts, set: { events: 'sqlite', 'mesh.mode': 'node', ...opts?.set } }),
});
