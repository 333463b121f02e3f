import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { ServiceStore, StorageProvider } from '../kernel/plugins.js';
import { preparePrivateDatabaseFile } from './sqlite-files.js';
import { sqliteKysely } from './sqlite-kysely.js';

/** Embedded default: one SQLite file per service under the app's data directory, owner-only (see sqlite-files.ts). */
export class SqliteStorage implements StorageProvider {
  readonly name = 'sqlite';
  readonly dir: string;
  constructor(dir: string) {
    this.dir = resolve(dir);
  }

  async open(service: string): Promise<ServiceStore> {
    const file = join(this.dir, `${service}.sqlite`);
    preparePrivateDatabaseFile(file);
    const sqlite = new Database(file);
    // WAL lets readers run beside the writer; the busy timeout rides out a checkpoint;
    // synchronous=NORMAL in WAL mode never corrupts and loses at most the last commits on power loss.
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('busy_timeout = 5000');
    sqlite.pragma('foreign_keys = ON');
    sqlite.pragma('synchronous = NORMAL');
    const db = sqliteKysely<any>(sqlite);
    return {
      db,
      dialect: 'sqlite',
      location: file,
      close: () => db.destroy(),
    };
  }
}
