/**
 * Pods of the simulated cluster: each in its own network namespace, each container a process
 * started with `ip netns exec`, its image's `/app/` and its volume mounts mapped to local
 * directories in the command, args and env values. Probes run as the kubelet runs them;
 * crashes and liveness failures restart the container with the kubelet's backoff; a deleted pod
 * leaves its Services' endpoints first, then runs preStop, then gets SIGTERM and, after its grace
 * period, SIGKILL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, chownSync, mkdirSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync, lstatSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Container, PodSpec, Probe } from './manifests.js';
import type { PodNetwork } from './network.js';
import { probeTimings, resolvePort, runProbe } from './probes.js';

/** What a pod's containers need from the simulation around them. */
export interface PodContext {
  timeScale: number;
  /** The local directory standing for the image's root `/app/` of this container's image, and the command that stands for its entrypoint. */
  image(container: Container): { dir?: string; entrypoint?: string[] };
  /** Values of a ConfigMap or Secret, or undefined when it does not exist (yet). */
  configMap(namespace: string, name: string): Record<string, string> | undefined;
  secret(namespace: string, name: string): Record<string, string> | undefined;
  /** Whether `uid:gid` can read the image directory (so the container may drop to it); a reason when not. */
  canRunAs(uid: number, gid: number, groups: number[], dir: string): string | undefined;
  /** Called when readiness or the process changes (Services' endpoints follow). */
  changed(): void;
}

/** Not runnable yet: a referenced ConfigMap or Secret is missing (Kubernetes retries, and so does the simulation). */
export class MissingReference extends Error {}

const LOG_LINES_KEPT = 200;

/** A ConfigMap or Secret volume in Kubernetes' atomic-writer layout. */
class ProjectedVolume {
  private generation = 0;
  constructor(
    readonly dir: string,
    readonly source: { kind: 'configMap' | 'secret'; name: string; items?: { key: string; path: string }[] },
  ) {}

  /**
   * Writes the values into a fresh `..<timestamp>` directory, points `..data` at it by an atomic
   * rename of a new symlink, links each key through `..data`, and removes the previous data
   * directory and keys no longer present: what a watcher of the mount sees on an update.
   */
  write(values: Record<string, string>, owner?: { uid: number; gid: number }): void {
    mkdirSync(this.dir, { recursive: true });
    const files: Record<string, string> = {};
    if (this.source.items) {
      for (const item of this.source.items) {
        if (values[item.key] === undefined) throw new MissingReference(`${this.source.kind} ${this.source.name} has no key ${item.key}`);
        files[item.path] = values[item.key]!;
      }
    } else Object.assign(files, values);
    const stamp = `..${new Date().toISOString().replace(/[-:.]/g, '_')}.${process.pid}${this.generation++}`;
    const dataDir = join(this.dir, stamp);
    mkdirSync(dataDir, { mode: 0o755 });
    for (const [path, content] of Object.entries(files)) {
      const file = join(dataDir, path);
      mkdirSync(dirname(file), { recursive: true });
      writeFileSync(file, content, { mode: 0o644 });
      if (owner) chownSync(file, owner.uid, owner.gid);
    }
    if (owner) chownSync(dataDir, owner.uid, owner.gid);
    const previous = safeReaddir(this.dir).filter((n) => n.startsWith('..') && n !== '..data' && n !== stamp && n !== '..data_tmp');
    const tmp = join(this.dir, '..data_tmp');
    rmSync(tmp, { force: true });
    symlinkSync(stamp, tmp);
    renameSync(tmp, join(this.dir, '..data'));
    const top = new Set(Object.keys(files).map((p) => p.split('/')[0]!));
    for (const name of top) {
      const link = join(this.dir, name);
      if (!exists(link)) symlinkSync(join('..data', name), link);
    }
    for (const name of safeReaddir(this.dir)) {
      if (!name.startsWith('..') && !top.has(name)) rmSync(join(this.dir, name), { force: true, recursive: true });
    }
    for (const old of previous) rmSync(join(this.dir, old), { recursive: true, force: true });
  }
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** `$(VAR)` references as Kubernetes expands them in env values, command and args; `$$` is a literal `$`. */
function expand(text: string, env: Record<string, string>): string {
  return text.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (all, name: string | undefined) => {
    if (name === undefined) return '$';
    return env[name] ?? all;
  });
}

