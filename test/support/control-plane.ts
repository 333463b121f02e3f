/**
 * Helpers for the microservices failure tests: the deployment record a control plane writes to
 * `<data>/.evolith/deployment.json`, its registry's `/status`, the edge's per-endpoint
 * health, process signals, a bounded load generator and a throw-away app directory.
 */
import http from 'node:http';
import { mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { repoRoot } from './bookstore-process.js';
import { sleep } from './eventually.js';

export interface ControlPlane {
  registryUrl: string;
  url: string;
  pid: number;
  /** The operator credential the control plane wrote for its CLI. */
  operatorToken: string;
}

/** Control planes read so far, by registry URL and by edge URL, so helpers can present their operator credential. */
const byRegistry = new Map<string, ControlPlane>();
const byEdge = new Map<string, ControlPlane>();

/** Reads a microservices deployment's record, `<data>/.evolith/deployment.json`. */
export function readControlPlane(dataDir: string): ControlPlane {
  const cp = JSON.parse(readFileSync(join(dataDir, '.evolith', 'deployment.json'), 'utf8')) as ControlPlane;
  if (typeof cp.registryUrl !== 'string' || typeof cp.url !== 'string' || !Number.isInteger(cp.pid) || typeof cp.operatorToken !== 'string') {
    throw new Error(`deployment.json is incomplete: ${JSON.stringify(cp)}`);
  }
  byRegistry.set(cp.registryUrl, cp);
  byEdge.set(cp.url, cp);
  return cp;
}

/** The operator's authorization header for a control plane read with readControlPlane. */
export function operatorAuth(registryUrl: string): { authorization: string } {
  const cp = byRegistry.get(registryUrl);
  if (!cp) throw new Error(`no control plane with registry ${registryUrl} was read: call readControlPlane first`);
  return { authorization: `Bearer ${cp.operatorToken}` };
}

export interface RegistryInstance {
  id: string;
  service: string;
  address: string;
  metadata?: { group?: string; replica?: string; pid?: string; http?: string };
  ready: boolean;
  health: 'passing' | 'expired';
  ttlMs?: number;
  heartbeatAgeMs?: number;
}

export interface RegistryStatus {
  bootId: string;
  warming: boolean;
  instances: RegistryInstance[];
}

export async function registryStatus(registryUrl: string, timeoutMs = 2_000): Promise<RegistryStatus> {
  const res = await fetch(`${registryUrl}/status`, { headers: operatorAuth(registryUrl), signal: AbortSignal.timeout(timeoutMs) });
  if (res.status !== 200) throw new Error(`GET ${registryUrl}/status answered ${res.status}: ${await res.text()}`);
  return (await res.json()) as RegistryStatus;
}

/** Instances of `service` the registry hands to clients (passing and ready). */
export function live(status: RegistryStatus, service: string): RegistryInstance[] {
  return status.instances.filter((i) => i.service === service && i.health === 'passing' && i.ready);
}

export function pidOf(instance: RegistryInstance): number {
  const pid = Number(instance.metadata?.pid);
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`instance ${instance.id} has no pid in its metadata: ${JSON.stringify(instance)}`);
  return pid;
}

/**
 * Waits until the registry hands out exactly `expected[service]` instances of each service
 * (passing and ready); resolves that status.
 */
export async function waitForInstances(registryUrl: string, expected: Record<string, number>, timeoutMs: number): Promise<RegistryStatus> {
  let last: RegistryStatus | undefined;
  try {
    return await waitFor(
      'the expected instances',
      async () => {
        last = await registryStatus(registryUrl);
        return Object.entries(expected).every(([service, n]) => live(last!, service).length === n) ? last : undefined;
      },
      timeoutMs,
      200,
    );
  } catch (err) {
    const seen = last?.instances.map((i) => `${i.id}@${i.address} pid ${i.metadata?.pid} ${i.health}${i.ready ? '' : ' not ready'}`).join(', ');
    throw new Error(`${(err as Error).message}; wanted ${JSON.stringify(expected)}, the registry has: ${seen ?? '(no answer)'}`);
  }
}

/** True while a process with this pid exists (signal 0 probes without sending). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A row of the edge worker's `GET /evolith/endpoints` (its resilience state, on its internal listener). */
export interface EndpointHealth {
  service: string;
  id: string;
  address: string;
  circuit: 'closed' | 'open' | 'half-open' | 'isolated';
  ejectedUntil?: number;
  outstanding: number;
  successes: number;
  failures: number;
  consecutiveFailures: number;
}

/** The edge worker's view of its callees, from its internal listener (found through the registry), as an operator. */
export async function edgeEndpoints(baseUrl: string): Promise<EndpointHealth[]> {
  const cp = byEdge.get(baseUrl);
  if (!cp) throw new Error(`no control plane with edge ${baseUrl} was read: call readControlPlane first`);
  const edge = (await registryStatus(cp.registryUrl)).instances.find((i) => i.service === 'edge' && i.health === 'passing');
  const internal = (edge?.metadata as { http?: string } | undefined)?.http;
  if (!internal) throw new Error(`the registry lists no live edge with an internal listener: ${JSON.stringify(edge)}`);
  const res = await fetch(`${internal}/evolith/endpoints`, { headers: operatorAuth(cp.registryUrl), signal: AbortSignal.timeout(5_000) });
  if (res.status !== 200) throw new Error(`GET /evolith/endpoints answered ${res.status}: ${await res.text()}`);
  return (await res.json()) as EndpointHealth[];
}

/** One request of a load run: what the client saw. */
export interface Outcome<T = unknown> {
  status: number | undefined;
  body: T | undefined;
  text: string;
  /** A transport failure (reset, refused, timeout): the request got no HTTP answer. */
  error?: string;
  startedAt: number;
  ms: number;
  label: string;
}

