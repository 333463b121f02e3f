/**
 * Owner-only files for SQLite databases, whatever the process's umask.
 *
 * The databases hold everything a deployment keeps, the auth service's signing key among them:
 * they are made with mode 0600 in directories made with mode 0700. Modes are set explicitly after
 * creating (a umask only ever removes bits, so 0o600 given to open() could still come out as less,
 * and the library's own default, 0644, would come out world-readable under the usual umask 022).
 * SQLite gives a database's -wal, -shm and -journal files the mode of the database file itself, so
 * creating the database file first, owner-only, covers them; any already there are tightened too.
 *
 * Directories that already exist keep their mode (the data directory may be one the operator
 * chose and shares); only those made here are owner-only.
 */
import { chmodSync, closeSync, constants, existsSync, fchmodSync, fstatSync, mkdirSync, openSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

export const PRIVATE_FILE_MODE = 0o600;
export const PRIVATE_DIR_MODE = 0o700;

const ownedByMe = (uid: number) => typeof process.getuid !== 'function' || uid === process.getuid();

/** Makes `dir` and any missing parents with mode 0700; existing directories are left as they are. */
export function makePrivateDir(dir: string): void {
  const missing: string[] = [];
  for (let d = resolve(dir); !existsSync(d); d = dirname(d)) {
    missing.push(d);
    if (dirname(d) === d) break;
  }
  if (missing.length === 0) return;
  mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  // Outermost first, so that each one stays reachable while the next is set.
  for (const d of missing.reverse()) {
    try {
      chmodSync(d, PRIVATE_DIR_MODE);
    } catch (err) {
      // Made by another process at the same moment, and not ours to change.
      if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
    }
  }
}

/**
 * Creates the database file `file` (mode 0600) in a private directory before SQLite opens it, and
 * narrows an existing one (and its -wal, -shm and -journal files) to 0600 if this process owns it.
 */
export function preparePrivateDatabaseFile(file: string): void {
  makePrivateDir(dirname(resolve(file)));
  const fd = openSync(file, constants.O_RDWR | constants.O_CREAT, PRIVATE_FILE_MODE);
  try {
    const st = fstatSync(fd);
    if ((st.mode & 0o777) !== PRIVATE_FILE_MODE && ownedByMe(st.uid)) fchmodSync(fd, PRIVATE_FILE_MODE);
  } finally {
    closeSync(fd);
  }
  for (const suffix of ['-wal', '-shm', '-journal']) tightenIfPresent(file + suffix);
}

function tightenIfPresent(path: string): void {
  try {
    const st = statSync(path);
    if ((st.mode & 0o777) !== PRIVATE_FILE_MODE && ownedByMe(st.uid)) chmodSync(path, PRIVATE_FILE_MODE);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/**
 * Opens `path` for writing, creating it with mode 0600 if it is missing (the mode set explicitly
 * only then, so an existing file costs one system call as before).
 */
export function openPrivateFileForWriting(path: string): number {
  try {
    return openSync(path, constants.O_WRONLY);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, PRIVATE_FILE_MODE);
  } catch (err) {
    // Made by another process in between: it set the mode.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return openSync(path, constants.O_WRONLY);
    throw err;
  }
  try {
    fchmodSync(fd, PRIVATE_FILE_MODE);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return fd;
}
