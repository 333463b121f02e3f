/**
 * Discovery from the registry: a local cache kept current by the registry's watch stream.
 * Calls never wait on the registry: `endpoints()` reads the cache, and while the registry is
 * down the cache keeps the last known list and the client reconnects with backoff.
 */
import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import https from 'node:https';
import pino, { type Logger } from 'pino';
import { tokenOf } from './registry-protocol.js';
import type { Discovery } from '../kernel/plugins.js';
import { sameEndpoints, type ServiceEndpoint } from './registry.js';
import { EndpointListeners, SyncWaiters } from './watchers.js';
import type { EndpointsEvent, HelloEvent, SnapshotEvent } from './registry-protocol.js';

export interface RegistryClientOptions {
  /** The registry's base URL, e.g. `http://127.0.0.1:7070`. */
  url: string;
  /** This process's credential, which the registry requires. */
  token: string | (() => string);
  /** Services to follow; omitted: every service the registry knows. */
  services?: readonly string[];
  log?: Logger;
  /** First reconnect delay; doubles per failed attempt (with jitter) up to `reconnectMaxMs`. Default 100 ms. */
  reconnectInitialMs?: number;
  /** Default 5 s. */
  reconnectMaxMs?: number;
}

export interface RegistryClientStatus {
  connected: boolean;
  /** The registry process the cache last synced with. */
  bootId: string | undefined;
  warming: boolean;
  /** Epoch ms of the last complete snapshot, or undefined if none yet. */
  syncedAt: number | undefined;
  reconnects: number;
  services: Record<string, number>;
}

type Listener = (endpoints: readonly ServiceEndpoint[]) => void;

export class RegistryClient implements Discovery {
  private readonly log: Logger;
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly cache = new Map<string, readonly ServiceEndpoint[]>();
  private readonly listeners = new EndpointListeners<ServiceEndpoint>();
  private readonly syncWaiters = new SyncWaiters();
  private request: ClientRequest | undefined;
  private connection = 0;
  private failures = 0;
  private reconnects = 0;
  private idleMs = 30_000;
  private idleTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private started = false;
  private closed = false;
  private isConnected = false;
  private bootId: string | undefined;
  private warming = false;
  private syncedAt: number | undefined;

  constructor(private readonly options: RegistryClientOptions) {
    this.log = options.log ?? pino({ level: 'silent' });
    this.initialMs = options.reconnectInitialMs ?? 100;
    this.maxMs = options.reconnectMaxMs ?? 5_000;
  }

  /** Opens the watch stream (idempotent). Use `whenSynced` to wait for the first list. */
  start(): this {
    if (!this.started && !this.closed) {
      this.started = true;
      this.connect();
    }
    return this;
  }

  /** Resolves true once a snapshot has arrived, false if `timeoutMs` passes first. */
  whenSynced(timeoutMs = 5_000): Promise<boolean> {
    if (this.syncedAt !== undefined) return Promise.resolve(true);
    return this.syncWaiters.wait(timeoutMs);
  }

  endpoints(service: string): readonly ServiceEndpoint[] {
    return this.cache.get(service) ?? [];
  }

  /** Calls `onChange` with the new list each time the service's endpoints change. */
  watch(service: string, onChange: Listener): () => void {
    return this.listeners.add(service, onChange);
  }

  get connected(): boolean {
    return this.isConnected;
  }

