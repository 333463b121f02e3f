import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';

/** One process the supervisor keeps running. */
export interface ProcessSpec {
  /** What runs in it (a service group, the edge); with `replica`, the label on its log lines. */
  readonly name: string;
  readonly replica: number;
  readonly command: string;
  readonly args: readonly string[];
  readonly env?: Readonly<Record<string, string>>;
  readonly cwd?: string;
  /**
   * A message sent to each new incarnation over its private IPC channel as soon as it is
   * spawned (credentials, which must not sit in its environment or on disk). Called per start.
   */
  readonly message?: () => unknown;
  /**
   * The exit code by which the process says it cannot start (bad configuration, a port in use,
   * a database it cannot reach): restarting would only fail again, so it is not restarted.
   */
  readonly fatalExitCode?: number;
  /**
   * The resident memory (MB) it may use. Over it, it is killed with SIGKILL (its whole process
   * group) and reported, and then takes the ordinary crash path: restarted after the backoff.
   * Only its own RSS is measured, not that of processes it starts. Limiting the V8 heap
   * (`--max-old-space-size`) is the caller's business, in `args`.
   */
  readonly memoryLimitMb?: number;
  /**
   * Restart it when it exits by itself (default true). A process started for one purpose that
   * its owner replaces as it sees fit (a serverless instance) says false: it is then reported
   * `exited` with its last exit, and stays listed until `stop` forgets it.
   */
  readonly restart?: boolean;
}

export type ProcessState = 'starting' | 'running' | 'backoff' | 'stopping' | 'stopped' | 'failed' | 'exited';

export interface ProcessStatus {
  readonly name: string;
  readonly replica: number;
  readonly pid: number | undefined;
  readonly state: ProcessState;
  readonly restarts: number;
  readonly startedAt: number | undefined;
  readonly lastExit: ExitRecord | undefined;
  /** Its last lines of output, newest last: why it failed, when it did. */
  readonly lastLines: readonly string[];
  /**
   * Its resident memory (MB, rounded up) when last sampled. Only processes with a
   * `memoryLimitMb` are sampled (to keep the sampling cheap), and only while they run.
   */
  readonly rssMb?: number;
}

/** How a process's last incarnation ended. */
export interface ExitRecord {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly at: number;
  /** Set when the supervisor killed it for using more resident memory than its limit. */
  readonly reason?: 'memory';
  /** Its resident memory (MB) when it was killed for it. */
  readonly memoryMb?: number;
}

export interface SupervisorOptions {
  /** Where prefixed output lines go (default: this process's stdout). */
  write?: (line: string) => void;
  /** Rewrites each output line before it is written (e.g. JSON log lines into readable ones). */
  formatLine?: (line: string) => string;
  /** First restart delay; doubles per crash up to `maxBackoffMs`. */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** A process that ran this long before crashing restarts after the initial delay again. */
  stableAfterMs?: number;
  /** SIGTERM, then SIGKILL after this long. */
  stopTimeoutMs?: number;
  /** Called whenever a process changes state (for status lines and registries). */
  onChange?: (status: ProcessStatus) => void;
  /** A message a process sent over its IPC channel (acknowledgements, reports). */
  onMessage?: (name: string, replica: number, message: unknown) => void;
  /** How often the resident memory of processes with a `memoryLimitMb` is sampled (default 500). */
  memoryCheckMs?: number;
}

class Managed {
  spec: ProcessSpec;
  child: ChildProcess | undefined;
  state: ProcessState = 'starting';
  restarts = 0;
  startedAt: number | undefined;
  lastExit: ProcessStatus['lastExit'];
  backoff: number;
  timer: NodeJS.Timeout | undefined;
  exited: Promise<void> = Promise.resolve();
  readonly lastLines: string[] = [];
  rssMb: number | undefined;
  /** Set when it was killed for its memory, until its exit is recorded. */
  memoryKill: { memoryMb: number } | undefined;
  constructor(spec: ProcessSpec, initialBackoff: number) {
    this.spec = spec;
    this.backoff = initialBackoff;
  }
  get label(): string {
    return `${this.spec.name}#${this.spec.replica}`;
  }
  status(): ProcessStatus {
    return {
      name: this.spec.name,
      replica: this.spec.replica,
      pid: this.child?.pid,
      state: this.state,
      restarts: this.restarts,
      startedAt: this.startedAt,
      lastExit: this.lastExit,
      lastLines: [...this.lastLines],
      ...(this.rssMb !== undefined && { rssMb: this.rssMb }),
    };
  }
}

/**
 * Keeps a set of processes running: restarts a crashed one with exponential backoff, prefixes
 * each output line with its name and replica, and stops everything gracefully (SIGTERM, then
 * SIGKILL after a timeout). It knows nothing of services: it runs commands.
 *
 * A process given a `memoryLimitMb` has its resident memory (VmRSS in `/proc/<pid>/status`)
 * sampled every `memoryCheckMs` by one timer shared by all of them, which runs only while some
 * process has a limit. One over its limit is killed with SIGKILL, alone (others are untouched),
 * reported by a line and by `lastExit.reason: 'memory'`, and restarted like any crash, after
 * the backoff. Where there is no `/proc`, limits are not enforced, which is said once.
 */
