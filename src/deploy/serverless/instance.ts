/**
 * The serverless side of a worker: what a function instance (or the edge) of a serverless
 * deployment does beyond a microservices worker.
 *
 * - Every chain to another function has the activator link (see serverless/activate-link.ts)
 *   just before the endpoint is chosen: a call to a function with no instance waits there while
 *   the platform starts one. A retry after a refused or vanished instance passes it again.
 * - A function is always ready to be called (it starts on demand), so the edge never answers
 *   503 for a function at zero.
 * - A function instance serves through its gate (limits, timeout, accounting) and reports to
 *   the platform over its private IPC channel: concurrency and billing four times a second,
 *   and the calls its own activators hold.
 *
 * Messages between the platform and its processes travel on the supervisor's IPC channel only:
 * no port to attack, and no identity to prove beyond being the platform's own child.
 */
import type { Logger } from 'pino';
import { deserializeError, type SerializedError } from '../../kernel/errors.js';
import { ActivateLink, type Activator } from '../../serverless/activate-link.js';
import { FunctionGate, type GateReport, type GateSettings } from '../../serverless/gate.js';
import type { CredentialBundle } from '../../auth/credentials.js';
import type { InstanceInfo } from '../../discovery/registry.js';
import type { EnvelopeVariant } from '../microservices/envelope.js';

export const SERVERLESS_ENV = 'EVOLITH_SERVERLESS';

/** What a serverless worker is told at start (EVOLITH_SERVERLESS, or a pool runtime's take-on message). */
export interface ServerlessWorkerEnv {
  /** The function this instance runs; absent for the edge. */
  readonly fn?: GateSettings;
  /** Calls held at once per callee while it has no instance. */
  readonly maxHeld: number;
  /** Per callee service: the calls one of its instances runs at once (its function's maxConcurrency); more are held. */
  readonly capacity?: Readonly<Record<string, number>>;
}

export const ACTIVATE = 'evolith:activate';
export const ACTIVATED = 'evolith:activated';
export const REPORT = 'evolith:function-report';
export const SERVING = 'evolith:function-serving';
export const TAKE_ON = 'evolith:take-on';
export const METRICS = 'evolith:metrics';

/** The edge asks for the platform's series (id), and gets them back as Prometheus text. */
export interface MetricsMessage {
  type: typeof METRICS;
  id: number;
  text?: string;
}

export interface ActivateMessage {
  type: typeof ACTIVATE;
  id: number;
  service: string;
}
export interface ActivatedMessage {
  type: typeof ACTIVATED;
  id: number;
  error?: SerializedError;
}
export interface ReportMessage {
  type: typeof REPORT;
  /** Absent for a process that runs no function (the edge). */
  gate?: GateReport;
  /** Calls this process's activators hold, per callee service. */
  held: Record<string, number>;
}
export interface ServingMessage {
  type: typeof SERVING;
  /** From the process's start (or the pool runtime's take-on) to serving, ms. */
  initMs: number;
  /** What the platform registers for it. */
  instances: InstanceInfo[];
}
/** A pool runtime becomes an instance of a function. */
export interface TakeOnMessage {
  type: typeof TAKE_ON;
  group: string;
  replica: number;
  credentials: CredentialBundle;
  serverless: ServerlessWorkerEnv;
}

export function serverlessFromEnv(): ServerlessWorkerEnv | undefined {
  const raw = process.env[SERVERLESS_ENV];
  return raw ? (JSON.parse(raw) as ServerlessWorkerEnv) : undefined;
}

const REPORT_MS = 250;

/** Asks the platform for instances over the IPC channel; the answer says it is on its way, or why not. */
class IpcActivator implements Activator {
  private next = 1;
  private readonly pending = new Map<number, { resolve: () => void; reject: (err: unknown) => void }>();
  private readonly metricsWaiting = new Map<number, (text: string) => void>();
  private readonly listener = (m: unknown) => {
    const x = m as MetricsMessage | undefined;
    if (x?.type === METRICS) {
      this.metricsWaiting.get(x.id)?.(x.text ?? '');
      this.metricsWaiting.delete(x.id);
      return;
    }
    const a = m as ActivatedMessage | undefined;
    if (a?.type !== ACTIVATED) return;
    const p = this.pending.get(a.id);
    if (!p) return;
    this.pending.delete(a.id);
    if (a.error) p.reject(deserializeError(a.error));
    else p.resolve();
  };

  constructor() {
    process.on('message', this.listener);
  }

  activate(service: string): Promise<void> {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      process.send!({ type: ACTIVATE, id, service } satisfies ActivateMessage);
    });
  }

  /** The platform's own series (the meter's), or nothing if it does not answer within a second. */
  metrics(): Promise<string> {
    const id = this.next++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.metricsWaiting.delete(id);
        resolve('');
      }, 1000);
      this.metricsWaiting.set(id, (text) => {
        clearTimeout(timer);
        resolve(text);
      });
      process.send!({ type: METRICS, id } satisfies MetricsMessage);
    });
  }

  close(): void {
    process.off('message', this.listener);
  }
}

/**
 * The variant of the microservices envelope a serverless worker runs with. `startedAt` is when
 * this instance began to exist (process start, or its take-on from the pool), for its init time.
 */
export function serverlessVariant(env: ServerlessWorkerEnv, startedAt: number, log: Logger): EnvelopeVariant {
  const activator = new IpcActivator();
  const links = new Map<string, ActivateLink>();
  const gate = env.fn ? new FunctionGate(env.fn) : undefined;
  // Whether the last report said calls were held: the platform must hear when none are any more.
  let heldBefore = false;
  const report = setInterval(() => {
    const held: Record<string, number> = {};
    for (const [service, link] of links) if (link.held > 0) held[service] = link.held;
    const holding = Object.keys(held).length > 0;
    const quiet = !gate && !holding && !heldBefore;
    heldBefore = holding;
    if (quiet) return;
    process.send?.({ type: REPORT, gate: gate?.report(), held } satisfies ReportMessage);
  }, REPORT_MS);
  report.unref();
  const variant: EnvelopeVariant = {
    links(service, resilience, registry) {
      let link = links.get(service);
      if (!link) {
        link = new ActivateLink(service, registry, activator, { maxHeld: env.maxHeld, capacity: env.capacity?.[service] });
        links.set(service, link);
      }
      const at = resilience.findIndex((l) => l.name === 'choose endpoint');
      return at < 0 ? [link, ...resilience] : [...resilience.slice(0, at), link, ...resilience.slice(at)];
    },
    ready: () => true,
    lateDiscovery: true,
    // The edge's /metrics carries the platform's metering series too.
    metrics: env.fn ? undefined : () => activator.metrics(),
    resolver: gate ? (resolve) => gate.resolver(resolve) : undefined,
    // A function instance is registered by the platform that started it, from what it says
    // here over its private channel: no registration round trip on the way to its first call.
    announce: gate
      ? (instances) => {
          gate.initMs = Date.now() - startedAt;
          log.info({ function: env.fn!.name, initMs: gate.initMs }, 'function instance serving');
          return new Promise<void>((resolve, reject) =>
            process.send!({ type: SERVING, initMs: gate.initMs, instances } satisfies ServingMessage, (err: Error | null) => (err ? reject(err) : resolve())),
          );
        }
      : undefined,
  };
  variant.close = () => {
    clearInterval(report);
    activator.close();
    // The last calls' billing, sent before the process goes.
    if (!gate || !process.send) return;
    return new Promise<void>((resolve) => process.send!({ type: REPORT, gate: gate.report(), held: {} } satisfies ReportMessage, () => resolve()));
  };
  return variant;
}
