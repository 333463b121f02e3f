/**
 * A local cluster that runs what Kubernetes manifests describe, for tests of what `evolith
 * deploy kubernetes` generates: every Deployment's replicas, StatefulSet's ordinals, Knative
 * Service's initial pods and ContainerSource's pod run as processes, each pod in its own network
 * namespace with its own address; Services get a name in the simulation's DNS (ready pods' IPs
 * for headless ones, a ClusterIP for the others, where a userspace kube-proxy forwards each
 * connection to a ready endpoint); probes run as the kubelet runs them and drive endpoints.
 *
 * Kinds it does not run (HorizontalPodAutoscaler, PodDisruptionBudget, NetworkPolicy, Ingress,
 * Istio's...) are kept and listed by `ignored()`, so a test can say what it did not exercise.
 *
 * Needs root, `ip` and network namespaces; `ClusterSimulation.unavailable()` says why not.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ClusterDns, type Lookup } from './dns.js';
import { Forwarder, parseTarget, type Endpoint } from './kube-proxy.js';
import {
  configMapValues,
  loadManifests,
  ManifestError,
  matchesSelector,
  secretValues,
  type Container,
  type KubeObject,
  type PodTemplate,
} from './manifests.js';
import { ClusterNetwork, networkUnavailable, removeLeftovers } from './network.js';
import { Pod, type ContainerStatus, type PodContext } from './pods.js';

/** A local command standing for an image that is not the app's (e.g. a PostgreSQL on the machine for postgres:16-alpine). */
export interface ForeignImage {
  /** Runs in place of the image's entrypoint when the container gives no `command`. */
  entrypoint?: string[];
  /** The local directory standing for the image's `/app/`, if it has one. */
  dir?: string;
}

export interface ClusterSimulationOptions {
  /** The cluster's DNS domain; default `cluster.local`. */
  clusterDomain?: string;
  /** Image references that are the app's image (a reference without tag matches any tag of it). */
  appImages: string[];
  /** The local directory laid out as the app image's `/app/` (pod.mjs, app/, node_modules/). */
  imageDir: string;
  /** Other images the manifests may use, and what stands for them; anything else is refused. */
  foreignImages?: Record<string, ForeignImage>;
  /** Forwarders on the host address to servers outside the cluster (the host's loopback PostgreSQL, NATS). */
  externals?: { port: number; target: string }[];
  /** Multiplies probe periods and delays, restart backoff and controller retries (e.g. 0.2 in tests); default 1. */
  timeScale?: number;
}

export interface PodInfo {
  name: string;
  namespace: string;
  /** The Deployment, StatefulSet, Knative Service or ContainerSource that owns it. */
  workload: string;
  ip: string;
  ready: boolean;
  restarts: number;
  /** The first container's process id, when it runs. */
  pid: number | undefined;
  terminating: boolean;
  /** Why its containers have not started (a missing ConfigMap or Secret). */
  waiting: string | undefined;
  containers: ContainerStatus[];
}

