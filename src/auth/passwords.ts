/**
 * Password hashing with bcrypt, off the event loop.
 *
 * bcrypt is slow on purpose (~100 ms of CPU per hash or check at cost 10). Run on the event
 * loop, every check holds up every other request of the process for that long, so a handful of
 * clients guessing passwords would stall the whole server. Hashes and checks therefore run on a
 * small pool of worker threads, one fewer than the machine's cores (at least one), so a core is
 * left for serving requests. Jobs wait in a bounded queue; when it is full a new password check
 * is refused at once with PasswordChecksBusyError (HTTP 503, and the edge adds Retry-After)
 * instead of the queue, and everyone's wait, growing without bound. Hashing a new password is
 * never refused (see submit).
 *
 * Idle workers do not keep the process alive, and `closePasswordWorkers()` stops them once the
 * jobs already accepted are done; a later job starts the pool again.
 *
 * bcrypt reads only the first 72 bytes of a secret: two passwords sharing those would both
 * match. A secret longer than that is first condensed with HMAC-SHA256 (base64, 44 bytes, so
 * every byte of it counts) and its stored hash is marked with `hmac-sha256:` in front of the
 * bcrypt hash. Secrets of up to 72 bytes are hashed as before, so their hashes stay plain
 * bcrypt and hashes stored earlier keep verifying. An unmarked hash never matches a secret
 * longer than 72 bytes: it was made from at most 72 bytes, and the bytes beyond would be
 * ignored (a long password stored before pre-hashing must be set again).
 */
import { createHmac } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { EvolithError } from '../kernel/errors.js';
import { packageRequire } from '../kernel/package-require.js';

const ROUNDS = 10;

/** Too many password hashes or checks are already waiting; retry shortly. */
export class PasswordChecksBusyError extends EvolithError {
  constructor(message: string, details?: unknown) {
    super('PASSWORD_CHECKS_BUSY', message, { details, httpStatus: 503 });
  }
}

export interface PasswordWorkersOptions {
  /** Worker threads; default one fewer than the machine's cores, at least 1. */
  threads?: number;
  /** Jobs that may wait for a free thread; beyond it password checks are refused (hashes still wait). Default 32 per thread. */
  maxQueued?: number;
}

type Job =
  | { op: 'hash'; secret: unknown; rounds: number; resolve: (v: unknown) => void; reject: (e: Error) => void }
  | { op: 'verify'; secret: unknown; hash: unknown; resolve: (v: unknown) => void; reject: (e: Error) => void };

interface Slot {
  worker: Worker;
  job?: Job;
}

