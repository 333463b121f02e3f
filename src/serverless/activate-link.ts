/**
 * The activator: the first link of a serverless placement chain (Knative's activator, as a
 * link). While the callee service has an instance, a call passes straight through. While it has
 * none (scaled to zero, or not started yet), the call is held, never dropped: the first held
 * call asks the platform for an instance, later ones share that request, and every held call
 * goes on down the chain as soon as discovery shows an instance. A held call fails only at its
 * own deadline (EVOLITH_TIMEOUT), when the hold queue is full (EVOLITH_UNAVAILABLE, surely not
 * run), or with the platform's own refusal (a typed error from `activate`). While calls wait and
 * still no instance shows, the platform is asked again every `reaskMs` (an instance that crashed
 * while starting is replaced).
 *
 * Given the callee's `capacity` (the calls one instance runs at once), the link also holds calls
 * beyond what the instances it sees can take: at most `capacity` × instances of its calls are on
 * their way at once; the rest wait here, in order, and go on as calls finish or instances appear.
 * Without it, a burst held while a function was at zero would all land on its first instance,
 * overflow that instance's queue and be refused, while the platform was about to scale out.
 *
 * `held` is what the autoscaler counts as demand: calls waiting here (for a first instance, or
 * for room on the instances there are) are concurrency like calls in flight.
 */
import { DeadlineEntry, unwatch, watch } from '../kernel/deadline.js';
import { TimeoutError, UnavailableError, type EvolithError } from '../kernel/errors.js';
import type { Call, Link, Next } from '../kernel/placement.js';
import type { Endpoint } from '../kernel/plugins.js';

/** The platform side of activation. */
export interface Activator {
  /** Asks for an instance of `service`; resolves once asked (not once it runs). Rejects with a typed error when it cannot be had. */
  activate(service: string): Promise<void>;
}

/** Discovery that can say when a service's endpoints change. */
export interface WatchedDiscovery {
  endpoints(service: string): readonly Endpoint[];
  watch(service: string, onChange: (endpoints: readonly Endpoint[]) => void): () => void;
}

export interface ActivateLinkOptions {
  /** Calls held at once for this service; beyond it a call is refused at once. Default 1000. */
  readonly maxHeld?: number;
  /** While calls wait and no instance shows, ask the platform again this often (ms). Default 1000. */
  readonly reaskMs?: number;
  /** Calls one instance of the callee runs at once; when given, no more than this per instance are let through. */
  readonly capacity?: number;
}

export class ActivateLink implements Link {
  readonly name = 'activate';
  private readonly waiting = new Set<HeldCall>();
  private unwatchDiscovery: (() => void) | undefined;
  private reask: NodeJS.Timeout | undefined;
  private readonly maxHeld: number;
  private readonly reaskMs: number;
  private readonly capacity: number | undefined;
  /** Calls of this link on their way to an instance now (let through and not yet answered). */
  private inFlight = 0;
  /** Activations asked for, since the link was made. */
  activations = 0;

  constructor(
    private readonly service: string,
    private readonly discovery: WatchedDiscovery,
    private readonly activator: Activator,
    options: ActivateLinkOptions = {},
  ) {
    this.maxHeld = options.maxHeld ?? 1000;
    this.reaskMs = options.reaskMs ?? 1000;
    this.capacity = options.capacity;
  }

  /** Calls waiting for an instance now. */
  get held(): number {
    return this.waiting.size;
  }

  wrap(next: Next): Next {
    return (call) => {
      // Calls already waiting go first: a new one waits behind them.
      if (this.waiting.size === 0 && this.hasRoom()) {
        this.inFlight++;
        return this.pass(next, call);
      }
      return this.hold(call).then(() => this.pass(next, call));
    };
  }

  /** Runs a call let through (already counted in `inFlight`), and lets the next one go when it ends. */
  private pass(next: Next, call: Call): Promise<unknown> {
    let p: Promise<unknown>;
    try {
      p = next(call);
    } catch (err) {
      this.done();
      throw err;
    }
    return p.finally(() => this.done());
  }

  private done(): void {
    this.inFlight--;
    if (this.waiting.size > 0) this.drain();
  }

  /** Whether a call may go on now: some instance shows, and (with a capacity) has room. */
  private hasRoom(): boolean {
    const n = this.discovery.endpoints(this.service).length;
    return n > 0 && (this.capacity === undefined || this.inFlight < n * this.capacity);
  }

  private hold(call: Call): Promise<void> {
    if (this.waiting.size >= this.maxHeld) {
      return Promise.reject(
        new UnavailableError(`${call.method.fullName}: ${this.maxHeld} calls are already waiting for an instance of ${this.service} to start`, {
          maybeExecuted: false,
        }),
      );
    }
    return new Promise<void>((resolve, reject) => {
      const held = new HeldCall(this, call, resolve, reject);
      this.waiting.add(held);
      watch(held);
      if (this.waiting.size === 1) this.startWaiting();
    });
  }

  private startWaiting(): void {
    this.unwatchDiscovery ??= this.discovery.watch(this.service, () => this.drain());
    // It may have come up between the check and the watch.
    this.drain();
  }

  /**
   * Lets waiting calls go, oldest first, while there is room; asks the platform for an instance
   * while calls wait and none shows (not when they wait for room only: the platform hears of
   * them through `held` and scales out).
   */
  private drain(): void {
    for (const h of this.waiting) {
      if (!this.hasRoom()) break;
      this.waiting.delete(h);
      if (!unwatch(h)) continue;
      this.inFlight++;
      h.resolve();
    }
    if (this.waiting.size === 0) return this.stopWaiting();
    if (this.discovery.endpoints(this.service).length > 0) {
      clearInterval(this.reask);
      this.reask = undefined;
    } else if (!this.reask) {
      this.ask();
      this.reask = setInterval(() => this.ask(), this.reaskMs);
      this.reask.unref();
    }
  }

  private ask(): void {
    this.activations++;
    this.activator.activate(this.service).catch((err: EvolithError) => this.failAll(err));
  }

  private stopWaiting(): void {
    clearInterval(this.reask);
    this.reask = undefined;
    this.unwatchDiscovery?.();
    this.unwatchDiscovery = undefined;
  }

  private failAll(err: EvolithError): void {
    const all = [...this.waiting];
    this.waiting.clear();
    this.stopWaiting();
    for (const h of all) if (unwatch(h)) h.reject(err);
  }

  /** @internal A held call's deadline passed. */
  expired(held: HeldCall): void {
    this.waiting.delete(held);
    if (this.waiting.size === 0) this.stopWaiting();
    held.reject(new TimeoutError(`${held.call.method.fullName}: no instance of ${this.service} started before the call's deadline`, { service: this.service }));
  }
}

/** A call waiting for an instance; its own entry in the kernel's deadline list. */
class HeldCall extends DeadlineEntry {
  constructor(
    private readonly link: ActivateLink,
    readonly call: Call,
    readonly resolve: () => void,
    readonly reject: (err: unknown) => void,
  ) {
    super();
    this.deadline = call.deadline;
  }

  expire(): void {
    this.link.expired(this);
  }
}
