import { randomBytes } from 'node:crypto';

/** W3C trace context (https://www.w3.org/TR/trace-context/) carried on every call. */
export interface TraceContext {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly sampled: boolean;
}

// Ids come from a random per-process base plus a counter: unique and cheap on the hot path,
// where a crypto call per span would cost more than the call itself.
const processPrefix = randomBytes(8).toString('hex');
let counter = BigInt('0x' + randomBytes(7).toString('hex'));

function nextId(): string {
  counter = (counter + 1n) & 0xffffffffffffffffn;
  return counter.toString(16).padStart(16, '0');
}

export function newTrace(): TraceContext {
  return { traceId: processPrefix + nextId(), spanId: nextId(), sampled: true };
}

export function childTrace(parent: TraceContext): TraceContext {
  return { traceId: parent.traceId, spanId: nextId(), parentSpanId: parent.spanId, sampled: parent.sampled };
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
