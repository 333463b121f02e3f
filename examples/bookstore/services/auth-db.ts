import { database, type Generated, type Kysely } from 'evolith';
import { keyExistingUsernames } from '../shared/username-migration.js';

export interface CredentialTable {
  username: string;
  /** bcrypt of the password, or NO_PASSWORD for an account registered without one. */
  password_hash: string;
  /** Comma-separated authorities, e.g. `ROLE_USER,ROLE_ADMIN`. */
  roles: string;
  /** usernameKey(username), unique: sign-in finds an account by it. */
  username_key: string | null;
  /**
   * Raised by every password change. Tokens carry the version they were issued under; tokens
   * of an older version are refused, so a password change revokes them all at once.
   */
  token_version: Generated<number>;
}

/**
 * One sign-in (password grant) and every refresh token descended from it. Only the newest
 * refresh token of a family may be used; presenting an older one (a copy someone kept)
 * revokes the family, and with it every access token issued from it.
 */
export interface TokenFamilyTable {
  id: string;
  username: string;
  /** The jti of the family's one usable refresh token. */
  refresh_id: string;
  /** 1 once revoked. */
  revoked: Generated<number>;
  /** When its last refresh token expires (epoch ms); past it the row is of no use. */
  expires_at: number;
}

/** Failed sign-ins per username key (`user:…`) and per client address (`addr:…`). */
export interface LoginThrottleTable {
  key: string;
  /** Failures in a row, forgotten a while after the latest. */
  failures: number;
  last_failure_at: number;
  /** Until when (epoch ms) sign-ins are refused; 0 when not locked. */
  blocked_until: number;
}

export interface SigningKeyTable {
  id: string;
  /** The private JWK as JSON: tokens stay valid across restarts and replicas. */
  jwk: string;
  created_at: number;
}

export interface AuthDB {
  credential: CredentialTable;
  signing_key: SigningKeyTable;
  token_family: TokenFamilyTable;
  login_throttle: LoginThrottleTable;
}

export const authDatabase = database<AuthDB>({
  migrations: {
    '001_init': async (db: Kysely<any>) => {
      await db.schema
        .createTable('credential')
        .addColumn('username', 'varchar(50)', (c) => c.primaryKey())
        .addColumn('password_hash', 'varchar(100)', (c) => c.notNull())
        .addColumn('roles', 'varchar(200)', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('signing_key')
        .addColumn('id', 'varchar(20)', (c) => c.primaryKey())
        .addColumn('jwk', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
    },
    '002_username_key': async (db: Kysely<any>) => {
      await keyExistingUsernames(db, 'credential', 'username');
    },
    '003_token_version': async (db: Kysely<any>) => {
      await db.schema.alterTable('credential').addColumn('token_version', 'integer', (c) => c.notNull().defaultTo(0)).execute();
    },
    '004_token_family': async (db: Kysely<any>) => {
      await db.schema
        .createTable('token_family')
        .addColumn('id', 'varchar(36)', (c) => c.primaryKey())
        .addColumn('username', 'varchar(50)', (c) => c.notNull())
        .addColumn('refresh_id', 'varchar(36)', (c) => c.notNull())
        .addColumn('revoked', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('token_family_username').on('token_family').column('username').execute();
    },
    '005_login_throttle': async (db: Kysely<any>) => {
      await db.schema
        .createTable('login_throttle')
        .addColumn('key', 'text', (c) => c.primaryKey())
        .addColumn('failures', 'integer', (c) => c.notNull())
        .addColumn('last_failure_at', 'bigint', (c) => c.notNull())
        .addColumn('blocked_until', 'bigint', (c) => c.notNull())
        .execute();
    },
  },
});

/**
 * The stored hash of an account registered without a password (Fenix accepts those and
 * stores an empty one). It is no bcrypt hash, so no password, the empty one included, matches it.
 */
export const NO_PASSWORD = '';

export function parseRoles(roles: string): string[] {
  return roles.split(',').filter(Boolean);
}

/**
 * The demo administrator's credentials. Clients send this string (the bookstore's front end
 * hashes the typed password on the client); only its bcrypt hash is stored.
 */
export const demoCredential = { username: 'icyfenix', password: 'MFfTW3uNI4eqhwDkG7HP9p2mzEUu/r2', roles: ['ROLE_USER', 'ROLE_ADMIN'] };
