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
  it('leaves a one-shot process down when it exits by itself, keeps its last exit, and forgets it on stop', async () => {
    const changes: ProcessStatus[] = [];
    const lines: string[] = [];
    const sup = new Supervisor({ write: (l) => lines.push(l), onChange: (s) => changes.push(s), initialBackoffMs: 20 });
    sup.start({ name: 'once', replica: 0, command: node, args: ['-e', "console.log('done'); process.exit(5)"], restart: false });
    await until(() => changes.some((c) => c.state === 'exited'));
    expect(changes.find((c) => c.state === 'exited')).toMatchObject({ name: 'once', replica: 0, restarts: 0, lastExit: { code: 5, signal: null } });
    // Many initial backoffs later it is still down, not restarted.
    await new Promise((r) => setTimeout(r, 300));
    expect(sup.status()).toMatchObject([{ name: 'once', state: 'exited', restarts: 0, pid: undefined, lastExit: { code: 5 }, lastLines: ['done'] }]);
    expect(changes.filter((c) => c.state === 'running')).toHaveLength(1);
    expect(lines).toContain('[once#0] exited (code 5)');
    expect(lines.filter((l) => l.includes('restarting'))).toEqual([]);
    await sup.stop('once', 0);
    expect(sup.status()).toEqual([]);
  });

  it('still reports a one-shot process that exits with its fatal code as failed', async () => {
    const changes: ProcessStatus[] = [];
    const sup = new Supervisor({ write: () => undefined, onChange: (s) => changes.push(s), initialBackoffMs: 20 });
    sup.start({ name: 'broken', replica: 0, command: node, args: ['-e', 'process.exit(78)'], restart: false, fatalExitCode: 78 });
    await until(() => changes.some((c) => c.state === 'failed' || c.state === 'exited'));
    expect(changes.at(-1)).toMatchObject({ state: 'failed', restarts: 0, lastExit: { code: 78 } });
    await sup.stopAll();
  });

  /** Answers `say` by printing the text and sending it back; `grow` makes it take about 200 MB. */
  const role = [
    "process.on('message', (m) => {",
    "  if (m.type === 'say') { console.log(m.text); process.send({ echo: m.text }); }",
    "  if (m.type === 'grow') { const held = []; const g = setInterval(() => { held.push(Buffer.alloc(1 << 20, 1)); if (held.length >= 200) clearInterval(g); }, 2); }",
    '});',
    "console.log('waiting');",
  ].join('\n');

  it('hands a running process a new name: its lines, messages, status, send and stop follow the new name', async () => {
    const lines: string[] = [];
    const changes: ProcessStatus[] = [];
    const messages: [string, number, unknown][] = [];
    const sup = new Supervisor({ write: (l) => lines.push(l), onChange: (s) => changes.push(s), onMessage: (n, r, m) => messages.push([n, r, m]) });
    sup.start({ name: 'pool', replica: 0, command: node, args: ['-e', role] });
    await until(() => lines.includes('[pool#0] waiting'));
    const pid = sup.status()[0]!.pid;
    expect(sup.send('pool', 0, { type: 'say', text: 'before' })).toBe(true);
    await until(() => messages.length === 1);
    expect(messages[0]).toEqual(['pool', 0, { echo: 'before' }]);
    expect(lines).toContain('[pool#0] before');

    sup.reassign({ name: 'pool', replica: 0 }, { name: 'fn', replica: 3, memoryLimitMb: 80 });
    expect(changes.at(-1)).toMatchObject({ name: 'fn', replica: 3, state: 'running', pid });
    expect(sup.status()).toMatchObject([{ name: 'fn', replica: 3, pid, state: 'running' }]);
    expect(sup.status()).toHaveLength(1);
    expect(sup.send('pool', 0, { type: 'say', text: 'lost' })).toBe(false);
    expect(sup.send('fn', 3, { type: 'say', text: 'after' })).toBe(true);
    await until(() => messages.length === 2);
    expect(messages[1]).toEqual(['fn', 3, { echo: 'after' }]);
    expect(lines).toContain('[fn#3] after');
    expect(lines.some((l) => l.startsWith('[pool#0] after') || l.includes('lost'))).toBe(false);

    await sup.stop('pool', 0);
    expect(sup.status()).toHaveLength(1);
    await sup.stop('fn', 3);
    expect(changes.at(-1)).toMatchObject({ name: 'fn', replica: 3, state: 'stopped' });
    expect(sup.status()).toEqual([]);
    expect(() => process.kill(pid!, 0)).toThrow();
  });

  it('refuses to reassign to a name in use or from one it does not supervise', async () => {
    const sup = new Supervisor({ write: () => undefined });
    sup.start({ name: 'pool', replica: 0, command: node, args: ['-e', idle] });
    sup.start({ name: 'fn', replica: 1, command: node, args: ['-e', idle] });
    expect(() => sup.reassign({ name: 'pool', replica: 0 }, { name: 'fn', replica: 1 })).toThrow('fn#1 is already supervised');
    expect(() => sup.reassign({ name: 'pool', replica: 9 }, { name: 'fn', replica: 2 })).toThrow('pool#9 is not supervised');
    // Both keep their names.
    expect(sup.status().map((s) => `${s.name}#${s.replica}`).sort()).toEqual(['fn#1', 'pool#0']);
    await sup.stopAll();
  });

  it('applies the memory limit given on reassign', async () => {
    const lines: string[] = [];
    const changes: ProcessStatus[] = [];
    const sup = new Supervisor({ write: (l) => lines.push(l), onChange: (s) => changes.push(s), memoryCheckMs: 50 });
    sup.start({ name: 'pool', replica: 0, command: node, args: ['-e', role], restart: false });
    await until(() => lines.includes('[pool#0] waiting'));
    sup.reassign({ name: 'pool', replica: 0 }, { name: 'fn', replica: 3, memoryLimitMb: 80 });
    sup.send('fn', 3, { type: 'grow' });
    await until(() => sup.status()[0]!.lastExit !== undefined, 10_000);
    const s = sup.status()[0]!;
    expect(s).toMatchObject({ name: 'fn', replica: 3, state: 'exited', restarts: 0, lastExit: { signal: 'SIGKILL', reason: 'memory' } });
    expect(s.lastExit!.memoryMb).toBeGreaterThan(80);
    expect(lines).toContain(`[fn#3] killed: resident memory ${s.lastExit!.memoryMb} MB over its limit of 80 MB`);
    expect(lines).toContain('[fn#3] exited (SIGKILL) after using more memory than its limit');
    expect(changes.at(-1)).toMatchObject({ name: 'fn', state: 'exited' });
    await sup.stop('fn', 3);
    expect(sup.status()).toEqual([]);
  }, 15_000);
});
