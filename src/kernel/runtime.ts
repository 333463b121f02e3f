import pino, { type Logger } from 'pino';
import type { AnyContract, MethodDef } from '../contract/define.js';
import { ConfigError, deserializeError, EvolithError, serializeError, TimeoutError, UnavailableError, ValidationError } from './errors.js';
import { ServiceHost, type HostEnvironment } from './host.js';
import { assemble, Call, type Next, type PlacementProvider, type Terminal } from './placement.js';
import type { CallMeta, EventBus, Identity, Migrator, OutboxStore, ServiceStore, StorageProvider, Telemetry } from './plugins.js';
import { PolicyTable, type PolicyOverrides } from './policy-table.js';
import { assertSerializable } from './serializable.js';
import type { CallOptions, Client, ServiceDefinition } from './service.js';
import { childTrace, newTrace, type TraceContext } from './trace.js';
import { zodIssues } from './validate.js';

export { DEFAULT_TIMEOUT_MS, type MethodPolicy } from './policy-table.js';

export interface RuntimeOptions {
  /** The services this process hosts. */
  services: readonly ServiceDefinition[];
  storage: StorageProvider;
  /** Carries events between services; the runtime closes it on stop. */
  bus: EventBus;
  outbox: OutboxStore;
  migrator: Migrator;
  telemetry?: Telemetry;
  log?: Logger;
  /** Per-service configuration handed to handlers as `ctx.config`. */
  config?: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
  /** Policies by `service.method`, `service` or `*` (most specific wins), or a live table shared with links. */
  policies?: PolicyOverrides | PolicyTable;
  /**
   * How calls reach services not hosted here: the deployer's chains. Without it every callee
   * must be hosted in this process. The runtime closes it on stop.
   */
  placement?: PlacementProvider;
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
 * half of the call pipeline: validate the input, make the call's metadata (deadline, trace,
 * caller), then hand it to the callee's chain (see placement.ts). Hosted services end in a
 * LocalTerminal; every other callee in the chain its deployer provides.
 */
export class Runtime {
  readonly log: Logger;
  readonly bus: EventBus;
  readonly telemetry: Telemetry | undefined;
  readonly hosts = new Map<string, ServiceHost>();
  /** The live policy settings every chain of this process reads. */
  readonly policies: PolicyTable;
  private readonly order: ServiceDefinition[];
  private readonly chains = new Map<string, Next>();
  private started = false;

  constructor(private readonly options: RuntimeOptions) {
    this.log = options.log ?? pino({ level: process.env.EVOLITH_LOG_LEVEL ?? 'info' });
    this.bus = options.bus;
    this.telemetry = options.telemetry?.enabled ? options.telemetry : undefined;
    this.policies = options.policies instanceof PolicyTable ? options.policies : new PolicyTable(options.policies ?? {});
    this.order = startOrder(options.services, options.placement !== undefined);
    const env: HostEnvironment = {
      client: (contract, parent, from) => this.client(contract, parent, undefined, from),
      bus: this.bus,
      outbox: options.outbox,
      migrator: options.migrator,
      telemetry: this.telemetry,
      log: this.log,
      config: (service) => options.config?.[service] ?? {},
      eventTimeoutMs: options.eventTimeoutMs ?? 30_000,
    };
    for (const def of this.order) this.hosts.set(def.contract.name, new ServiceHost(def, env));
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
    await this.options.placement?.close?.();
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
    // The first link of every chain: nothing invalid leaves the caller.
    const r = method.input.safeParse(input);
    if (!r.success) {
      const issues = zodIssues(r.error);
      const err = new ValidationError(`invalid input for ${method.fullName}: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`, issues);
      // The same error the callee's side gives input it refuses, wherever it runs.
      err.origin = method.fullName;
      return Promise.reject(err);
    }
    const now = Date.now();
    let deadline = now + (options?.timeoutMs ?? root?.timeoutMs ?? this.policies.timeoutFor(method));
    if (parent && parent.deadline < deadline) deadline = parent.deadline;
    if (deadline <= now) return Promise.reject(new TimeoutError(`no time left to call ${method.fullName}: the caller's deadline has passed`));
    const call = parent
      ? new Call(method, input, r.data, deadline, childTrace(parent.trace), parent.caller, from)
      : new Call(method, input, r.data, deadline, root?.trace ? childTrace(root.trace) : newTrace(), root?.caller, from);
    return this.chain(method.service)(call);
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

  /** The chain to `service`, assembled on the first call to it. */
  private chain(service: string): Next {
    let next = this.chains.get(service);
    if (!next) {
      next = this.assembleChain(service);
      this.chains.set(service, next);
    }
    return next;
  }

  private assembleChain(service: string): Next {
    const host = this.hosts.get(service);
    if (host) return assemble({ links: [], terminal: new LocalTerminal(host, this.options.checkSerializable ?? false) });
    const provider = this.options.placement;
    if (!provider) {
      return () => Promise.reject(new UnavailableError(`service ${service} is not part of this app`));
    }
    const inner = assemble(provider.placement(service));
    // Failures raised on the way (no instance, circuit open, the transport's own timeout) are
    // the callee's: naming it keeps a caller's caller from blaming the caller.
    return (call) => inner(call).then(undefined, (err) => Promise.reject(attribute(err, call.method)));
  }
}

function attribute(err: unknown, method: MethodDef): unknown {
  if (err instanceof EvolithError && err.origin === undefined) err.origin = method.fullName;
  return err;
}

/**
 * The monolith's terminal, and every architecture's for services in the same process: a call is
 * a function call on the local host. No codec, no socket. With `checkSerializable` it fails
 * any call whose data would not cross a wire unchanged, and rebuilds errors from their
 * serialised form, as a wire would.
 */
export class LocalTerminal implements Terminal {
  readonly name = 'local';
  constructor(
    private readonly host: ServiceHost,
    private readonly checkSerializable: boolean,
  ) {}

  send(call: Call): Promise<unknown> {
    if (!this.checkSerializable) return this.host.handle(call.method, call.parsed, call);
    return this.checked(call);
  }

  private async checked(call: Call): Promise<unknown> {
    const { method } = call;
    // What would cross the wire is the caller's own input, so that is what must survive it.
    assertSerializable(call.input, `input of ${method.fullName}`);
    let out: unknown;
    try {
      out = await this.host.handle(method, call.parsed, call);
    } catch (err) {
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
