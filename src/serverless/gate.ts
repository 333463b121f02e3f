/**
 * The door of a function instance (Knative's queue-proxy, inside the instance): every call the
 * instance serves passes through it. It
 *
 * - runs at most `maxConcurrency` calls at once; later ones wait in order, up to `queueLimit`,
 *   beyond which a call is refused as surely not run (EVOLITH_UNAVAILABLE, so callers may try
 *   another instance);
 * - cuts each call's deadline to the function's `timeoutMs` (the host then answers
 *   EVOLITH_TIMEOUT and aborts the handler's context);
 * - measures what the platform needs: concurrency (running plus waiting calls) averaged over
 *   time, and each invocation's duration, billed rounded up to the millisecond. The first
 *   invocation of an instance is its cold start: its instance's initialisation is billed with
 *   it, as AWS Lambda bills the INIT phase.
 */
import type { MethodDef } from '../contract/define.js';
import { UnavailableError } from '../kernel/errors.js';
import type { CallMeta } from '../kernel/plugins.js';
import type { RpcResolver, RpcTarget } from '../rpc/tcp-server.js';
import { billedDurationMs } from './metering.js';

export interface GateSettings {
  readonly name: string;
  readonly maxConcurrency: number;
  readonly queueLimit: number;
  readonly timeoutMs: number;
}

/** What an instance reports to the platform, for the interval since its previous report. */
export interface GateReport {
  /** Running plus waiting calls, averaged over the interval (time-weighted). */
  readonly concurrency: number;
  /** Running plus waiting calls now. */
  readonly inFlight: number;
  readonly invocations: number;
  /** The sum of each invocation's billed milliseconds. */
  readonly billedMs: number;
  /** 1 when the interval holds the instance's first invocation, else 0. */
  readonly coldStarts: number;
  /** Calls refused because the queue was full. */
  readonly refused: number;
}

export class FunctionGate {
  private running = 0;
  private readonly queue: (() => void)[] = [];
  private areaMs = 0;
  private since: number;
  private lastChange: number;
  private invocations = 0;
  private billedMs = 0;
  private coldStarts = 0;
  private refused = 0;
  private first = true;
  /** The instance's initialisation (ms), billed with its first invocation. */
  initMs = 0;

  constructor(
    private readonly settings: GateSettings,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.since = this.lastChange = now();
  }

  /** Calls running and waiting now. */
  get inFlight(): number {
    return this.running + this.queue.length;
  }

  /** Wraps a resolver so that every call it finds passes through this gate. */
  resolver(inner: RpcResolver): RpcResolver {
    const wrapped = new Map<RpcTarget, RpcTarget>();
    return (service, method) => {
      const target = inner(service, method);
      if (!target) return undefined;
      let w = wrapped.get(target);
      if (!w) {
        const host = target.host;
        w = { method: target.method, host: { handle: (m, input, meta) => this.run(m, meta, (cut) => host.handle(m, input, cut)) } };
        wrapped.set(target, w);
      }
      return w;
    };
  }

  async run<T>(method: MethodDef, meta: CallMeta, handle: (meta: CallMeta) => Promise<T>): Promise<T> {
    if (this.running >= this.settings.maxConcurrency) {
      if (this.queue.length >= this.settings.queueLimit) {
        this.refused++;
        throw new UnavailableError(
          `${method.fullName}: this instance of ${this.settings.name} is running ${this.running} calls and has ${this.queue.length} waiting, its limit`,
          { maybeExecuted: false },
        );
      }
      this.account();
      // Woken with the slot of the call that finished: `running` already counts this one.
      await new Promise<void>((resolve) => this.queue.push(resolve));
    } else {
      this.account();
      this.running++;
    }
    const start = this.now();
    const deadline = Math.min(meta.deadline, Date.now() + this.settings.timeoutMs);
    try {
      return await handle(deadline === meta.deadline ? meta : { ...meta, deadline });
    } finally {
      const took = this.now() - start;
      this.invocations++;
      if (this.first) {
        this.first = false;
        this.coldStarts++;
        this.billedMs += billedDurationMs(took + this.initMs, 1);
      } else {
        this.billedMs += billedDurationMs(took, 1);
      }
      this.account();
      const next = this.queue.shift();
      if (next) next();
      else this.running--;
    }
  }

  /** Adds the time since the last change at the current concurrency, before it changes. */
  private account(): void {
    const t = this.now();
    this.areaMs += this.inFlight * (t - this.lastChange);
    this.lastChange = t;
  }

  /** What happened since the previous report; starts the next interval. */
  report(): GateReport {
    this.account();
    const t = this.now();
    const span = t - this.since;
    const r: GateReport = {
      concurrency: span > 0 ? this.areaMs / span : this.inFlight,
      inFlight: this.inFlight,
      invocations: this.invocations,
      billedMs: this.billedMs,
      coldStarts: this.coldStarts,
      refused: this.refused,
    };
    this.areaMs = 0;
    this.since = t;
    this.invocations = this.billedMs = this.coldStarts = this.refused = 0;
    return r;
  }
}
