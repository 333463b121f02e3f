import { newTrace, parseTraceparent, type TraceContext } from '../kernel/trace.js';

/**
 * The trace context of a call that arrived over the wire, parsed from its `traceparent` only
 * when something reads it. A handler that neither logs, emits, calls on nor traces never pays
 * for the parse; one that does sees exactly what `parseTraceparent` gives (or a new trace when
 * the header is absent or invalid, as the spec asks).
 */
export class WireTrace implements TraceContext {
  private parsed: TraceContext | undefined;

  constructor(
    private readonly traceparent: string | undefined,
    readonly baggage?: string,
  ) {}

  private get context(): TraceContext {
    return (this.parsed ??= parseTraceparent(this.traceparent) ?? newTrace(this.baggage));
  }

  get traceId(): string {
    return this.context.traceId;
  }

  get spanId(): string {
    return this.context.spanId;
  }

  get parentSpanId(): string | undefined {
    return this.context.parentSpanId;
  }

  get sampled(): boolean {
    return this.context.sampled;
  }

  toJSON(): TraceContext {
    const { traceId, spanId, parentSpanId, sampled } = this.context;
    return parentSpanId === undefined ? { traceId, spanId, sampled } : { traceId, spanId, parentSpanId, sampled };
  }
}
