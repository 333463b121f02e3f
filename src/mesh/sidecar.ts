/**
 * The mesh's data plane: the proxy beside one app instance. The app keeps no resilience code;
 * its every call to another service goes to this proxy, which does the rest:
 *
 *   app ──unix socket──▶ outbound ──mutual TLS──▶ inbound (callee's proxy) ──unix socket──▶ callee app
 *
 * - Outbound (the app's calls): the route the mesh policy gives (subset weights, timeout,
 *   retries, injected faults), the endpoint (subset labels, outlier ejection, balancer), the
 *   callee's pending-call limit, and mutual TLS to the callee's proxy, which must present the
 *   callee's identity.
 * - Inbound (calls to the app): mutual TLS only (a plaintext or foreign-certificate connection
 *   is refused and logged); the calling service is the one the peer's certificate names, never
 *   what a frame says; the policy's authorization; then the app's own socket.
 *
 * Both ways it reads frame headers only: inputs and outputs pass as the bytes they are. (An
 * error answer's payload is read on the outbound side, to know whether it may be retried.)
 * The link to its app is a Unix socket in a directory only the deployment's user can enter, and
 * both ends prove their deployment credentials on it: the proxy takes calls from its own app
 * alone, and the app takes calls from its own proxy alone.
 */
import { connect as tlsConnect } from 'node:tls';
import type { Logger } from 'pino';
import type { InternalPlane } from '../auth/internal-plane.js';
import type { ServiceEndpoint } from '../discovery/registry.js';
import { DeadlineEntry, unwatch, watch } from '../kernel/deadline.js';
import { parseBaggage } from '../kernel/trace.js';
import {
  ConfigError,
  EvolithError,
  ForbiddenError,
  InternalError,
  NotFoundError,
  NotSerializableError,
  TimeoutError,
  UnauthenticatedError,
  UnavailableError,
} from '../kernel/errors.js';
import { decodePayload, forwardFrame, swapId, toSerializedError, type AnswerHeader, type RequestHeader } from '../rpc/frame.js';
import { Forwarder, type ForwarderStats } from '../rpc/forwarder.js';
import { RpcListener, type InboundConnection, type ListenerStats } from '../rpc/listener.js';
import { Exchange, Upstreams } from '../rpc/upstream.js';
import { clientTlsOptions, parseSpiffeId, peerIds, serverTlsOptions, spiffeId, type IssuedCertificate } from './identity.js';
import { OutlierDetector } from './outlier.js';
import { RetryBudget } from '../resilience/retry-budget.js';
import { pickDestination, type DestinationPolicy, type MeshPolicy, type RouteDecision } from './policy.js';
import type { MeshTelemetry } from './telemetry.js';

/** One app instance a proxy serves. */
export interface ProxiedInstance {
  /** The app's process slot, as its credential names it (`warehouse#0`, `edge#0`). */
  readonly instance: string;
  /** The services the app hosts (none for the edge). */
  readonly services: readonly string[];
  readonly edge: boolean;
  /** Where the app serves its services: `unix:<path>` (absent for the edge). */
  readonly appSocket: string | undefined;
  /** Where the app sends its calls: a Unix socket path. */
  readonly outboundPath: string;
  /** The port of the mutual-TLS listener other proxies call (0: any). */
  readonly inboundPort: number;
}

/** Where a proxy finds the instances of a service. */
export interface MeshDiscovery {
  endpoints(service: string): readonly ServiceEndpoint[];
}

export interface SidecarOptions {
  readonly app: string;
  /** The interface the mutual-TLS listener binds to. */
  readonly internalHost: string;
  readonly instance: ProxiedInstance;
  /** The proxy's own deployment credential (it proves itself to its app with it). */
  readonly plane: InternalPlane;
  readonly certificate: IssuedCertificate;
  readonly trustPem: string;
  readonly discovery: MeshDiscovery;
  readonly policy: MeshPolicy;
  readonly telemetry: MeshTelemetry;
  readonly log: Logger;
}

/** Retries when a route sets none: a call that surely never reached a server tries another, twice. */
const DEFAULT_RETRIES = { attempts: 2, perTryTimeoutMs: undefined, retryOn: ['unavailable'] } as const;
const RETRY_BACKOFF_MS = 25;

