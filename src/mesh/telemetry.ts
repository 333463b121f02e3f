/**
 * What the mesh's proxies measure, per edge of the call graph: requests, their outcomes and
 * latency, by caller → callee and method, as Istio's standard metrics do. Each call is counted
 * twice, as in Istio: by the caller's proxy (`reporter="source"`, the latency the caller saw,
 * retries and injected faults included) and by the callee's (`reporter="destination"`, the
 * time its app took plus the last hop).
 */
import { Counter, Histogram, Registry } from 'prom-client';

export type Reporter = 'source' | 'destination';

export class MeshTelemetry {
  readonly registry = new Registry();
  private readonly requests: Counter<'reporter' | 'source' | 'destination' | 'method' | 'outcome'>;
  private readonly latency: Histogram<'reporter' | 'source' | 'destination' | 'method'>;
  private readonly series = new Map<string, { count: { inc(): void }; latency: { observe(v: number): void } }>();

  constructor(labels: Record<string, string> = {}) {
    this.registry.setDefaultLabels(labels);
    this.requests = new Counter({
      name: 'evolith_mesh_requests_total',
      help: 'Calls through the mesh by caller (source), callee (destination), method and outcome (ok, error, or the code a proxy answered with).',
      labelNames: ['reporter', 'source', 'destination', 'method', 'outcome'],
      registers: [this.registry],
    });
    this.latency = new Histogram({
      name: 'evolith_mesh_request_duration_seconds',
      help: 'Latency of calls through the mesh, as the reporting proxy saw it.',
      labelNames: ['reporter', 'source', 'destination', 'method'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [this.registry],
    });
  }

  /** One call finished; `startedAt` is its performance.now() on arrival. */
  record(reporter: Reporter, source: string, destination: string, method: string, outcome: string, startedAt: number): void {
    // The labelled series are looked up once per edge and outcome, not hashed on every call.
    const key = `${reporter}\0${source}\0${destination}\0${method}\0${outcome}`;
    let series = this.series.get(key);
    if (!series) {
      series = { count: this.requests.labels({ reporter, source, destination, method, outcome }), latency: this.latency.labels({ reporter, source, destination, method }) };
      this.series.set(key, series);
    }
    series.count.inc();
    series.latency.observe((performance.now() - startedAt) / 1000);
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
