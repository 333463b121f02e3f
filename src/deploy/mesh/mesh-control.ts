/**
 * The mesh half of the control plane (the microservices control plane runs the rest: registry,
 * supervisor, credentials): the certificate authority, the traffic policy and the proxies.
 *
 * - Identity: a CA made at start issues each app instance's proxy a short-lived certificate
 *   naming its services (`spiffe://<app>/<service>`), and a new one when two thirds of its
 *   lifetime have passed; open connections finish on the old one, so no call fails.
 * - Policy: the policy file is read, checked against the app (every problem reported) and
 *   pushed to every proxy as a versioned snapshot; an edit is debounced, an invalid one is
 *   refused with its reasons and the running policy stays. Each proxy acknowledges (or refuses)
 *   each version.
 * - Proxies: one per app instance (sidecar mode), or one for every instance of this machine
 *   (node mode); each instance's proxy ports and sockets are fixed for its slot, so a restarted
 *   proxy or app finds the other where it was.
 */
import { mkdtempSync, rmSync, watch, type FSWatcher } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { AppDefinition } from '../../app/define.js';
import type { CredentialBundle } from '../../auth/credentials.js';
import { MeshAuthority, type IssuedCertificate } from '../../mesh/ca.js';
import {
  MESH_ACK,
  MESH_CONFIG,
  MESH_IDENTITY,
  MESH_INSTANCES,
  MESH_NACK,
  MESH_START,
  MESH_STATUS,
  type FromProxy,
  type MeshIdentity,
  type MeshStartMessage,
  type PolicySnapshot,
  type ProxiedStatus,
} from '../../mesh/messages.js';
import { loadMeshPolicy, type AppShape, type MeshPolicy } from '../../mesh/policy.js';
import type { ProxiedInstance } from '../../mesh/sidecar.js';
import type { ServiceGroup } from '../microservices/groups.js';
import type { Topology } from '../topology.js';
import type { MeshInstanceEnv } from './envelope.js';

/** One app instance slot in the mesh: a group replica, or the edge. */
interface Slot {
  readonly key: string;
  readonly group: string;
  readonly replica: number;
  readonly services: readonly string[];
  readonly edge: boolean;
  readonly version: string;
  readonly inboundPort: number;
  readonly appSocket: string | undefined;
  readonly outboundPath: string;
  certificate: IssuedCertificate;
}

/** What the control plane knows of one proxy process. */
interface ProxyState {
  readonly process: string;
  acked: number | undefined;
  refused: { version: number; reason: string } | undefined;
  status: { metrics: string; configVersion: number; proxied: readonly ProxiedStatus[] } | undefined;
}

/** The proxy process serving every instance in node mode. */
export const NODE_PROXY = 'node-proxy';
const DEFAULT_VERSION = 'v1';

export interface ProxyHost {
  /** Starts a supervised proxy process whose start message is made per incarnation. */
  startProxy(name: string, replica: number, holder: { sub: string; px: readonly string[] }, start: (credentials: CredentialBundle) => MeshStartMessage): void;
  stopProxy(name: string, replica: number): Promise<void>;
  send(name: string, replica: number, message: unknown): boolean;
}

export class MeshControl {
  private readonly slots = new Map<string, Slot>();
  private readonly proxies = new Map<string, ProxyState>();
  private readonly ports = new Map<string, number>();
  private readonly socketsDir: string;
  private policy: MeshPolicy;
  private snapshot: PolicySnapshot;
  private policyError: string | undefined;
  private watcher: FSWatcher | undefined;
  private rotation: NodeJS.Timeout | undefined;
  private host: ProxyHost | undefined;
  private registryUrl = '';
  private readonly policyFile: string;

  private constructor(
    private readonly app: AppDefinition,
    private readonly topology: Topology,
    private readonly authority: MeshAuthority,
    readonly shape: AppShape,
    private readonly log: Logger,
    appDir: string,
  ) {
    this.policyFile = resolve(appDir, topology.mesh.policy);
    // Fails the start with every problem when the policy file is wrong.
    this.policy = loadMeshPolicy(this.policyFile, shape);
    this.snapshot = { version: 1, document: this.policy.document, shape };
    // Sockets between each app and its proxy live here: a directory only this user can enter.
    this.socketsDir = mkdtempSync(join(tmpdir(), 'evolith-mesh-'));
  }

  static async create(app: AppDefinition, appDir: string, topology: Topology, log: Logger): Promise<MeshControl> {
    const authority = await MeshAuthority.create({ app: app.name });
    return new MeshControl(app, topology, authority, appShape(app, topology), log.child({ component: 'mesh' }), appDir);
  }

  get mode(): 'sidecar' | 'node' {
    return this.topology.mesh.mode;
  }

  get policyVersion(): number {
    return this.snapshot.version;
  }

  /** The groups with their replicas as the versions set them. */
  groups(groups: readonly ServiceGroup[]): ServiceGroup[] {
    return groups.map((g) => {
      const versions = this.topology.mesh.versions[g.name];
      return versions ? { ...g, replicas: Object.values(versions).reduce((n, v) => n + v.replicas, 0) } : g;
    });
  }

