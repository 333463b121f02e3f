import client from 'prom-client';
import type { MethodDef } from '../contract/define.js';
import type { Telemetry } from '../kernel/plugins.js';

export class NoopTelemetry implements Telemetry {
  readonly enabled = false;
  callStarted(): void {}
  callEnded(): void {}
}

/** One method's counts, kept as plain numbers on the call path and read when metrics are scraped. */
interface MethodCounts {
  readonly method: MethodDef;
  inFlight: number;
  ok: number;
  readonly errors: Map<string, number>;
  readonly seconds: client.Histogram.Internal<'service' | 'method'>;
}

/**
 * Prometheus metrics for every call: a counter of outcomes, a latency histogram per method and
 * the calls in flight per service.
 *
 * Every call passes here twice, so the counter and the gauge are plain numbers per method that
 * the metrics take over when scraped (prom-client hashes the labels of every update otherwise,
 * which costs more than an in-process call itself). Only the histogram observes per call.
 */
export class PrometheusTelemetry implements Telemetry {
  readonly enabled = true;
  readonly registry = new client.Registry();
  private readonly seconds: client.Histogram<'service' | 'method'>;
  private readonly counts = new Map<MethodDef, MethodCounts>();

  constructor(options: { collectDefault?: boolean } = {}) {
    const counts = this.counts;
    new client.Counter({
      name: 'evolith_calls_total',
      help: 'Calls handled, by outcome (ok or error code)',
      labelNames: ['service', 'method', 'outcome'],
      registers: [this.registry],
      collect() {
        // The totals are kept elsewhere: each scrape starts over from them.
        this.reset();
        for (const c of counts.values()) {
          const { service, name } = c.method;
          if (c.ok > 0) this.inc({ service, method: name, outcome: 'ok' }, c.ok);
          for (const [outcome, n] of c.errors) this.inc({ service, method: name, outcome }, n);
        }
      },
    });
    this.seconds = new client.Histogram({
      name: 'evolith_call_duration_seconds',
      help: 'Handler latency',
      labelNames: ['service', 'method'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [this.registry],
    });
    new client.Gauge({
      name: 'evolith_calls_in_flight',
      help: 'Calls being handled',
      labelNames: ['service'],
      registers: [this.registry],
      collect() {
        const byService = new Map<string, number>();
        for (const c of counts.values()) byService.set(c.method.service, (byService.get(c.method.service) ?? 0) + c.inFlight);
        for (const [service, n] of byService) this.set({ service }, n);
      },
    });
    if (options.collectDefault) client.collectDefaultMetrics({ register: this.registry });
  }

  private of(method: MethodDef): MethodCounts {
    let c = this.counts.get(method);
    if (!c) {
      c = { method, inFlight: 0, ok: 0, errors: new Map(), seconds: this.seconds.labels(method.service, method.name) };
      this.counts.set(method, c);
    }
    return c;
  }

  callStarted(method: MethodDef): void {
    this.of(method).inFlight++;
  }

  callEnded(method: MethodDef, seconds: number, errorCode: string | undefined): void {
    const c = this.of(method);
    c.inFlight--;
    c.seconds.observe(seconds);
    if (errorCode === undefined) c.ok++;
    else c.errors.set(errorCode, (c.errors.get(errorCode) ?? 0) + 1);
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }
}
