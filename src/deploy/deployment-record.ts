/**
 * A running deployment's record: `<data>/.evolith/deployment.json`, created exclusively when a
 * deployment starts and removed when it stops. It is the data directory's lock (a second
 * deployment on the same data is refused, naming the first), and what `evolith status` reads
 * (where the deployment serves, its processes, the operator credential). A pointer under
 * `<appDir>/.evolith/deployments/` lets `evolith status <appDir>` find deployments started with
 * another `--data`. Both are readable by this user only.
 */
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BacklogSource } from './event-backlog.js';
import { ConfigError } from '../kernel/errors.js';

export interface DeploymentRecord {
  readonly pid: number;
  readonly architecture: string;
  /** The public edge's URL. */
  readonly url: string;
  readonly dataDir: string;
  readonly appDir: string;
  readonly startedAt: number;
  /** What runs where, as the start-up banner says it. */
  readonly services: readonly { name: string; location: string }[];
  /** Microservices: the control plane's registry, and the operator credential it answers. */
  readonly registryUrl?: string;
  readonly operatorToken?: string;
  /** Where its services keep their events (outboxes) and which bus carries them. */
  readonly events?: BacklogSource;
}

const stateDir = (dataDir: string) => join(dataDir, '.evolith');
export const recordFile = (dataDir: string) => join(stateDir(dataDir), 'deployment.json');
const pointerDir = (appDir: string) => join(appDir, '.evolith', 'deployments');
const pointerFile = (appDir: string, dataDir: string) => join(pointerDir(appDir), `${createHash('sha256').update(dataDir).digest('hex').slice(0, 16)}.json`);

/** True while a process with this pid exists. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The record of a live deployment on this data directory, or undefined (none, or its process is gone). */
export function liveRecord(dataDir: string): DeploymentRecord | undefined {
  let record: DeploymentRecord;
  try {
    record = JSON.parse(readFileSync(recordFile(dataDir), 'utf8')) as DeploymentRecord;
  } catch {
    return undefined;
  }
  return Number.isInteger(record.pid) && processAlive(record.pid) ? record : undefined;
}

export interface ClaimedDataDir {
  /** Writes the record again with what is known now (URL, services, registry). */
  update(fields: Partial<DeploymentRecord>): void;
  release(): void;
}

/**
 * Claims `dataDir` for the deployment this process runs: refused with a ConfigError naming the
 * deployment that holds it; a record left by a process that no longer runs is taken over.
 */
export function claimDataDir(record: Omit<DeploymentRecord, 'startedAt' | 'pid' | 'url' | 'services'>): ClaimedDataDir {
  const dir = stateDir(record.dataDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const file = recordFile(record.dataDir);
  let current: DeploymentRecord = { ...record, pid: process.pid, url: '', services: [], startedAt: Date.now() };
  const write = (flag: 'wx' | 'w') => writeFileSync(file, JSON.stringify(current, null, 2), { mode: 0o600, flag });
  try {
    write('wx');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const holder = liveRecord(record.dataDir);
    if (holder && holder.pid !== process.pid) {
      throw new ConfigError(
        `the data directory ${record.dataDir} is in use by a running ${holder.architecture} deployment (pid ${holder.pid}${holder.url ? `, ${holder.url}` : ''}); ` +
          'stop it first, or choose another directory with --data',
      );
    }
    // Left behind by a deployment that did not stop cleanly.
    write('w');
  }
  const pointer = pointerFile(record.appDir, record.dataDir);
  mkdirSync(pointerDir(record.appDir), { recursive: true, mode: 0o700 });
  writeFileSync(pointer, JSON.stringify({ dataDir: record.dataDir }), { mode: 0o600 });
  let released = false;
  return {
    update(fields) {
      if (released) return;
      current = { ...current, ...fields };
      write('w');
    },
    release() {
      if (released) return;
      released = true;
      rmSync(file, { force: true });
      rmSync(pointer, { force: true });
    },
  };
}

/** The live deployments of an app: the one on `dataDir`, or every one a pointer names. */
export function findDeployments(appDir: string, dataDir?: string): DeploymentRecord[] {
  if (dataDir !== undefined) {
    const r = liveRecord(dataDir);
    return r ? [r] : [];
  }
  let names: string[] = [];
  try {
    names = readdirSync(pointerDir(appDir));
  } catch {
    return [];
  }
  const found: DeploymentRecord[] = [];
  for (const name of names) {
    try {
      const { dataDir: dir } = JSON.parse(readFileSync(join(pointerDir(appDir), name), 'utf8')) as { dataDir: string };
      const r = liveRecord(dir);
      if (r) found.push(r);
      else rmSync(join(pointerDir(appDir), name), { force: true });
    } catch {
      /* a pointer another process is writing or removing */
    }
  }
  return found;
}
