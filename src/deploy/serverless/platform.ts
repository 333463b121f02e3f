/**
 * The serverless platform, in the control plane: it decides when each function runs and on how
 * many instances, and keeps what a function must not (its timers and events) working while it
 * has none.
 *
 * - Instances: each function (a service group) runs on as many one-shot worker processes as its
 *   autoscaler (KPA, see serverless/autoscaler.ts) wants, from its concurrency: what its
 *   instances report in flight plus the calls that callers' activators hold for it. A decision
 *   that changes the count is logged with its inputs.
 * - Activation: a caller's activator asks (over its IPC channel) when it holds a call for a
 *   function with no instance; the first instance starts at once, without waiting for a tick.
 * - Pool: `serverless.pool` generic runtimes are kept started; an instance takes one over when
 *   there is one (and a new one is started behind it), else it starts as a fresh process.
 * - Limits: an instance runs under its function's memory limit (the supervisor kills it when its
 *   resident memory goes over, and it is reported here), its maximum concurrency and timeout.
 * - Wake-ups: while a function has no instance, the stores are read every `wakeupPollMs` for its
 *   due durable timers, unsent events and events waiting for it (serverless/wakeups.ts); one that
 *   is due starts an instance, which handles them and idles out after the grace period.
 * - Metering: instance reports feed the meter (serverless/metering.ts); instance lifetimes too.
 *   An instance is billed at the memory it was started with: after a topology change resizes a
 *   function, its instances at the new size are metered apart, as `name@<size>MB`.
 * - Reports and announcements are a process's own word: one that makes no sense is ignored (a
 *   report) or refused with the instance stopped (an announcement), never trusted or thrown on.
 */
import type { Logger } from 'pino';
import client from 'prom-client';
import { serializeError, UnavailableError } from '../../kernel/errors.js';
import { Autoscaler, type Decision } from '../../serverless/autoscaler.js';
import { functionConfigs, type FunctionConfig } from '../../serverless/functions.js';
import { alwaysOnCost, LAMBDA_PRICES, Meter, type MeteringReport } from '../../serverless/metering.js';
import { nextWakeups } from '../../serverless/wakeups.js';
import type { ServiceGroup } from '../microservices/groups.js';
import type { InstanceInfo } from '../../discovery/registry.js';
import { Supervisor, type ProcessStatus } from '../supervisor.js';
import type { Topology } from '../topology.js';
import {
  ACTIVATE,
  ACTIVATED,
  METRICS,
  REPORT,
  SERVERLESS_ENV,
  SERVING,
  type ActivatedMessage,
  type ActivateMessage,
  type MetricsMessage,
  type ReportMessage,
  type ServerlessWorkerEnv,
  type ServingMessage,
} from './instance.js';

/** What the control plane does for the platform: processes and their credentials. */
export interface PlatformHooks {
  /** Starts a fresh one-shot process for an instance, with `env` and a memory limit. */
  spawnInstance(group: string, replica: number, env: Record<string, string>, memoryLimitMb: number): void;
  /** Starts a generic runtime as `pool#replica`. */
  spawnPool(replica: number): void;
  /** Turns `pool#poolReplica` into `group#replica`: new name, memory limit, credentials and role. */
  takeOn(poolReplica: number, group: string, replica: number, role: ServerlessWorkerEnv, memoryLimitMb: number): void;
  /** Stops a process gracefully and forgets it. */
  stop(name: string, replica: number): Promise<void>;
  /** Registers instances for `owner` (`warehouse#3`) in the deployment's registry, or renews them. */
  register(owner: string, instances: readonly InstanceInfo[]): void;
  /** Removes `owner`'s instances from the registry. */
  deregister(owner: string, ids: readonly string[]): void;
  send(name: string, replica: number, message: unknown): boolean;
}

type InstanceState = 'starting' | 'ready' | 'stopping';
type Cause = 'initial' | 'activation' | 'scale' | 'wake-up' | 'minimum';

