/**
 * The deployments a benchmark starts with `evolith run`, each as a child process: its URL once
 * it listens, the processes it consists of (control plane, supervised workers, any descendant),
 * and cleanup — stopped in order when the bench ends or is interrupted, killed outright (with
 * every worker seen, even those in process groups of their own) should the bench die, and the
 * data directories removed. Linux only, as the /proc readings it relies on.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuSeconds, descendants, statFields } from './procfs.js';

/** The repository root: `bin/evolith.mjs` and the examples are found from there. */
export const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** A failure the bench explains itself: reported by its message, without a stack. */
export class BenchError extends Error {}
export const fail = (message: string): never => {
  throw new BenchError(message);
};

export interface Deployment {
  name: string;
  url: string;
  dataDir: string;
  child: ChildProcess;
  /** A tail of what it printed, for error reports. */
  output: string[];
}

export interface StartOptions {
  /** Who it is in messages. */
  name: string;
  /** Its data directory's name inside the bench's work directory. */
  dirName: string;
  /** Arguments after `node`, given the data directory created for it. */
  args: (dataDir: string) => string[];
  timeoutMs: number;
}

export interface ProcessSet {
  pids: number[];
  /** For the report: what each pid is. */
  labels: Map<number, string>;
}

/** Where a deployment's control plane says its registry is, and the operator's credential for it. */
export interface ControlPlane {
  registryUrl: string;
  pid: number;
  operatorToken: string;
}

export class Deployments {
  readonly workDir: string;
  private readonly children: ChildProcess[] = [];
  /**
   * Every process of a deployment seen so far, with its start time (field 22 of
   * /proc/<pid>/stat), so that a leftover is killed only while the pid still names that process.
   * The supervisor puts each worker in a process group of its own, so killing the control
   * plane's group does not reach them.
   */
  private readonly knownPids = new Map<number, string>();
  private cleaned = false;
  private interrupted = false;

  /** `bench` names the bench in messages; `prefix` names its work directory under the system's temp dir. */
  constructor(
    private readonly bench: string,
    prefix: string,
  ) {
    this.workDir = mkdtempSync(join(tmpdir(), prefix));
  }

  /** Set once SIGINT or SIGTERM arrived: the load stops and the run fails as interrupted. */
  get stopping(): boolean {
    return this.interrupted;
  }

