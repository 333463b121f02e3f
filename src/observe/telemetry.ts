import client from 'prom-client';
import type { MethodDef } from '../contract/define.js';
import type { Telemetry } from '../kernel/plugins.js';

export class NoopTelemetry implements Telemetry {
  readonly enabled = false;
  callStarted(): void {}
  callEnded(): void {}
}

/** Prometheus metrics for every call: a counter of outcomes and a latency histogram per method. */
export class PrometheusTelemetry implements Telemetry {
  readonly enabled = true;
  readonly registry = new client.Registry();
  private readonly calls: client.Counter<'service' | 'method' | 'outcome'>;
  private readonly seconds: client.Histogram<'service' | 'method'>;
  private readonly inflight: client.Gauge<'service'>;
  private readonly children = new Map<MethodDef, { ok: client.Counter.Internal; hist: client.Histogram.Internal<'service' | 'method'>; gauge: client.Gauge.Internal<'service'> }>();

  constructor(options: { collectDefault?: boolean } = {}) {
    this.calls = new client.Counter({ name: 'evolith_calls_total', help: 'Calls handled, by outcome (ok or error code)', labelNames: ['service', 'method', 'outcome'], registers: [this.registry] });
    this.seconds = new client.Histogram({
      name: 'evolith_call_duration_seconds',
      help: 'Handler latency',
      labelNames: ['service', 'method'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [this.registry],
    });
    this.inflight = new client.Gauge({ name: 'evolith_calls_in_flight', help: 'Calls being handled', labelNames: ['service'], registers: [this.registry] });
    if (options.collectDefault) client.collectDefaultMetrics({ register: this.registry });
  }

  private child(m: MethodDef) {
    let c = this.children.get(m);
    if (!c) {
      c = { ok: this.calls.labels(m.service, m.name, 'ok'), hist: this.seconds.labels(m.service, m.name), gauge: this.inflight.labels(m.service) };
      this.children.set(m, c);
    }
    return c;
  }

  callStarted(m: MethodDef): void {
    this.child(m).gauge.inc();
  }

  callEnded(m: MethodDef, seconds: number, errorCode: string | undefined): void {
    const c = this.child(m);
    c.gauge.dec();
    c.hist.observe(seconds);
    if (errorCode === undefined) c.ok.inc();
    else this.calls.labels(m.service, m.name, errorCode).inc();
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }
}