interface Instance {
  readonly replica: number;
  state: InstanceState;
  readonly startedAt: number;
  readonly fromPool: boolean;
  readonly cause: Cause;
  /** The memory it was started with (its limit), and the meter row it is billed on. */
  readonly memoryMb: number;
  readonly meterAs: string;
  initMs?: number;
  /** What it announced, registered for it while it reports. */
  registered: readonly InstanceInfo[];
  /** From its latest report. */
  concurrency: number;
  inFlight: number;
}

interface Kill {
  readonly at: number;
  readonly instance: string;
  readonly reason: string;
}

class Fn {
  readonly autoscaler: Autoscaler;
  readonly instances = new Map<number, Instance>();
  nextReplica = 0;
  desired = 0;
  last: (Decision & { at: number }) | undefined;
  /** Why it cannot start (a start that failed for good), until the topology changes. */
  broken: string | undefined;
  lastKill: Kill | undefined;
  /** The memory size its first instance was metered at. */
  private meteredMb: number | undefined;
  constructor(public config: FunctionConfig) {
    this.autoscaler = new Autoscaler(config);
  }
  /**
   * The meter row for instances of `memoryMb`: the function's name for the size it was first
   * metered at, `name@<size>MB` for a size a topology change gave it later. The meter prices a
   * row at one size, and an instance keeps the size it was started with until it goes.
   */
  meterRow(memoryMb: number): string {
    this.meteredMb ??= memoryMb;
    return memoryMb === this.meteredMb ? this.config.name : `${this.config.name}@${memoryMb}MB`;
  }
  active(): Instance[] {
    return [...this.instances.values()].filter((i) => i.state !== 'stopping');
  }
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;
const isAmount = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;

/** Why a REPORT message cannot be taken, or undefined when it can. */
function reportProblem(r: ReportMessage): string | undefined {
  if (typeof r.held !== 'object' || r.held === null || Array.isArray(r.held)) return 'held is not a mapping';
  for (const [service, n] of Object.entries(r.held)) if (!isCount(n)) return `held.${service} is not a whole number >= 0`;
  if (r.gate === undefined) return undefined;
  const g = r.gate as unknown as Record<string, unknown>;
  if (typeof g !== 'object' || g === null) return 'gate is not a mapping';
  for (const f of ['invocations', 'billedMs', 'coldStarts', 'refused', 'inFlight']) if (!isCount(g[f])) return `gate.${f} is not a whole number >= 0`;
  if (!isAmount(g.concurrency)) return 'gate.concurrency is not a number >= 0';
  if ((g.coldStarts as number) > (g.invocations as number)) return 'gate.coldStarts is above gate.invocations';
  return undefined;
}

/** `evolith status`'s view of the functions (registry `GET /functions`). */
export interface FunctionsStatus {
  pool: { size: number; waiting: number[] };
  functions: {
    name: string;
    services: readonly string[];
    settings: Pick<FunctionConfig, 'memoryMb' | 'maxConcurrency' | 'targetConcurrency' | 'timeoutMs' | 'minInstances' | 'maxInstances' | 'scaleToZeroGraceMs'>;
    desired: number;
    concurrency: number;
    held: number;
    instances: { name: string; state: InstanceState; startedAt: number; fromPool: boolean; cause: Cause; initMs?: number; inFlight: number }[];
    lastDecision?: { at: number; desired: number; panic: boolean; reason: string };
    lastKill?: Kill;
    broken?: string;
  }[];
}

const TICK_MS = 250;
/** Between taking an instance out of discovery and asking it to stop. */
const WITHDRAW_MS = 300;

export class ServerlessPlatform {
  private readonly fns = new Map<string, Fn>();
  /** Service → the function that hosts it. */
  private readonly fnOf = new Map<string, Fn>();
  readonly meter = new Meter(LAMBDA_PRICES);
  private hooks: PlatformHooks | undefined;
  private readonly pool: number[] = [];
  private nextPool = 0;
  private poolFailures = 0;
  /** Held calls per process (`edge#0`), per callee service, from their latest report. */
  private readonly held = new Map<string, Record<string, number>>();
  private tick: NodeJS.Timeout | undefined;
  private wakeups: NodeJS.Timeout | undefined;
  private reading = false;
  private stopped = false;