export class Supervisor {
  private readonly procs = new Map<string, Managed>();
  private readonly write: (line: string) => void;
  private readonly formatLine: (line: string) => string;
  private readonly initialBackoff: number;
  private readonly maxBackoff: number;
  private readonly stableAfter: number;
  private readonly stopTimeout: number;
  private readonly memoryCheck: number;
  private memoryTimer: NodeJS.Timeout | undefined;
  private sampling = false;
  /** Undefined until the first process with a limit asks: whether `/proc` can be read here. */
  private canSampleMemory: boolean | undefined;

  constructor(private readonly options: SupervisorOptions = {}) {
    this.write = options.write ?? ((line) => process.stdout.write(line + '\n'));
    this.formatLine = options.formatLine ?? ((line) => line);
    this.initialBackoff = options.initialBackoffMs ?? 250;
    this.maxBackoff = options.maxBackoffMs ?? 10_000;
    this.stableAfter = options.stableAfterMs ?? 10_000;
    this.stopTimeout = options.stopTimeoutMs ?? 15_000;
    this.memoryCheck = options.memoryCheckMs ?? 500;
  }

  static key(name: string, replica: number): string {
    return `${name}#${replica}`;
  }

  /** Starts a process and keeps it running until `stop` is called for it. */
  start(spec: ProcessSpec): void {
    const key = Supervisor.key(spec.name, spec.replica);
    if (this.procs.has(key)) throw new Error(`${key} is already supervised`);
    const m = new Managed(spec, this.initialBackoff);
    this.procs.set(key, m);
    this.launch(m);
    this.watchMemory();
  }

  status(): ProcessStatus[] {
    return [...this.procs.values()].map((m) => m.status());
  }

  /** Sends a message to a running process over its IPC channel; false when it is not running. */
  send(name: string, replica: number, message: unknown): boolean {
    const child = this.procs.get(Supervisor.key(name, replica))?.child;
    if (!child?.connected) return false;
    child.send(message as never, (err) => err && this.write(`[${name}#${replica}] could not be sent a message: ${err.message}`));
    return true;
  }

  /**
   * Gives a running process another name, replica and memory limit: a generic process (a pool's
   * runtime) taking on a role. Its output, messages and status carry the new label from now on.
   */
  reassign(from: { name: string; replica: number }, to: { name: string; replica: number; memoryLimitMb?: number }): void {
    const key = Supervisor.key(from.name, from.replica);
    const m = this.procs.get(key);
    if (!m) throw new Error(`${key} is not supervised`);
    const target = Supervisor.key(to.name, to.replica);
    if (this.procs.has(target)) throw new Error(`${target} is already supervised`);
    this.procs.delete(key);
    m.spec = { ...m.spec, name: to.name, replica: to.replica, ...(to.memoryLimitMb !== undefined && { memoryLimitMb: to.memoryLimitMb }) };
    this.procs.set(target, m);
    this.watchMemory();
    this.options.onChange?.(m.status());
  }

  /** Stops one process gracefully and forgets it. */
  async stop(name: string, replica: number): Promise<void> {
    const key = Supervisor.key(name, replica);
    const m = this.procs.get(key);
    if (!m) return;
    await this.terminate(m);
    this.procs.delete(key);
    this.watchMemory();
  }

  /** Stops every process (concurrently) and waits for all of them. */
  async stopAll(): Promise<void> {
    await Promise.all([...this.procs.values()].map((m) => this.terminate(m)));
    this.procs.clear();
    this.watchMemory();
  }

  /** Runs the memory sampling timer exactly while some supervised process has a limit. */
  private watchMemory(): void {
    const needed = [...this.procs.values()].some((m) => m.spec.memoryLimitMb !== undefined);
    if (!needed) {
      clearInterval(this.memoryTimer);
      this.memoryTimer = undefined;
      return;
    }
    if (this.memoryTimer) return;
    if (this.canSampleMemory === undefined) {
      this.canSampleMemory = existsSync('/proc/self/status');
      if (!this.canSampleMemory) this.write('[supervisor] memory limits are not enforced: this system has no /proc to read resident memory from');
    }
    if (!this.canSampleMemory) return;
    this.memoryTimer = setInterval(() => void this.sampleMemory(), this.memoryCheck);
    // The sampling alone must not keep the supervising process alive.
    this.memoryTimer.unref();
  }

  private async sampleMemory(): Promise<void> {
    // A slow round (a busy machine) is not overlapped by the next one.
    if (this.sampling) return;
    this.sampling = true;
    try {
      const limited = [...this.procs.values()].filter((m) => m.spec.memoryLimitMb !== undefined && m.child?.pid !== undefined);
      await Promise.all(limited.map((m) => this.checkMemory(m)));
    } finally {
      this.sampling = false;
    }
  }

