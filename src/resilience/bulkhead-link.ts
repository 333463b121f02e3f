/**
 * Bulkhead per callee service (cockatiel): at most `maxConcurrent` calls in flight into the
 * service, `maxQueue` more waiting; beyond that a call fails at once with EVOLITH_UNAVAILABLE
 * instead of piling up. Sizes come from the live policy table: a resized bulkhead takes new
 * calls, while calls already inside the old one finish there. A call waiting in the queue
 * gives up when its deadline passes.
 */
import { bulkhead as makeBulkhead, isBulkheadRejectedError, type BulkheadPolicy } from 'cockatiel';
import { withDeadline } from '../kernel/deadline.js';
import { UnavailableError } from '../kernel/errors.js';
import type { Call, Link, Next } from '../kernel/placement.js';
import type { BulkheadSize, PolicyTable } from '../kernel/policy-table.js';

export class BulkheadLink implements Link {
  readonly name = 'bulkhead';
  private current: { policy: BulkheadPolicy; size: BulkheadSize; version: number } | undefined;

  constructor(
    private readonly service: string,
    private readonly policies: PolicyTable,
    private readonly defaults: BulkheadSize,
  ) {}

  /** The bulkhead for the policy table as it is now. */
  private bulkhead(): { policy: BulkheadPolicy; size: BulkheadSize; version: number } {
    const c = this.current;
    if (c && c.version === this.policies.version) return c;
    const size = this.policies.bulkheadFor(this.service, this.defaults);
    if (c && c.size.maxConcurrent === size.maxConcurrent && c.size.maxQueue === size.maxQueue) {
      c.version = this.policies.version;
      return c;
    }
    return (this.current = { policy: makeBulkhead(size.maxConcurrent, size.maxQueue), size, version: this.policies.version });
  }

  wrap(next: Next): Next {
    return (call) => {
      const b = this.bulkhead();
      if (b.policy.executionSlots > 0) return b.policy.execute(() => next(call)).catch((err) => Promise.reject(this.explain(err, call, b.size)));
      return this.queued(call, next, b.policy, b.size);
    };
  }

  /**
   * cockatiel checks a queued call's signal only when a slot frees, so the deadline is raced
   * here: the caller hears at its deadline, and the abandoned entry is dropped, unsent, when
   * its turn comes.
   */
  private queued(call: Call, next: Next, policy: BulkheadPolicy, size: BulkheadSize): Promise<unknown> {
    const controller = new AbortController();
    const work = policy.execute(() => next(call), controller.signal).catch((err) => Promise.reject(this.explain(err, call, size)));
    return withDeadline(work, call.deadline, `${call.method.fullName} (waiting for a free slot in the ${this.service} bulkhead)`, () => controller.abort());
  }

  private explain(err: unknown, call: Call, size: BulkheadSize): unknown {
    if (!isBulkheadRejectedError(err)) return err;
    const { method } = call;
    return new UnavailableError(
      `${method.fullName}: too many calls to ${method.service} (bulkhead full: ${size.maxConcurrent} in flight, ${size.maxQueue} queued); ` +
        `shed load or raise policies.${method.service}.maxConcurrent`,
      { method: method.fullName, reason: 'bulkhead full', maybeExecuted: false, ...size },
    );
  }
}