  private constructor(
    private topology: Topology,
    configs: FunctionConfig[],
    private readonly log: Logger,
  ) {
    for (const c of configs) {
      const fn = new Fn(c);
      this.fns.set(c.name, fn);
      for (const s of c.services) this.fnOf.set(s, fn);
    }
  }

  /** Checks the function settings against the app's groups; a ConfigError lists every problem. */
  static create(groups: ServiceGroup[], topology: Topology, log: Logger): ServerlessPlatform {
    return new ServerlessPlatform(topology, functionConfigs(groups, topology), log.child({ component: 'serverless' }));
  }

  /** The groups as the control plane starts them: each with its initial instances. */
  groups(groups: ServiceGroup[]): ServiceGroup[] {
    return groups.map((g) => ({ ...g, replicas: this.initialInstances(this.fns.get(g.name)!.config) }));
  }

  private initialInstances(c: FunctionConfig): number {
    return Math.min(c.maxInstances, Math.max(c.minInstances, this.topology.serverless.initialInstances));
  }

  /** What every serverless worker is told; `fn` for a function's instance. */
  role(fn?: string): ServerlessWorkerEnv {
    const c = fn ? this.fns.get(fn)!.config : undefined;
    return {
      ...(c && { fn: { name: c.name, maxConcurrency: c.maxConcurrency, queueLimit: c.queueLimit, timeoutMs: c.timeoutMs } }),
      maxHeld: 1000,
      // Callers let through only what the instances they see can run; the rest wait as demand.
      capacity: Object.fromEntries([...this.fnOf].map(([service, f]) => [service, f.config.maxConcurrency])),
    };
  }

  /** Starts the initial instances and the pool; `serve` starts the autoscaler and the wake-ups. */
  begin(hooks: PlatformHooks): void {
    this.hooks = hooks;
    for (const fn of this.fns.values()) {
      const n = this.initialInstances(fn.config);
      for (let i = 0; i < n; i++) this.startInstance(fn, 'initial', false);
    }
    for (let i = 0; i < this.topology.serverless.pool; i++) this.addPool();
  }

  /**
   * The deployment is ready (its initial instances serve): from now on the autoscaler decides.
   * The initial instances count as demand just served, so they stay for the grace period.
   */
  serve(): void {
    const now = Date.now();
    for (const fn of this.fns.values()) {
      if (fn.instances.size > 0) fn.autoscaler.requestArrived(now);
      fn.desired = fn.instances.size;
    }
    this.tick = setInterval(() => this.scale(), TICK_MS);
    this.tick.unref();
    this.wakeups = setInterval(() => void this.readWakeups(), this.topology.serverless.wakeupPollMs);
    this.wakeups.unref();
  }

  /** New settings from the topology, for every function (the pool size too). */
  reconfigure(next: Topology, groups: ServiceGroup[]): void {
    const configs = functionConfigs(groups, next);
    this.topology = next;
    for (const c of configs) {
      const fn = this.fns.get(c.name);
      if (!fn) continue;
      fn.config = c;
      fn.autoscaler.configure(c);
      fn.broken = undefined;
    }
    while (this.pool.length + 0 < next.serverless.pool) this.addPool();
    while (this.pool.length > next.serverless.pool) void this.hooks?.stop('pool', this.pool.pop()!);
    this.log.info({ functions: configs.map((c) => c.name) }, 'function settings updated from the topology');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.tick);
    clearInterval(this.wakeups);
    for (const t of this.refills.values()) clearTimeout(t);
    this.refills.clear();
  }

