import pino, { type Logger } from 'pino';
import type { AnyContract, MethodDef } from '../contract/define.js';
import { MemoryEventBus } from '../events/memory-bus.js';
import { NoopTelemetry } from '../observe/telemetry.js';
import { ConfigError, deserializeError, serializeError, TimeoutError, UnavailableError, ValidationError } from './errors.js';
import { ServiceHost, type HostEnvironment } from './host.js';
import { FirstBalancer, LocalDiscovery, LocalPolicy, type MethodPolicy } from './local-plugins.js';
import type { Balancer, CallMeta, CallPolicy, Discovery, EventBus, Identity, ServiceStore, StorageProvider, Telemetry, Transport } from './plugins.js';
import { assertSerializable } from './serializable.js';
import type { CallOptions, Client, ServiceDefinition } from './service.js';
import { childTrace, newTrace, type TraceContext } from './trace.js';
import { zodIssues } from './validate.js';

export { DEFAULT_TIMEOUT_MS, type MethodPolicy } from './local-plugins.js';

export interface RuntimeOptions {
  services: readonly ServiceDefinition[];
  storage: StorageProvider;
  bus?: EventBus;
  telemetry?: Telemetry;
  log?: Logger;
  /** Per-service configuration handed to handlers as `ctx.config`. */
  config?: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
  /** Policies by `service.method`, `service` or `*` (most specific wins). */
  policies?: Readonly<Record<string, MethodPolicy>>;
  /**
   * Services that run in other processes, and how calls reach them: a transport and the
   * policy around it (retries, circuits, bulkheads). Without it every service must be local.
   */
  remote?: { transport: Transport; policy: CallPolicy };
  /** Fail any call whose input, output or error would not survive a network hop. */
  checkSerializable?: boolean;
  /** How long stop() waits for in-flight calls. */
  drainMs?: number;
  eventTimeoutMs?: number;
}

/** Root-call metadata for callers outside any handler (the edge, tests, scripts). */
export interface RootCall {
  caller?: Identity;
  trace?: TraceContext;
  timeoutMs?: number;
}

/**
 * The kernel: owns service lifecycle (init/start/stop in dependency order) and the client
 * half of the call pipeline (validate → metadata → policy → transport). Monolith mode uses the
 * in-process transport below; other architectures plug in their own.
 */
export class Runtime {
  readonly log: Logger;
  readonly bus: EventBus;
  readonly telemetry: Telemetry;
  readonly hosts = new Map<string, ServiceHost>();
  /** Calls to services hosted in this process. */
  readonly transport: Transport;
  readonly policy: LocalPolicy;
  readonly discovery: Discovery;
  private readonly order: ServiceDefinition[];
  private started = false;

  constructor(private readonly options: RuntimeOptions) {
    this.log = options.log ?? pino({ level: process.env.EVOLITH_LOG_LEVEL ?? 'info' });
    this.bus = options.bus ?? new MemoryEventBus();
    this.telemetry = options.telemetry ?? new NoopTelemetry();
    this.order = startOrder(options.services, options.remote !== undefined);
    const env: HostEnvironment = {
      client: (contract, parent, from) => this.client(contract, parent, undefined, from),
      bus: this.bus,
      telemetry: this.telemetry,
      log: this.log,
      config: (service) => options.config?.[service] ?? {},
      validateInput: false,
      eventTimeoutMs: options.eventTimeoutMs ?? 30_000,
    };
    for (const def of this.order) this.hosts.set(def.contract.name, new ServiceHost(def, env));
    this.policy = new LocalPolicy(options.policies);
    this.discovery = new LocalDiscovery(this.hosts.keys());
    this.transport = new InProcessTransport(this.hosts, this.discovery, new FirstBalancer(), options.checkSerializable ?? false);
  }

  get services(): readonly ServiceDefinition[] {
    return this.order;
  }

  /** Opens every store and applies migrations, then starts services, dependencies first. */
  async start(): Promise<void> {
    if (this.started) throw new ConfigError('runtime already started');
    this.started = true;
    const open = (s: string): Promise<ServiceStore> => this.options.storage.open(s);
    try {
      for (const def of this.order) await this.hosts.get(def.contract.name)!.init(open);
      for (const def of this.order) await this.hosts.get(def.contract.name)!.start();
    } catch (err) {
      await this.stop().catch(() => undefined);
      throw err;
    }
  }

  /** Stops services in reverse dependency order, letting in-flight calls finish first. */
  async stop(): Promise<void> {
    const drainMs = this.options.drainMs ?? 10_000;
    for (const def of [...this.order].reverse()) {
      const host = this.hosts.get(def.contract.name)!;
      try {
        await host.stop(drainMs);
      } catch (err) {
        this.log.error({ err, service: host.name }, 'stop failed');
      }
    }
    await this.bus.close();
    await this.transport.close?.();
    await this.options.remote?.transport.close?.();
  }

