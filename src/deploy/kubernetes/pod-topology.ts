/**
 * The topology a pod runs: the file Kubernetes mounts from the `evolith-topology` ConfigMap,
 * with the backends' URLs taken from the pod's environment (they come from a Secret, so the
 * ConfigMap holds no password). The file keeps every other storage and events setting (schema
 * prefix, pool size, stream), and the pod fills in only the URLs.
 *
 * Embedded SQLite is refused: pods run on different machines and cannot share a file.
 */
import { ConfigError } from '../../kernel/errors.js';
import { loadTopology, type Topology, type TopologyOverrides, type TopologySource } from '../topology.js';

/** The backends' URLs, as the pod's environment gives them. */
export interface PodBackends {
  readonly postgresUrl: string;
  readonly natsUrl: string;
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * How a pod reads its topology file: PostgreSQL storage and NATS events with the URLs from
 * `backends`; anything else is refused with one ConfigError naming every problem.
 */
export function podTopologySource(file: string, backends: PodBackends): TopologySource {
  return {
    file,
    prepare(raw, path) {
      const problems: string[] = [];
      const storage = raw.storage ?? 'sqlite';
      if (isMapping(storage) && storage.driver === 'postgres') {
        raw.storage = { ...storage, url: backends.postgresUrl };
      } else {
        problems.push(
          `storage is ${isMapping(storage) ? String(storage.driver) : String(storage)}: embedded SQLite cannot be shared by pods on different machines; a pod needs storage.driver: postgres (its URL comes from EVOLITH_POSTGRES_URL)`,
        );
      }
      const events = raw.events ?? 'sqlite';
      if (isMapping(events) && events.driver === 'nats') {
        raw.events = { ...events, url: backends.natsUrl };
      } else {
        const kind = isMapping(events) ? String(events.driver) : String(events);
        problems.push(
          `events is ${kind}: ${kind === 'memory' ? 'in-process delivery cannot reach other pods' : 'an embedded SQLite bus cannot be shared by pods on different machines'}; a pod needs events.driver: nats (its URL comes from EVOLITH_NATS_URL)`,
        );
      }
      if (problems.length > 0) throw new ConfigError(`${path} cannot run in a pod:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    },
  };
}

/** Reads the pod's topology file (see `podTopologySource`). */
export function loadPodTopology(appDir: string, file: string, backends: PodBackends, overrides: TopologyOverrides = {}): Topology {
  return loadTopology(appDir, overrides, podTopologySource(file, backends));
}
