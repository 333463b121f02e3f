/** What the durable event buses share: redelivery backoff, key partitioning and bounded draining. */

export interface RetryOptions {
  /** Delay before the first redelivery after a handler throws (default 200 ms). */
  initialMs?: number;
  /** Upper bound of the exponential backoff (default 30 s). */
  maxMs?: number;
}

/** Exponential backoff with jitter for the `attempt`-th failed delivery (1-based). */
export function redeliveryDelay(attempt: number, retry: RetryOptions = {}): number {
  const initial = retry.initialMs ?? 200;
  const max = retry.maxMs ?? 30_000;
  const base = Math.min(max, initial * 2 ** Math.min(Math.max(0, attempt - 1), 20));
  // Jitter in [50%, 100%] so that events that failed together do not all come back together.
  return Math.max(1, Math.round(base * (0.5 + Math.random() / 2)));
}

/** FNV-1a: a small, stable string hash (the same in every process and every version). */
export function stableHash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Counts running handlers so that close() can wait for them, up to a bound. */
export class InflightHandlers {
  private count = 0;
  private waiters: (() => void)[] = [];

  get size(): number {
    return this.count;
  }

  /** Runs `work`, counted until it settles. */
  track<T>(work: Promise<T>): Promise<T> {
    this.begin();
    return work.finally(() => this.end());
  }

  /** Counts one handler as running, for callers that settle it themselves (see end()). */
  begin(): void {
    this.count++;
  }

  /** One handler counted by begin() settled. */
  end(): void {
    if (--this.count === 0) {
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    }
  }

  /** Resolves true once no handler runs, or false after `timeoutMs`. */
  idle(timeoutMs: number): Promise<boolean> {
    if (this.count === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.waiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }
}

export function errorMessage(err: unknown): string {
  return String((err as Error)?.message ?? err).slice(0, 1000);
}