// The worker's whole program: bcryptjs's synchronous calls, one job at a time. It is loaded
// from source text so that it runs the same under every loader (plain node, tsx, vitest).
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const bcrypt = require(workerData.bcrypt);
parentPort.on('message', (job) => {
  try {
    const value = job.op === 'hash' ? bcrypt.hashSync(job.secret, job.rounds) : bcrypt.compareSync(job.secret, job.hash);
    parentPort.postMessage({ value });
  } catch (err) {
    parentPort.postMessage({ error: err instanceof Error ? err.message : String(err) });
  }
});
`;
const bcryptPath = packageRequire().resolve('bcryptjs');

/** A pool of worker threads that hash and check passwords with bcrypt. */
export class PasswordWorkers {
  readonly threads: number;
  readonly maxQueued: number;
  private readonly slots = new Set<Slot>();
  private readonly idle: Slot[] = [];
  private readonly queue: Job[] = [];
  private drained: (() => void)[] = [];
  private terminating = 0;

  constructor(options: PasswordWorkersOptions = {}) {
    this.threads = options.threads ?? Math.max(1, availableParallelism() - 1);
    this.maxQueued = options.maxQueued ?? 32 * this.threads;
    if (!Number.isInteger(this.threads) || this.threads < 1) throw new RangeError(`threads must be a positive integer, got ${this.threads}`);
    if (!Number.isInteger(this.maxQueued) || this.maxQueued < 0) throw new RangeError(`maxQueued must be a non-negative integer, got ${this.maxQueued}`);
  }

  /** Jobs waiting for a thread (not counting those running). */
  get queued(): number {
    return this.queue.length;
  }

  hash(secret: string, rounds = ROUNDS): Promise<string> {
    return new Promise((resolve, reject) => this.submit({ op: 'hash', secret, rounds, resolve: resolve as (v: unknown) => void, reject }));
  }

  verify(secret: string, hash: string): Promise<boolean> {
    return new Promise((resolve, reject) => this.submit({ op: 'verify', secret, hash, resolve: resolve as (v: unknown) => void, reject }));
  }

  /** Stops the threads once every job already accepted has finished. The pool may be used again afterwards. */
  close(): Promise<void> {
    if (this.slots.size === 0 && this.terminating === 0) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.drained.push(resolve));
    this.stopIdle();
    return done;
  }

  private submit(job: Job): void {
    const slot = this.idle.pop() ?? (this.slots.size < this.threads ? this.spawn() : undefined);
    if (slot) return this.start(slot, job);
    // Only checks are refused: a hash is made for a new or changed password (one request each,
    // which the edge's own limits bound) and once for the login decoy of unknown users, which a
    // refusal must never leave broken. Hashes still count towards the queue that checks see.
    if (job.op === 'verify' && this.queue.length >= this.maxQueued) {
      job.reject(
        new PasswordChecksBusyError(`too many password checks are waiting (${this.queue.length} queued, ${this.threads} running); retry shortly`, {
          queued: this.queue.length,
          threads: this.threads,
        }),
      );
      return;
    }
    this.queue.push(job);
  }

  private spawn(): Slot {
    // No inherited flags: the worker is plain CommonJS and needs no loader (an inherited
    // --input-type=module, say, would make its source an ES module).
    const worker = new Worker(WORKER_SOURCE, { eval: true, execArgv: [], workerData: { bcrypt: bcryptPath } });
    const slot: Slot = { worker };
    this.slots.add(slot);
    worker.on('message', (answer: { value?: unknown; error?: string }) => {
      const job = slot.job;
      slot.job = undefined;
      if (job) {
        if (answer.error !== undefined) job.reject(new Error(answer.error));
        else job.resolve(answer.value);
      }
      this.next(slot);
    });
    worker.on('error', (err) => this.lose(slot, err));
    worker.on('exit', (code) => this.lose(slot, new Error(`password worker exited with code ${code}`)));
    return slot;
  }

  private start(slot: Slot, job: Job): void {
    slot.job = job;
    slot.worker.ref(); // a job in progress keeps the process alive until it is answered
    const { resolve: _r, reject: _j, ...message } = job;
    slot.worker.postMessage(message);
  }

  private next(slot: Slot): void {
    const job = this.queue.shift();
    if (job) return this.start(slot, job);
    slot.worker.unref(); // an idle pool does not keep the process alive
    this.idle.push(slot);
    if (this.drained.length > 0) this.stopIdle();
  }

  /** A worker died (it should not): its job fails, and a replacement takes the queue. */
  private lose(slot: Slot, err: Error): void {
    if (!this.slots.delete(slot)) return;
    const at = this.idle.indexOf(slot);
    if (at >= 0) this.idle.splice(at, 1);
    slot.job?.reject(err);
    slot.job = undefined;
    if (this.queue.length > 0 && this.slots.size < this.threads) this.start(this.spawn(), this.queue.shift()!);
    this.settleIfEmpty();
  }

  private stopIdle(): void {
    if (this.queue.length > 0) return;
    for (const slot of this.idle.splice(0)) {
      this.slots.delete(slot);
      this.terminating++;
      slot.worker.removeAllListeners('exit');
      slot.worker.once('exit', () => {
        this.terminating--;
        this.settleIfEmpty();
      });
      void slot.worker.terminate();
    }
  }

  private settleIfEmpty(): void {
    if (this.slots.size > 0 || this.terminating > 0 || this.drained.length === 0) return;
    const waiting = this.drained;
    this.drained = [];
    for (const resolve of waiting) resolve();
  }
}

let shared: PasswordWorkers | undefined;
const pool = () => (shared ??= new PasswordWorkers());

/** The most bytes of a secret bcrypt looks at. */
export const BCRYPT_MAX_BYTES = 72;
/** Marks a stored hash whose secret was condensed with HMAC-SHA256 before bcrypt. */
const PREHASHED = 'hmac-sha256:';
// A fixed key: the HMAC only condenses long secrets (the salt and cost are bcrypt's), the key
// keeps these digests apart from plain SHA-256 digests of the same text.
const PREHASH_KEY = 'evolith password pre-hash v1';

const prehash = (secret: string): string => createHmac('sha256', PREHASH_KEY).update(secret, 'utf8').digest('base64');
const isLong = (secret: unknown): secret is string => typeof secret === 'string' && Buffer.byteLength(secret, 'utf8') > BCRYPT_MAX_BYTES;

/** bcrypt hash of a secret (of its HMAC-SHA256 if longer than 72 bytes); only the hash is ever stored. */
export async function hashPassword(secret: string): Promise<string> {
  if (isLong(secret)) return PREHASHED + (await pool().hash(prehash(secret), ROUNDS));
  return pool().hash(secret, ROUNDS);
}

export function verifyPassword(secret: string, hash: string): Promise<boolean> {
  if (typeof hash === 'string' && hash.startsWith(PREHASHED)) {
    return typeof secret === 'string' ? pool().verify(prehash(secret), hash.slice(PREHASHED.length)) : pool().verify(secret, hash);
  }
  // Bytes past the 72nd would be ignored by a plain bcrypt hash: such a secret cannot be the one
  // stored. The check still costs a bcrypt run, so the answer's timing does not tell which hashes are marked.
  if (isLong(secret)) return pool().verify(prehash(secret), hash).then(() => false);
  return pool().verify(secret, hash);
}

/** Stops the shared password threads once their jobs are done (idle threads never hold a process open). */
export function closePasswordWorkers(): Promise<void> {
  return shared ? shared.close() : Promise.resolve();
}
