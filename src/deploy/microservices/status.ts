import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError } from '../../kernel/errors.js';

interface StatusInstance {
  id: string;
  service: string;
  address: string;
  ready: boolean;
  health: string;
  metadata?: Record<string, string>;
}

/** A table of what a running deployment (found through its data directory) has where. */
export async function deploymentStatus(dataDir: string): Promise<string> {
  const file = join(dataDir, '.evolith', 'control-plane.json');
  let control: { registryUrl: string; url: string; pid: number; operatorToken: string };
  try {
    control = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    throw new ConfigError(`no running microservices deployment found (no ${file}); start one with --arch microservices`);
  }
  let instances: StatusInstance[];
  let processes: { name: string; replica: number; pid?: number; state: string; restarts: number }[];
  try {
    // The registry answers only credentials of its deployment: the operator's is in the (owner-only) file.
    const headers = { authorization: `Bearer ${control.operatorToken}` };
    const [s, p] = await Promise.all([fetch(`${control.registryUrl}/status`, { headers }), fetch(`${control.registryUrl}/processes`, { headers })]);
    if (s.status !== 200 || p.status !== 200) throw new Error(`it answered HTTP ${s.status} and ${p.status}`);
    instances = ((await s.json()) as { instances: StatusInstance[] }).instances;
    processes = ((await p.json()) as { processes: typeof processes }).processes;
  } catch (err) {
    throw new ConfigError(`the control plane at ${control.registryUrl} (pid ${control.pid}) does not answer: ${(err as Error).message}`);
  }
  const rows = [['process', 'pid', 'state', 'restarts', 'instances (address, health)']];
  for (const p of processes) {
    const mine = instances.filter((i) => i.metadata?.pid !== undefined && Number(i.metadata.pid) === p.pid);
    const where = mine.map((i) => `${i.service}@${i.address} ${i.health}${i.ready ? '' : ' (not ready)'}`).join(', ') || '-';
    const http = mine.find((i) => i.metadata?.http)?.metadata?.http;
    rows.push([`${p.name}#${p.replica}`, String(p.pid ?? '-'), p.state, String(p.restarts), http ? `${where} (internal http ${http})` : where]);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const lines = rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd());
  return `edge ${control.url}, control plane pid ${control.pid}, registry ${control.registryUrl}\n${lines.join('\n')}\n`;
}
