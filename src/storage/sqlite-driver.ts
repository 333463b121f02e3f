import type { DatabaseConnection, Driver } from 'kysely';
import { ConnectionLease, type SerialConnection } from './serial-connection.js';

function leaseOf(connection: DatabaseConnection): ConnectionLease {
  if (!(connection instanceof ConnectionLease)) throw new TypeError('not a connection of this SQLite database');
  return connection;
}

const quoted = (name: string) => `"${name.replace(/"/g, '""')}"`;

/**
 * Kysely's driver slot for a {@link SerialConnection}: connections are leases, and transaction
 * control runs synchronously on the lease that holds the connection.
 */
export class SqliteLeaseDriver implements Driver {
  constructor(private readonly connection: SerialConnection) {}

  async init(): Promise<void> {}

  acquireConnection(): Promise<DatabaseConnection> {
    return this.connection.acquire();
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    this.connection.release(leaseOf(connection));
  }

  async beginTransaction(connection: DatabaseConnection): Promise<void> {
    // Several processes (replicas) may share a service's file. A deferred transaction that reads
    // and then writes can fail at once with SQLITE_BUSY when another writer got there first (the
    // busy timeout cannot help a lock upgrade); taking the write lock at BEGIN waits instead.
    leaseOf(connection).exec('begin immediate');
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    leaseOf(connection).exec('commit');
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    const lease = leaseOf(connection);
    // SQLite ends the transaction itself after some errors (a full disk, an interrupt); a
    // rollback then would fail and hide the error that caused it.
    if (lease.inTransaction) lease.exec('rollback');
  }

  async savepoint(connection: DatabaseConnection, name: string): Promise<void> {
    leaseOf(connection).exec(`savepoint ${quoted(name)}`);
  }

  async rollbackToSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    leaseOf(connection).exec(`rollback to ${quoted(name)}`);
  }

  async releaseSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    leaseOf(connection).exec(`release ${quoted(name)}`);
  }

  async destroy(): Promise<void> {
    this.connection.close();
  }
}
