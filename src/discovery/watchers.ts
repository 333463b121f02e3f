/**
 * The bookkeeping every discovery source repeats: callers waiting for the first complete list,
 * and per-service listeners told of each new list. Kept in one place so that the registry's
 * client and the cluster DNS source time out waiters and isolate failing listeners alike.
 */
import type { Logger } from 'pino';

/** Callers waiting for a source's first complete list. */
export class SyncWaiters {
  private readonly waiters = new Set<() => void>();

  /** Resolves true when `release` is called, false if `timeoutMs` passes first. */
  wait(timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(done);
        resolve(false);
      }, timeoutMs);
      this.waiters.add(done);
    });
  }

  /** Resolves every waiting caller with true. */
  release(): void {
    for (const w of [...this.waiters]) w();
  }
}

/** Per service, the callbacks to tell of each new endpoint list. */
export class EndpointListeners<E> {
  private readonly byService = new Map<string, Set<(endpoints: readonly E[]) => void>>();

  /** Adds a listener for one service; the returned function removes it. */
  add(service: string, onChange: (endpoints: readonly E[]) => void): () => void {
    let set = this.byService.get(service);
    if (!set) this.byService.set(service, (set = new Set()));
    set.add(onChange);
    return () => {
      set.delete(onChange);
    };
  }

  /** Calls every listener of `service`; one that throws is logged and does not stop the others. */
  emit(service: string, endpoints: readonly E[], log: Logger): void {
    for (const l of this.byService.get(service) ?? []) {
      try {
        l(endpoints);
      } catch (err) {
        log.error({ err, service }, 'endpoint listener failed');
      }
    }
  }
}
