/**
 * `evolith status`: what a running deployment of an app has where, for every architecture. The
 * deployment is found through its record (see deployment-record.ts): on the given data
 * directory, or, without one, every running deployment of the app, whatever `--data` it was
 * started with.
 */
import { ConfigError } from '../kernel/errors.js';
import { findDeployments, type DeploymentRecord } from './deployment-record.js';
import { eventBacklog } from './event-backlog.js';
import type { FunctionsStatus } from './serverless/platform.js';

interface StatusInstance {
  id: string;
  service: string;
  address: string;
  ready: boolean;
  health: string;
  metadata?: Record<string, string>;
}

interface ProcessRow {
  name: string;
  replica: number;
  pid?: number;
  state: string;
  restarts: number;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd()).join('\n');
}

function since(ms: number): string {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
}

async function processes(record: DeploymentRecord): Promise<string> {
  if (!record.registryUrl || !record.operatorToken) return '(no control plane recorded yet: the deployment is still starting)';
  let instances: StatusInstance[];
  let procs: ProcessRow[];
  try {
    // The registry answers only credentials of its deployment: the operator's is in the (owner-only) record.
    const headers = { authorization: `Bearer ${record.operatorToken}` };
    const [s, p] = await Promise.all([fetch(`${record.registryUrl}/status`, { headers }), fetch(`${record.registryUrl}/processes`, { headers })]);
    if (s.status !== 200 || p.status !== 200) throw new Error(`it answered HTTP ${s.status} and ${p.status}`);
    instances = ((await s.json()) as { instances: StatusInstance[] }).instances;
    procs = ((await p.json()) as { processes: ProcessRow[] }).processes;
  } catch (err) {
    throw new ConfigError(`the control plane at ${record.registryUrl} (pid ${record.pid}) does not answer: ${(err as Error).message}`);
  }
  const rows = [['process', 'pid', 'state', 'restarts', 'instances (address, health)']];
  for (const p of procs) {
    const mine = instances.filter((i) => i.metadata?.pid !== undefined && Number(i.metadata.pid) === p.pid);
    const where = mine.map((i) => `${i.service}@${i.address} ${i.health}${i.ready ? '' : ' (not ready)'}`).join(', ') || '-';
    const http = mine.find((i) => i.metadata?.http)?.metadata?.http;
    rows.push([`${p.name}#${p.replica}`, String(p.pid ?? '-'), p.state, String(p.restarts), http ? `${where} (internal http ${http})` : where]);
  }
  return `registry ${record.registryUrl}\n${table(rows)}`;
}

interface MeshStatus {
  mode: string;
  policy: { file: string; version: number; error?: string };
  proxies: {
    process: string;
    configVersion?: number;
    refused?: { version: number; reason: string };
    proxied: { instance: string; inbound: string; ids: string[]; serial: string; notAfter: number }[];
  }[];
}

function until(ms: number): string {
  const s = Math.round((ms - Date.now()) / 1000);
  if (s < 0) return `expired ${-s} s ago`;
  return s < 120 ? `in ${s} s` : s < 7200 ? `in ${Math.round(s / 60)} min` : `in ${Math.round(s / 3600)} h`;
}

/** The mesh's proxies: whom each speaks for, its certificate's expiry, the policy version it runs. */
async function meshProxies(record: DeploymentRecord): Promise<string> {
  let mesh: MeshStatus;
  try {
    const res = await fetch(`${record.registryUrl}/mesh`, { headers: { authorization: `Bearer ${record.operatorToken}` } });
    if (res.status !== 200) throw new Error(`it answered HTTP ${res.status}`);
    mesh = (await res.json()) as MeshStatus;
  } catch (err) {
    return `mesh: the control plane does not say: ${(err as Error).message}`;
  }
  const rows = [['proxy', 'for', 'identity', 'mtls address', 'certificate', 'expires', 'policy']];
  for (const p of mesh.proxies) {
    const policy = p.refused ? `v${p.configVersion ?? '-'} (refused v${p.refused.version}: ${p.refused.reason.split('\n')[0]})` : `v${p.configVersion ?? '-'}`;
    if (p.proxied.length === 0) rows.push([p.process, '-', '-', '-', '-', '-', policy]);
    for (const x of p.proxied) rows.push([p.process, x.instance, x.ids.join(' '), x.inbound, x.serial.slice(0, 12), until(x.notAfter), policy]);
  }
  const head = `mesh (${mesh.mode} proxies), policy ${mesh.policy.file} v${mesh.policy.version}${mesh.policy.error ? `\n  the latest edit was refused; v${mesh.policy.version} stays:\n  ${mesh.policy.error.replace(/\n/g, '\n  ')}` : ''}`;
  return `${head}\n${table(rows)}`;
}

