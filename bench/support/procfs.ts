/**
 * What /proc says about a benchmark's server processes: their parent links (to find every
 * descendant), CPU time so far and memory. Linux only, as the benches that use it.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

export const CLK_TCK = (() => {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isInteger(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

/** Fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses). */
export function statFields(pid: number): string[] | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

export function descendants(rootPid: number): number[] {
  const childrenOf = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const f = statFields(Number(entry));
    if (!f) continue;
    const ppid = Number(f[1]); // field 4 of stat: state is field 3, ppid field 4
    childrenOf.set(ppid, [...(childrenOf.get(ppid) ?? []), Number(entry)]);
  }
  const out: number[] = [];
  const queue = [rootPid];
  while (queue.length) {
    for (const c of childrenOf.get(queue.shift()!) ?? []) {
      out.push(c);
      queue.push(c);
    }
  }
  return out;
}

/** CPU seconds (user + system) a process has used so far; undefined if it is gone. */
export function cpuSeconds(pid: number): number | undefined {
  const f = statFields(pid);
  if (!f) return undefined;
  return (Number(f[11]) + Number(f[12])) / CLK_TCK; // utime, stime: fields 14 and 15 of stat
}

export function rssKb(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

export interface MemoryKb {
  rss: number;
  /** Proportional set size: shared pages (the node binary, libraries) divided among the processes sharing them. */
  pss: number;
  /** Pages no other process shares: what this process alone costs. */
  private: number;
}

export function memoryKb(pid: number): MemoryKb | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
    return { rss: field('Rss'), pss: field('Pss'), private: field('Private_Clean') + field('Private_Dirty') };
  } catch {
    return undefined;
  }
}
