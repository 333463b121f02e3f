/**
 * The waker of a function that Knative may have scaled to zero (`--wakeups <group>`, run by a
 * Knative Eventing ContainerSource). Scaling to zero takes away the process that would fire the
 * function's durable timers, hand its committed events to the bus and consume the events others
 * publish for it; the work stays in PostgreSQL and on the NATS stream. So the waker reads there
 * what src/serverless/wakeups.ts reads for the local platform — due timers, unsent outbox rows,
 * events waiting for the function's consumers — every `serverless.wakeupPollMs`, and when
 * something is due it posts a CloudEvent (binary mode) to the function's URL, which Knative
 * gives it in `K_SINK`: the request is what makes Knative start an instance, whose consumers
 * and outbox then drain what waits.
 */
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import type { AppDefinition } from '../../app/define.js';
import { ConfigError } from '../../kernel/errors.js';
import { createLogger } from '../../observe/logger.js';
import { nextWakeups, type Wakeup } from '../../serverless/wakeups.js';
import { serviceGroups } from '../microservices/groups.js';
import type { Topology } from '../topology.js';
import { resolverFromEnv, type Resolve4 } from './dns-discovery.js';
import type { PodArgs } from './pod-args.js';
import { readCredentialBundle } from './pod-credentials.js';
import { WAKE_PATH } from './pod-http.js';
import { loadPodTopology } from './pod-topology.js';
import { listenProbes, type ProbeListener } from './pod-probes.js';
import type { RunningPod } from './pod-main.js';

/** The CloudEvent type a waker posts. */
export const WAKEUP_EVENT_TYPE = 'dev.evolith.wakeup';

export interface WakerOptions {
  readonly app: string;
  /** The function (service group) this waker wakes. */
  readonly group: string;
  readonly services: readonly string[];
  /** Where the function's stores and bus are. */
  readonly topology: Topology;
  /** The function's URL (K_SINK). */
  readonly sink: string;
  readonly pollMs: number;
  readonly log: Logger;
  /** Resolves the sink's host name (EVOLITH_DNS_SERVER's resolver) instead of the system's resolver. */
  readonly resolve4?: Resolve4;
  /** What is due (default: the stores and the stream, read as the local platform reads them). */
  readonly read?: (services: readonly string[], now: number) => Promise<Wakeup[]>;
}

/** The body of a wake-up CloudEvent. */
export interface WakeupBody {
  readonly function: string;
  readonly reasons: readonly { readonly service: string; readonly why: Wakeup['why']; readonly waiting: number }[];
}

export class Waker {
  private timer: NodeJS.Timeout | undefined;
  private reading = false;
  private failing: string | undefined;
  private polled = false;
  private stopped = false;
  /** Wake-ups posted (and answered with 2xx) so far. */
  sent = 0;

  constructor(private readonly options: WakerOptions) {}

  /** True once one reading of the stores has completed (the waker's readiness). */
  get ready(): boolean {
    return this.polled && !this.stopped;
  }

  start(): this {
    if (this.timer || this.stopped) return this;
    void this.poll();
    this.timer = setInterval(() => void this.poll(), this.options.pollMs);
    return this;
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One reading; posts a wake-up when something is due now. Returns what was due. */
  async poll(): Promise<Wakeup[]> {
    if (this.reading || this.stopped) return [];
    this.reading = true;
    try {
      const now = Date.now();
      const read = this.options.read ?? ((services, at) => nextWakeups({ data: this.options.topology.data, storage: this.options.topology.storage, events: this.options.topology.events, services }, at));
      const due = (await read(this.options.services, now)).filter((w) => w.at <= now);
      this.polled = true;
      if (due.length > 0) await this.post(due);
      if (this.failing !== undefined) this.options.log.info({ function: this.options.group }, 'wake-ups read and posted again');
      this.failing = undefined;
      return due;
    } catch (err) {
      const reason = (err as Error).message;
      // Once per outage, not once per poll.
      if (this.failing === undefined) this.options.log.warn({ function: this.options.group, err: reason }, 'wake-ups could not be read or posted; trying again');
      this.failing = reason;
      return [];
    } finally {
      this.reading = false;
    }
  }

  /** The URL to post to: the sink's, with its host resolved through `resolve4` when there is one. */
  private async target(url: string): Promise<string> {
    const resolve4 = this.options.resolve4;
    const parsed = new URL(url);
    if (!resolve4 || isIP(parsed.hostname)) return url;
    const addresses = await resolve4(parsed.hostname);
    if (addresses.length === 0) throw new Error(`${parsed.hostname} has no address`);
    parsed.hostname = addresses[0]!;
    return parsed.toString();
  }

  private async post(due: readonly Wakeup[]): Promise<void> {
    const { app, group, sink, log } = this.options;
    const body: WakeupBody = { function: group, reasons: due.map((w) => ({ service: w.service, why: w.why, waiting: w.count })) };
    const url = await this.target(`${sink.replace(/\/+$/, '')}${WAKE_PATH}`);
    const res = await fetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'ce-specversion': '1.0',
        'ce-type': WAKEUP_EVENT_TYPE,
        'ce-source': `/evolith/${app}/${group}`,
        'ce-id': randomUUID(),
        'ce-time': new Date().toISOString(),
      },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(Math.max(5_000, this.options.pollMs)),
    });
    await res.arrayBuffer().catch(() => undefined);
    if (!res.ok) throw new Error(`${url} answered ${res.status}`);
    this.sent++;
    log.info({ function: group, reasons: body.reasons }, 'wake-up posted: work is due for the function');
  }
}

/** A waker pod: the waker, and `/health` (and `/ready`) on the probe port (default 8081). */
export async function runWaker(app: AppDefinition, args: PodArgs): Promise<RunningPod> {
  if (args.role.kind !== 'wakeups' || !args.sink) throw new ConfigError('a waker needs --wakeups <group> and K_SINK');
  const group = args.role.group;
  const topology = loadPodTopology(args.appDir, args.topologyFile, { postgresUrl: args.postgresUrl, natsUrl: args.natsUrl });
  const found = serviceGroups(app, topology).find((g) => g.name === group);
  if (!found) throw new ConfigError(`${app.name} has no function (service group) named ${group}`);
  // Not used to call anything, but a pod given a credential that is not its deployment's should say so.
  readCredentialBundle(args.credentialsFile);
  const log = createLogger({ app: app.name, process: `${group}-wakeups`, ...(args.podName ? { pod: args.podName } : {}) });
  const waker = new Waker({ app: app.name, group, services: found.services, topology, sink: args.sink, pollMs: topology.serverless.wakeupPollMs, log, resolve4: resolverFromEnv(args.dnsServer) }).start();
  const answerer = {
    async answer(method: string | undefined, url: string | undefined, res: ServerResponse): Promise<boolean> {
      const path = (url ?? '').split('?')[0];
      if (method !== 'GET' || (path !== '/health' && path !== '/ready')) return false;
      const ok = path === '/health' || waker.ready;
      res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify({ status: ok ? (path === '/health' ? 'up' : 'ready') : 'starting', sent: waker.sent }));
      return true;
    },
  };
  let probes: ProbeListener;
  try {
    probes = await listenProbes(answerer, topology.internalHost, args.probePort ?? 8081, log);
  } catch (err) {
    waker.stop();
    throw err;
  }
  return {
    label: `${group}-wakeups`,
    log,
    address: `${args.sink} (every ${topology.serverless.wakeupPollMs} ms)`,
    async stop() {
      waker.stop();
      await probes.close();
    },
  };
}