export class Sidecar {
  readonly instance: ProxiedInstance;
  private readonly log: Logger;
  private certificate: IssuedCertificate;
  private policyNow: MeshPolicy;
  private readonly inbound: Forwarder;
  private readonly outbound: OutboundListener;
  /** Per callee service: its connections (mutual TLS, expecting its identity), limits, ejections. */
  private readonly callees = new Map<string, Callee>();
  private inboundBound: string | undefined;

  constructor(readonly options: SidecarOptions) {
    this.instance = options.instance;
    this.certificate = options.certificate;
    this.policyNow = options.policy;
    this.log = options.log.child({ component: 'sidecar', instance: options.instance.instance });
    const peerServices = new WeakMap<InboundConnection, readonly string[]>();
    const servicesOf = (conn: InboundConnection): readonly string[] => {
      let known = peerServices.get(conn);
      if (!known) {
        const socket = conn.tlsSocket;
        known = socket ? peerIds(socket).flatMap((id) => (parseSpiffeId(id)?.app === options.app ? [parseSpiffeId(id)!.service] : [])) : [];
        peerServices.set(conn, known);
      }
      return known;
    };
    this.inbound = new Forwarder({
      log: this.log,
      host: options.internalHost,
      port: options.instance.inboundPort,
      tls: serverTlsOptions(options.certificate, options.trustPem),
      upstream: { plane: options.plane },
      route: (header, conn) => this.admitInbound(header, servicesOf(conn)),
      observe: (header, conn, outcome, startedAt) =>
        options.telemetry.record('destination', header.from ?? servicesOf(conn)[0] ?? 'unknown', header.service, header.method, outcome, startedAt),
    });
    this.outbound = new OutboundListener(this, {
      log: this.log,
      path: options.instance.outboundPath,
      plane: options.plane,
      admit: (peer) => (peer.sub === options.instance.instance ? undefined : `this proxy carries the calls of ${options.instance.instance} only`),
    });
  }

  get policy(): MeshPolicy {
    return this.policyNow;
  }

  /** The mutual-TLS address other proxies call. */
  get inboundAddress(): string {
    if (!this.inboundBound) throw new Error('the sidecar has not started');
    return this.inboundBound;
  }

  get currentCertificate(): IssuedCertificate {
    return this.certificate;
  }

  async start(): Promise<void> {
    this.inboundBound = await this.inbound.listen();
    await this.outbound.listen();
  }

  /** A new certificate: new connections both ways use it; open ones finish on theirs. */
  rotate(certificate: IssuedCertificate): void {
    this.certificate = certificate;
    this.inbound.setSecureContext(serverTlsOptions(certificate, this.options.trustPem));
  }

  /** A new policy snapshot (validated by the caller): applies to the next call. */
  setPolicy(policy: MeshPolicy): void {
    this.policyNow = policy;
    for (const callee of this.callees.values()) callee.configure(policy.destination(callee.service));
  }

  /** Stats for status pages and tests. */
  stats(): { inbound: ForwarderStats; outbound: ListenerStats } {
    return { inbound: this.inbound.stats, outbound: this.outbound.stats };
  }

