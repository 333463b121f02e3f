/**
 * The instance side of the registry: registers this instance, heartbeats within its TTL,
 * reports readiness, and registers again whenever the registry has forgotten it (after
 * the registry restarts, or after a pause long enough to expire).
 */
import pino, { type Logger } from 'pino';
import { tokenOf } from './registry-protocol.js';
import type { InstanceInfo } from './registry.js';
import type { RegisterBody } from './registry-protocol.js';

export interface InstanceAgentOptions {
  /** The registry's base URL. */
  url: string;
  /** This process's credential: it must name the instance's id and service. */
  token: string | (() => string);
  instance: InstanceInfo;
  /** Default 10 s. */
  ttlMs?: number;
  /** Default a third of the TTL, so one lost heartbeat does not expire the instance. */
  heartbeatMs?: number;
  /** Readiness at registration. Default true. */
  ready?: boolean;
  /** Per request to the registry. Default 2 s. */
  requestTimeoutMs?: number;
  log?: Logger;
}

export class InstanceAgent {
  private readonly log: Logger;
  private readonly ttlMs: number;
  private readonly heartbeatMs: number;
  private readonly timeoutMs: number;
  private ready: boolean;
  private isRegistered = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> | undefined;

  constructor(private readonly options: InstanceAgentOptions) {
    this.log = (options.log ?? pino({ level: 'silent' })).child({ instance: options.instance.id });
    this.ttlMs = options.ttlMs ?? 10_000;
    this.heartbeatMs = options.heartbeatMs ?? Math.max(1, Math.floor(this.ttlMs / 3));
    this.timeoutMs = options.requestTimeoutMs ?? 2_000;
    this.ready = options.ready ?? true;
  }

  get registered(): boolean {
    return this.isRegistered;
  }

  /**
   * Registers once and starts heartbeating. Resolves false when the registry could not be
   * reached: the agent keeps trying on every heartbeat, so the instance may start anyway.
   */
  async start(): Promise<boolean> {
    await this.tick();
    return this.isRegistered;
  }

  /** Readiness: not ready instances stay registered but are not handed to clients (e.g. while draining). */
  async setReady(ready: boolean): Promise<boolean> {
    this.ready = ready;
    if (this.stopped) return false;
    try {
      const res = await this.send('PUT', `/ready`, { ready });
      if (res.status === 404) await this.register();
      else if (!res.ok) throw new Error(`registry answered HTTP ${res.status}`);
      return true;
    } catch (err) {
      this.isRegistered = false;
      this.log.warn({ err: (err as Error).message }, 'could not report readiness; will register again');
      return false;
    }
  }

  /** Stops heartbeating and (by default) deregisters, so clients stop calling at once rather than after the TTL. */
  async stop(options: { deregister?: boolean } = {}): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.inFlight?.catch(() => undefined);
    if (options.deregister ?? true) {
      try {
        await this.send('DELETE', '');
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'could not deregister; the registry will expire this instance');
      }
    }
    this.isRegistered = false;
  }

  private tick(): Promise<void> {
    const run = async (): Promise<void> => {
      try {
        if (!this.isRegistered) await this.register();
        else {
          const res = await this.send('PUT', '/heartbeat');
          if (res.status === 404) {
            this.log.info('the registry does not know this instance any more; registering again');
            await this.register();
          } else if (!res.ok) throw new Error(`registry answered HTTP ${res.status}`);
        }
      } catch (err) {
        if (this.isRegistered) this.log.warn({ err: (err as Error).message }, 'heartbeat failed; will register again when the registry answers');
        this.isRegistered = false;
      }
    };
    const p = run().finally(() => {
      if (this.inFlight === p) this.inFlight = undefined;
      if (!this.stopped) {
        this.timer = setTimeout(() => void this.tick(), this.heartbeatMs);
        this.timer.unref();
      }
    });
    this.inFlight = p;
    return p;
  }

  private async register(): Promise<void> {
    const { id: _id, ...info } = this.options.instance;
    const body: RegisterBody = { ...info, ...(info.metadata ? { metadata: { ...info.metadata } } : {}), ttlMs: this.ttlMs, ready: this.ready };
    const res = await this.send('PUT', '', body);
    if (!res.ok) throw new Error(`registration refused (HTTP ${res.status}): ${res.text.slice(0, 300)}`);
    if (!this.isRegistered) this.log.info({ service: info.service, address: info.address, ready: this.ready }, 'registered');
    this.isRegistered = true;
  }

  private async send(method: 'PUT' | 'DELETE', suffix: string, body?: unknown): Promise<{ status: number; ok: boolean; text: string }> {
    const url = new URL(`/v1/instances/${encodeURIComponent(this.options.instance.id)}${suffix}`, this.options.url);
    const signal = AbortSignal.timeout(this.timeoutMs);
    const res = await fetch(url, {
      method,
      headers: { authorization: `Bearer ${tokenOf(this.options.token)}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
    // Read the body so the keep-alive connection can be reused.
    const text = await res.text();
    return { status: res.status, ok: res.ok, text };
  }
}