  /** Starts watching the policy and rotating certificates; proxies are started through `host`. */
  begin(host: ProxyHost, registryUrl: string): void {
    this.host = host;
    this.registryUrl = registryUrl;
    if (this.mode === 'node') this.startProxy(NODE_PROXY, 0);
    this.watchPolicy();
    const ttl = this.topology.mesh.certificateTtlMs;
    this.rotation = setInterval(() => void this.rotate().catch((err) => this.log.error({ err }, 'certificate rotation failed')), Math.max(500, Math.floor(ttl / 6)));
    this.rotation.unref();
  }

  /**
   * Prepares an app instance before its worker starts: its certificate, sockets and port, and
   * its proxy (started here in sidecar mode; told in node mode). Returns what the worker is told.
   */
  async addInstance(group: ServiceGroup | 'edge', replica: number): Promise<MeshInstanceEnv> {
    const edge = group === 'edge';
    const name = edge ? 'edge' : group.name;
    const key = `${name}#${replica}`;
    const services = edge ? [] : group.services;
    const version = edge ? DEFAULT_VERSION : this.versionOf(name, replica);
    const slug = `${name}-${replica}`;
    const slot: Slot = {
      key,
      group: name,
      replica,
      services,
      edge,
      version,
      inboundPort: await this.portFor(key),
      appSocket: edge ? undefined : join(this.socketsDir, `${slug}.app.sock`),
      outboundPath: join(this.socketsDir, `${slug}.out.sock`),
      certificate: await this.authority.issue(edge ? ['edge'] : services, this.topology.mesh.certificateTtlMs),
    };
    this.slots.set(key, slot);
    if (this.mode === 'sidecar') this.startProxy(proxyName(name), replica);
    else this.pushInstances();
    return {
      instance: key,
      appSocket: slot.appSocket,
      outboundPath: slot.outboundPath,
      inboundAddress: `${hostForAddress(this.topology.internalHost)}:${slot.inboundPort}`,
      version,
    };
  }

  /** An instance was scaled away: its proxy goes with it. */
  async removeInstance(group: string, replica: number): Promise<void> {
    this.slots.delete(`${group}#${replica}`);
    if (this.mode === 'sidecar') await this.host?.stopProxy(proxyName(group), replica);
    else this.pushInstances();
  }

  /** Which proxy processes must report before the deployment is ready. */
  waitingFor(): string[] {
    const expected = this.mode === 'node' ? [`${NODE_PROXY}#0`] : [...this.slots.values()].map((s) => `${proxyName(s.group)}#${s.replica}`);
    return expected.filter((p) => {
      const st = this.proxies.get(p)?.status;
      if (!st) return true;
      const serving = new Set(st.proxied.map((x) => x.instance));
      return this.mode === 'node' ? [...this.slots.keys()].some((k) => !serving.has(k)) : serving.size === 0;
    });
  }

  /** A message from a proxy process. */
  onMessage(name: string, replica: number, message: unknown): void {
    const m = message as FromProxy | undefined;
    const state = this.proxies.get(`${name}#${replica}`);
    if (!state || !m || typeof m !== 'object') return;
    if (m.type === MESH_ACK) {
      state.acked = m.version;
      state.refused = undefined;
    } else if (m.type === MESH_NACK) {
      state.refused = { version: m.version, reason: m.reason };
      this.log.error({ proxy: state.process, version: m.version, reason: m.reason }, 'a proxy refused a policy snapshot');
    } else if (m.type === MESH_STATUS) {
      state.status = { metrics: m.metrics, configVersion: m.configVersion, proxied: m.proxied };
    }
  }

  /** What `evolith status` shows: each proxy's identities, certificate expiry and policy version. */
  status() {
    return {
      mode: this.mode,
      policy: { file: this.policyFile, version: this.snapshot.version, error: this.policyError },
      trust: { ca: 'ECDSA P-256', certificateTtlMs: this.topology.mesh.certificateTtlMs },
      proxies: [...this.proxies.values()].map((p) => ({
        process: p.process,
        configVersion: p.acked,
        refused: p.refused,
        metrics: p.status?.metrics,
        proxied: p.status?.proxied ?? [],
      })),
    };
  }

  async stop(): Promise<void> {
    clearInterval(this.rotation);
    this.watcher?.close();
    rmSync(this.socketsDir, { recursive: true, force: true });
  }

  private versionOf(group: string, replica: number): string {
    const versions = this.topology.mesh.versions[group];
    if (!versions) return DEFAULT_VERSION;
    let n = replica;
    for (const [label, v] of Object.entries(versions)) {
      if (n < v.replicas) return label;
      n -= v.replicas;
    }
    return Object.keys(versions).at(-1) ?? DEFAULT_VERSION;
  }