  private addPool(): void {
    if (!this.hooks || this.stopped) return;
    const r = this.nextPool++;
    this.pool.push(r);
    this.hooks.spawnPool(r);
  }

  /** Pool runtimes to start once the instance that took one over serves. */
  private readonly refills = new Map<string, NodeJS.Timeout>();

  private refill(instance: string): void {
    const timer = this.refills.get(instance);
    if (!timer) return;
    clearTimeout(timer);
    this.refills.delete(instance);
    if (this.pool.length < this.topology.serverless.pool) this.addPool();
  }

  private startInstance(fn: Fn, cause: Cause, usePool = true): void {
    const hooks = this.hooks!;
    const replica = fn.nextReplica++;
    const role = this.role(fn.config.name);
    const poolReplica = usePool ? this.pool.shift() : undefined;
    if (poolReplica !== undefined) {
      hooks.takeOn(poolReplica, fn.config.name, replica, role, fn.config.memoryMb);
      // The runtime behind it starts once this instance serves (or in a second): starting a
      // process takes a core for a while, which the instance needs now.
      const key = Supervisor.key(fn.config.name, replica);
      this.refills.set(key, setTimeout(() => this.refill(key), 1000).unref());
    } else {
      hooks.spawnInstance(fn.config.name, replica, { [SERVERLESS_ENV]: JSON.stringify(role) }, fn.config.memoryMb);
    }
    const now = Date.now();
    const memoryMb = fn.config.memoryMb;
    const meterAs = fn.meterRow(memoryMb);
    fn.instances.set(replica, { replica, state: 'starting', startedAt: now, fromPool: poolReplica !== undefined, cause, memoryMb, meterAs, registered: [], concurrency: 0, inFlight: 0 });
    this.meter.instanceStarted(meterAs, this.meterAt(), { memoryMb });
    this.log.info({ function: fn.config.name, instance: Supervisor.key(fn.config.name, replica), cause, pool: poolReplica !== undefined }, 'function instance starting');
  }

  /** The meter takes instance events in order; Date.now() may step back a millisecond. */
  private lastMeterAt = this.meter.since;
  private meterAt(): number {
    this.lastMeterAt = Math.max(this.lastMeterAt, Date.now());
    return this.lastMeterAt;
  }

  private stopInstance(fn: Fn, instance: Instance): void {
    instance.state = 'stopping';
    const key = Supervisor.key(fn.config.name, instance.replica);
    // Callers stop choosing it first; calls already on their way still find it listening for a
    // moment (as a pod's pre-stop wait does); then it drains the calls it has and exits.
    this.hooks!.deregister(key, instance.registered.map((i) => i.id));
    this.log.info({ function: fn.config.name, instance: key }, 'function instance stopping');
    const stop = () => void this.hooks!.stop(fn.config.name, instance.replica).then(() => this.gone(fn, instance.replica));
    if (instance.registered.length === 0) stop();
    else setTimeout(stop, WITHDRAW_MS);
  }

  /** An instance's process is gone (stopped, exited, killed): forget it and end its metered time. */
  private gone(fn: Fn, replica: number): void {
    const instance = fn.instances.get(replica);
    if (!instance) return;
    fn.instances.delete(replica);
    this.hooks!.deregister(Supervisor.key(fn.config.name, replica), instance.registered.map((i) => i.id));
    this.meter.instanceStopped(instance.meterAs, this.meterAt());
    this.held.delete(Supervisor.key(fn.config.name, replica));
  }

