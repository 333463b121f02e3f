import { TimeoutError } from './errors.js';

interface Pending {
  deadline: number;
  fire: () => void;
}

/**
 * One shared watcher enforces every in-flight deadline in the process. A timer per call
 * would cost more than an in-process call itself; a set plus one coarse tick costs little.
 */
class DeadlineWatcher {
  private readonly pending = new Set<Pending>();
  private timer: NodeJS.Timeout | undefined;
  constructor(private readonly tickMs: number) {}

  add(p: Pending): void {
    this.pending.add(p);
    if (!this.timer) {
      this.timer = setInterval(() => this.tick(), this.tickMs);
      this.timer.unref();
    }
  }

  remove(p: Pending): void {
    this.pending.delete(p);
  }

  private tick(): void {
    if (this.pending.size === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    const now = Date.now();
    for (const p of this.pending) {
      if (p.deadline <= now) {
        this.pending.delete(p);
        p.fire();
      }
    }
  }
}

const watcher = new DeadlineWatcher(5);

/**
 * Settles with `work`'s result, or rejects with a TimeoutError once `deadline` (epoch ms)
 * passes. `onTimeout` lets the caller abort the work it started.
 */
export function withDeadline<T>(work: Promise<T>, deadline: number, what: string, onTimeout?: () => void): Promise<T> {
  if (deadline === Infinity) return work;
  return new Promise<T>((resolve, reject) => {
    const entry: Pending = {
      deadline,
      fire: () => {
        onTimeout?.();
        reject(new TimeoutError(`${what} did not answer before its deadline`, { deadline: new Date(deadline).toISOString() }));
      },
    };
    watcher.add(entry);
    work.then(
      (v) => {
        watcher.remove(entry);
        resolve(v);
      },
      (e) => {
        watcher.remove(entry);
        reject(e);
      },
    );
  });
}