  private startProxy(name: string, replica: number): void {
    const key = `${name}#${replica}`;
    if (!this.proxies.has(key)) this.proxies.set(key, { process: key, acked: undefined, refused: undefined, status: undefined });
    const px = name === NODE_PROXY ? ['*'] : [`${name.slice(0, -'.proxy'.length)}#${replica}`];
    this.host!.startProxy(
      name,
      replica,
      { sub: key, px },
      (credentials) => ({
        type: MESH_START,
        credentials,
        app: this.app.name,
        registryUrl: this.registryUrl,
        internalHost: this.topology.internalHost,
        identity: this.identity(),
        instances: this.instancesOf(name, replica),
        config: this.snapshot,
      }),
    );
  }

  private instancesOf(name: string, replica: number): ProxiedInstance[] {
    const slots = name === NODE_PROXY ? [...this.slots.values()] : [...this.slots.values()].filter((s) => proxyName(s.group) === name && s.replica === replica);
    return slots.map((s) => ({
      instance: s.key,
      services: s.services,
      edge: s.edge,
      appSocket: s.appSocket ? `unix:${s.appSocket}` : undefined,
      outboundPath: s.outboundPath,
      inboundPort: s.inboundPort,
    }));
  }

  private identity(): MeshIdentity {
    return { trustPem: this.authority.trustPem, certificates: Object.fromEntries([...this.slots.values()].map((s) => [s.key, s.certificate])) };
  }

  private pushInstances(): void {
    if (!this.proxies.has(`${NODE_PROXY}#0`)) return;
    this.host?.send(NODE_PROXY, 0, { type: MESH_INSTANCES, instances: this.instancesOf(NODE_PROXY, 0), identity: this.identity() });
  }

  /** Renews every certificate with less than a third of its lifetime left, and hands it to its proxy. */
  private async rotate(): Promise<void> {
    const ttl = this.topology.mesh.certificateTtlMs;
    const now = Date.now();
    const due = [...this.slots.values()].filter((s) => s.certificate.notAfter - now < ttl / 3);
    if (due.length === 0) return;
    for (const s of due) s.certificate = await this.authority.issue(s.edge ? ['edge'] : s.services, ttl);
    const identity = this.identity();
    if (this.mode === 'node') this.host?.send(NODE_PROXY, 0, { type: MESH_IDENTITY, identity });
    else for (const s of due) this.host?.send(proxyName(s.group), s.replica, { type: MESH_IDENTITY, identity: { trustPem: identity.trustPem, certificates: { [s.key]: s.certificate } } });
    this.log.debug({ renewed: due.map((s) => s.key) }, 'certificates renewed');
  }

  private watchPolicy(): void {
    let timer: NodeJS.Timeout | undefined;
    const reread = () => {
      let next: MeshPolicy;
      try {
        next = loadMeshPolicy(this.policyFile, this.shape);
      } catch (err) {
        this.policyError = (err as Error).message;
        this.log.error({ reason: this.policyError }, 'mesh policy edit refused; the running policy stays');
        return;
      }
      this.policyError = undefined;
      if (JSON.stringify(next.document) === JSON.stringify(this.policy.document)) return;
      this.policy = next;
      this.snapshot = { version: this.snapshot.version + 1, document: next.document, shape: this.shape };
      this.log.info({ version: this.snapshot.version }, 'mesh policy changed; pushing it to every proxy');
      for (const key of this.proxies.keys()) {
        const [name, replica] = [key.slice(0, key.lastIndexOf('#')), Number(key.slice(key.lastIndexOf('#') + 1))];
        this.host?.send(name, replica, { type: MESH_CONFIG, config: this.snapshot });
      }
    };
    const file = basename(this.policyFile);
    try {
      this.watcher = watch(dirname(this.policyFile), (_event, name) => {
        if (name !== null && name !== file) return;
        clearTimeout(timer);
        timer = setTimeout(reread, 100);
      });
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'the mesh policy cannot be watched; edits apply on restart');
    }
  }

  /** A port for the slot's proxy, the same for every incarnation of the slot. */
  private async portFor(key: string): Promise<number> {
    let port = this.ports.get(key);
    if (port === undefined) {
      port = await freePort(this.topology.internalHost);
      this.ports.set(key, port);
    }
    return port;
  }
}

/** The supervised name of an instance's sidecar. */
export function proxyName(group: string): string {
  return `${group}.proxy`;
}

/** The app's services, methods and versions, as the policy is checked against them. */
export function appShape(app: AppDefinition, topology: Topology): AppShape {
  const services: Record<string, Record<string, { idempotent: boolean }>> = {};
  for (const s of app.services) {
    services[s.contract.name] = Object.fromEntries(Object.values(s.contract.methods).map((m) => [m.name, { idempotent: m.idempotent }]));
  }
  const versions: Record<string, string[]> = {};
  const groupOf = (service: string) => Object.entries(topology.groups).find(([, list]) => list.includes(service))?.[0] ?? service;
  for (const s of app.services) {
    const v = topology.mesh.versions[groupOf(s.contract.name)];
    versions[s.contract.name] = v ? Object.keys(v) : [DEFAULT_VERSION];
  }
  return { app: app.name, services, versions };
}

function hostForAddress(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function freePort(host: string): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolvePort(port));
    });
  });
}