  /** Endpoints ejected now, per service (for status and tests). */
  ejected(): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    const now = Date.now();
    for (const c of this.callees.values()) {
      const list = this.options.discovery.endpoints(c.service).filter((e) => c.outliers.ejected(e.address, now));
      if (list.length) out[c.service] = list.map((e) => e.address);
    }
    return out;
  }

  async close(): Promise<void> {
    await this.outbound.close();
    await this.inbound.close();
    await Promise.all([...this.callees.values()].map((c) => c.upstreams.close()));
  }

  /** Inbound: whether the call may reach the app, and where the app is. */
  private admitInbound(header: RequestHeader, peerServices: readonly string[]): string {
    const call = `${header.service}.${header.method}`;
    if (peerServices.length === 0) throw new UnauthenticatedError(`${call}: the caller's certificate names no service of ${this.options.app}`);
    if (header.from !== undefined && !peerServices.includes(header.from)) {
      this.log.warn({ call, peer: peerServices, claimed: header.from }, 'call refused: the calling service is not the certificate’s');
      throw new ForbiddenError(`${call}: a caller proven as ${peerServices.join(', ')} may not call as ${header.from}`);
    }
    const { appSocket, services } = this.instance;
    if (appSocket === undefined || !services.includes(header.service)) {
      throw new NotFoundError(`${this.instance.instance} hosts no service ${header.service}`);
    }
    const source = header.from ?? peerServices[0]!;
    const verdict = this.policyNow.authorize(header.service, source, header.method);
    if (!verdict.allowed) {
      this.log.warn({ call, source }, 'call denied by the mesh policy');
      throw new ForbiddenError(verdict.reason, { source, callee: header.service, method: header.method });
    }
    return appSocket;
  }

  /** Outbound: one call of the app, from the route to the answer. */
  send(conn: InboundConnection, header: RequestHeader, frame: Buffer, payloadStart: number, source: string): void {
    const startedAt = performance.now();
    const finish = (outcome: string) => this.options.telemetry.record('source', source, header.service, header.method, outcome, startedAt);
    let decision: RouteDecision;
    try {
      decision = this.policyNow.route(header.service, header.method, source, header.baggage === undefined ? undefined : parseBaggage(header.baggage));
    } catch (err) {
      return refuse(conn, header, err, finish);
    }
    const call = new OutboundCall(this, conn, header, frame, payloadStart, decision, this.callee(header.service), finish);
    const fault = decision.fault;
    const delay = fault?.delay && Math.random() * 100 < fault.delay.percent ? fault.delay.ms : 0;
    const abort = fault?.abort && Math.random() * 100 < fault.abort.percent ? fault.abort.code : undefined;
    if (delay === 0 && abort === undefined) return call.begin();
    conn.begin();
    const go = () => {
      conn.end();
      if (abort !== undefined) return call.settleError(injectedFault(abort, header, decision.name));
      call.begin();
    };
    // An injected delay still ends at the call's deadline.
    const wait = Math.min(delay, Math.max(0, call.deadline - Date.now()));
    if (wait < delay) setTimeout(() => (conn.end(), call.settleError(new TimeoutError(`${header.service}.${header.method}: its deadline passed during an injected delay`))), wait);
    else setTimeout(go, delay);
  }

  /** @internal */
  callee(service: string): Callee {
    let c = this.callees.get(service);
    if (!c) this.callees.set(service, (c = new Callee(this, service, this.policyNow.destination(service))));
    return c;
  }

  /** @internal Opens a mutual-TLS connection to a proxy of `service`, which must prove that identity. */
  connectTo(service: string, host: string, port: number) {
    const socket = tlsConnect({ ...clientTlsOptions(this.certificate, this.options.trustPem, spiffeId(this.options.app, service)), host, port });
    // Small request frames must leave at once: with Nagle's algorithm on, a call could wait for
    // the previous one's acknowledgement (tens of milliseconds with delayed ACKs).
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    return socket;
  }

  /** @internal */
  endpoints(service: string): readonly ServiceEndpoint[] {
    return this.options.discovery.endpoints(service);
  }

  /** @internal */
  get logger(): Logger {
    return this.log;
  }
}

function refuse(conn: InboundConnection, header: RequestHeader, err: unknown, finish: (outcome: string) => void): void {
  const e = err instanceof EvolithError ? err : new InternalError((err as Error).message ?? String(err));
  conn.fail(header.id, e);
  finish(e.code);
}

function injectedFault(code: string, header: RequestHeader, route: string | undefined): EvolithError {
  const message = `${header.service}.${header.method}: fault injected by ${route ? `route ${route}` : 'a route'} of the mesh policy`;
  const details = { injected: true, maybeExecuted: false };
  switch (code) {
    case 'TIMEOUT':
      return new TimeoutError(message, details);
    case 'FORBIDDEN':
      return new ForbiddenError(message, details);
    case 'NOT_FOUND':
      return new NotFoundError(message, details);
    case 'INTERNAL':
      return new InternalError(message, details);
    default:
      return new UnavailableError(message, details);
  }
}

/** What a proxy keeps per callee service. */
class Callee {
  upstreams: Upstreams;
  readonly outliers: OutlierDetector;
  pending = 0;
  /** Retries to this service may add at most a fifth of its calls (plus a few), so failures do not become a retry storm. */
  readonly retryBudget = new RetryBudget();
  private roundRobin = 0;
  /** Calls in flight per endpoint address (least-request balancing). */
  readonly inflight = new Map<string, number>();

  constructor(
    private readonly sidecar: Sidecar,
    readonly service: string,
    public destination: DestinationPolicy,
  ) {
    this.outliers = new OutlierDetector(outlierSettings(destination));
    this.upstreams = this.makeUpstreams(destination);
  }

  configure(destination: DestinationPolicy): void {
    const old = this.destination;
    this.destination = destination;
    this.outliers.configure(outlierSettings(destination));
    if (destination.maxConnections !== old.maxConnections || destination.maxRequestsPerConnection !== old.maxRequestsPerConnection) {
      const retired = this.upstreams;
      this.upstreams = this.makeUpstreams(destination);
      void retired.close();
    }
  }

