import { describe, expect, it } from 'vitest';
import { Supervisor, type ProcessStatus } from './supervisor.js';

const node = process.execPath;

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('Supervisor', () => {
  it('prefixes every output line with the process name and replica', async () => {
    const lines: string[] = [];
    const sup = new Supervisor({ write: (l) => lines.push(l) });
    sup.start({ name: 'warehouse', replica: 1, command: node, args: ['-e', "console.log('one'); console.error('two'); setInterval(() => {}, 1000)"] });
    await until(() => lines.length >= 2);
    expect(lines).toEqual(expect.arrayContaining(['[warehouse#1] one', '[warehouse#1] two']));
    await sup.stopAll();
  });

  it('restarts a crashed process with growing backoff and counts restarts', async () => {
    const lines: string[] = [];
    const sup = new Supervisor({ write: (l) => lines.push(l), initialBackoffMs: 30, maxBackoffMs: 1000 });
    sup.start({ name: 'crashy', replica: 0, command: node, args: ['-e', 'process.exit(3)'] });
    await until(() => (sup.status()[0]?.restarts ?? 0) >= 3);
    const delays = lines.filter((l) => l.includes('restarting in')).map((l) => Number(/in (\d+) ms/.exec(l)![1]));
    expect(delays.slice(0, 3)).toEqual([30, 60, 120]);
    expect(sup.status()[0]!.lastExit).toMatchObject({ code: 3 });
    await sup.stopAll();
  });

  it('restarts a process killed with SIGKILL', async () => {
    const sup = new Supervisor({ write: () => undefined, initialBackoffMs: 20 });
    sup.start({ name: 'victim', replica: 2, command: node, args: ['-e', 'setInterval(() => {}, 1000)'] });
    await until(() => sup.status()[0]!.pid !== undefined && sup.status()[0]!.state === 'running');
    const first = sup.status()[0]!.pid!;
    process.kill(first, 'SIGKILL');
    await until(() => sup.status()[0]!.restarts === 1 && sup.status()[0]!.state === 'running' && sup.status()[0]!.pid !== first);
    expect(sup.status()[0]!.lastExit).toMatchObject({ signal: 'SIGKILL' });
    await sup.stopAll();
  });

  it('stops gracefully with SIGTERM and does not restart what it stopped', async () => {
    const changes: ProcessStatus[] = [];
    const lines: string[] = [];
    const sup = new Supervisor({ write: (l) => lines.push(l), onChange: (s) => changes.push(s) });
    sup.start({
      name: 'polite',
      replica: 0,
      command: node,
      args: ['-e', "process.on('SIGTERM', () => { console.log('draining'); setTimeout(() => process.exit(0), 50); }); console.log('up'); setInterval(() => {}, 1000)"],
    });
    await until(() => lines.includes('[polite#0] up'));
    await sup.stopAll();
    expect(lines).toContain('[polite#0] draining');
    expect(changes.at(-1)).toMatchObject({ state: 'stopped', restarts: 0 });
    expect(sup.status()).toEqual([]);
  });

  it('kills a process that ignores SIGTERM after the stop timeout', async () => {
    const lines: string[] = [];
    const sup = new Supervisor({ write: (l) => lines.push(l), stopTimeoutMs: 200 });
    sup.start({ name: 'stubborn', replica: 0, command: node, args: ['-e', "process.on('SIGTERM', () => {}); console.log('up'); setInterval(() => {}, 1000)"] });
    await until(() => lines.includes('[stubborn#0] up'));
    const started = Date.now();
    await sup.stop('stubborn', 0);
    expect(Date.now() - started).toBeGreaterThanOrEqual(180);
    expect(sup.status()).toEqual([]);
  });
});