  /** Whatever happens (error, Ctrl-C), no server outlives the bench. */
  cleanUpOnExit(): this {
    process.once('exit', () => {
      this.killLeftovers();
      this.removeWorkDir();
    });
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      process.once(signal, () => {
        this.interrupted = true;
        console.error(`\n${this.bench}: ${signal}, stopping the servers`);
        void this.close().finally(() => process.exit(130));
      });
    }
    return this;
  }

  /** Starts one, resolving when it prints `listening on <url>`. */
  start(options: StartOptions): Promise<Deployment> {
    const { name, timeoutMs } = options;
    const dataDir = join(this.workDir, options.dirName);
    mkdirSync(dataDir);
    // Warnings and errors only: info lines per request would make the bench measure logging.
    // Its own process group (with the workers it spawns): a Ctrl-C in the terminal reaches only
    // the bench, which then stops each deployment in order, and the group can be killed whole.
    const child = spawn(process.execPath, options.args(dataDir), {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: { ...process.env, EVOLITH_LOG_LEVEL: 'warn' },
    });
    this.children.push(child);
    const output: string[] = [];
    return new Promise((resolveStart, rejectStart) => {
      const timer = setTimeout(() => rejectStart(new BenchError(`${name} did not report "listening on" within ${timeoutMs} ms:\n${output.join('')}`)), timeoutMs);
      let ready = false;
      const onData = (chunk: Buffer) => {
        output.push(chunk.toString());
        if (output.length > 200) output.splice(0, output.length - 200); // keep a tail for error reports
        if (ready) return;
        const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(output.join(''));
        if (m) {
          ready = true;
          clearTimeout(timer);
          resolveStart({ name, url: m[1]!, dataDir, child, output });
        }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        if (!ready) rejectStart(new BenchError(`${name} exited (${signal ?? code}) before it was ready:\n${output.join('')}`));
      });
    });
  }

  /**
   * The set of `labels` (the deployment's own process first) plus every other descendant of it,
   * each remembered for cleanup. A process already gone fails the bench.
   */
  track(deployment: Deployment, labels: Map<number, string>): ProcessSet {
    for (const pid of descendants(deployment.child.pid!)) if (!labels.has(pid)) labels.set(pid, `helper ${pid}`);
    const pids = [...labels.keys()];
    for (const pid of pids) {
      const startTime = statFields(pid)?.[19];
      if (startTime === undefined) fail(`process ${pid} (${labels.get(pid)}) is gone`);
      this.knownPids.set(pid, startTime!);
    }
    return { pids, labels };
  }

  /** Stops every deployment (SIGTERM, SIGKILL after 10 s), then kills whatever of them is left. */
  async stopAll(): Promise<void> {
    await Promise.all(this.children.map(stopChild));
    // The control plane stops its workers; should one outlive it, it goes now.
    this.killLeftovers();
  }

  /**
   * Stops one deployment before the bench ends (so that the next phase does not share the cores
   * with it): SIGTERM, SIGKILL after 10 s, then its process group. Workers in groups of their
   * own that outlive it are killed with the rest when the bench ends.
   */
  async stop(deployment: Deployment): Promise<void> {
    await stopChild(deployment.child);
    if (deployment.child.pid) killQuietly(-deployment.child.pid, 'SIGKILL');
  }

  /** Stops them all and removes the work directory. */
  async close(): Promise<void> {
    await this.stopAll();
    this.removeWorkDir();
  }

  private killLeftovers(): void {
    for (const child of this.children) if (child.pid) killQuietly(-child.pid, 'SIGKILL'); // the process group
    for (const [pid, startTime] of this.knownPids) if (statFields(pid)?.[19] === startTime) killQuietly(pid, 'SIGKILL');
  }

  private removeWorkDir(): void {
    if (this.cleaned) return;
    this.cleaned = true;
    rmSync(this.workDir, { recursive: true, force: true });
  }
}

/** SIGTERM, and SIGKILL should it not exit within 10 s; resolves once it has exited. */
function stopChild(child: ChildProcess): Promise<void> {
  return new Promise<void>((done) => {
    if (child.exitCode !== null || child.signalCode !== null) return done();
    const force = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(force);
      done();
    });
    child.kill('SIGTERM');
  });
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    /* already gone */
  }
}

/** The control plane's record (`.evolith/deployment.json`), checked to name the process this bench started. */
export function controlPlaneOf(deployment: Deployment): ControlPlane {
  const record = JSON.parse(readFileSync(join(deployment.dataDir, '.evolith', 'deployment.json'), 'utf8')) as ControlPlane;
  const top = deployment.child.pid!;
  if (record.pid !== top) fail(`deployment.json names pid ${record.pid}, but the control plane this bench started is ${top}`);
  return record;
}

/** CPU seconds used so far by each process of the set; one gone fails the bench. */
export function cpuByPid(set: ProcessSet): Map<number, number> {
  const out = new Map<number, number>();
  for (const pid of set.pids) {
    const c = cpuSeconds(pid);
    if (c === undefined) fail(`process ${pid} (${set.labels.get(pid)}) is gone: it exited or was restarted during the run`);
    out.set(pid, c!);
  }
  return out;
}

/** Runs a bench's main: a BenchError is printed by its message, anything else with its stack; the deployments go either way. */
export async function runBench(deployments: Deployments, name: string, main: () => Promise<void>): Promise<void> {
  try {
    try {
      await main();
    } finally {
      await deployments.close();
    }
  } catch (err) {
    console.error(`\n${name} FAILED: ${err instanceof BenchError ? err.message : ((err as Error)?.stack ?? String(err))}`);
    process.exitCode = 1;
  }
}
