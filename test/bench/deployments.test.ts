import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { bookstoreArgs } from '../../bench/support/bookstore.js';
import { BenchError, controlPlaneOf, cpuByPid, Deployments } from '../../bench/support/deployments.js';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const waitFor = async (check: () => boolean, ms: number) => {
  const until = Date.now() + ms;
  while (!check() && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  return check();
};

/**
 * A stand-in for `evolith run`: starts a helper in a process group of its own (as the supervisor
 * does with workers, out of reach of a kill of this group), then reports where it listens.
 */
const fakeServer = (dataDir: string) => [
  '-e',
  `const { spawn } = require('node:child_process');
   const helper = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { detached: true, stdio: 'ignore' });
   helper.unref();
   require('node:fs').writeFileSync(${JSON.stringify(join(dataDir, 'helper.pid'))}, String(helper.pid));
   console.log('listening on http://127.0.0.1:4321');
   setInterval(() => {}, 1000);`,
];

let open: Deployments | undefined;
afterEach(async () => {
  await open?.close();
  open = undefined;
});

describe('Deployments', () => {
  it('starts a deployment, tracks its descendants and, on close, kills the ones it left behind and removes the work directory', async () => {
    const deployments = (open = new Deployments('bench:test', 'evolith-test-deployments-'));
    const d = await deployments.start({ name: 'fake', dirName: 'fake', args: fakeServer, timeoutMs: 10_000 });
    expect(d.url).toBe('http://127.0.0.1:4321');
    expect(d.dataDir).toBe(join(deployments.workDir, 'fake'));
    const helper = Number(readFileSync(join(d.dataDir, 'helper.pid'), 'utf8'));
    expect(alive(helper)).toBe(true);

    const set = deployments.track(d, new Map([[d.child.pid!, 'control plane']]));
    expect(set.pids[0]).toBe(d.child.pid);
    expect(set.labels.get(helper)).toBe(`helper ${helper}`);
    expect(cpuByPid(set).size).toBe(set.pids.length);

    await deployments.close();
    expect(d.child.exitCode !== null || d.child.signalCode !== null).toBe(true);
    // The helper is in a process group of its own and outlived its parent's SIGTERM: only the tracked pid reached it.
    expect(await waitFor(() => !alive(helper), 2_000)).toBe(true);
    expect(existsSync(deployments.workDir)).toBe(false);
  });

  it('fails the start of a process that exits before it listens, with what it printed', async () => {
    const deployments = (open = new Deployments('bench:test', 'evolith-test-deployments-'));
    const start = deployments.start({ name: 'broken', dirName: 'broken', args: () => ['-e', 'console.error("no config"); process.exit(3)'], timeoutMs: 10_000 });
    await expect(start).rejects.toBeInstanceOf(BenchError);
    await expect(start).rejects.toThrow(/broken exited \(3\) before it was ready:\nno config/);
  });

  it('fails the start of a process that never reports where it listens, and stops it on close', async () => {
    const deployments = (open = new Deployments('bench:test', 'evolith-test-deployments-'));
    const start = deployments.start({ name: 'silent', dirName: 'silent', args: () => ['-e', 'setInterval(() => {}, 1000)'], timeoutMs: 300 });
    await expect(start).rejects.toThrow(/silent did not report "listening on" within 300 ms/);
    await deployments.close();
    expect(existsSync(deployments.workDir)).toBe(false);
  });

  it('reads the control plane record only when it names the process the bench started', async () => {
    const deployments = (open = new Deployments('bench:test', 'evolith-test-deployments-'));
    const d = await deployments.start({ name: 'fake', dirName: 'fake', args: () => ['-e', 'console.log("listening on http://127.0.0.1:4321"); setInterval(() => {}, 1000)'], timeoutMs: 10_000 });
    mkdirSync(join(d.dataDir, '.evolith'));
    const record = (pid: number) => writeFileSync(join(d.dataDir, '.evolith', 'deployment.json'), JSON.stringify({ registryUrl: 'http://127.0.0.1:1', pid, operatorToken: 't' }));
    record(d.child.pid! + 1);
    expect(() => controlPlaneOf(d)).toThrow(BenchError);
    record(d.child.pid!);
    expect(controlPlaneOf(d)).toEqual({ registryUrl: 'http://127.0.0.1:1', pid: d.child.pid, operatorToken: 't' });
  });

  it('fails a CPU reading of a process that is gone', () => {
    expect(() => cpuByPid({ pids: [2 ** 22 + 1], labels: new Map([[2 ** 22 + 1, 'ghost']]) })).toThrow(/process \d+ \(ghost\) is gone/);
  });
});

describe('bookstoreArgs', () => {
  it('puts the options before the payment setting, as the benches have always passed them', () => {
    expect(bookstoreArgs('mesh', '/d', ['--storage', 'sqlite'])).toEqual([
      'bin/evolith.mjs', 'run', 'examples/bookstore', '--arch', 'mesh', '--port', '0', '--data', '/d',
      '--storage', 'sqlite', '--set', 'config.payment.paymentExpiresMs=3600000',
    ]);
  });
});
