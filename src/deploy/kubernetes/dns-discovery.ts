/**
 * Discovery from the cluster's DNS, for pods that call each other over Evolith's TCP RPC. Each
 * service group has a headless Service, whose name resolves to the addresses of the group's
 * ready pods (Kubernetes takes a pod out of it as soon as its readiness probe fails). Every
 * `refreshMs` the fully qualified name `<group>.<namespace>.svc.<clusterDomain>` is resolved —
 * built in full, so that no search domain is tried — and each address becomes an endpoint of
 * every service of the group; the client library then balances, retries and breaks circuits
 * over them as it does with the registry's list.
 *
 * Calls never wait on DNS: `endpoints()` reads the last list. A name that does not exist or has
 * no address (no ready pod, or the Service not created yet) is an empty list, not a failure; a
 * failing lookup (the DNS server down, a timeout) keeps the last good list and is logged once,
 * when it starts and when it ends, not on every refresh.
 */
import { promises as dns } from 'node:dns';
import pino, { type Logger } from 'pino';
import { ConfigError } from '../../kernel/errors.js';
import type { Discovery, Endpoint } from '../../kernel/plugins.js';
import { EndpointListeners, SyncWaiters } from '../../discovery/watchers.js';

/** Resolves a name to its IPv4 addresses (as `dns.promises.resolve4`). */
export type Resolve4 = (hostname: string) => Promise<string[]>;

export interface DnsDiscoveryOptions {
  readonly namespace: string;
  /** Default `cluster.local`. */
  readonly clusterDomain?: string;
  /** The service groups to follow, each with the services it hosts. */
  readonly groups: Readonly<Record<string, readonly string[]>>;
  /** The RPC port of every pod. Default 7000. */
  readonly port?: number;
  /** How often names are resolved again. Default 2000 ms. */
  readonly refreshMs?: number;
  /** Default `dns.promises.resolve4` (the system's resolver). */
  readonly resolve4?: Resolve4;
  readonly log?: Logger;
}

/** Answers that mean "no such name" or "no address": no endpoints, which is not a failure. */
const NO_RECORDS = new Set(['ENOTFOUND', 'ENODATA']);

export const DEFAULT_RPC_PORT = 7000;
export const DEFAULT_DNS_REFRESH_MS = 2_000;

type Listener = (endpoints: readonly Endpoint[]) => void;

export class DnsDiscovery implements Discovery {
  private readonly log: Logger;
  private readonly port: number;
  private readonly refreshMs: number;
  private readonly resolve4: Resolve4;
  private readonly domain: string;
  /** Per group: its last good addresses, sorted; absent until its name was first answered. */
  private readonly addresses = new Map<string, readonly string[]>();
  private readonly cache = new Map<string, readonly Endpoint[]>();
  private readonly listeners = new EndpointListeners<Endpoint>();
  /** Groups whose lookups currently fail (logged when they start and stop failing). */
  private readonly failing = new Map<string, string>();
  private readonly syncWaiters = new SyncWaiters();
  private timer: NodeJS.Timeout | undefined;
  private round: Promise<void> | undefined;
  private synced = false;
  private closed = false;

  constructor(private readonly options: DnsDiscoveryOptions) {
    this.log = options.log ?? pino({ level: 'silent' });
    this.port = options.port ?? DEFAULT_RPC_PORT;
    this.refreshMs = options.refreshMs ?? DEFAULT_DNS_REFRESH_MS;
    this.resolve4 = options.resolve4 ?? ((name) => dns.resolve4(name));
    this.domain = options.clusterDomain ?? 'cluster.local';
    if (!(this.refreshMs > 0)) throw new ConfigError(`the DNS refresh interval must be positive, got ${this.refreshMs}`);
  }

  /** The name a group's Service resolves under, fully qualified. */
  nameOf(group: string): string {
    return `${group}.${this.options.namespace}.svc.${this.domain}`;
  }

  /** Resolves every group now and then every `refreshMs` (idempotent). */
  start(): this {
    if (this.timer || this.closed) return this;
    void this.refresh();
    this.timer = setInterval(() => void this.refresh(), this.refreshMs);
    this.timer.unref();
    return this;
  }

  /** Resolves true once every group has been looked up once (answered or not), false if `timeoutMs` passes first. */
  whenSynced(timeoutMs = 5_000): Promise<boolean> {
    if (this.synced) return Promise.resolve(true);
    return this.syncWaiters.wait(timeoutMs);
  }

  endpoints(service: string): readonly Endpoint[] {
    return this.cache.get(service) ?? [];
  }

  watch(service: string, onChange: Listener): () => void {
    return this.listeners.add(service, onChange);
  }

  /** One round of lookups (a round already under way is joined, not doubled). */
  refresh(): Promise<void> {
    this.round ??= this.lookupAll().finally(() => {
      this.round = undefined;
    });
    return this.round;
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async lookupAll(): Promise<void> {
    await Promise.all(Object.keys(this.options.groups).map((group) => this.lookup(group)));
    if (this.closed) return;
    if (!this.synced) {
      this.synced = true;
      this.syncWaiters.release();
    }
  }

  private async lookup(group: string): Promise<void> {
    const name = this.nameOf(group);
    let found: string[];
    try {
      found = await this.resolve4(name);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (NO_RECORDS.has(code)) {
        found = [];
      } else {
        const reason = `${code || 'error'}: ${(err as Error).message}`;
        if (!this.failing.has(group) && !this.closed) {
          this.log.warn({ name, reason, keeping: this.addresses.get(group)?.length ?? 0 }, 'DNS lookup failed; keeping the last known endpoints until it answers again');
        }
        this.failing.set(group, reason);
        return;
      }
    }
    if (this.closed) return;
    if (this.failing.delete(group)) this.log.info({ name, addresses: found.length }, 'DNS answers again');
    const sorted = [...new Set(found)].sort();
    const old = this.addresses.get(group);
    if (old && old.length === sorted.length && old.every((a, i) => a === sorted[i])) return;
    this.addresses.set(group, sorted);
    this.log.debug({ name, addresses: sorted }, 'endpoints from DNS changed');
    for (const service of this.options.groups[group] ?? []) {
      const list = Object.freeze(
        sorted.map((ip) => Object.freeze({ service, id: `${service}@${ip}`, address: `${ip}:${this.port}`, metadata: Object.freeze({ group, ip }) })),
      );
      this.cache.set(service, list);
      this.listeners.emit(service, list, this.log);
    }
  }
}

/**
 * The resolver named by `EVOLITH_DNS_SERVER` (`ip:port`), when a pod must ask one DNS server of
 * its own instead of the system's (a local cluster without network namespaces); undefined when
 * the variable is not set, and a ConfigError when it is not an address.
 */
export function resolverFromEnv(value: string | undefined = process.env.EVOLITH_DNS_SERVER): Resolve4 | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):\d{1,5}$/.test(value)) throw new ConfigError(`EVOLITH_DNS_SERVER must be ip:port, got "${value}"`);
  const resolver = new dns.Resolver({ timeout: 1_000, tries: 2 });
  resolver.setServers([value]);
  return (name) => resolver.resolve4(name);
}
