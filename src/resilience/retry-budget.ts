/**
 * A retry budget (after Finagle's): retries may add at most `ratio` of the requests seen over
 * a sliding window, plus a small reserve so a quiet client can still retry. When a callee
 * struggles, every caller retrying every failure would multiply its load; a budget turns that
 * retry storm into a bounded trickle.
 */

export interface RetryBudgetOptions {
  /** Retries allowed per request over the window. Default 0.2. */
  ratio?: number;
  /** Default 10 s. */
  windowMs?: number;
  /** Retries always allowed per window, whatever the traffic. Default 10. */
  minRetries?: number;
  now?: () => number;
}

const BUCKETS = 10;

class SlidingCount {
  private readonly counts = new Float64Array(BUCKETS);
  private readonly seqs = new Float64Array(BUCKETS).fill(-1);
  constructor(
    private readonly bucketMs: number,
    private readonly now: () => number,
  ) {}

  add(): void {
    const seq = Math.floor(this.now() / this.bucketMs);
    const i = seq % BUCKETS;
    if (this.seqs[i] !== seq) {
      this.seqs[i] = seq;
      this.counts[i] = 0;
    }
    this.counts[i]!++;
  }

  get value(): number {
    const seq = Math.floor(this.now() / this.bucketMs);
    let n = 0;
    for (let i = 0; i < BUCKETS; i++) if (this.seqs[i]! > seq - BUCKETS) n += this.counts[i]!;
    return n;
  }
}

export class RetryBudget {
  readonly ratio: number;
  readonly minRetries: number;
  private readonly requests: SlidingCount;
  private readonly retries: SlidingCount;

  constructor(options: RetryBudgetOptions = {}) {
    this.ratio = options.ratio ?? 0.2;
    this.minRetries = options.minRetries ?? 10;
    const now = options.now ?? Date.now;
    const bucketMs = (options.windowMs ?? 10_000) / BUCKETS;
    this.requests = new SlidingCount(bucketMs, now);
    this.retries = new SlidingCount(bucketMs, now);
  }

  /** Counts a first attempt. */
  request(): void {
    this.requests.add();
  }

  /** Withdraws one retry if the budget allows it. */
  tryRetry(): boolean {
    if (this.retries.value + 1 > this.minRetries + this.ratio * this.requests.value) return false;
    this.retries.add();
    return true;
  }

  snapshot(): { requests: number; retries: number } {
    return { requests: this.requests.value, retries: this.retries.value };
  }
}