  /** The supervisor's report of a process changing state. */
  onChange(p: ProcessStatus): void {
    if (this.stopped) return;
    if (p.name === 'pool') {
      if (p.state === 'exited' || p.state === 'failed') {
        const at = this.pool.indexOf(p.replica);
        if (at >= 0) this.pool.splice(at, 1);
        void this.hooks?.stop('pool', p.replica);
        // A runtime that cannot even wait is not started again and again (five exits in a row, none serving between).
        if (++this.poolFailures <= 5) setTimeout(() => this.addPool(), 1000).unref();
        else this.log.error({ output: p.lastLines }, 'pool runtimes keep exiting; instances start as fresh processes');
      }
      return;
    }
    const fn = this.fns.get(p.name);
    const instance = fn?.instances.get(p.replica);
    if (!fn || !instance) return;
    if (p.state !== 'exited' && p.state !== 'failed') return;
    const key = Supervisor.key(p.name, p.replica);
    if (p.lastExit?.reason === 'memory') {
      fn.lastKill = { at: p.lastExit.at, instance: key, reason: `resident memory ${p.lastExit.memoryMb} MB over its limit of ${instance.memoryMb} MB` };
      this.log.warn({ function: fn.config.name, instance: key, memoryMb: p.lastExit.memoryMb, limitMb: instance.memoryMb }, 'function instance killed: over its memory limit');
    } else if (p.state === 'failed') {
      const why = [...p.lastLines].reverse().find((l) => l.startsWith('evolith: ')) ?? p.lastLines.at(-1) ?? `exit code ${p.lastExit?.code}`;
      fn.broken = why.replace(/^evolith: /, '');
      this.log.error({ function: fn.config.name, instance: key, reason: fn.broken }, 'function instance cannot start; calls to it are refused until the topology changes');
    } else if (instance.state !== 'stopping') {
      fn.lastKill = { at: p.lastExit?.at ?? Date.now(), instance: key, reason: `exited (${p.lastExit?.signal ?? `code ${p.lastExit?.code}`})` };
      this.log.warn({ function: fn.config.name, instance: key, exit: p.lastExit }, 'function instance exited');
    }
    this.gone(fn, p.replica);
    void this.hooks?.stop(p.name, p.replica);
  }

  /** A message from a supervised process (reports, activation requests); a bad one is logged, never thrown. */
  onMessage(name: string, replica: number, message: unknown): void {
    try {
      this.handle(name, replica, message);
    } catch (err) {
      this.log.error({ process: Supervisor.key(name, replica), err: (err as Error).message }, 'a message from a process could not be handled');
    }
  }

  private handle(name: string, replica: number, message: unknown): void {
    const m = message as { type?: string } | undefined;
    const key = Supervisor.key(name, replica);
    if (m?.type === REPORT) {
      const r = m as ReportMessage;
      // A process's report is its own word: one that makes no sense is not taken (a throw here
      // would end the control plane, and nonsense would skew scaling and billing).
      const problem = reportProblem(r);
      if (problem) {
        this.log.error({ instance: key, problem }, 'a process sent a report that makes no sense; ignored');
        return;
      }
      if (Object.keys(r.held).length > 0) this.held.set(key, r.held);
      else this.held.delete(key);
      const fn = this.fns.get(name);
      const instance = fn?.instances.get(replica);
      if (fn && instance && instance.state === 'ready') this.hooks?.register(key, instance.registered);
      if (fn && instance && r.gate) {
        instance.concurrency = r.gate.concurrency;
        instance.inFlight = r.gate.inFlight;
        if (r.gate.invocations > 0) this.meter.invocations(instance.meterAs, { memoryMb: instance.memoryMb }, r.gate.invocations, r.gate.billedMs, r.gate.coldStarts);
      }
    } else if (m?.type === SERVING) {
      const fn = this.fns.get(name);
      const instance = fn?.instances.get(replica);
      if (fn && instance) {
        const s = m as ServingMessage;
        // It may announce only what it was started for: its function's services, as this slot.
        const announced: unknown[] = Array.isArray(s.instances) ? s.instances : [];
        const own = (i: unknown): boolean => {
          const x = i as Partial<InstanceInfo> | null;
          return typeof x === 'object' && x !== null && typeof x.service === 'string' && typeof x.address === 'string' && fn.config.services.includes(x.service) && x.id === `${x.service}-${replica}`;
        };
        if (announced.length === 0 || !announced.every(own)) {
          this.log.error({ instance: key, announced: announced.map((i) => (i as { id?: unknown } | null)?.id) }, 'a function instance announced instances it does not run; stopping it');
          this.stopInstance(fn, instance);
          return;
        }
        instance.registered = s.instances;
        if (instance.state === 'starting') this.hooks?.register(key, s.instances);
        instance.initMs = Math.round(s.initMs);
        // A runtime from the pool served: the pool works, whatever exits came before.
        if (instance.fromPool) this.poolFailures = 0;
        if (instance.state === 'starting') instance.state = 'ready';
        this.log.info({ instance: key, initMs: instance.initMs, pool: instance.fromPool, cause: instance.cause }, 'function instance ready');
        this.refill(key);
      }
    } else if (m?.type === METRICS) {
      const id = (m as MetricsMessage).id;
      void this.metrics().then((text) => this.hooks?.send(name, replica, { type: METRICS, id, text } satisfies MetricsMessage));
    } else if (m?.type === ACTIVATE) {
      const a = m as ActivateMessage;
      const answer: ActivatedMessage = { type: ACTIVATED, id: a.id };
      const error = this.activate(a.service, key);
      if (error) answer.error = serializeError(error);
      this.hooks?.send(name, replica, answer);
    }
  }

