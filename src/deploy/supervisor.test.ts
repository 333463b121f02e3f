import { existsSync, readFileSync } from 'node:fs';
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

  // Grows to about 150 MB of filled (so resident) buffers in well under a second, then holds it.
  const hog = "const held = []; const grow = setInterval(() => { held.push(Buffer.alloc(1 << 20, 1)); if (held.length >= 150) clearInterval(grow); }, 2); setInterval(() => {}, 1000)";
  const idle = 'setInterval(() => {}, 1000)';

  it('kills a process over its memory limit, reports why, restarts it, and leaves its sibling alone', async () => {
    const lines: string[] = [];
    const changes: ProcessStatus[] = [];
    const sup = new Supervisor({ write: (l) => lines.push(l), onChange: (s) => changes.push(s), initialBackoffMs: 50, memoryCheckMs: 50 });
    sup.start({ name: 'sibling', replica: 0, command: node, args: ['-e', idle] });
    await until(() => sup.status()[0]!.state === 'running');
    const siblingPid = sup.status()[0]!.pid;
    sup.start({ name: 'hog', replica: 0, command: node, args: ['-e', hog], memoryLimitMb: 64 });
    const hogStatus = () => sup.status().find((s) => s.name === 'hog')!;
    await until(() => hogStatus().restarts >= 1 && hogStatus().state === 'running', 15_000);

    const killLine = lines.find((l) => l.startsWith('[hog#0] killed:'));
    expect(killLine).toMatch(/^\[hog#0\] killed: resident memory \d+ MB over its limit of 64 MB$/);
    const reported = Number(/memory (\d+) MB/.exec(killLine!)![1]);
    expect(reported).toBeGreaterThan(64);
    const crash = changes.find((s) => s.name === 'hog' && s.state === 'backoff');
    expect(crash?.lastExit).toMatchObject({ signal: 'SIGKILL', reason: 'memory', memoryMb: reported });
    expect(lines).toContain('[hog#0] exited (SIGKILL); restarting in 50 ms (restart 1)');

    const sibling = sup.status().find((s) => s.name === 'sibling')!;
    expect(sibling).toMatchObject({ state: 'running', pid: siblingPid, restarts: 0 });
    expect(sibling.rssMb).toBeUndefined();
    await sup.stopAll();
  }, 20_000);

  it('never kills a process that stays under its limit, and shows its sampled memory', async () => {
    const lines: string[] = [];
    const sup = new Supervisor({ write: (l) => lines.push(l), memoryCheckMs: 50 });
    sup.start({ name: 'modest', replica: 0, command: node, args: ['-e', hog], memoryLimitMb: 1024 });
    await until(() => sup.status()[0]!.state === 'running');
    const pid = sup.status()[0]!.pid;
    // Sampled past the hog's full growth (over 150 MB), many rounds later still the same process.
    await until(() => (sup.status()[0]!.rssMb ?? 0) > 150, 10_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(sup.status()[0]).toMatchObject({ state: 'running', pid, restarts: 0, lastExit: undefined });
    expect(lines.filter((l) => l.includes('killed'))).toEqual([]);
    await sup.stopAll();
  }, 15_000);

  it('kills what a process over its memory limit started along with it', async () => {
    const lines: string[] = [];
    const sup = new Supervisor({ write: (l) => lines.push(l), initialBackoffMs: 60_000, memoryCheckMs: 50 });
    const parent = `const g = require('node:child_process').spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' }); console.log('grandchild ' + g.pid); ${hog}`;
    sup.start({ name: 'parent', replica: 0, command: node, args: ['-e', parent], memoryLimitMb: 64 });
    await until(() => lines.some((l) => l.startsWith('[parent#0] grandchild ')));
    const grandchild = Number(lines.find((l) => l.startsWith('[parent#0] grandchild '))!.split(' ').at(-1));
    // A zombie awaiting its reaper counts as gone.
    const alive = (pid: number) => existsSync(`/proc/${pid}/status`) && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
    expect(alive(grandchild)).toBe(true);
    await until(() => sup.status()[0]!.lastExit?.reason === 'memory', 15_000);
    await until(() => !alive(grandchild));
    await sup.stopAll();
  }, 20_000);
});
