import { describe, expect, it } from 'vitest';
import { childTrace, MAX_BAGGAGE_BYTES, newTrace, parseBaggage, parseTraceparent, withBaggage } from './trace.js';

describe('W3C baggage', () => {
  it('a request’s baggage travels with its trace to every call made on its behalf', () => {
    const root = withBaggage(parseTraceparent('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'), ' canary=1 ')!;
    expect(root.traceId).toBe('0af7651916cd43dd8448eb211c80319c');
    expect(root.baggage).toBe('canary=1');
    const grandchild = childTrace(childTrace(root));
    expect(grandchild.baggage).toBe('canary=1');
    expect(grandchild.traceId).toBe(root.traceId);
  });

  it('without a traceparent a new trace carries it; without baggage, or with too much, nothing changes', () => {
    expect(withBaggage(undefined, 'a=b')!.baggage).toBe('a=b');
    expect(withBaggage(undefined, undefined)).toBeUndefined();
    const trace = newTrace();
    expect(withBaggage(trace, '  ')).toBe(trace);
    expect(withBaggage(trace, `k=${'x'.repeat(MAX_BAGGAGE_BYTES)}`)).toBe(trace);
    expect(newTrace().baggage).toBeUndefined();
  });

  it('entries are read as the recommendation writes them: percent-decoded, properties dropped, malformed members skipped', () => {
    expect(parseBaggage('userId=alice, serverNode=DF%2028,isProduction=false;ttl=30, =x, bad key=1, pct=%E0%A4%A, flag')).toEqual({
      userId: 'alice',
      serverNode: 'DF 28',
      isProduction: 'false',
    });
  });
});
