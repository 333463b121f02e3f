import type { AppDefinition } from '../../app/define.js';
import { ConfigError } from '../../kernel/errors.js';
import type { Topology } from '../topology.js';

export interface ServiceGroup {
  readonly name: string;
  readonly services: readonly string[];
  readonly replicas: number;
}

/** Groups from the topology; every service not named in one runs in a group of its own. */
export function serviceGroups(app: AppDefinition, topology: Topology): ServiceGroup[] {
  const known = new Set(app.services.map((s) => s.contract.name));
  const placed = new Map<string, string>();
  const problems: string[] = [];
  for (const [group, services] of Object.entries(topology.groups)) {
    for (const s of services) {
      if (!known.has(s)) problems.push(`group ${group} names ${s}, which is not a service of ${app.name}`);
      else if (placed.has(s)) problems.push(`${s} is in two groups: ${placed.get(s)} and ${group}`);
      else placed.set(s, group);
    }
  }
  const groups = new Map<string, string[]>();
  for (const s of app.services.map((d) => d.contract.name)) {
    const g = placed.get(s) ?? s;
    if (!placed.has(s) && topology.groups[s]) problems.push(`service ${s} is not in group ${s}, yet a group has its name`);
    groups.set(g, [...(groups.get(g) ?? []), s]);
  }
  for (const name of Object.keys(topology.replicas)) {
    if (!groups.has(name)) problems.push(`replicas names ${name}, which is neither a group nor an ungrouped service`);
  }
  if (groups.has('edge')) problems.push('"edge" is reserved for the HTTP gateway process');
  if (problems.length) throw new ConfigError(`invalid microservices topology:\n${problems.map((p) => `  ${p}`).join('\n')}`);
  return [...groups].map(([name, services]) => ({ name, services, replicas: topology.replicas[name] ?? 1 }));
}