  /** A caller holds a call for `service`, which has no instance it can see: start one unless one is coming. */
  private activate(service: string, caller: string): UnavailableError | undefined {
    const fn = this.fnOf.get(service);
    if (!fn) return new UnavailableError(`${service} is not a function of this deployment`, { maybeExecuted: false });
    if (fn.broken) return new UnavailableError(`${fn.config.name} cannot start: ${fn.broken}`, { maybeExecuted: false, function: fn.config.name });
    const now = Date.now();
    fn.autoscaler.requestArrived(now);
    if (fn.active().length === 0) {
      this.log.info({ function: fn.config.name, caller }, 'activation: a call waits for an instance');
      fn.desired = Math.max(fn.desired, 1);
      fn.last = { desired: fn.desired, panic: false, stableConcurrency: 0, panicConcurrency: 0, reason: `activation: ${caller} holds a call`, at: now };
      this.startInstance(fn, 'activation');
    }
    return undefined;
  }

  private heldFor(fn: Fn): number {
    let n = 0;
    for (const byService of this.held.values()) for (const s of fn.config.services) n += byService[s] ?? 0;
    return n;
  }

  /** One autoscaler round for every function. */
  private scale(): void {
    if (this.stopped) return;
    const now = Date.now();
    for (const fn of this.fns.values()) {
      const active = fn.active();
      const held = this.heldFor(fn);
      const concurrency = active.reduce((n, i) => n + i.concurrency, 0) + held;
      fn.autoscaler.record(now, concurrency);
      if (held > 0) fn.autoscaler.requestArrived(now);
      const d = fn.autoscaler.decide(now, active.length);
      const desired = fn.broken ? 0 : d.desired;
      if (desired !== fn.desired || desired !== active.length) {
        if (desired !== fn.desired) {
          this.log.info(
            { function: fn.config.name, from: active.length, desired, panic: d.panic, stableConcurrency: d.stableConcurrency, panicConcurrency: d.panicConcurrency, held, reason: d.reason },
            'autoscaler decision',
          );
        }
        fn.last = { ...d, desired, at: now };
        fn.desired = desired;
      }
      if (desired > active.length) {
        for (let i = active.length; i < desired; i++) this.startInstance(fn, active.length === 0 ? 'activation' : 'scale');
      } else if (desired < active.length) {
        // The least busy go first, the youngest among equals (a still-starting one has nothing to drain).
        const order = [...active].sort((a, b) => a.inFlight - b.inFlight || b.startedAt - a.startedAt);
        for (const instance of order.slice(0, active.length - desired)) this.stopInstance(fn, instance);
      }
    }
  }

