import { afterEach, describe, expect, test } from 'vitest';
import { MeshBench, type BenchOptions } from '../../test/fixtures/mesh-kit.js';

const benches: MeshBench[] = [];
afterEach(async () => {
  for (const b of benches.splice(0)) await b.close();
});

async function bench(options: BenchOptions = {}): Promise<MeshBench> {
  const b = await MeshBench.start(options);
  benches.push(b);
  return b;
}

describe('sidecar: the path of a call', () => {
  test('a call passes app → sidecar → mutual TLS → sidecar → app, and the callee sees the calling service and the trace', async () => {
    const b = await bench();
    const trace = { traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), sampled: true };
    const out = await b.call('whoami', {}, { trace });
    expect(out).toEqual({ label: 'v1', from: 'audit', traceId: trace.traceId });
  });
});
