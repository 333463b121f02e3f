import { randomBytes } from 'node:crypto';

/** W3C trace context (https://www.w3.org/TR/trace-context/) carried on every call. */
export interface TraceContext {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly sampled: boolean;
}

// Ids come from a random per-process prefix plus a counter: unique and cheap. They are made
// lazily, on first read, because an in-process call that nobody traces should not pay for them.
const processPrefix = randomBytes(8).toString('hex');
const spanPrefix = randomBytes(4).toString('hex');
let counter = randomBytes(4).readUInt32BE(0);

function nextId(): string {
  counter = (counter + 1) >>> 0;
  return spanPrefix + counter.toString(16).padStart(8, '0');
}

class Span implements TraceContext {
  private _traceId: string | undefined;
  private _spanId: string | undefined;
  constructor(
    private readonly parent: TraceContext | undefined,
    readonly sampled: boolean,
  ) {}
  get traceId(): string {
    return (this._traceId ??= this.parent ? this.parent.traceId : processPrefix + nextId());
  }
  get spanId(): string {
    return (this._spanId ??= nextId());
  }
  get parentSpanId(): string | undefined {
    return this.parent?.spanId;
  }
  toJSON(): TraceContext {
    return { traceId: this.traceId, spanId: this.spanId, parentSpanId: this.parentSpanId, sampled: this.sampled };
  }
}

export function newTrace(): TraceContext {
  return new Span(undefined, true);
}

export function childTrace(parent: TraceContext): TraceContext {
  return new Span(parent, parent.sampled);
}

const traceparentPattern = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** Parses a `traceparent` header; an absent or invalid one starts a new trace, as the spec asks. */
export function parseTraceparent(header: string | undefined): TraceContext | undefined {
  if (!header) return undefined;
  const m = traceparentPattern.exec(header.trim().toLowerCase());
  if (!m || /^0+$/.test(m[1]!) || /^0+$/.test(m[2]!)) return undefined;
  return { traceId: m[1]!, spanId: m[2]!, sampled: (parseInt(m[3]!, 16) & 1) === 1 };
}

export function formatTraceparent(t: TraceContext): string {
  return `00-${t.traceId}-${t.spanId}-${t.sampled ? '01' : '00'}`;
}
