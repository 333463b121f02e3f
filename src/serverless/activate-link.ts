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
 * `held` is what the autoscaler counts as demand while there is no instance: calls waiting here
 * are concurrency like calls in flight.
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
}

export class ActivateLink implements Link {
  readonly name = 'activate';
  private readonly waiting = new Set<HeldCall>();
  private unwatchDiscovery: (() => void) | undefined;
  private reask: NodeJS.Timeout | undefined;
  private readonly maxHeld: number;
  private readonly reaskMs: number;
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
  }

  /** Calls waiting for an instance now. */
  get held(): number {
    return this.waiting.size;
  }

  wrap(next: Next): Next {
    return (call) => (this.discovery.endpoints(this.service).length > 0 ? next(call) : this.hold(call).then(() => next(call)));
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
    this.unwatchDiscovery = this.discovery.watch(this.service, (endpoints) => {
      if (endpoints.length > 0) this.releaseAll();
    });
    // It may have come up between the check and the watch.
    if (this.discovery.endpoints(this.service).length > 0) return this.releaseAll();
    this.ask();
    this.reask = setInterval(() => this.ask(), this.reaskMs);
    this.reask.unref();
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

  private releaseAll(): void {
    const all = [...this.waiting];
    this.waiting.clear();
    this.stopWaiting();
    for (const h of all) if (unwatch(h)) h.resolve();
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
