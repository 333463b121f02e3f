import { createServer } from 'node:net';
import { ConfigError } from '../kernel/errors.js';

/**
 * Refuses a port someone already holds, before anything else starts: a clear message now rather
 * than a process failing to bind later. Port 0 (any free port) always passes.
 */
export function assertPortFree(host: string, port: number): Promise<void> {
  if (port === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'EADDRINUSE'
          ? new ConfigError(`port ${port} on ${host} is already in use; stop whatever holds it or choose another with --port`)
          : new ConfigError(`cannot listen on ${host}:${port}: ${err.message}`),
      );
    });
    probe.listen(port, host, () => probe.close(() => resolve()));
  });
}