/**
 * Runs `concurrency` loops, each calling `step(loop, i)` back to back, for `durationMs`
 * (no request starts after that; a bounded number of iterations in any case).
 * `during` runs alongside (e.g. the kill) and is awaited too.
 */
export async function runLoad<T>(options: {
  concurrency: number;
  durationMs: number;
  step: (loop: number, i: number) => Promise<Outcome<T>>;
  during?: () => Promise<void>;
  /** Ends the run early once it returns true (checked before each request). */
  until?: () => boolean;
  maxIterations?: number;
}): Promise<Outcome<T>[]> {
  const end = Date.now() + options.durationMs;
  const max = options.maxIterations ?? 100_000;
  const outcomes: Outcome<T>[] = [];
  const loops = Array.from({ length: options.concurrency }, async (_, loop) => {
    for (let i = 0; i < max && Date.now() < end && !options.until?.(); i++) outcomes.push(await options.step(loop, i));
  });
  await Promise.all([...loops, options.during?.()]);
  return outcomes;
}

/** One HTTP request that never throws: a transport failure is recorded as `error`. */
export async function attempt<T = any>(
  label: string,
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string; timeoutMs?: number } = {},
): Promise<Outcome<T>> {
  const startedAt = Date.now();
  try {
    const res = await fetch(url, {
      method: init.method ?? 'GET',
      headers: { accept: 'application/json', ...init.headers },
      body: init.body,
      signal: AbortSignal.timeout(init.timeoutMs ?? 15_000),
    });
    const text = await res.text();
    let body: T | undefined;
    try {
      body = text ? (JSON.parse(text) as T) : undefined;
    } catch {
      body = undefined;
    }
    return { status: res.status, body, text, startedAt, ms: Date.now() - startedAt, label };
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } };
    const why = e.cause ? `${e.message}: ${e.cause.code ?? ''} ${e.cause.message ?? ''}` : `${e.name}: ${e.message}`;
    return { status: undefined, body: undefined, text: '', error: why, startedAt, ms: Date.now() - startedAt, label };
  }
}

/** A compact description of outcomes that went wrong, for assertion messages. */
export function describeOutcomes(outcomes: readonly Outcome[], limit = 10): string {
  return outcomes
    .slice(0, limit)
    .map((o) => `${o.label} after ${o.ms} ms: ${o.error ?? `${o.status} ${o.text.slice(0, 300)}`}`)
    .join('\n');
}

/** Polls until `probe` returns a value (not undefined) or the time is up; then throws with `what`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() >= deadline) throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await sleep(intervalMs);
  }
}

const tempApps = new Set<string>();
try {
  afterAll(() => {
    for (const d of tempApps) rmSync(d, { recursive: true, force: true });
    tempApps.clear();
  });
} catch {
  /* imported outside a vitest collection phase */
}

/**
 * An app directory outside the repository that runs the bookstore unchanged: `app.ts`
 * re-exports it, `public/` links to its static files, and `evolith.yaml` is the test's own,
 * so the test can edit the topology of a running deployment. Removed when the test file ends.
 */
export function makeBookstoreAppDir(yaml: string): { dir: string; writeTopology(yaml: string): void } {
  const dir = mkdtempSync(join(tmpdir(), 'evolith-app-'));
  tempApps.add(dir);
  const bookstore = join(repoRoot, 'examples', 'bookstore');
  // Without a package.json saying "module", tsx would load app.ts as CommonJS and fail.
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'bookstore-topology-test', private: true, type: 'module' }) + '\n');
  writeFileSync(join(dir, 'app.ts'), `export { default } from ${JSON.stringify(join(bookstore, 'app.ts'))};\n`);
  symlinkSync(join(bookstore, 'public'), join(dir, 'public'), 'dir');
  // Workers run a bundle built into the app directory: its packages come from node_modules there.
  symlinkSync(join(repoRoot, 'node_modules'), join(dir, 'node_modules'), 'dir');
  const writeTopology = (text: string) => {
    // Write-then-rename, as editors do: the watcher must never read half a file.
    const tmp = join(dir, '.evolith.yaml.tmp');
    writeFileSync(tmp, text);
    renameSync(tmp, join(dir, 'evolith.yaml'));
  };
  writeTopology(yaml);
  return { dir, writeTopology };
}

/** An event of the registry's watch stream, as a client of it receives it. */
export interface WatchEvent {
  at: number;
  event: string;
  data: any;
}

/**
 * Follows the registry's watch stream (`GET /v1/watch`, Server-Sent Events) like a worker
 * does, recording every event; `close()` ends it.
 */
export function watchRegistry(registryUrl: string): { events: WatchEvent[]; synced: Promise<void>; close(): void } {
  const events: WatchEvent[] = [];
  let onSynced!: () => void;
  let onFailed!: (err: Error) => void;
  const synced = new Promise<void>((resolve, reject) => {
    onSynced = resolve;
    onFailed = reject;
  });
  const req = http.get(new URL('/v1/watch', registryUrl), { headers: { accept: 'text/event-stream', ...operatorAuth(registryUrl) } });
  req.on('error', (err) => onFailed(err));
  req.on('response', (res) => {
    if (res.statusCode !== 200) {
      onFailed(new Error(`watch answered ${res.statusCode}`));
      res.resume();
      return;
    }
    res.setEncoding('utf8');
    let buffer = '';
    res.on('data', (chunk: string) => {
      buffer += chunk;
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).trim());
        }
        if (data.length === 0) continue;
        events.push({ at: Date.now(), event, data: JSON.parse(data.join('\n')) });
        if (event === 'snapshot') onSynced();
      }
    });
  });
  return { events, synced, close: () => req.destroy() };
}