/** How one container's process ended. */
export interface ContainerExit {
  pod: string;
  container: string;
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface IgnoredObject {
  apiVersion: string;
  kind: string;
  namespace: string | undefined;
  name: string;
}

interface ServiceState {
  namespace: string;
  name: string;
  /** undefined for headless Services. */
  clusterIp: string | undefined;
  selector: Record<string, string> | undefined;
  ports: { name?: string; port: number; targetPort: number | string }[];
  forwarders: Forwarder[];
  /** The Knative Service it fronts, if any. */
  knative?: boolean;
  source: string;
}

type WorkloadKind = 'Deployment' | 'StatefulSet' | 'KnativeService' | 'ContainerSource';

interface Workload {
  kind: WorkloadKind;
  namespace: string;
  name: string;
  replicas: number;
  template: PodTemplate;
  templateJson: string;
  extraEnv: Record<string, string>;
  knativePort?: number;
  /** A StatefulSet's volumeClaimTemplates' names. */
  claims: string[];
  selectorLabels: Record<string, string>;
  pods: Set<Pod>;
  /** Pods being created (their network namespace is being set up): counted as live, so none is created twice. */
  creating: number;
}

const NOT_RUN_KINDS = new Set(['Namespace', 'ServiceAccount']);
const POD_ID_CHARS = 'bcdfghjklmnpqrstvwxz2456789';

function podSuffix(length: number): string {
  const bytes = randomBytes(length);
  return [...bytes].map((b) => POD_ID_CHARS[b % POD_ID_CHARS.length]).join('');
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Lists a directory and every directory its links point at (run as the pod's user). */
const READ_THROUGH_LINKS = `const fs = require('fs'), path = require('path'); const dir = process.argv[1];
for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isSymbolicLink() && fs.statSync(path.join(dir, e.name)).isDirectory()) fs.readdirSync(path.join(dir, e.name));`;

export class ClusterSimulation {
  readonly clusterDomain: string;
  private readonly timeScale: number;
  private readonly configMaps = new Map<string, Record<string, string>>();
  private readonly secrets = new Map<string, Record<string, string>>();
  private readonly services = new Map<string, ServiceState>();
  private readonly workloads = new Map<string, Workload>();
  private readonly podsByName = new Map<string, Pod>();
  private readonly ignoredObjects: IgnoredObject[] = [];
  private readonly namespaces = new Set<string>();
  private readonly externals: Forwarder[] = [];
  private readonly userChecks = new Map<string, string | undefined>();
  private readonly pending = new Set<Promise<unknown>>();
  private readonly exitHandler = () => this.destroySync();
  private dns: ClusterDns | undefined;
  private stopped = false;

  private constructor(
    private readonly network: ClusterNetwork,
    private readonly options: ClusterSimulationOptions,
  ) {
    this.clusterDomain = options.clusterDomain ?? 'cluster.local';
    this.timeScale = options.timeScale ?? 1;
  }

  /** Why the simulation cannot run on this machine (not root, no network namespaces), or undefined. */
  static unavailable(): Promise<string | undefined> {
    return networkUnavailable();
  }

  /** Removes what earlier runs that crashed left behind (their owner process is gone). */
  static removeLeftovers(): string[] {
    return removeLeftovers();
  }

  static async start(options: ClusterSimulationOptions): Promise<ClusterSimulation> {
    const why = await networkUnavailable();
    if (why) throw new Error(`the cluster simulation cannot run here: ${why}`);
    const network = await ClusterNetwork.create();
    const sim = new ClusterSimulation(network, options);
    process.on('exit', sim.exitHandler);
    try {
      mkdirSync(join(network.stateDir, 'pods'), { recursive: true, mode: 0o755 });
      mkdirSync(join(network.stateDir, 'logs'), { recursive: true, mode: 0o755 });
      sim.dns = await ClusterDns.start(network.hostAddress, (name) => sim.lookup(name));
      for (const e of options.externals ?? []) {
        const target = parseTarget(e.target);
        sim.externals.push(await Forwarder.listen(network.hostAddress, e.port, () => [target]));
      }
    } catch (err) {
      await sim.stop();
      throw err;
    }
    return sim;
  }

  /** The bridge's host address: the name server, and where `externals` listen for pods. */
  get hostAddress(): string {
    return this.network.hostAddress;
  }

  /** The simulation's directory: `pods/<pod>/volumes/…` and `logs/<pod>.log`. */
  get stateDir(): string {
    return this.network.stateDir;
  }

  /** Objects read but not run, as listed in the manifests. */
  ignored(): IgnoredObject[] {
    return [...this.ignoredObjects];
  }

  /**
   * Applies a kustomize directory (or one YAML file): ConfigMaps and Secrets first (an update
   * rewrites mounted volumes), then Services, then workloads (a changed pod template replaces
   * the workload's pods; a changed replica count adds or removes pods).
   */
  async apply(path: string): Promise<void> {
    const objects = await loadManifests(path);
    this.checkImages(objects);
    const order = (o: KubeObject): number =>
      o.kind === 'Namespace' ? 0 : o.kind === 'ConfigMap' || o.kind === 'Secret' ? 1 : o.kind === 'Service' && !isKnative(o) ? 2 : 3;
    for (const o of [...objects].sort((a, b) => order(a) - order(b))) {
      const ns = o.metadata.namespace ?? 'default';
      switch (o.kind) {
        case 'Namespace':
          this.namespaces.add(o.metadata.name);
          break;
        case 'ConfigMap':
          this.setConfigMap(ns, o.metadata.name, configMapValues(o));
          break;
        case 'Secret':
          this.setSecret(ns, o.metadata.name, secretValues(o));
          break;
        case 'Service':
          if (isKnative(o)) await this.applyKnativeService(o, ns);
          else await this.applyService(o, ns);
          break;
        case 'Deployment':
          if (o.apiVersion !== 'apps/v1') this.ignore(o);
          else this.applyWorkload('Deployment', ns, o.metadata.name, o.spec?.replicas ?? 1, o.spec?.template, {}, o.spec?.selector?.matchLabels);
          break;
        case 'StatefulSet':
          this.applyWorkload('StatefulSet', ns, o.metadata.name, o.spec?.replicas ?? 1, o.spec?.template, {}, o.spec?.selector?.matchLabels, undefined, o.spec?.volumeClaimTemplates);
          break;
        case 'ContainerSource':
          if (!o.apiVersion.startsWith('sources.knative.dev/')) this.ignore(o);
          else this.applyContainerSource(o, ns);
          break;
        default:
          if (NOT_RUN_KINDS.has(o.kind)) break;
          this.ignore(o);
      }
    }
    this.reconcile();
  }

  private ignore(o: KubeObject): void {
    this.ignoredObjects.push({ apiVersion: o.apiVersion, kind: o.kind, namespace: o.metadata.namespace, name: o.metadata.name });
  }

  /** Refuses, before anything runs, containers whose image is neither the app's nor mapped. */
  private checkImages(objects: KubeObject[]): void {
    const problems: string[] = [];
    for (const o of objects) {
      const template = podTemplateOf(o);
      if (!template) continue;
      for (const c of [...(template.spec?.containers ?? []), ...(template.spec?.initContainers ?? [])]) {
        if (!this.isAppImage(c.image) && !this.options.foreignImages?.[c.image]) {
          problems.push(
            `${o.kind} ${o.metadata.name} container ${c.name} uses image ${c.image}, which is not the app's (${this.options.appImages.join(', ')}) and has no foreignImages mapping saying what runs in its place`,
          );
        }
      }
      if (template.spec?.initContainers?.length) problems.push(`${o.kind} ${o.metadata.name} has init containers, which the simulation does not run`);
    }
    if (problems.length > 0) throw new ManifestError(`the simulation cannot run these manifests:\n- ${problems.join('\n- ')}`);
  }

  private isAppImage(image: string): boolean {
    const bare = image.replace(/@sha256:[0-9a-f]+$/, '').replace(/:[^:/]+$/, '');
    return this.options.appImages.some((ref) => ref === image || ref === bare);
  }

  private imageOf(container: Container): { dir?: string; entrypoint?: string[] } {
    if (this.isAppImage(container.image)) return { dir: this.options.imageDir };
    const foreign = this.options.foreignImages?.[container.image];
    return { dir: foreign?.dir, entrypoint: foreign?.entrypoint };
  }

  private async applyService(o: KubeObject, namespace: string): Promise<void> {
    const key = `${namespace}/${o.metadata.name}`;
    const spec = o.spec ?? {};
    const ports = ((spec.ports ?? []) as { name?: string; port: number; targetPort?: number | string; protocol?: string }[]).map((p) => {
      if (p.protocol && p.protocol !== 'TCP') throw new ManifestError(`Service ${key}: port ${p.port} is ${p.protocol}; only TCP is simulated`);
      return { name: p.name, port: p.port, targetPort: p.targetPort ?? p.port };
    });
    const headless = spec.clusterIP === 'None';
    const existing = this.services.get(key);
    if (existing) {
      for (const f of existing.forwarders) await f.close();
      this.services.delete(key);
    }
    const state: ServiceState = {
      namespace,
      name: o.metadata.name,
      clusterIp: headless ? undefined : (existing?.clusterIp ?? (await this.network.addClusterIp())),
      selector: spec.selector,
      ports,
      forwarders: [],
      source: `Service ${key}`,
    };
    await this.listen(state);
    this.services.set(key, state);
  }

  private async listen(state: ServiceState): Promise<void> {
    if (!state.clusterIp) return;
    for (const p of state.ports) {
      state.forwarders.push(await Forwarder.listen(state.clusterIp, p.port, () => this.endpoints(state, p.targetPort)));
    }
  }

  /** The ready pods a Service selects, at the target port (a named one resolved per pod from its containers' ports). */
  private endpoints(service: ServiceState, targetPort: number | string): Endpoint[] {
    const out: Endpoint[] = [];
    for (const pod of this.readyPodsOf(service)) {
      const port = pod.containerPort(targetPort);
      if (port !== undefined) out.push({ host: pod.ip, port });
    }
    return out;
  }

  private readyPodsOf(service: ServiceState): Pod[] {
    return [...this.podsByName.values()].filter(
      (p) => p.namespace === service.namespace && p.ready && matchesSelector(p.labels, service.selector),
    );
  }

  private async applyKnativeService(o: KubeObject, namespace: string): Promise<void> {
    const name = o.metadata.name;
    const template: PodTemplate | undefined = o.spec?.template;
    if (!template?.spec?.containers?.length) throw new ManifestError(`Knative Service ${namespace}/${name} has no containers`);
    const annotations = template.metadata?.annotations ?? {};
    const scale = (key: string): number => Number(annotations[`autoscaling.knative.dev/${key}`] ?? 0) || 0;
    // Knative starts initial-scale pods (default 1) and keeps at least min-scale; the simulation does not scale on load.
    const replicas = Math.max(1, scale('initial-scale') || scale('initialScale'), scale('min-scale') || scale('minScale'));
    const container = template.spec.containers[0]!;
    const port = container.ports?.[0]?.containerPort ?? 8080;
    const revision = `${name}-00001`;
    const labels = { ...(template.metadata?.labels ?? {}), 'serving.knative.dev/service': name, 'serving.knative.dev/configuration': name, 'serving.knative.dev/revision': revision };
    const podTemplate: PodTemplate = { metadata: { ...template.metadata, labels }, spec: template.spec };
    this.applyWorkload(
      'KnativeService',
      namespace,
      name,
      replicas,
      podTemplate,
      { PORT: String(port), K_SERVICE: name, K_CONFIGURATION: name, K_REVISION: revision },
      { 'serving.knative.dev/service': name },
      port,
    );
    // Knative's address for the Service: `<name>.<ns>.svc.<domain>` port 80, to the container's port.
    await this.applyService(
      { apiVersion: 'v1', kind: 'Service', metadata: { name, namespace }, spec: { selector: { 'serving.knative.dev/service': name }, ports: [{ name: 'http', port: 80, targetPort: port }] } },
      namespace,
    );
    const svc = this.services.get(`${namespace}/${name}`)!;
    svc.knative = true;
    svc.source = `Knative Service ${namespace}/${name}`;
  }

  private applyContainerSource(o: KubeObject, namespace: string): void {
    const name = o.metadata.name;
    const sink = o.spec?.sink as { ref?: { name: string; namespace?: string }; uri?: string } | undefined;
    let kSink: string;
    if (sink?.ref) kSink = `http://${sink.ref.name}.${sink.ref.namespace ?? namespace}.svc.${this.clusterDomain}${sink.uri ?? ''}`;
    else if (sink?.uri) kSink = sink.uri;
    else throw new ManifestError(`ContainerSource ${namespace}/${name} has no sink`);
    const template: PodTemplate = o.spec?.template;
    const labels = { ...(template?.metadata?.labels ?? {}), 'sources.knative.dev/containerSource': name };
    const env: Record<string, string> = { K_SINK: kSink };
    const overrides = o.spec?.ceOverrides;
    if (overrides) env['K_CE_OVERRIDES'] = JSON.stringify(overrides);
    this.applyWorkload('ContainerSource', namespace, name, 1, { metadata: { ...template?.metadata, labels }, spec: template?.spec }, env, {
      'sources.knative.dev/containerSource': name,
    });
  }

  private applyWorkload(
    kind: WorkloadKind,
    namespace: string,
    name: string,
    replicas: number,
    template: PodTemplate | undefined,
    extraEnv: Record<string, string>,
    selectorLabels: Record<string, string> | undefined,
    knativePort?: number,
    claimTemplates?: { metadata?: { name?: string } }[],
  ): void {
    const key = `${kind}/${namespace}/${name}`;
    if (!template?.spec?.containers?.length) throw new ManifestError(`${kind} ${namespace}/${name} has no pod template with containers`);
    const labels = template.metadata?.labels ?? {};
    if (selectorLabels && !matchesSelector(labels, selectorLabels)) {
      throw new ManifestError(`${kind} ${namespace}/${name}: its selector ${JSON.stringify(selectorLabels)} does not match its pod template's labels ${JSON.stringify(labels)}`);
    }
    const templateJson = JSON.stringify({ template, extraEnv });
    const existing = this.workloads.get(key);
    if (existing) {
      existing.replicas = replicas;
      if (existing.templateJson !== templateJson) {
        // A new template: the old pods go (Recreate; rolling updates are not simulated), new ones come.
        existing.template = template;
        existing.templateJson = templateJson;
        existing.extraEnv = extraEnv;
        existing.knativePort = knativePort;
        for (const pod of existing.pods) this.track(this.deletePodNow(pod, true));
      }
      return;
    }
    this.workloads.set(key, {
      kind,
      namespace,
      name,
      replicas,
      template,
      templateJson,
      extraEnv,
      knativePort,
      claims: (claimTemplates ?? []).map((c) => c.metadata?.name).filter((n): n is string => !!n),
      selectorLabels: selectorLabels ?? labels,
      pods: new Set(),
      creating: 0,
    });
  }

  /** Brings every workload to its replica count (the ReplicaSet / StatefulSet controllers). */
  private reconcile(): void {
    if (this.stopped) return;
    for (const w of this.workloads.values()) {
      const live = [...w.pods].filter((p) => !p.terminating);
      if (w.kind === 'StatefulSet') {
        // Ordinals 0..n-1, each created once the previous name is free.
        for (let i = 0; i < w.replicas; i++) {
          const name = `${w.name}-${i}`;
          if (!this.podsByName.has(name)) this.track(this.createPod(w, name));
        }
        for (const p of live) {
          const ordinal = Number(p.name.slice(w.name.length + 1));
          if (ordinal >= w.replicas) this.track(this.deletePodNow(p, true));
        }
        continue;
      }
      for (let i = live.length + w.creating; i < w.replicas; i++) {
        const hash = w.kind === 'ContainerSource' ? 'deployment' : podSuffix(10);
        this.track(this.createPod(w, `${w.name}-${hash}-${podSuffix(5)}`));
      }
      // Scaling down removes the newest pods first (a Set keeps creation order).
      for (const p of live.slice(w.replicas)) this.track(this.deletePodNow(p, true));
    }
  }

  private track<T>(promise: Promise<T>): void {
    const p = promise.catch((err) => {
      if (!this.stopped) console.error(`[cluster-sim] ${(err as Error).message}`);
    });
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
  }

  private async createPod(w: Workload, name: string): Promise<void> {
    const placeholder = { name } as unknown as Pod;
    // Reserve the name while the namespace is built (StatefulSet ordinals must not be created twice).
    this.podsByName.set(name, placeholder);
    w.creating++;
    let network;
    try {
      network = await this.network.addPod(name, {
        searches: [`${w.namespace}.svc.${this.clusterDomain}`, `svc.${this.clusterDomain}`, this.clusterDomain],
      });
    } catch (err) {
      this.podsByName.delete(name);
      throw err;
    } finally {
      w.creating--;
    }
    const dir = join(this.network.stateDir, 'pods', name);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const logFile = join(this.network.stateDir, 'logs', `${name}.log`);
    writeFileSync(logFile, '');
    const pod = new Pod({
      name,
      namespace: w.namespace,
      workload: w.name,
      labels: { ...(w.template.metadata?.labels ?? {}) },
      spec: w.template.spec,
      network,
      dir,
      logFile,
      extraEnv: w.extraEnv,
      knative: w.knativePort !== undefined ? { port: w.knativePort } : undefined,
      // Kept under the simulation, not the pod: a StatefulSet's replacement pod gets the same data back.
      claims: Object.fromEntries(w.claims.map((c) => [c, join(this.network.stateDir, 'claims', `${c}-${name}`)])),
      context: this.podContext(),
    });
    if (this.stopped) {
      await this.network.removePod(network);
      return;
    }
    this.podsByName.set(name, pod);
    w.pods.add(pod);
    pod.start();
  }

  private podContext(): PodContext {
    return {
      timeScale: this.timeScale,
      image: (c) => this.imageOf(c),
      configMap: (ns, name) => this.configMaps.get(`${ns}/${name}`),
      secret: (ns, name) => this.secrets.get(`${ns}/${name}`),
      canRunAs: (uid, gid, groups, dir) => this.canRunAs(uid, gid, groups, dir),
      changed: () => undefined,
    };
  }

  /**
   * Whether a process dropped to uid:gid can read the image directory (and what its links point
   * at: node_modules and the app are links into the checkout) and run node there; asked
   * once per user and directory. When not (a checkout under a private home directory, say), the
   * container runs as root and its pod's status says why.
   */
  private canRunAs(uid: number, gid: number, groups: number[], dir: string): string | undefined {
    const key = `${uid}:${gid}:${groups.join(',')}:${dir}`;
    if (this.userChecks.has(key)) return this.userChecks.get(key);
    let why: string | undefined;
    try {
      execFileSync(
        'setpriv',
        ['--reuid', String(uid), '--regid', String(gid), ...(groups.length ? ['--groups', groups.join(',')] : ['--clear-groups']), 'node', '-e', READ_THROUGH_LINKS, dir],
        { cwd: '/', stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 },
      );
    } catch (err) {
      const stderr = String((err as { stderr?: Buffer }).stderr ?? '').trim().split('\n').find((l) => /Error|denied/.test(l));
      why = `uid ${uid} cannot read ${dir}${stderr ? ` (${stderr.trim()})` : ''}`;
    }
    this.userChecks.set(key, why);
    return why;
  }

  private setConfigMap(namespace: string, name: string, values: Record<string, string>): void {
    const key = `${namespace}/${name}`;
    const before = this.configMaps.get(key);
    this.configMaps.set(key, values);
    if (before && JSON.stringify(before) !== JSON.stringify(values)) {
      for (const pod of this.livePods(namespace)) pod.refresh('configMap', name, values);
    }
  }

  private setSecret(namespace: string, name: string, values: Record<string, string>): void {
    const key = `${namespace}/${name}`;
    const before = this.secrets.get(key);
    this.secrets.set(key, values);
    if (before && JSON.stringify(before) !== JSON.stringify(values)) {
      for (const pod of this.livePods(namespace)) pod.refresh('secret', name, values);
    }
  }

  private livePods(namespace?: string): Pod[] {
    return [...this.podsByName.values()].filter((p) => p instanceof Pod && (namespace === undefined || p.namespace === namespace));
  }

  private namespaceOf(kind: string, name: string, namespace: string | undefined, keys: Iterable<string>): string {
    if (namespace) return namespace;
    const found = [...keys].filter((k) => k.endsWith(`/${name}`)).map((k) => k.slice(0, -name.length - 1));
    if (found.length === 0) throw new Error(`no ${kind} named ${name}`);
    if (found.length > 1) throw new Error(`${kind} ${name} exists in several namespaces (${found.join(', ')}): name one`);
    return found[0]!;
  }

  /**
   * Replaces a ConfigMap's data, as `kubectl apply` of an edited ConfigMap does: every pod that
   * mounts it sees its volume's `..data` swapped to the new content (env taken from it at start
   * does not change, as in Kubernetes).
   */
  updateConfigMap(name: string, data: Record<string, string>, namespace?: string): void {
    const ns = this.namespaceOf('ConfigMap', name, namespace, this.configMaps.keys());
    this.setConfigMap(ns, name, { ...data });
  }

  /** Replaces a Secret's (decoded) data; pods that mount it see the change as with a ConfigMap. */
  updateSecret(name: string, data: Record<string, string>, namespace?: string): void {
    const ns = this.namespaceOf('Secret', name, namespace, this.secrets.keys());
    this.setSecret(ns, name, { ...data });
  }

  /**
   * Sets a workload's replica count, as `kubectl scale` does (a Knative Service's pod count, which
   * its autoscaler would otherwise decide): pods are added, or the newest removed gracefully.
   */
  scale(workload: string, replicas: number, namespace?: string): void {
    if (!Number.isInteger(replicas) || replicas < 0) throw new Error(`replicas must be a whole number ≥ 0, got ${replicas}`);
    const found = [...this.workloads.values()].filter((w) => w.name === workload && (namespace === undefined || w.namespace === namespace));
    if (found.length === 0) throw new Error(`no workload named ${workload}${namespace ? ` in ${namespace}` : ''}`);
    if (found.length > 1) throw new Error(`${workload} names several workloads (${found.map((w) => `${w.kind} ${w.namespace}/${w.name}`).join(', ')}): name the namespace`);
    found[0]!.replicas = replicas;
    this.reconcile();
  }

  /** Answers the name server's queries from the live state. */
  private lookup(name: string): Lookup {
    const suffix = `.${this.clusterDomain}`;
    if (name === this.clusterDomain) return { known: true, addresses: [] };
    if (!name.endsWith(suffix)) return { outside: true };
    const parts = name.slice(0, -suffix.length).split('.');
    if (parts.length === 3 && parts[2] === 'pod' && /^\d+-\d+-\d+-\d+$/.test(parts[0]!)) {
      return { known: true, addresses: [parts[0]!.replace(/-/g, '.')] };
    }
    if (parts[parts.length - 1] !== 'svc') return { known: false };
    if (parts.length === 1 || (parts.length === 2 && this.namespaces.has(parts[0]!))) return { known: true, addresses: [] };
    if (parts.length === 3) {
      const svc = this.services.get(`${parts[1]}/${parts[0]}`);
      if (!svc) return { known: false };
      if (svc.clusterIp) return { known: true, addresses: [svc.clusterIp] };
      return { known: true, addresses: this.readyPodsOf(svc).map((p) => p.ip) };
    }
    if (parts.length === 4) {
      // <hostname>.<headless service>.<ns>.svc: a StatefulSet's pod by its name.
      const svc = this.services.get(`${parts[2]}/${parts[1]}`);
      const pod = this.podsByName.get(parts[0]!);
      if (svc && !svc.clusterIp && pod instanceof Pod && pod.ready && matchesSelector(pod.labels, svc.selector)) return { known: true, addresses: [pod.ip] };
    }
    return { known: false };
  }

  /**
   * Waits until every workload has its pods and every pod is ready; on timeout the error names
   * each pod that is not, why (its last probe failure, a missing reference) and its last log lines.
   */
  async waitReady(timeoutMs = 60_000, namespace?: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const problems = this.notReady(namespace);
      if (problems.length === 0) return;
      if (Date.now() >= deadline) {
        throw new Error(`the simulated cluster was not ready within ${timeoutMs} ms:\n${problems.join('\n')}`);
      }
      await sleep(100);
    }
  }

  private notReady(namespace?: string): string[] {
    const problems: string[] = [];
    for (const w of this.workloads.values()) {
      if (namespace !== undefined && w.namespace !== namespace) continue;
      const live = [...w.pods].filter((p) => !p.terminating);
      if (live.length < w.replicas) problems.push(`${w.kind} ${w.namespace}/${w.name}: ${live.length} of ${w.replicas} pods created`);
    }
    for (const pod of this.livePods(namespace)) {
      if (pod.terminating || pod.ready) continue;
      const statuses = pod.containerStatuses();
      const why =
        pod.waiting ??
        statuses
          .filter((c) => !c.ready)
          .map((c) => `${c.name}: ${c.pid === undefined ? 'not running' : c.started ? 'not ready' : 'not started'}${c.lastProbeFailure ? ` (${c.lastProbeFailure})` : ''}, ${c.restarts} restarts`)
          .join('; ');
      const tail = pod.logs().slice(-15).map((l) => `    | ${l}`).join('\n');
      problems.push(`pod ${pod.namespace}/${pod.name} not ready: ${why}${tail ? `\n${tail}` : ''}`);
    }
    return problems;
  }

  /**
   * An http URL reachable from the test process for a Service: its ClusterIP and port, or for a
   * headless Service a ready pod's address and target port. `port` is the Service port's number
   * or name; by default its first port.
   */
  url(service: string, port?: number | string, namespace?: string): string {
    const ns = this.namespaceOf('Service', service, namespace, this.services.keys());
    const svc = this.services.get(`${ns}/${service}`)!;
    const p = port === undefined ? svc.ports[0] : svc.ports.find((x) => x.port === port || x.name === port);
    if (!p) throw new Error(`${svc.source} has no port ${port ?? ''} (it has: ${svc.ports.map((x) => x.name ?? x.port).join(', ')})`);
    if (svc.clusterIp) return `http://${svc.clusterIp}:${p.port}`;
    const endpoint = this.endpoints(svc, p.targetPort)[0];
    if (!endpoint) throw new Error(`${svc.source} is headless and has no ready pod`);
    return `http://${endpoint.host}:${endpoint.port}`;
  }

  pods(): PodInfo[] {
    return this.livePods().map((p) => {
      const containers = p.containerStatuses();
      return {
        name: p.name,
        namespace: p.namespace,
        workload: p.workload,
        ip: p.ip,
        ready: p.ready,
        restarts: containers.reduce((n, c) => n + c.restarts, 0),
        pid: containers[0]?.pid,
        terminating: p.terminating,
        waiting: p.waiting,
        containers,
      };
    });
  }

  /** The pod's last log lines (its containers' output and the simulation's notes about it). */
  logs(pod: string): string[] {
    const p = this.podsByName.get(pod);
    if (!(p instanceof Pod)) throw new Error(`no pod named ${pod}`);
    return p.logs();
  }

  /**
   * Deletes a pod as `kubectl delete pod` does: it leaves its Services' endpoints at once, its
   * controller creates a replacement, then preStop, SIGTERM and SIGKILL after the grace period.
   * Resolves when its processes are gone.
   */
  async deletePod(name: string): Promise<void> {
    const pod = this.podsByName.get(name);
    if (!(pod instanceof Pod)) throw new Error(`no pod named ${name}`);
    await this.deletePodNow(pod, true);
  }

  private async deletePodNow(pod: Pod, preStop: boolean): Promise<void> {
    if (pod.terminating) return;
    const stopping = pod.stop({ preStop });
    // The ReplicaSet does not wait for the old pod to go; a StatefulSet does (its reconcile skips a taken name).
    this.reconcile();
    await stopping;
    await this.network.removePod(pod.network);
    pod.removeFiles();
    this.podsByName.delete(pod.name);
    for (const w of this.workloads.values()) w.pods.delete(pod);
    this.reconcile();
  }

  /**
   * Deletes every workload of a namespace, as deleting its Deployments (and the rest) does: no
   * controller replaces their pods, which all stop at once — preStop when asked, then `signal`
   * (SIGTERM by default, SIGKILL after `graceMs`; another signal is sent alone, as a crash) —
   * and resolves how each container's process ended. Applying the manifests again recreates them.
   * `only` names the workloads to delete (default: all of the namespace).
   */
  async removeWorkloads(
    namespace: string,
    options: { signal?: NodeJS.Signals; graceMs?: number; preStop?: boolean; only?: readonly string[] } = {},
  ): Promise<ContainerExit[]> {
    const chosen = (name: string) => options.only === undefined || options.only.includes(name);
    for (const [key, w] of this.workloads) if (w.namespace === namespace && chosen(w.name)) this.workloads.delete(key);
    const pods = this.livePods(namespace).filter((p) => !p.terminating && chosen(p.workload));
    const exits: ContainerExit[] = [];
    await Promise.all(
      pods.map(async (pod) => {
        await pod.stop({ preStop: options.preStop ?? false, graceMs: options.graceMs, signal: options.signal });
        for (const e of pod.exits()) exits.push({ pod: pod.name, ...e });
        await this.network.removePod(pod.network);
        pod.removeFiles();
        this.podsByName.delete(pod.name);
      }),
    );
    return exits;
  }

  /**
   * Stops every pod (SIGTERM, SIGKILL after `graceMs`, default 5 s; preStop hooks only when
   * asked), closes the name server and forwarders and removes the network and every file.
   */
  async stop(options: { preStop?: boolean; graceMs?: number } = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await Promise.allSettled(this.livePods().map((p) => p.stop({ preStop: options.preStop ?? false, graceMs: options.graceMs ?? 5000 })));
    await Promise.allSettled([...this.pending]);
    for (const s of this.services.values()) for (const f of s.forwarders) await f.close().catch(() => undefined);
    for (const f of this.externals) await f.close().catch(() => undefined);
    await this.dns?.close().catch(() => undefined);
    this.network.destroySync();
    process.off('exit', this.exitHandler);
  }

  /** Kills everything at once, synchronously: the process is exiting. */
  private destroySync(): void {
    this.stopped = true;
    for (const p of this.livePods()) p.killNow();
    this.network.destroySync();
  }
}

function isKnative(o: KubeObject): boolean {
  return o.apiVersion.startsWith('serving.knative.dev/');
}

function podTemplateOf(o: KubeObject): PodTemplate | undefined {
  if (o.kind === 'Deployment' || o.kind === 'StatefulSet' || o.kind === 'ContainerSource' || (o.kind === 'Service' && isKnative(o))) {
    return o.spec?.template as PodTemplate | undefined;
  }
  return undefined;
}