  /** Client half of the pipeline. `parent` is the calling handler's metadata, if any. */
  invoke(
    method: MethodDef,
    input: unknown,
    parent: CallMeta | undefined,
    root: RootCall | undefined,
    options?: CallOptions,
    from?: string,
  ): Promise<unknown> {
    const r = method.input.safeParse(input);
    if (!r.success) {
      const issues = zodIssues(r.error);
      return Promise.reject(
        new ValidationError(`invalid input for ${method.fullName}: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues),
      );
    }
    const local = this.hosts.has(method.service);
    const remote = local ? undefined : this.options.remote;
    const policy = remote ? remote.policy : this.policy;
    const now = Date.now();
    let deadline = now + (options?.timeoutMs ?? root?.timeoutMs ?? policy.timeoutFor(method));
    if (parent && parent.deadline < deadline) deadline = parent.deadline;
    if (deadline <= now) return Promise.reject(new TimeoutError(`no time left to call ${method.fullName}: the caller's deadline has passed`));
    const meta: CallMeta = parent
      ? { deadline, trace: childTrace(parent.trace), caller: parent.caller, from }
      : { deadline, trace: root?.trace ? childTrace(root.trace) : newTrace(), caller: root?.caller, from };
    if (!remote) return this.transport.invoke(method, r.data, meta);
    const value = r.data;
    return remote.policy.execute(method, (m) => remote.transport.invoke(method, value, m), meta);
  }

  /** A typed client. Inside a handler use `ctx.client()`, which carries deadline, trace and caller. */
  client<C extends AnyContract>(contract: C, parent?: CallMeta, root?: RootCall, from?: string): Client<C> {
    const out: Record<string, unknown> = {};
    for (const [name, method] of Object.entries(contract.methods)) {
      out[name] = (input: unknown, options?: CallOptions) => this.invoke(method, input, parent, root, options, from);
    }
    return out as Client<C>;
  }

  host(service: string): ServiceHost {
    const h = this.hosts.get(service);
    if (!h) throw new UnavailableError(`no service named ${service} in this app`);
    return h;
  }
}

/** Monolith transport: a call is a function call on the local host. No codec, no socket. */
export class InProcessTransport implements Transport {
  readonly name = 'in-process';
  private readonly resolved = new Map<string, ServiceHost | undefined>();
  constructor(
    private readonly hosts: ReadonlyMap<string, ServiceHost>,
    private readonly discovery: Discovery,
    private readonly balancer: Balancer,
    private readonly checkSerializable: boolean,
  ) {}

  private hostFor(method: MethodDef): ServiceHost | undefined {
    // Endpoints of an in-process app never change, so the lookup is made once per service.
    if (!this.resolved.has(method.service)) {
      const endpoint = this.balancer.pick(this.discovery.endpoints(method.service), method, undefined);
      this.resolved.set(method.service, endpoint ? this.hosts.get(endpoint.service) : undefined);
    }
    return this.resolved.get(method.service);
  }

  invoke(method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown> {
    const host = this.hostFor(method);
    if (!host) return Promise.reject(new UnavailableError(`service ${method.service} is not part of this app`));
    if (!this.checkSerializable) return host.handle(method, input, meta);
    return this.checked(host, method, input, meta);
  }

  private async checked(host: ServiceHost, method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown> {
    assertSerializable(input, `input of ${method.fullName}`);
    let out: unknown;
    try {
      out = await host.handle(method, input, meta);
    } catch (err) {
      // Errors must survive the wire too: rebuild them from their serialised form.
      throw deserializeError(serializeError(err));
    }
    assertSerializable(out, `output of ${method.fullName}`);
    return out;
  }
}

/** Dependencies first. With `remoteAllowed`, a dependency hosted elsewhere is simply not waited for. */
function startOrder(services: readonly ServiceDefinition[], remoteAllowed: boolean): ServiceDefinition[] {
  const byName = new Map<string, ServiceDefinition>();
  for (const s of services) {
    if (byName.has(s.contract.name)) throw new ConfigError(`service ${s.contract.name} is defined twice`);
    byName.set(s.contract.name, s);
  }
  const order: ServiceDefinition[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (s: ServiceDefinition, path: string[]): void => {
    const st = state.get(s.contract.name);
    if (st === 'done') return;
    if (st === 'visiting') throw new ConfigError(`services depend on each other in a cycle: ${[...path, s.contract.name].join(' → ')}`);
    state.set(s.contract.name, 'visiting');
    for (const dep of s.dependsOn) {
      const d = byName.get(dep.name);
      if (!d && remoteAllowed) continue;
      if (!d) throw new ConfigError(`service ${s.contract.name} depends on ${dep.name}, which is not part of the app`);
      visit(d, [...path, s.contract.name]);
    }
    state.set(s.contract.name, 'done');
    order.push(s);
  };
  for (const s of services) visit(s, []);
  return order;
}
