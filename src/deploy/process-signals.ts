import type { Logger } from 'pino';

/**
 * SIGTERM/SIGINT stop `running` gracefully (no new requests, calls in flight drain), then exit 0;
 * a second signal exits at once. Every Evolith process (control plane, worker) installs it.
 */
export function stopOnSignals(running: { stop(): Promise<void> }, log: Logger): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting without draining');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'stopping: no new requests, draining in-flight calls');
    running.stop().then(
      () => {
        process.stdout.write('evolith: stopped\n');
        process.exit(0);
      },
      (err) => {
        log.error({ err }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/**
 * A supervised process dies with its supervisor, whatever killed it (its IPC channel closes),
 * also while it is still starting: call this first thing.
 */
export function exitWithSupervisor(): void {
  if (!process.send) return;
  process.on('disconnect', () => process.exit(1));
  if (!process.connected) process.exit(1);
}
