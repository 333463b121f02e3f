import { startBookstore } from '../support/bookstore-process.js';
import { bookstoreSuite } from './bookstore.suite.js';

bookstoreSuite({
  name: 'monolith · sqlite',
  start: (opts) => startBookstore({ arch: 'monolith', storage: 'sqlite', ...opts }),
});
