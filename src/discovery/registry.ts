/**
 * The registry (the Eureka/Consul role): instances register, heartbeat within a TTL and say
 * whether they are ready; clients see only live, ready instances, and hear about every change.
 */
import type { Endpoint } from '../kernel/plugins.js';
import { ConflictError, ValidationError } from '../kernel/errors.js';

/** What an instance tells the registry about itself. */
export interface InstanceInfo {
  /** Unique across the registry, stable across the instance's re-registrations (e.g. `warehouse-1`). */
  readonly id: string;
  readonly service: string;
  readonly version: string;
  /** `host:port` (IPv6 hosts in brackets: `[::1]:7001`). */
  readonly address: string;
  readonly metadata?: Readonly<Record<string, string>>;
}

export interface Registration extends InstanceInfo {
  /**
   * Who registers it: the process slot its credential names (`warehouse#0`), the same for
   * every incarnation of that slot, so a restarted process takes its instance back. While the
   * instance is live, only its owner may register it again, renew it or change its
   * readiness. Undefined: the control plane itself.
   */
  readonly owner?: string;
  /** Heartbeats must arrive within this many milliseconds, or the instance expires. */
  readonly ttlMs?: number;
  /** Registered but not ready instances are known to the registry and never handed to clients. */
  readonly ready?: boolean;
}

/** `passing`: heartbeats arrive within the TTL. `expired`: they stopped; kept for status until reaped. */
export type Health = 'passing' | 'expired';

export interface InstanceStatus extends InstanceInfo {
  readonly ready: boolean;
  readonly health: Health;
  readonly ttlMs: number;
  /** Epoch milliseconds. */
  readonly registeredAt: number;
  readonly lastHeartbeat: number;
  readonly expiredAt?: number;
}

/** An endpoint as discovery hands it out: the kernel's `Endpoint` plus the instance's version. */
export interface ServiceEndpoint extends Endpoint {
  readonly version: string;
}

/** One service's served list and its revision (bumped on every change). */
export interface ServiceList {
  readonly service: string;
  readonly index: number;
  readonly endpoints: readonly ServiceEndpoint[];
}

export type ChangeListener = (list: ServiceList) => void;

export interface RegistryOptions {
  /** TTL for registrations that do not name one. Default 10 s. */
  defaultTtlMs?: number;
  /** How long an expired instance stays visible in `status()` before it is forgotten. Default 60 s. */
  reapAfterMs?: number;
  /** How often expiry is checked; 0 disables the timer (call `sweep()` yourself). Default 500 ms. */
  sweepIntervalMs?: number;
  now?: () => number;
}

interface Entry {
  info: InstanceInfo;
  owner: string | undefined;
  ttlMs: number;
  ready: boolean;
  registeredAt: number;
  lastHeartbeat: number;
  expiredAt?: number;
}

const ID = /^[A-Za-z0-9_.:@-]{1,200}$/;
const SERVICE = /^[a-z][a-zA-Z0-9-]{0,100}$/;
const ADDRESS = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$/;

/** Checks an address is `host:port` with a port in range; returns why not, or undefined. */
export function addressProblem(address: string): string | undefined {
  const m = ADDRESS.exec(address);
  if (!m) return `address "${address}" must be host:port`;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return `address "${address}" has port ${port}, outside 1..65535`;
  return undefined;
}

export class Registry {
  readonly defaultTtlMs: number;
  private readonly reapAfterMs: number;
  private readonly now: () => number;
  private readonly instances = new Map<string, Entry>();
  /** Served lists by service; a service stays known (possibly empty) once seen. */
  private readonly lists = new Map<string, ServiceList>();
  private readonly listeners = new Map<string, Set<(endpoints: readonly ServiceEndpoint[]) => void>>();
  private readonly allListeners = new Set<ChangeListener>();
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(options: RegistryOptions = {}) {
    this.defaultTtlMs = options.defaultTtlMs ?? 10_000;
    this.reapAfterMs = options.reapAfterMs ?? 60_000;
    this.now = options.now ?? Date.now;
    const every = options.sweepIntervalMs ?? 500;
    if (every > 0) {
      let last = this.now();
      this.timer = setInterval(() => {
        const now = this.now();
        const late = now - last - every;
        last = now;
        this.sweep(late > every ? late : 0);
      }, every);
      this.timer.unref();
    }
  }

