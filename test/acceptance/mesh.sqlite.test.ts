import { startBookstore } from '../support/bookstore-process.js';
import { bookstoreSuite } from './bookstore.suite.js';

// The same suite, unchanged: each service in its own process behind its own sidecar, every
// internal hop over mutual TLS, the bookstore's traffic policy (mesh.yaml) in force.
bookstoreSuite({
  name: 'mesh · sidecars · sqlite events',
  start: (opts) => startBookstore({ arch: 'mesh', storage: 'sqlite', ...opts, set: { events: 'sqlite', ...opts?.set } }),
});
