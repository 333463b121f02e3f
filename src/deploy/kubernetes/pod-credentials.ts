/**
 * A pod's credential: the deployment's authority issued it when the manifests were generated,
 * and Kubernetes mounts it from the workload's Secret (`bundle.json`). It is read at start.
 * While the pod runs, the Secret may be updated: a renewed token of the same credential (same
 * holder, key and id, a later expiry) is taken at once; a different credential (a new key, a
 * new authority) cannot replace the one every open connection was proven with, so the pod says
 * that it needs a restart and keeps the one it has.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { CredentialBundle } from '../../auth/credentials.js';
import type { InternalPlane } from '../../auth/internal-plane.js';
import { ConfigError } from '../../kernel/errors.js';
import { watchDirectoryDebounced } from '../directory-watch.js';

/** Reads and checks the shape of a credential bundle file; a ConfigError names what is wrong. */
export function readCredentialBundle(file: string): CredentialBundle {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`the credentials file ${file} cannot be read: ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`the credentials file ${file} is not JSON: ${(err as Error).message}`);
  }
  const b = value as Partial<Record<keyof CredentialBundle, unknown>> & { trust?: Record<string, unknown> };
  const problems: string[] = [];
  if (typeof b !== 'object' || b === null) problems.push('it must hold an object');
  else {
    if (typeof b.token !== 'string') problems.push('token is missing');
    if (typeof b.privateKey !== 'string') problems.push('privateKey is missing');
    if (b.assertionKey !== undefined && typeof b.assertionKey !== 'string') problems.push('assertionKey must be a string');
    if (typeof b.trust !== 'object' || b.trust === null) problems.push('trust is missing');
    else for (const k of ['deployment', 'authority', 'assertions']) if (typeof b.trust[k] !== 'string') problems.push(`trust.${k} is missing`);
  }
  if (problems.length > 0) throw new ConfigError(`the credentials file ${file} is not a credential bundle: ${problems.join('; ')}`);
  return value as CredentialBundle;
}

export interface CredentialWatch {
  close(): void;
}

/**
 * Follows the mounted credentials file (any change in its directory: Kubernetes swaps a
 * `..data` symlink when a Secret changes) and applies renewals to `plane`.
 */
export function watchCredentials(file: string, plane: InternalPlane, log: Logger, debounceMs = 100): CredentialWatch {
  const reread = () => {
    let bundle: CredentialBundle;
    try {
      bundle = readCredentialBundle(file);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'the credentials file changed and cannot be read; keeping the current credential');
      return;
    }
    if (bundle.token === plane.credential.token) return;
    const current = plane.claims;
    let next: ReturnType<InternalPlane['peer']>;
    try {
      next = plane.peer(bundle.token);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'the new credential is not one this deployment issued (a new authority?); restart the pod to take it');
      return;
    }
    if (next.jti !== current.jti || next.key !== current.key) {
      log.error({ holder: next.sub }, 'the credentials file now holds a different credential; restart the pod to take it');
      return;
    }
    try {
      plane.credential.renewed(bundle.token);
      log.info({ expires: new Date(next.exp).toISOString() }, 'took the renewed credential');
    } catch (err) {
      log.error({ err: (err as Error).message }, 'refused a credential renewal');
    }
  };
  return watchDirectoryDebounced(dirname(resolve(file)), () => true, debounceMs, reread);
}