/** The functions: their instances coming and going, the autoscaler's last decision, kills. */
async function functionsStatus(record: DeploymentRecord): Promise<string> {
  let st: FunctionsStatus;
  try {
    const res = await fetch(`${record.registryUrl}/functions`, { headers: { authorization: `Bearer ${record.operatorToken}` } });
    if (res.status !== 200) throw new Error(`it answered HTTP ${res.status}`);
    st = (await res.json()) as FunctionsStatus;
  } catch (err) {
    return `functions: the control plane does not say: ${(err as Error).message}`;
  }
  const rows = [['function', 'instances', 'desired', 'in flight', 'held', 'memory', 'max conc.', 'scale', 'last decision']];
  const lines: string[] = [];
  for (const f of st.functions) {
    const ready = f.instances.filter((i) => i.state === 'ready').length;
    const other = f.instances.length - ready;
    const s = f.settings;
    rows.push([
      f.name,
      `${ready} ready${other ? `, ${other} starting/stopping` : ''}`,
      String(f.desired),
      String(f.concurrency),
      String(f.held),
      `${s.memoryMb} MB`,
      String(s.maxConcurrency),
      `${s.minInstances}..${s.maxInstances}, target ${s.targetConcurrency}`,
      f.broken ? `cannot start: ${f.broken}` : f.lastDecision ? `→ ${f.lastDecision.desired}${f.lastDecision.panic ? ' (panic)' : ''} ${since(f.lastDecision.at)} ago: ${f.lastDecision.reason.split(';').at(-1)!.trim()}` : '-',
    ]);
    for (const i of f.instances) {
      lines.push(`  ${i.name}  ${i.state}, up ${since(i.startedAt)}, ${i.cause}${i.fromPool ? ' from the pool' : ' as a new process'}${i.initMs !== undefined ? `, init ${i.initMs} ms` : ''}, ${i.inFlight} in flight`);
    }
    if (f.lastKill) lines.push(`  ${f.lastKill.instance} ${since(f.lastKill.at)} ago: ${f.lastKill.reason}`);
  }
  const pool = `pool: ${st.pool.waiting.length} of ${st.pool.size} runtimes waiting${st.pool.waiting.length ? ` (${st.pool.waiting.map((r) => `pool#${r}`).join(', ')})` : ''}`;
  return ['functions', table(rows), ...lines, pool].join('\n');
}

/** One line on how far behind its events are (read from the stores, so any architecture). */
async function eventsLine(record: DeploymentRecord): Promise<string> {
  if (!record.events) return '';
  try {
    const b = await eventBacklog(record.events);
    const waiting = Object.entries(b.unsent).filter(([, n]) => n > 0);
    const sent = waiting.reduce((a, [, n]) => a + n, 0);
    const detail = waiting.length ? ` (${waiting.map(([s, n]) => `${s} ${n}`).join(', ')})` : '';
    return `\nevents: ${sent} waiting to be sent${detail}, ${b.unhandled} waiting to be handled`;
  } catch (err) {
    return `\nevents: could not be read: ${(err as Error).message}`;
  }
}

/** A report of every running deployment of the app (or the one on `dataDir`). */
export async function deploymentStatus(appDir: string, dataDir?: string): Promise<string> {
  const records = findDeployments(appDir, dataDir);
  if (records.length === 0) {
    throw new ConfigError(`no running deployment of ${appDir} found${dataDir ? ` on ${dataDir}` : ''}; start one with \`evolith run ${appDir}\``);
  }
  const parts: string[] = [];
  for (const r of records) {
    const head = `${r.architecture} at ${r.url || '(starting)'}, pid ${r.pid}, up ${since(r.startedAt)}, data ${r.dataDir}`;
    const body =
      r.architecture === 'microservices' || r.architecture === 'mesh' || r.architecture === 'serverless'
        ? (await processes(r)) +
          (r.architecture === 'mesh' ? `\n${await meshProxies(r)}` : '') +
          (r.architecture === 'serverless' ? `\n${await functionsStatus(r)}` : '')
        : table([['service', 'database'], ...r.services.map((s) => [s.name, s.location])]);
    parts.push(`${head}\n${body}${await eventsLine(r)}`);
  }
  return parts.join('\n\n') + '\n';
}