  status(): RegistryClientStatus {
    const services: Record<string, number> = {};
    for (const [s, l] of this.cache) services[s] = l.length;
    return { connected: this.isConnected, bootId: this.bootId, warming: this.warming, syncedAt: this.syncedAt, reconnects: this.reconnects, services };
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.idleTimer);
    this.request?.destroy();
    this.request = undefined;
    this.isConnected = false;
  }

  private connect(): void {
    if (this.closed) return;
    const id = ++this.connection;
    const url = new URL('/v1/watch', this.options.url);
    for (const s of this.options.services ?? []) url.searchParams.append('service', s);
    const get = url.protocol === 'https:' ? https.get : http.get;
    const req = get(url, { headers: { accept: 'text/event-stream', authorization: `Bearer ${tokenOf(this.options.token)}` } });
    this.request = req;
    this.armIdle(id);
    req.on('response', (res) => this.onResponse(id, res));
    req.on('error', (err) => this.fail(id, err.message));
  }

  private onResponse(id: number, res: IncomingMessage): void {
    if (res.statusCode !== 200) {
      res.resume();
      this.fail(id, `watch answered HTTP ${res.statusCode}`);
      return;
    }
    res.setEncoding('utf8');
    let buffer = '';
    res.on('data', (chunk: string) => {
      if (id !== this.connection) return;
      this.armIdle(id);
      buffer += chunk.includes('\r') ? chunk.replace(/\r\n?/g, '\n') : chunk;
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        try {
          this.onBlock(block);
        } catch (err) {
          this.fail(id, `malformed watch event: ${(err as Error).message}`);
          return;
        }
      }
    });
    res.on('close', () => this.fail(id, 'the registry closed the watch stream'));
    res.on('error', (err) => this.fail(id, err.message));
  }

  private onBlock(block: string): void {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length === 0) return;
    const payload: unknown = JSON.parse(data.join('\n'));
    if (event === 'hello') this.onHello(payload as HelloEvent);
    else if (event === 'snapshot') this.onSnapshot(payload as SnapshotEvent);
    else if (event === 'endpoints') {
      const e = payload as EndpointsEvent;
      this.warming = e.warming;
      this.apply(e.service, e.endpoints, e.warming);
    }
  }

  private onHello(h: HelloEvent): void {
    if (this.bootId !== undefined && this.bootId !== h.bootId) this.log.info({ registry: this.options.url }, 'registry restarted; keeping known endpoints while it warms up');
    this.bootId = h.bootId;
    this.warming = h.warming;
    // Three missed pings mean the registry (or the path to it) is gone, even without a FIN.
    this.idleMs = Math.max(1_000, h.pingIntervalMs * 3);
    this.armIdle(this.connection);
  }

  private onSnapshot(s: SnapshotEvent): void {
    this.warming = s.warming;
    for (const [service, list] of Object.entries(s.services)) this.apply(service, list.endpoints, s.warming);
    if (!this.options.services) {
      // A full snapshot without a service means it has no instances left.
      for (const service of [...this.cache.keys()]) if (!(service in s.services)) this.apply(service, [], s.warming);
    }
    if (!this.isConnected) this.log.info({ registry: this.options.url }, 'registry watch synced');
    this.isConnected = true;
    this.failures = 0;
    this.syncedAt = Date.now();
    this.syncWaiters.release();
  }

  /**
   * While the registry warms up it has not yet heard from every running instance, so the
   * fresh list is merged with the known one instead of replacing it.
   */
  private apply(service: string, fresh: readonly ServiceEndpoint[], warming: boolean): void {
    const old = this.cache.get(service) ?? [];
    let next = fresh.map((e) => Object.freeze({ ...e }));
    if (warming && old.length > 0) {
      const ids = new Set(fresh.map((e) => e.id));
      next = [...next, ...old.filter((e) => !ids.has(e.id))].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    }
    if (this.cache.has(service) && sameEndpoints(old, next)) return;
    const frozen = Object.freeze(next);
    this.cache.set(service, frozen);
    this.listeners.emit(service, frozen, this.log);
  }

  private armIdle(id: number): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.fail(id, `no word from the registry for ${this.idleMs} ms`), this.idleMs);
    this.idleTimer.unref();
  }

  private fail(id: number, reason: string): void {
    if (id !== this.connection || this.closed) return;
    this.connection++;
    clearTimeout(this.idleTimer);
    this.request?.destroy();
    this.request = undefined;
    const delay = Math.min(this.maxMs, this.initialMs * 2 ** this.failures) * (0.5 + Math.random() / 2);
    this.failures++;
    if (this.isConnected || this.failures === 1) {
      this.log.warn({ registry: this.options.url, reason, retryInMs: Math.round(delay) }, 'registry watch lost; serving the last known endpoints');
    }
    this.isConnected = false;
    this.reconnects++;
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.retryTimer.unref();
  }
}
