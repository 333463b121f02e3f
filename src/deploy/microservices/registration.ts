/**
 * How a worker announces itself to the registry, in microservices and in a mesh alike: the
 * edge worker registers the edge's URL; a service worker registers one instance per hosted
 * service at the address callers reach it by (its RPC listener, or in a mesh its proxy).
 */
import type { Logger } from 'pino';
import { InstanceAgent } from '../../discovery/instance-agent.js';
import type { Runtime } from '../../kernel/runtime.js';

export interface Registration {
  readonly registryUrl: string;
  readonly token: () => string;
  readonly role: { kind: 'group'; group: string } | { kind: 'edge' };
  readonly replica: number;
  readonly runtime: Runtime;
  readonly edgeUrl: string | undefined;
  /** Where callers reach the hosted services. */
  readonly address: string | undefined;
  readonly metadata: Readonly<Record<string, string>>;
  readonly log: Logger;
}

export function registrationAgents(r: Registration): InstanceAgent[] {
  const { registryUrl: url, token, replica, metadata, log, role } = r;
  if (role.kind === 'edge') {
    return [new InstanceAgent({ url, token, instance: { id: `edge-${replica}`, service: 'edge', version: '1', address: new URL(r.edgeUrl!).host, metadata }, log })];
  }
  return [...r.runtime.hosts.values()].map(
    (h) =>
      new InstanceAgent({
        url,
        token,
        instance: { id: `${h.name}-${replica}`, service: h.name, version: h.definition.contract.version, address: r.address!, metadata: { ...metadata, group: role.group } },
        log,
      }),
  );
}