  /**
   * Registers an instance, or updates it when its id is known (re-registration after a
   * restart of either side is the same call). Starts its TTL afresh.
   */
  register(reg: Registration): InstanceStatus {
    const issues = registrationIssues(reg);
    if (issues.length > 0) throw new ValidationError(`invalid registration: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
    const now = this.now();
    const existing = this.instances.get(reg.id);
    if (existing && existing.expiredAt === undefined && reg.owner !== undefined && existing.owner !== reg.owner) {
      throw new ConflictError(
        `instance ${reg.id} is live at ${existing.info.address}; only the process that registered it may register it again (or it must expire or be removed first)`,
        { id: reg.id, address: existing.info.address },
      );
    }
    const info: InstanceInfo = {
      id: reg.id,
      service: reg.service,
      version: reg.version,
      address: reg.address,
      ...(reg.metadata ? { metadata: { ...reg.metadata } } : {}),
    };
    const rec: Entry = {
      info,
      owner: reg.owner,
      ttlMs: reg.ttlMs ?? this.defaultTtlMs,
      ready: reg.ready ?? true,
      // An instance that moves to another service is a new registration.
      registeredAt: existing && !existing.expiredAt && existing.info.service === reg.service ? existing.registeredAt : now,
      lastHeartbeat: now,
    };
    this.instances.set(reg.id, rec);
    if (existing && existing.info.service !== reg.service) this.recompute(existing.info.service);
    this.recompute(reg.service);
    return this.statusOf(rec);
  }

  /** Renews the TTL. False when the instance is unknown or already expired: it must register again. */
  heartbeat(id: string, owner?: string): boolean {
    const rec = this.instances.get(id);
    if (!rec || rec.expiredAt !== undefined) return false;
    this.checkOwner(rec, owner);
    rec.lastHeartbeat = this.now();
    return true;
  }

  /** Marks an instance ready (served to clients) or not (kept, not served). False when unknown or expired. */
  setReady(id: string, ready: boolean, owner?: string): boolean {
    const rec = this.instances.get(id);
    if (!rec || rec.expiredAt !== undefined) return false;
    this.checkOwner(rec, owner);
    rec.lastHeartbeat = this.now();
    if (rec.ready !== ready) {
      rec.ready = ready;
      this.recompute(rec.info.service);
    }
    return true;
  }

  deregister(id: string, owner?: string): boolean {
    const rec = this.instances.get(id);
    if (!rec) return false;
    if (rec.expiredAt === undefined) this.checkOwner(rec, owner);
    this.instances.delete(id);
    this.recompute(rec.info.service);
    return true;
  }

  /** `owner` undefined: the control plane itself, which may change any instance. */
  private checkOwner(rec: Entry, owner: string | undefined): void {
    if (owner !== undefined && rec.owner !== owner) throw new ConflictError(`instance ${rec.info.id} belongs to another process`, { id: rec.info.id });
  }

  /**
   * Expires instances whose heartbeats stopped and forgets long-expired ones. `pausedMs` is how
   * late this sweep runs: time the registry itself was stopped or starved does not count
   * against instances (their heartbeats are queued behind this sweep), or a paused registry
   * would expire every live instance the moment it resumes.
   */
  sweep(pausedMs = 0): void {
    const now = this.now();
    const changed = new Set<string>();
    for (const [id, rec] of this.instances) {
      if (rec.expiredAt === undefined) {
        if (pausedMs > 0) rec.lastHeartbeat += pausedMs;
        if (now - rec.lastHeartbeat > rec.ttlMs) {
          rec.expiredAt = now;
          changed.add(rec.info.service);
        }
      } else if (now - rec.expiredAt > this.reapAfterMs) {
        this.instances.delete(id);
      }
    }
    for (const s of changed) this.recompute(s);
  }

  /** The live, ready instances of a service, in a stable order (by id). */
  endpoints(service: string): readonly ServiceEndpoint[] {
    return this.lists.get(service)?.endpoints ?? [];
  }

  list(service: string): ServiceList {
    return this.lists.get(service) ?? { service, index: 0, endpoints: [] };
  }

  /** Every service the registry has seen, with its current list. */
  allLists(): ServiceList[] {
    return [...this.lists.values()];
  }

  services(): string[] {
    return [...this.lists.keys()].sort();
  }

  /** Every known instance, ready or not, passing or expired. */
  status(service?: string): InstanceStatus[] {
    const out: InstanceStatus[] = [];
    for (const rec of this.instances.values()) if (service === undefined || rec.info.service === service) out.push(this.statusOf(rec));
    return out.sort((a, b) => a.service.localeCompare(b.service) || a.id.localeCompare(b.id));
  }

  instance(id: string): InstanceStatus | undefined {
    const rec = this.instances.get(id);
    return rec && this.statusOf(rec);
  }

  /** Calls `onChange` with the service's new list every time it changes (not on subscription). */
  watch(service: string, onChange: (endpoints: readonly ServiceEndpoint[]) => void): () => void {
    let set = this.listeners.get(service);
    if (!set) this.listeners.set(service, (set = new Set()));
    set.add(onChange);
    return () => {
      set.delete(onChange);
    };
  }

  /** The change feed of every service. */
  onChange(listener: ChangeListener): () => void {
    this.allListeners.add(listener);
    return () => {
      this.allListeners.delete(listener);
    };
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.listeners.clear();
    this.allListeners.clear();
  }

  private statusOf(rec: Entry): InstanceStatus {
    return {
      ...rec.info,
      ready: rec.ready,
      health: rec.expiredAt === undefined ? 'passing' : 'expired',
      ttlMs: rec.ttlMs,
      registeredAt: rec.registeredAt,
      lastHeartbeat: rec.lastHeartbeat,
      ...(rec.expiredAt !== undefined ? { expiredAt: rec.expiredAt } : {}),
    };
  }

  /** Rebuilds a service's served list and tells listeners, only when what clients see changed. */
  private recompute(service: string): void {
    const endpoints: ServiceEndpoint[] = [];
    for (const rec of this.instances.values()) {
      if (rec.info.service !== service || !rec.ready || rec.expiredAt !== undefined) continue;
      const { id, address, version, metadata } = rec.info;
      endpoints.push(Object.freeze({ service, id, address, version, ...(metadata ? { metadata } : {}) }));
    }
    endpoints.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const before = this.lists.get(service);
    if (before && sameEndpoints(before.endpoints, endpoints)) return;
    const list: ServiceList = { service, index: (before?.index ?? 0) + 1, endpoints: Object.freeze(endpoints) };
    this.lists.set(service, list);
    if (!before && endpoints.length === 0) return;
    for (const l of this.listeners.get(service) ?? []) l(list.endpoints);
    for (const l of this.allListeners) l(list);
  }
}

export function sameEndpoints(a: readonly ServiceEndpoint[], b: readonly ServiceEndpoint[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x.id !== y.id || x.address !== y.address || x.version !== y.version || !sameMetadata(x.metadata, y.metadata)) return false;
  }
  return true;
}

function sameMetadata(a: Readonly<Record<string, string>> | undefined, b: Readonly<Record<string, string>> | undefined): boolean {
  const ka = Object.keys(a ?? {});
  if (ka.length !== Object.keys(b ?? {}).length) return false;
  return ka.every((k) => a![k] === b?.[k]);
}

function registrationIssues(reg: Registration): { path: string; message: string }[] {
  const issues: { path: string; message: string }[] = [];
  if (typeof reg.id !== 'string' || !ID.test(reg.id)) issues.push({ path: 'id', message: 'letters, digits and _.:@- only, 1 to 200 characters' });
  if (typeof reg.service !== 'string' || !SERVICE.test(reg.service)) issues.push({ path: 'service', message: 'a service name (lower-case letter, then letters, digits, dashes)' });
  if (typeof reg.version !== 'string' || reg.version.length === 0 || reg.version.length > 100) issues.push({ path: 'version', message: 'a non-empty string' });
  const bad = typeof reg.address === 'string' ? addressProblem(reg.address) : 'address must be a string';
  if (bad) issues.push({ path: 'address', message: bad });
  if (reg.ttlMs !== undefined && !(Number.isInteger(reg.ttlMs) && reg.ttlMs > 0)) issues.push({ path: 'ttlMs', message: 'a positive integer' });
  if (reg.metadata !== undefined) {
    if (typeof reg.metadata !== 'object' || reg.metadata === null) issues.push({ path: 'metadata', message: 'a mapping of strings' });
    else for (const [k, v] of Object.entries(reg.metadata)) if (typeof v !== 'string') issues.push({ path: `metadata.${k}`, message: 'must be a string' });
  }
  return issues;
}