  /** Functions with no instance: does a timer come due, or an event wait, in their stores? */
  private async readWakeups(): Promise<void> {
    if (this.reading || this.stopped) return;
    const idle = [...this.fns.values()].filter((fn) => fn.active().length === 0 && !fn.broken);
    if (idle.length === 0) return;
    this.reading = true;
    try {
      const t = this.topology;
      const now = Date.now();
      const due = await nextWakeups({ data: t.data, storage: t.storage, events: t.events, services: idle.flatMap((fn) => fn.config.services) }, now);
      this.log.debug({ ms: Date.now() - now, functions: idle.length }, 'wake-ups read');
      for (const w of due) {
        if (w.at > now) continue;
        const fn = this.fnOf.get(w.service)!;
        if (this.stopped || fn.active().length > 0) continue;
        this.log.info({ function: fn.config.name, service: w.service, why: w.why, waiting: w.count }, 'wake-up: work is due for a function with no instance');
        fn.autoscaler.requestArrived(Date.now());
        fn.desired = Math.max(fn.desired, 1);
        fn.last = { desired: fn.desired, panic: false, stableConcurrency: 0, panicConcurrency: 0, reason: `wake-up: ${w.why} due for ${w.service}`, at: Date.now() };
        this.startInstance(fn, 'wake-up');
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'the stores could not be read for wake-ups; trying again');
    } finally {
      this.reading = false;
    }
  }

  status(): FunctionsStatus {
    return {
      pool: { size: this.topology.serverless.pool, waiting: [...this.pool] },
      functions: [...this.fns.values()].map((fn) => {
        const c = fn.config;
        return {
          name: c.name,
          services: c.services,
          settings: {
            memoryMb: c.memoryMb,
            maxConcurrency: c.maxConcurrency,
            targetConcurrency: c.targetConcurrency,
            timeoutMs: c.timeoutMs,
            minInstances: c.minInstances,
            maxInstances: c.maxInstances,
            scaleToZeroGraceMs: c.scaleToZeroGraceMs,
          },
          desired: fn.desired,
          concurrency: fn.active().reduce((n, i) => n + i.inFlight, 0),
          held: this.heldFor(fn),
          instances: [...fn.instances.values()].map((i) => ({
            name: Supervisor.key(c.name, i.replica),
            state: i.state,
            startedAt: i.startedAt,
            fromPool: i.fromPool,
            cause: i.cause,
            ...(i.initMs !== undefined && { initMs: i.initMs }),
            inFlight: i.inFlight,
          })),
          ...(fn.last && { lastDecision: { at: fn.last.at, desired: fn.last.desired, panic: fn.last.panic, reason: fn.last.reason } }),
          ...(fn.lastKill && { lastKill: fn.lastKill }),
          ...(fn.broken && { broken: fn.broken }),
        };
      }),
    };
  }

  /** The meter's counters in Prometheus text. */
  async metrics(): Promise<string> {
    if (!this.registry) {
      this.registry = new client.Registry();
      this.meter.register(this.registry);
    }
    return this.registry.metrics();
  }
  private registry: client.Registry | undefined;

  /** The metering report, with what the same period costs with one always-on process per function. */
  metering(now = Date.now()): { report: MeteringReport; alwaysOn: ReturnType<typeof alwaysOnCost> } {
    const report = this.meter.report(Math.max(now, this.lastMeterAt));
    const configs = [...this.fns.values()].map((f) => f.config);
    const memory = Math.max(...configs.map((c) => c.memoryMb));
    return { report, alwaysOn: alwaysOnCost(configs.length, memory, (report.until - report.since) / 1000) };
  }
}
