import { randomBytes } from 'node:crypto';

/** W3C trace context (https://www.w3.org/TR/trace-context/) carried on every call. */
export interface TraceContext {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly sampled: boolean;
  /**
   * W3C baggage (https://www.w3.org/TR/baggage/): the `baggage` header a request came in with,
   * as received. Every call made on its behalf carries it on, so that a mesh can route on its
   * entries (a canary for the requests that say `canary=1`, say).
   */
  readonly baggage?: string;
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
    private readonly ownBaggage?: string,
  ) {}
  get baggage(): string | undefined {
    return this.parent ? this.parent.baggage : this.ownBaggage;
  }
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

export function newTrace(baggage?: string): TraceContext {
  return new Span(undefined, true, baggage);
}

/** The largest baggage carried on, as the W3C recommendation sets it; a longer one is dropped whole. */
export const MAX_BAGGAGE_BYTES = 8192;

/**
 * A request's trace context with the baggage it came in with (a `baggage` header of at most
 * MAX_BAGGAGE_BYTES; anything longer, or none, leaves the context as it was). Without a
 * `traceparent`, a new trace is started that carries the baggage.
 */
export function withBaggage(trace: TraceContext | undefined, baggage: string | undefined): TraceContext | undefined {
  const value = baggage?.trim();
  if (!value || Buffer.byteLength(value) > MAX_BAGGAGE_BYTES) return trace;
  if (!trace) return newTrace(value);
  return { traceId: trace.traceId, spanId: trace.spanId, parentSpanId: trace.parentSpanId, sampled: trace.sampled, baggage: value };
}

/**
 * The entries of a W3C baggage value: `key=value` members separated by commas, values
 * percent-decoded, member properties (after `;`) ignored. Malformed members are skipped.
 */
export function parseBaggage(baggage: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const member of baggage.split(',')) {
    const pair = member.split(';', 1)[0]!;
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    const key = pair.slice(0, eq).trim();
    if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(key)) continue;
    try {
      out[key] = decodeURIComponent(pair.slice(eq + 1).trim());
    } catch {
      // Not valid percent-encoding: the member is skipped, as the recommendation allows.
    }
  }
  return out;
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