export interface ContainerStatus {
  name: string;
  ready: boolean;
  started: boolean;
  restarts: number;
  pid: number | undefined;
  /** The user the process runs as, and why not the pod's runAsUser when that could not be kept. */
  runAs: string;
  lastProbeFailure: string | undefined;
}

class ContainerRun {
  process: ChildProcess | undefined;
  ready = false;
  started = false;
  restarts = 0;
  lastProbeFailure: string | undefined;
  runAs = 'root';
  /** How the process last ended. */
  lastExit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private incarnation = 0;
  private startedAt = 0;
  private backoffStep = 0;
  private restartTimer: NodeJS.Timeout | undefined;
  private exited: Promise<void> = Promise.resolve();
  private exitedResolve: () => void = () => undefined;
  private stopping = false;

  constructor(
    readonly pod: Pod,
    readonly spec: Container,
  ) {}

  status(): ContainerStatus {
    return {
      name: this.spec.name,
      ready: this.ready,
      started: this.started,
      restarts: this.restarts,
      pid: this.process?.exitCode === null && this.process.signalCode === null ? this.process.pid : undefined,
      runAs: this.runAs,
      lastProbeFailure: this.lastProbeFailure,
    };
  }

  start(): void {
    if (this.stopping) return;
    const pod = this.pod;
    const launch = pod.launchOf(this);
    this.runAs = launch.runAs;
    this.incarnation++;
    this.started = false;
    this.ready = false;
    this.startedAt = Date.now();
    this.exited = new Promise((resolve) => (this.exitedResolve = resolve));
    const child = spawn('ip', ['netns', 'exec', pod.network.netns, ...launch.userArgs, ...launch.argv], {
      env: launch.env,
      cwd: launch.cwd,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.process = child;
    pod.log(this.spec.name, `started (pid ${child.pid}, ${launch.runAs}): ${launch.argv.join(' ')}`);
    const onData = (chunk: Buffer) => pod.log(this.spec.name, chunk.toString('utf8'), true);
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('error', (err) => pod.log(this.spec.name, `could not start: ${err.message}`));
    child.on('close', (code, signal) => {
      const ran = Date.now() - this.startedAt;
      pod.log(this.spec.name, `exited (${signal ? `signal ${signal}` : `code ${code}`}) after ${ran} ms`);
      this.lastExit = { code, signal };
      this.ready = false;
      this.started = false;
      this.process = undefined;
      this.exitedResolve();
      pod.context.changed();
      if (this.stopping || pod.terminating) return;
      // The kubelet's crash-loop backoff: 10 s doubling to 5 min, forgotten after 10 min of running.
      if (ran > 600_000 * pod.context.timeScale) this.backoffStep = 0;
      const delay = this.backoffStep === 0 ? 0 : Math.min(10_000 * 2 ** (this.backoffStep - 1), 300_000) * pod.context.timeScale;
      this.backoffStep++;
      // Counted when the container starts again, as the kubelet's restartCount is.
      this.restartTimer = setTimeout(() => {
        this.restarts++;
        this.start();
      }, delay);
    });
    void this.probe(this.incarnation);
  }

  private alive(incarnation: number): boolean {
    return this.incarnation === incarnation && this.process !== undefined && !this.stopping && !this.pod.terminating;
  }

  private async check(probe: Probe): Promise<string | undefined> {
    const timings = probeTimings(probe, this.pod.context.timeScale);
    try {
      return await runProbe(probe, this.pod.network.ip, this.spec, timings.timeoutMs, (command, timeoutMs) => this.pod.exec(this, command, timeoutMs), this.pod.defaultProbePort);
    } catch (err) {
      return (err as Error).message;
    }
  }

  /** Startup, then readiness and liveness, each on its own period, for one incarnation of the process. */
  private async probe(incarnation: number): Promise<void> {
    const spec = this.spec;
    const scale = this.pod.context.timeScale;
    const startup = spec.startupProbe;
    if (startup) {
      const t = probeTimings(startup, scale);
      await sleep(t.initialDelayMs);
      let failures = 0;
      for (;;) {
        if (!this.alive(incarnation)) return;
        const failure = await this.check(startup);
        if (!this.alive(incarnation)) return;
        if (failure === undefined) break;
        this.lastProbeFailure = `startup probe: ${failure}`;
        if (++failures >= t.failureThreshold) {
          this.pod.log(spec.name, `startup probe failed ${failures} times (${failure}): restarting`);
          await this.kill(false);
          return;
        }
        await sleep(t.periodMs);
      }
    }
    if (!this.alive(incarnation)) return;
    this.started = true;
    const readiness = spec.readinessProbe ?? this.pod.defaultReadiness(spec);
    if (!readiness) {
      this.ready = true;
      this.pod.context.changed();
    } else void this.readinessLoop(incarnation, readiness);
    if (spec.livenessProbe) void this.livenessLoop(incarnation, spec.livenessProbe);
  }

  private async readinessLoop(incarnation: number, probe: Probe): Promise<void> {
    const t = probeTimings(probe, this.pod.context.timeScale);
    await sleep(t.initialDelayMs);
    let failures = 0;
    let successes = 0;
    while (this.alive(incarnation)) {
      const failure = await this.check(probe);
      if (!this.alive(incarnation)) return;
      if (failure === undefined) {
        failures = 0;
        if (!this.ready && ++successes >= t.successThreshold) {
          this.ready = true;
          this.lastProbeFailure = undefined;
          this.pod.context.changed();
        }
      } else {
        successes = 0;
        this.lastProbeFailure = `readiness probe: ${failure}`;
        if (this.ready && ++failures >= t.failureThreshold) {
          this.ready = false;
          this.pod.log(this.spec.name, `not ready: ${failure}`);
          this.pod.context.changed();
        }
      }
      await sleep(t.periodMs);
    }
  }

  private async livenessLoop(incarnation: number, probe: Probe): Promise<void> {
    const t = probeTimings(probe, this.pod.context.timeScale);
    await sleep(t.initialDelayMs);
    let failures = 0;
    while (this.alive(incarnation)) {
      const failure = await this.check(probe);
      if (!this.alive(incarnation)) return;
      if (failure === undefined) failures = 0;
      else {
        this.lastProbeFailure = `liveness probe: ${failure}`;
        if (++failures >= t.failureThreshold) {
          this.pod.log(this.spec.name, `liveness probe failed ${failures} times (${failure}): restarting`);
          await this.kill(true);
          return;
        }
      }
      await sleep(t.periodMs);
    }
  }

  /**
   * Stops the running process as the kubelet does: preStop (when asked), SIGTERM, SIGKILL when the
   * grace period is over. The close handler restarts it unless the container is being stopped.
   */
  async kill(runPreStop: boolean, graceMs = this.pod.graceMs, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.process;
    if (!child) return;
    this.ready = false;
    this.pod.context.changed();
    if (signal !== 'SIGTERM') {
      // A crash, not a deletion: no preStop, no grace.
      child.kill(signal);
      await this.exited;
      return;
    }
    const deadline = Date.now() + graceMs;
    const preStop = this.spec.lifecycle?.preStop?.exec?.command;
    if (runPreStop && preStop) {
      const code = await this.pod.exec(this, preStop, graceMs);
      this.pod.log(this.spec.name, `preStop ${preStop.join(' ')} exited with ${code}`);
    }
    if (this.process === child) {
      child.kill('SIGTERM');
      const left = Math.max(0, deadline - Date.now());
      const timer = setTimeout(() => child.kill('SIGKILL'), left);
      await this.exited;
      clearTimeout(timer);
    }
  }

  /** Stops for good (pod deletion). */
  async stop(runPreStop: boolean, graceMs?: number, signal?: NodeJS.Signals): Promise<void> {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.stopping = true;
    await this.kill(runPreStop, graceMs, signal);
  }

  /** Kills at once, synchronously (process exit). */
  killNow(): void {
    this.stopping = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.process?.kill('SIGKILL');
  }
}

export interface PodInit {
  name: string;
  namespace: string;
  workload: string;
  labels: Record<string, string>;
  spec: PodSpec;
  network: PodNetwork;
  dir: string;
  logFile: string;
  /** Env the platform adds (Knative's PORT, K_SERVICE; a ContainerSource's K_SINK). */
  extraEnv: Record<string, string>;
  /** Knative probes the container port when a probe names none, and probes readiness by TCP when it has none. */
  knative?: { port: number };
  /** A StatefulSet pod's persistent volumes (its volumeClaimTemplates), by claim name: directories that outlive the pod. */
  claims?: Record<string, string>;
  context: PodContext;
}

export class Pod {
  readonly name: string;
  readonly namespace: string;
  readonly workload: string;
  readonly labels: Record<string, string>;
  readonly spec: PodSpec;
  readonly network: PodNetwork;
  readonly dir: string;
  readonly context: PodContext;
  terminating = false;
  /** Why the pod's containers are not running yet (a missing ConfigMap or Secret), retried until it resolves. */
  waiting: string | undefined;
  private readonly containers: ContainerRun[];
  private readonly volumes = new Map<string, ProjectedVolume | { emptyDir: string }>();
  private readonly lines: string[] = [];
  private partial = new Map<string, string>();
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(private readonly init: PodInit) {
    this.name = init.name;
    this.namespace = init.namespace;
    this.workload = init.workload;
    this.labels = init.labels;
    this.spec = init.spec;
    this.network = init.network;
    this.dir = init.dir;
    this.context = init.context;
    this.containers = init.spec.containers.map((c) => new ContainerRun(this, c));
  }

  get ip(): string {
    return this.network.ip;
  }

  get ready(): boolean {
    return !this.terminating && this.waiting === undefined && this.containers.every((c) => c.ready);
  }

  get graceMs(): number {
    return (this.spec.terminationGracePeriodSeconds ?? 30) * 1000;
  }

  get defaultProbePort(): number | undefined {
    return this.init.knative?.port;
  }

  containerStatuses(): ContainerStatus[] {
    return this.containers.map((c) => c.status());
  }

  /** The container port numbers, by name and number (for Services' targetPorts). */
  containerPort(target: number | string): number | undefined {
    if (typeof target === 'number' || /^\d+$/.test(target)) return Number(target);
    for (const c of this.spec.containers) {
      const found = c.ports?.find((p) => p.name === target);
      if (found) return found.containerPort;
    }
    return undefined;
  }

  defaultReadiness(container: Container): Probe | undefined {
    if (!this.init.knative || container !== this.spec.containers[0]) return undefined;
    return { tcpSocket: { port: this.init.knative.port }, periodSeconds: 1, failureThreshold: 3 };
  }

  log(container: string, text: string, raw = false): void {
    const prefix = this.spec.containers.length > 1 ? `[${container}] ` : '';
    let out: string[];
    if (raw) {
      const joined = (this.partial.get(container) ?? '') + text;
      const parts = joined.split('\n');
      this.partial.set(container, parts.pop() ?? '');
      out = parts.map((l) => prefix + l);
    } else out = [`${prefix}[simulation] ${text}`];
    if (out.length === 0) return;
    this.lines.push(...out);
    if (this.lines.length > LOG_LINES_KEPT) this.lines.splice(0, this.lines.length - LOG_LINES_KEPT);
    try {
      appendFileSync(this.init.logFile, out.join('\n') + '\n');
    } catch {
      // the state directory is gone (stopping)
    }
  }

  logs(): string[] {
    return [...this.lines];
  }

  private owner(): { uid: number; gid: number } | undefined {
    const sc = this.spec.securityContext;
    if (sc?.runAsUser === undefined) return undefined;
    return { uid: sc.runAsUser, gid: sc.fsGroup ?? sc.runAsGroup ?? sc.runAsUser };
  }

  /** Writes the pod's volumes and starts its containers; when a reference is missing, retries every second. */
  start(): void {
    if (this.terminating) return;
    try {
      this.writeVolumes();
      for (const c of this.containers) this.launchOf(c);
    } catch (err) {
      if (!(err instanceof MissingReference)) {
        // Something the simulation cannot run (a volume kind, a fieldRef): the pod stays, not
        // ready, with the reason in its status, as a pod stuck in CreateContainerConfigError does.
        this.waiting = (err as Error).message;
        this.log('pod', `cannot start: ${this.waiting}`);
        return;
      }
      if (this.waiting !== err.message) this.log('pod', `waiting: ${err.message}`);
      this.waiting = err.message;
      this.retryTimer = setTimeout(() => this.start(), 1000 * this.context.timeScale);
      return;
    }
    this.waiting = undefined;
    for (const c of this.containers) c.start();
  }

  private writeVolumes(): void {
    const owner = this.owner();
    for (const [name, dir] of Object.entries(this.init.claims ?? {})) {
      if (this.volumes.has(name)) continue;
      // The parent readable by all (the pod's user must get through it), the claim the pod's own.
      mkdirSync(dirname(dir), { recursive: true, mode: 0o755 });
      mkdirSync(dir, { recursive: true, mode: 0o770 });
      if (owner) chownSync(dir, owner.uid, owner.gid);
      this.volumes.set(name, { emptyDir: dir });
    }
    for (const v of this.spec.volumes ?? []) {
      if (this.volumes.has(v.name)) continue;
      const dir = join(this.dir, 'volumes', v.name);
      if (v.emptyDir) {
        mkdirSync(dir, { recursive: true, mode: 0o777 });
        if (owner) chownSync(dir, owner.uid, owner.gid);
        this.volumes.set(v.name, { emptyDir: dir });
      } else if (v.configMap || v.secret) {
        const source = v.configMap
          ? { kind: 'configMap' as const, name: v.configMap.name, items: v.configMap.items, optional: v.configMap.optional }
          : { kind: 'secret' as const, name: v.secret!.secretName, items: v.secret!.items, optional: v.secret!.optional };
        const values = source.kind === 'configMap' ? this.context.configMap(this.namespace, source.name) : this.context.secret(this.namespace, source.name);
        if (!values && !source.optional) throw new MissingReference(`${source.kind} ${this.namespace}/${source.name} not found (volume ${v.name})`);
        const volume = new ProjectedVolume(dir, source);
        volume.write(values ?? {}, owner);
        if (owner) chownSync(dir, owner.uid, owner.gid);
        this.volumes.set(v.name, volume);
      } else {
        throw new Error(`pod ${this.name}: volume ${v.name} is of a kind the simulation does not provide (configMap, secret, emptyDir are)`);
      }
    }
  }

  /** Rewrites the pod's volumes that project this ConfigMap or Secret (the kubelet's sync). */
  refresh(kind: 'configMap' | 'secret', name: string, values: Record<string, string>): void {
    for (const v of this.volumes.values()) {
      if (v instanceof ProjectedVolume && v.source.kind === kind && v.source.name === name) {
        try {
          v.write(values, this.owner());
        } catch (err) {
          this.log('pod', `could not update volume from ${kind} ${name}: ${(err as Error).message}`);
        }
      }
    }
  }

  /** The local path a container path stands for: `/app/…` in the image directory, mount paths in the pod's volumes. */
  private mapper(container: Container): (text: string) => string {
    const prefixes: [string, string][] = [];
    const image = this.context.image(container);
    if (image.dir) prefixes.push(['/app', image.dir]);
    for (const m of container.volumeMounts ?? []) {
      const v = this.volumes.get(m.name);
      if (!v) throw new Error(`pod ${this.name}: container ${container.name} mounts volume ${m.name}, which the pod does not declare`);
      const dir = v instanceof ProjectedVolume ? v.dir : v.emptyDir;
      prefixes.push([m.mountPath.replace(/\/$/, ''), m.subPath ? join(dir, m.subPath) : dir]);
    }
    prefixes.sort((a, b) => b[0].length - a[0].length);
    const mapOne = (path: string): string => {
      for (const [from, to] of prefixes) {
        if (path === from) return to;
        if (path.startsWith(from + '/')) return to + path.slice(from.length);
      }
      return path;
    };
    return (text) => {
      if (text.startsWith('/')) return mapOne(text);
      // `--flag=/path`
      const eq = text.indexOf('=');
      if (eq > 0 && text[eq + 1] === '/') return text.slice(0, eq + 1) + mapOne(text.slice(eq + 1));
      return text;
    };
  }

  private env(container: Container): Record<string, string> {
    const env: Record<string, string> = {};
    const map = this.mapper(container);
    const lookup = (kind: 'configMap' | 'secret', name: string, optional: boolean | undefined): Record<string, string> | undefined => {
      const values = kind === 'configMap' ? this.context.configMap(this.namespace, name) : this.context.secret(this.namespace, name);
      if (!values && !optional) throw new MissingReference(`${kind} ${this.namespace}/${name} not found (env of container ${container.name})`);
      return values;
    };
    for (const from of container.envFrom ?? []) {
      const values = from.configMapRef
        ? lookup('configMap', from.configMapRef.name, from.configMapRef.optional)
        : from.secretRef
          ? lookup('secret', from.secretRef.name, from.secretRef.optional)
          : undefined;
      for (const [k, v] of Object.entries(values ?? {})) env[(from.prefix ?? '') + k] = v;
    }
    for (const e of container.env ?? []) {
      if (e.valueFrom) {
        const ref = e.valueFrom.secretKeyRef ?? e.valueFrom.configMapKeyRef;
        if (ref) {
          const kind = e.valueFrom.secretKeyRef ? 'secret' : 'configMap';
          const values = lookup(kind, ref.name, ref.optional);
          const value = values?.[ref.key];
          if (value === undefined && !ref.optional && values) throw new MissingReference(`${kind} ${this.namespace}/${ref.name} has no key ${ref.key} (env ${e.name})`);
          if (value !== undefined) env[e.name] = value;
        } else if (e.valueFrom.fieldRef) {
          env[e.name] = this.field(e.valueFrom.fieldRef.fieldPath);
        } else throw new Error(`pod ${this.name}: env ${e.name} uses a valueFrom the simulation does not provide`);
      } else env[e.name] = map(expand(e.value ?? '', env));
    }
    return env;
  }

  private field(path: string): string {
    switch (path) {
      case 'metadata.name':
        return this.name;
      case 'metadata.namespace':
        return this.namespace;
      case 'status.podIP':
        return this.ip;
      case 'status.hostIP':
        return this.network.ip.replace(/\.\d+$/, '.1');
      case 'spec.serviceAccountName':
        return this.spec.serviceAccountName ?? 'default';
      case 'spec.nodeName':
        return 'simulation';
    }
    const label = /^metadata\.labels\['(.+)'\]$/.exec(path);
    if (label) return this.labels[label[1]!] ?? '';
    throw new Error(`pod ${this.name}: fieldRef ${path} is not simulated`);
  }

  /** How to run one of the pod's containers: argv with paths mapped, env, working directory, user. */
  launchOf(run: ContainerRun | Container): { argv: string[]; env: Record<string, string>; cwd: string; userArgs: string[]; runAs: string } {
    const container = run instanceof ContainerRun ? run.spec : run;
    const map = this.mapper(container);
    const image = this.context.image(container);
    const own = this.env(container);
    const command = container.command ?? image.entrypoint;
    if (!command || command.length === 0) throw new Error(`pod ${this.name}: container ${container.name} has no command, and its image's entrypoint is not known to the simulation`);
    const argv = [...command, ...(container.args ?? [])].map((a) => map(expand(a, own)));
    const tmp = (container.volumeMounts ?? []).find((m) => m.mountPath === '/tmp');
    const env: Record<string, string> = {
      PATH: process.env['PATH'] ?? '/usr/local/bin:/usr/bin:/bin',
      HOSTNAME: this.name,
      HOME: '/',
      ...this.init.extraEnv,
      ...own,
    };
    if (tmp) env['TMPDIR'] = map('/tmp');
    const cwd = container.workingDir ? map(container.workingDir) : (image.dir ?? this.dir);
    const sc = { ...this.spec.securityContext, ...container.securityContext };
    let userArgs: string[] = [];
    let runAs = 'root';
    if (sc.runAsUser !== undefined && sc.runAsUser !== 0) {
      const uid = sc.runAsUser;
      const gid = sc.runAsGroup ?? uid;
      const groups = this.spec.securityContext?.fsGroup !== undefined ? [this.spec.securityContext.fsGroup] : [];
      const why = this.context.canRunAs(uid, gid, groups, image.dir ?? cwd);
      if (why === undefined) {
        userArgs = ['setpriv', '--reuid', String(uid), '--regid', String(gid), ...(groups.length ? ['--groups', groups.join(',')] : ['--clear-groups'])];
        runAs = `uid ${uid} gid ${gid}`;
      } else runAs = `root (runAsUser ${uid} not kept: ${why})`;
    }
    return { argv, env, cwd, userArgs, runAs };
  }

  /** Runs a command in a container's context (preStop, exec probes); resolves its exit code (-1 on timeout). */
  exec(run: ContainerRun, command: string[], timeoutMs: number): Promise<number> {
    const launch = this.launchOf({ ...run.spec, command, args: [] });
    return new Promise<number>((resolve) => {
      const child = spawn('ip', ['netns', 'exec', this.network.netns, ...launch.userArgs, ...launch.argv], {
        env: launch.env,
        cwd: launch.cwd,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const onData = (chunk: Buffer) => this.log(run.spec.name, chunk.toString('utf8'), true);
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      child.on('error', () => undefined);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve(code ?? -1);
      });
    });
  }

  /** Deletion: out of endpoints at once, then each container's preStop, SIGTERM, SIGKILL after the grace period. */
  async stop(options: { preStop: boolean; graceMs?: number; signal?: NodeJS.Signals }): Promise<void> {
    this.terminating = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.context.changed();
    this.log('pod', options.signal && options.signal !== 'SIGTERM' ? `killed (${options.signal})` : 'terminating');
    await Promise.all(this.containers.map((c) => c.stop(options.preStop, options.graceMs, options.signal)));
  }

  /** How each container's process last ended (undefined: it never ran). */
  exits(): { container: string; code: number | null; signal: NodeJS.Signals | null }[] {
    return this.containers.flatMap((c) => (c.lastExit ? [{ container: c.spec.name, ...c.lastExit }] : []));
  }

  killNow(): void {
    this.terminating = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    for (const c of this.containers) c.killNow();
  }

  /** Removes the pod's files, keeping its log. */
  removeFiles(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
