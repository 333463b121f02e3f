import { describe, expect, test } from 'vitest';
import { childTrace, formatTraceparent } from '../kernel/trace.js';
import { WireTrace } from './wire-trace.js';

describe('trace context from the wire', () => {
  test('a valid traceparent reads as parseTraceparent gives it, and children continue it', () => {
    const t = new WireTrace('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    expect(t.toJSON()).toEqual({ traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', sampled: true });
    expect(formatTraceparent(t)).toBe('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    const child = childTrace(t);
    expect(child.traceId).toBe(t.traceId);
    expect(child.parentSpanId).toBe('b7ad6b7169203331');
    expect(new WireTrace('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00').sampled).toBe(false);
  });

  test('an absent or invalid traceparent starts one new trace, the same on every read', () => {
    for (const header of [undefined, 'garbage', '00-00000000000000000000000000000000-b7ad6b7169203331-01']) {
      const t = new WireTrace(header);
      expect(t.traceId).toMatch(/^[0-9a-f]{32}$/);
      expect(t.spanId).toMatch(/^[0-9a-f]{16}$/);
      expect(t.traceId).toBe(t.traceId);
      expect(formatTraceparent(t)).toBe(formatTraceparent(t));
      expect(t.sampled).toBe(true);
    }
    expect(new WireTrace(undefined).traceId).not.toBe(new WireTrace(undefined).traceId);
  });
});
