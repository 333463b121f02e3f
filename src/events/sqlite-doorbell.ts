import { closeSync, existsSync, watch, writeSync, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { makePrivateDir, openPrivateFileForWriting } from '../storage/sqlite-files.js';
import { stableHash } from './redelivery.js';

const BYTE = Buffer.from([0]);
const RETRY_WATCH_MS = 5_000;

/**
 * A cross-process wake-up for one SQLite event file: a directory beside it (`<file>-bells`,
 * owner-only) holding one small file per topic. A publisher writes a byte to the topic's file
 * after its transaction commits; every process watching the directory (inotify on Linux,
 * FSEvents or kqueue elsewhere) hears it at once and looks for the new events, instead of
 * finding them at its next poll.
 *
 * It only ever hastens a look: a ring that is lost (a file system without change events, a
 * watcher that failed, a directory deleted underneath) costs latency, never an event, because
 * the subscriptions keep polling as before. Rung after the commit, so a woken reader sees it.
 */
export class Doorbell {
  private readonly dir: string;
  private readonly listeners = new Map<string, Set<() => void>>();
  private watcher: FSWatcher | undefined;
  private retry: NodeJS.Timeout | undefined;
  private closed = false;
  private warned = false;

  constructor(
    file: string,
    private readonly log?: Logger,
  ) {
    this.dir = `${file}-bells`;
  }

  /** Calls `wake` whenever the bell of `topic` rings, in any process; returns the way to stop. */
  listen(topic: string, wake: () => void): () => void {
    const name = bellName(topic);
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(wake);
    this.watch();
    return () => {
      set.delete(wake);
      if (set.size === 0) this.listeners.delete(name);
    };
  }

  /** Rings the bells of these topics; call it after the commit that published to them. */
  ring(topics: Iterable<string>): void {
    if (this.closed) return;
    for (const topic of topics) {
      try {
        this.write(topic);
      } catch (err) {
        // Subscribers still find the events by polling; only the wake-up is lost.
        this.warnOnce(err, 'could not ring the event doorbell; subscribers in other processes fall back to polling');
      }
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
    this.watcher?.close();
    this.watcher = undefined;
    this.listeners.clear();
  }

  /**
   * Opened by path every time (three cheap system calls per commit, not per event): a bell
   * file or directory deleted underneath is simply made again.
   */
  private write(topic: string): void {
    const path = join(this.dir, bellName(topic));
    let fd: number;
    try {
      fd = openPrivateFileForWriting(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      this.ensureDir();
      fd = openPrivateFileForWriting(path);
    }
    try {
      writeSync(fd, BYTE, 0, 1, 0);
    } finally {
      closeSync(fd);
    }
  }

  private ensureDir(): void {
    makePrivateDir(this.dir);
  }

  private watch(): void {
    if (this.watcher || this.closed) return;
    try {
      this.ensureDir();
      const w = watch(this.dir, { persistent: false }, (event, name) => {
        const wakes = name === null ? undefined : this.listeners.get(String(name));
        if (wakes) for (const wake of wakes) wake();
        // A bell file appearing is a 'rename' too; the directory itself going away is the one that matters.
        else if (event === 'rename' && !existsSync(this.dir)) this.rewatch();
      });
      w.on('error', (err) => {
        this.warnOnce(err, 'the event doorbell stopped; subscribers fall back to polling until it is back');
        this.rewatch();
      });
      this.watcher = w;
    } catch (err) {
      this.warnOnce(err, 'cannot watch the event doorbell; subscribers fall back to polling');
      this.rewatch();
    }
  }

  /** The directory went away or the watcher broke: try again later, polling meanwhile. */
  private rewatch(): void {
    this.watcher?.close();
    this.watcher = undefined;
    if (this.closed || this.retry) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      if (this.listeners.size > 0) this.watch();
    }, RETRY_WATCH_MS);
    this.retry.unref();
  }

  private warnOnce(err: unknown, msg: string): void {
    if (this.warned) return;
    this.warned = true;
    this.log?.warn({ err, dir: this.dir }, msg);
  }
}

/** A file name for a topic's bell: readable, safe on every file system, distinct per topic. */
export function bellName(topic: string): string {
  return `${topic.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 60)}-${stableHash(topic).toString(36)}`;
}
