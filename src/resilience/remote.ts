/**
 * Wires discovery + balancer + policy into the Runtime's `remote` slot as the kernel stands:
 * the Runtime calls `policy.execute(method, (meta) => transport.invoke(method, input, meta), meta)`,
 * which gives the policy neither the input (for affinity) nor a way to hand the transport the
 * endpoint it chose. So the policy runs inside `transport.invoke`, and the slot's policy only
 * supplies timeouts. (Once the kernel's CallPolicy passes `input` and a chosen endpoint
 * through, ResilientPolicy can sit in the slot directly.)
 */
import type { MethodDef } from '../contract/define.js';
import type { CallMeta, CallPolicy, Endpoint, Transport } from '../kernel/plugins.js';
import type { ResilientPolicy } from './policy.js';

/** A transport that can send to one given endpoint (TCP, HTTP). */
export interface EndpointSender {
  readonly name: string;
  send(endpoint: Endpoint, method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown>;
  close?(): Promise<void>;
}

export interface RemoteSlot {
  transport: Transport;
  policy: CallPolicy;
}

export function resilientRemote(policy: ResilientPolicy, sender: EndpointSender): RemoteSlot {
  return {
    transport: {
      name: `${sender.name}+resilience`,
      invoke: (method, input, meta) => policy.execute(method, (m, endpoint) => sender.send(endpoint, method, input, m), meta, input),
      close: () => sender.close?.() ?? Promise.resolve(),
    },
    policy: {
      timeoutFor: (method) => policy.timeoutFor(method),
      execute: (_method, attempt, meta) => attempt(meta),
    },
  };
}
