import { TimeoutError } from './errors.js';

/**
 * Something waiting for a deadline. Entries form an intrusive doubly linked list, so adding
 * and removing one costs a few pointer writes: a timer per call would cost more than an
 * in-process call itself, and so would hashing into a Set.
 */
export abstract class DeadlineEntry {
  deadline = Infinity;
  /** True once the entry left the list, by expiring or by `unwatch`. */
  settled = false;
  prev: DeadlineEntry | undefined = undefined;
  next: DeadlineEntry | undefined = undefined;
  abstract expire(): void;
}

const TICK_MS = 5;
let head: DeadlineEntry | undefined;
let timer: NodeJS.Timeout | undefined;

function tick(): void {
  if (!head) {
    clearInterval(timer);
    timer = undefined;
    return;
  }
  const now = Date.now();
  let e: DeadlineEntry | undefined = head;
  while (e) {
    const next: DeadlineEntry | undefined = e.next;
    if (e.deadline <= now) {
      remove(e);
      e.expire();
    }
    e = next;
  }
}

function remove(e: DeadlineEntry): void {
  e.settled = true;
  if (e.prev) e.prev.next = e.next;
  else head = e.next;
  if (e.next) e.next.prev = e.prev;
  e.prev = e.next = undefined;
}

/** Starts watching `entry`: its `expire()` runs once its deadline (epoch ms) passes. */
export function watch(entry: DeadlineEntry): void {
  if (entry.deadline === Infinity) return;
  entry.next = head;
  if (head) head.prev = entry;
  head = entry;
  if (!timer) {
    timer = setInterval(tick, TICK_MS);
    timer.unref();
  }
}

/** Stops watching; false when the deadline already fired (the outcome belongs to the timeout). */
export function unwatch(entry: DeadlineEntry): boolean {
  if (entry.settled) return false;
  if (entry.deadline !== Infinity) remove(entry);
  else entry.settled = true;
  return true;
}

class RaceEntry<T> extends DeadlineEntry {
  constructor(
    deadline: number,
    private readonly what: string,
    private readonly reject: (e: unknown) => void,
    private readonly onTimeout?: () => void,
  ) {
    super();
    this.deadline = deadline;
  }
  expire(): void {
    this.onTimeout?.();
    this.reject(new TimeoutError(`${this.what} did not answer before its deadline`, { deadline: new Date(this.deadline).toISOString() }));
  }
  _t?: T;
}

/**
 * Settles with `work`'s result, or rejects with a TimeoutError once `deadline` (epoch ms)
 * passes. `onTimeout` lets the caller abort the work it started.
 */
export function withDeadline<T>(work: Promise<T>, deadline: number, what: string, onTimeout?: () => void): Promise<T> {
  if (deadline === Infinity) return work;
  return new Promise<T>((resolve, reject) => {
    const entry = new RaceEntry<T>(deadline, what, reject, onTimeout);
    watch(entry);
    work.then(
      (v) => {
        if (unwatch(entry)) resolve(v);
      },
      (e) => {
        if (unwatch(entry)) reject(e);
      },
    );
  });
}