  private makeUpstreams(destination: DestinationPolicy): Upstreams {
    return new Upstreams(
      {
        maxConnectionsPerAddress: destination.maxConnections,
        maxRequestsPerConnection: destination.maxRequestsPerConnection,
        connect: (target) => {
          if (target.path !== undefined) throw new ConfigError('a mesh proxy reaches other proxies over TCP only');
          return this.sidecar.connectTo(this.service, target.host, target.port);
        },
      },
      this.sidecar.logger.child({ component: 'sidecar-upstream', callee: this.service }),
    );
  }

  /** An endpoint of `subset` for the next attempt: not ejected, not tried yet if others remain, then by the balancer. */
  choose(subset: string | undefined, tried: ReadonlySet<string> | undefined): ServiceEndpoint | UnavailableError {
    const all = this.sidecar.endpoints(this.service);
    let candidates = all;
    if (subset !== undefined) {
      const labels = this.destination.subsets[subset];
      if (!labels) return new UnavailableError(`${this.service} has no subset ${subset} in the mesh policy`, { maybeExecuted: false });
      candidates = all.filter((e) => Object.entries(labels).every(([k, v]) => e.metadata?.[k] === v));
    }
    if (candidates.length === 0) {
      return new UnavailableError(`no instance of ${this.service}${subset ? ` (subset ${subset})` : ''} is registered`, { maybeExecuted: false });
    }
    const now = Date.now();
    const healthy = this.outliers.anyEjected(now) ? candidates.filter((e) => !this.outliers.ejected(e.address, now)) : candidates;
    // With every endpoint ejected, Envoy still sends (panic routing) rather than fail them all.
    const pool0 = healthy.length > 0 ? healthy : candidates;
    const untried = tried === undefined ? pool0 : pool0.filter((e) => !tried.has(e.address));
    const pool = untried.length > 0 ? untried : pool0;
    if (pool.length === 1) return pool[0]!;
    switch (this.destination.loadBalancer) {
      case 'ROUND_ROBIN':
        return pool[this.roundRobin++ % pool.length]!;
      case 'RANDOM':
        return pool[Math.floor(Math.random() * pool.length)]!;
      default: {
        // Least request, as Envoy does it: the less busy of two picked at random.
        const a = pool[Math.floor(Math.random() * pool.length)]!;
        let b = pool[Math.floor(Math.random() * (pool.length - 1))]!;
        if (b === a) b = pool[pool.length - 1]!;
        return (this.inflight.get(a.address) ?? 0) <= (this.inflight.get(b.address) ?? 0) ? a : b;
      }
    }
  }

  addressesNow(): string[] {
    return this.sidecar.endpoints(this.service).map((e) => e.address);
  }
}

function outlierSettings(d: DestinationPolicy) {
  return { consecutiveErrors: d.outlier.consecutiveErrors, baseEjectionMs: d.outlier.baseEjectionMs, maxEjectionPercent: d.outlier.maxEjectionPercent };
}

/** Failures that say something about the endpoint, not about the call. */
const ENDPOINT_FAILURES = new Set(['EVOLITH_UNAVAILABLE', 'EVOLITH_TIMEOUT', 'EVOLITH_INTERNAL']);

/** One call of the app, through its attempts. */
class OutboundCall extends DeadlineEntry {
  private attempts = 0;
  /** Endpoints tried so far, from the second attempt on (most calls never need it). */
  private tried: Set<string> | undefined;
  private lastAddress = '';
  private settled_ = false;
  private readonly retries: { attempts: number; perTryTimeoutMs: number | undefined; retryOn: readonly string[] };
  private readonly idempotent: boolean;
  private counted = false;

  constructor(
    private readonly sidecar: Sidecar,
    private readonly downstream: InboundConnection,
    private readonly header: RequestHeader,
    private frame: Buffer,
    private readonly payloadStart: number,
    private readonly decision: RouteDecision,
    private readonly callee: Callee,
    private readonly finish: (outcome: string) => void,
  ) {
    super();
    this.deadline = decision.timeoutMs !== undefined ? Math.min(header.deadline, Date.now() + decision.timeoutMs) : header.deadline;
    this.retries = decision.retries ?? DEFAULT_RETRIES;
    this.idempotent = sidecar.policy.idempotent(header.service, header.method);
  }