  private async checkMemory(m: Managed): Promise<void> {
    const child = m.child;
    const pid = child?.pid;
    const limit = m.spec.memoryLimitMb;
    if (!child || pid === undefined || limit === undefined || m.memoryKill) return;
    let status: string;
    try {
      status = await readFile(`/proc/${pid}/status`, 'utf8');
    } catch {
      return; // it exited meanwhile; its exit is handled by 'close'
    }
    // A zombie has no VmRSS line; an incarnation replaced while reading is not this one.
    const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1];
    if (kb === undefined || m.child !== child || m.memoryKill) return;
    // Rounded up, so a reported figure over the limit is never shown as equal to it.
    const rssMb = Math.ceil(Number(kb) / 1024);
    m.rssMb = rssMb;
    if (Number(kb) <= limit * 1024) return;
    m.memoryKill = { memoryMb: rssMb };
    this.write(`[${m.label}] killed: resident memory ${rssMb} MB over its limit of ${limit} MB`);
    try {
      // Its own process group (it was spawned detached), so what it started dies with it.
      process.kill(-pid, 'SIGKILL');
    } catch {
      child.kill('SIGKILL');
    }
  }

  private launch(m: Managed): void {
    const { spec } = m;
    m.state = 'starting';
    // Each child gets its own process group, so a Ctrl-C in the terminal reaches only the
    // supervisor, which then stops the children in order; the IPC channel tells a child that
    // its supervisor died (even by SIGKILL), and it exits rather than linger as an orphan.
    const child = spawn(spec.command, [...spec.args], {
      cwd: spec.cwd,
      env: { ...process.env, ...spec.env, EVOLITH_SUPERVISED: '1' },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      detached: true,
    });
    m.child = child;
    m.startedAt = Date.now();
    // The name is read at each message and line: a process may be reassigned while it runs.
    if (this.options.onMessage) child.on('message', (message) => this.options.onMessage!(m.spec.name, m.spec.replica, message));
    const prefix = `[${m.label}] `;
    for (const stream of [child.stdout!, child.stderr!]) {
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
        m.lastLines.push(line);
        if (m.lastLines.length > 10) m.lastLines.shift();
        this.write(`[${m.label}] ` + this.formatLine(line));
      });
    }
    m.exited = new Promise((resolve) => {
      // 'close', not 'exit': by then the last lines it wrote (why it stopped) have been read.
      child.once('close', (code, signal) => {
        const killed = m.memoryKill;
        m.lastExit = { code, signal, at: Date.now(), ...(killed && { reason: 'memory' as const, memoryMb: killed.memoryMb }) };
        m.memoryKill = undefined;
        m.rssMb = undefined;
        m.child = undefined;
        resolve();
        this.exited(m, code, signal);
      });
    });
    child.once('spawn', () => {
      if (spec.message) child.send(spec.message() as never, (err) => err && this.write(`${prefix}could not be sent its start message: ${err.message}`));
      if (m.state === 'starting') m.state = 'running';
      this.options.onChange?.(m.status());
    });
    child.once('error', (err) => {
      this.write(`${prefix}could not start: ${err.message}`);
    });
  }

  private exited(m: Managed, code: number | null, signal: NodeJS.Signals | null): void {
    if (m.state === 'stopping' || m.state === 'stopped') {
      m.state = 'stopped';
      this.options.onChange?.(m.status());
      return;
    }
    if (m.spec.fatalExitCode !== undefined && code === m.spec.fatalExitCode) {
      m.state = 'failed';
      this.write(`[${m.label}] cannot start (exit code ${code}); not restarted`);
      this.options.onChange?.(m.status());
      return;
    }
    if (m.spec.restart === false) {
      m.state = 'exited';
      this.write(`[${m.label}] exited (${signal ?? `code ${code}`})${m.lastExit?.reason === 'memory' ? ' after using more memory than its limit' : ''}`);
      this.options.onChange?.(m.status());
      return;
    }
    const ranFor = Date.now() - (m.startedAt ?? Date.now());
    if (ranFor >= this.stableAfter) m.backoff = this.initialBackoff;
    const delay = m.backoff;
    m.backoff = Math.min(this.maxBackoff, m.backoff * 2);
    m.state = 'backoff';
    m.restarts++;
    this.write(`[${m.label}] exited (${signal ?? `code ${code}`}); restarting in ${delay} ms (restart ${m.restarts})`);
    this.options.onChange?.(m.status());
    m.timer = setTimeout(() => {
      m.timer = undefined;
      if (m.state === 'backoff') this.launch(m);
    }, delay);
  }

  private async terminate(m: Managed): Promise<void> {
    clearTimeout(m.timer);
    const child = m.child;
    m.state = 'stopping';
    if (!child) {
      m.state = 'stopped';
      return;
    }
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), this.stopTimeout);
    await m.exited;
    clearTimeout(killer);
  }
}
