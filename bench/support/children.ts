import type { ChildProcess } from 'node:child_process';

const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;

/**
 * The processes a benchmark starts: stopped gracefully when it ends (SIGTERM, then SIGKILL
 * after `graceMs`), killed outright if the benchmark itself dies or is interrupted.
 */
export class ChildProcesses {
  private readonly children: ChildProcess[] = [];

  constructor(private readonly graceMs = 5_000) {
    process.once('exit', () => {
      for (const child of this.children) if (alive(child)) child.kill('SIGKILL');
    });
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      process.once(signal, () => void this.stopAll().finally(() => process.exit(130)));
    }
  }

  add<C extends ChildProcess>(child: C): C {
    this.children.push(child);
    return child;
  }

  stopAll(): Promise<void> {
    return Promise.all(
      this.children.map(
        (child) =>
          new Promise<void>((done) => {
            if (!alive(child)) return done();
            const force = setTimeout(() => child.kill('SIGKILL'), this.graceMs);
            child.once('exit', () => {
              clearTimeout(force);
              done();
            });
            child.stdin?.end();
            child.kill('SIGTERM');
          }),
      ),
    ).then(() => undefined);
  }
}
