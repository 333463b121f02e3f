/**
 * The in-process implementations of the plugin slots that only matter once calls leave the
 * process: monolith mode uses them, later architectures replace them.
 */
import type { MethodDef } from '../contract/define.js';
import type { Balancer, CallMeta, CallPolicy, Codec, Discovery, Endpoint } from './plugins.js';

export const DEFAULT_TIMEOUT_MS = 10_000;

export interface MethodPolicy {
  timeoutMs?: number;
}

/** Every service lives in this process: one endpoint each. */
export class LocalDiscovery implements Discovery {
  private readonly table: ReadonlyMap<string, readonly Endpoint[]>;
  constructor(services: Iterable<string>) {
    this.table = new Map([...services].map((s) => [s, [{ service: s, id: `${s}@local`, address: 'in-process' }]]));
  }
  endpoints(service: string): readonly Endpoint[] {
    return this.table.get(service) ?? [];
  }
}

/** With one endpoint per service there is nothing to balance. */
export class FirstBalancer implements Balancer {
  pick(endpoints: readonly Endpoint[]): Endpoint | undefined {
    return endpoints[0];
  }
}

/**
 * Timeouts from the topology (`service.method`, then `service`, then the contract, then `*`).
 * In-process there is nothing to retry and no circuit to open: a local failure is not transient.
 */
export class LocalPolicy implements CallPolicy {
  private readonly cache = new Map<MethodDef, number>();
  constructor(private readonly policies: Readonly<Record<string, MethodPolicy>> = {}) {}

  timeoutFor(method: MethodDef): number {
    let t = this.cache.get(method);
    if (t === undefined) {
      const p = this.policies;
      t = p[method.fullName]?.timeoutMs ?? p[method.service]?.timeoutMs ?? method.timeoutMs ?? p['*']?.timeoutMs ?? DEFAULT_TIMEOUT_MS;
      this.cache.set(method, t);
    }
    return t;
  }

  execute<T>(_method: MethodDef, attempt: (meta: CallMeta) => Promise<T>, meta: CallMeta): Promise<T> {
    return attempt(meta);
  }
}

/** JSON as bytes: what the HTTP interop transport speaks, and a reference for other codecs. */
export class JsonCodec implements Codec {
  readonly name = 'json';
  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder();
  encode(value: unknown): Uint8Array {
    return this.encoder.encode(JSON.stringify(value));
  }
  decode(bytes: Uint8Array): unknown {
    return JSON.parse(this.decoder.decode(bytes));
  }
}
