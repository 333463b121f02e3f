/**
 * What a deployment leaves on disk is its owner's alone: started under the usual umask (022,
 * which makes files readable by everyone by default), the databases of every service (the auth
 * service's holds the token signing key), the SQLite event bus and its doorbell are mode 0600,
 * in directories with mode 0700.
 */
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeDataDir, startBookstore, type Bookstore } from '../support/bookstore-process.js';
import { ADMIN, pay, settle } from '../support/bookstore.js';
import { Http, login } from '../support/http.js';

const mode = (path: string) => (statSync(path).mode & 0o777).toString(8).padStart(4, '0');

/** Every file and directory under `dir`, by path relative to it, with its mode. */
function modesUnder(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const path = join(entry.parentPath, entry.name);
    out[relative(dir, path)] = mode(path);
  }
  return out;
}

describe('file modes of a microservices deployment on SQLite, started with umask 022', () => {
  let app: Bookstore;
  let dataDir: string;
  let savedUmask: number;

  beforeAll(async () => {
    savedUmask = process.umask(0o022); // the deployment's processes inherit it
    dataDir = join(makeDataDir(), 'data'); // made by the deployment itself
    app = await startBookstore({ arch: 'microservices', storage: 'sqlite', dataDir, set: { events: 'sqlite' } });
  }, 90_000);
  afterAll(async () => {
    await app?.stop();
    process.umask(savedUmask);
  }, 30_000);

  it('databases, their -wal and -shm, the event bus and its doorbell are 0600 in 0700 directories', async () => {
    // A settlement and its payment: every service writes, and events ring the doorbell.
    const http = new Http(app.baseUrl);
    const token = (await login(http, ADMIN.username, ADMIN.password)).access_token;
    const s = await settle(http, token, [[1, 1]]);
    expect(s.status, s.text).toBe(200);
    expect((await pay(http, token, s.body.payId, 'PAYED')).status).toBe(200);

    expect(mode(dataDir)).toBe('0700');
    const modes = modesUnder(dataDir);
    const databases = Object.keys(modes).filter((p) => /\.sqlite(-wal|-shm)?$/.test(p));
    for (const service of ['account', 'auth', 'payment', 'warehouse', 'events']) {
      expect(databases, `${service}.sqlite`).toContain(`${service}.sqlite`);
      expect(databases, `${service}.sqlite-wal`).toContain(`${service}.sqlite-wal`);
    }
    const bells = Object.keys(modes).filter((p) => p.startsWith('events.sqlite-bells/'));
    expect(bells.length).toBeGreaterThan(0);
    // Everything in the data directory, not only those: files 0600, directories 0700.
    const expected = Object.fromEntries(Object.keys(modes).map((p) => [p, statSync(join(dataDir, p)).isDirectory() ? '0700' : '0600']));
    expect(expected['events.sqlite-bells']).toBe('0700');
    expect(modes).toEqual(expected);
  }, 60_000);
});