  get label(): string {
    return `${this.header.service}.${this.header.method}`;
  }

  /** Starts the first attempt. */
  begin(): void {
    const limit = this.callee.destination.maxPendingRequests;
    if (this.callee.pending >= limit) {
      return this.settleError(
        new UnavailableError(`${this.label}: ${limit} calls to ${this.callee.service} are already pending (the mesh policy's connection pool)`, {
          maybeExecuted: false,
          overloaded: true,
        }),
      );
    }
    this.callee.pending++;
    this.callee.retryBudget.request();
    this.counted = true;
    this.downstream.begin();
    watch(this);
    this.attempt();
  }

  expire(): void {
    // The call's own deadline (the caller's, or the route's timeout) passed.
    this.settleError(new TimeoutError(`${this.label} did not answer within its deadline${this.decision.timeoutMs !== undefined ? ` (the route's timeout is ${this.decision.timeoutMs} ms)` : ''}`));
  }

  private attempt(): void {
    if (this.settled_) return;
    this.attempts++;
    const { subset } = pickDestination(this.decision, Math.random());
    if (this.attempts > 1) (this.tried ??= new Set()).add(this.lastAddress);
    const endpoint = this.callee.choose(subset, this.tried);
    if (endpoint instanceof UnavailableError) return this.settleError(endpoint);
    const address = endpoint.address;
    this.lastAddress = address;
    const upstream = this.callee.upstreams.acquire(address);
    if (upstream instanceof ConfigError) return this.settleError(upstream);
    if (upstream.queuedBytes > this.callee.upstreams.maxQueuedBytes) {
      return this.failed(address, new UnavailableError(`${address} is not reading its requests; ${this.label} was not sent`, { address, maybeExecuted: false }));
    }
    const perTry = this.retries.perTryTimeoutMs;
    const tryDeadline = perTry !== undefined ? Math.min(this.deadline, Date.now() + perTry) : this.deadline;
    const id = upstream.nextId();
    if (this.attempts > 1) this.frame = Buffer.from(this.frame);
    try {
      if (tryDeadline === this.header.deadline && this.frame.length - 4 <= upstream.limits.maxFrameBytes && swapId(this.frame, id)) upstream.write(this.frame);
      else forwardFrame(upstream, { ...this.header, id, deadline: tryDeadline }, this.frame, this.payloadStart, upstream.limits);
    } catch {
      return this.settleError(new NotSerializableError(`${this.label} cannot be forwarded: its frame is larger than ${address} accepts`));
    }
    this.callee.inflight.set(address, (this.callee.inflight.get(address) ?? 0) + 1);
    upstream.start(new Attempt(this, address, tryDeadline), id);
  }

  /** @internal An attempt's answer arrived. Returns a protocol-error reason, if any. */
  answered(attempt: Attempt, header: AnswerHeader, frame: Buffer, payloadStart: number): string | undefined {
    this.done(attempt.address);
    if (this.settled_) return undefined;
    if (header.kind === 'ok') {
      this.callee.outliers.succeeded(attempt.address);
      this.relay(header, frame, payloadStart, 'ok');
      return undefined;
    }
    let error;
    try {
      error = toSerializedError(decodePayload(frame, payloadStart));
    } catch (err) {
      return (err as Error).message;
    }
    if (typeof error === 'string') return `malformed error answer: ${error}`;
    const maybeExecuted = (error.details as { maybeExecuted?: boolean } | undefined)?.maybeExecuted !== false;
    if (ENDPOINT_FAILURES.has(error.code)) this.endpointFailed(attempt.address);
    else this.callee.outliers.succeeded(attempt.address);
    if (this.retryable(error.code === 'EVOLITH_TIMEOUT' ? 'timeout' : error.code === 'EVOLITH_UNAVAILABLE' ? 'unavailable' : undefined, maybeExecuted)) {
      this.retry();
      return undefined;
    }
    this.relay(header, frame, payloadStart, 'error');
    return undefined;
  }

  /** @internal The attempt's connection failed. */
  failed(address: string, err: UnavailableError): void {
    this.done(address);
    this.endpointFailed(address);
    if (this.settled_) return;
    const maybeExecuted = (err.details as { maybeExecuted?: boolean } | undefined)?.maybeExecuted !== false;
    if (this.retryable('unavailable', maybeExecuted)) return this.retry();
    this.settleError(err);
  }

  /** @internal The attempt's own deadline passed (a per-try timeout, or the call's). */
  timedOut(address: string, tryDeadline: number): void {
    this.done(address);
    this.endpointFailed(address);
    if (this.settled_) return;
    if (tryDeadline < this.deadline && this.retryable('timeout', true)) return this.retry();
    this.settleError(new TimeoutError(`${this.label} at ${address} did not answer before its deadline`, { deadline: new Date(tryDeadline).toISOString() }));
  }

  private done(address: string): void {
    const n = (this.callee.inflight.get(address) ?? 1) - 1;
    if (n <= 0) this.callee.inflight.delete(address);
    else this.callee.inflight.set(address, n);
  }

  private endpointFailed(address: string): void {
    if (this.callee.outliers.failed(address, this.callee.addressesNow())) {
      this.sidecar.logger.warn({ callee: this.callee.service, endpoint: address, until: new Date(this.callee.outliers.ejectedUntil(address) ?? 0).toISOString() }, 'endpoint ejected');
    }
  }

  /** A failure may be tried again: attempts left, time left, and the call either never ran or may run twice. */
  private retryable(kind: 'timeout' | 'unavailable' | undefined, maybeExecuted: boolean): boolean {
    if (kind === undefined || this.attempts > this.retries.attempts) return false;
    if (!this.retries.retryOn.includes(kind) && !(kind === 'unavailable' && !maybeExecuted)) return false;
    if (maybeExecuted && !this.idempotent) return false;
    if (Date.now() + RETRY_BACKOFF_MS >= this.deadline) return false;
    return this.callee.retryBudget.tryRetry();
  }

  private retry(): void {
    const backoff = this.attempts === 1 ? 0 : Math.random() * RETRY_BACKOFF_MS * 2 ** (this.attempts - 2);
    if (backoff === 0) this.attempt();
    else setTimeout(() => this.attempt(), backoff);
  }

  private relay(header: AnswerHeader, frame: Buffer, payloadStart: number, outcome: string): void {
    const downstream = this.downstream;
    if (!this.settle()) return;
    if (!downstream.isClosed) {
      if (frame.length - 4 <= downstream.limits.maxFrameBytes && swapId(frame, this.header.id)) downstream.write(frame);
      else {
        try {
          forwardFrame(downstream, { ...header, id: this.header.id }, frame, payloadStart, downstream.limits);
        } catch {
          downstream.fail(this.header.id, new NotSerializableError(`the answer of ${this.label} is larger than a frame to this caller may be`));
        }
      }
    }
    this.finish(outcome);
  }

  /** @internal Answers the app with an error from here. */
  settleError(err: EvolithError): void {
    if (!this.settle()) return;
    this.downstream.fail(this.header.id, err);
    this.finish(err.code);
  }

  private settle(): boolean {
    if (this.settled_) return false;
    this.settled_ = true;
    unwatch(this);
    if (this.counted) {
      this.callee.pending--;
      this.downstream.end();
    }
    return true;
  }
}

/** One attempt of an outbound call, in flight on an upstream connection. */
class Attempt extends Exchange {
  constructor(
    private readonly call: OutboundCall,
    readonly address: string,
    deadline: number,
  ) {
    super();
    this.deadline = deadline;
  }

  get label(): string {
    return this.call.label;
  }

  answer(header: AnswerHeader, frame: Buffer, payloadStart: number): string | undefined {
    return this.call.answered(this, header, frame, payloadStart);
  }

  fail(err: UnavailableError): void {
    this.call.failed(this.address, err);
  }

  expire(): void {
    this.conn?.forget(this.id);
    this.call.timedOut(this.address, this.deadline);
  }
}

/** The Unix socket the app sends its calls to: its own app only, proven by credential. */
class OutboundListener extends RpcListener {
  constructor(
    private readonly sidecar: Sidecar,
    options: ConstructorParameters<typeof RpcListener>[0],
  ) {
    super(options, 'sidecar-outbound');
  }

  protected onRequest(conn: InboundConnection, header: RequestHeader, frame: Buffer, payloadStart: number): void {
    const app = conn.peer!;
    const from = header.from;
    if (from !== undefined && !(app.svc.includes(from) || (from === 'edge' && app.edge === true))) {
      conn.fail(header.id, new ForbiddenError(`${app.sub} may not call as service ${from}`));
      return;
    }
    this.sidecar.send(conn, header, frame, payloadStart, from ?? (app.edge ? 'edge' : (app.svc[0] ?? app.sub)));
  }
}
