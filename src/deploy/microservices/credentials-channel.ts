/**
 * How a worker gets its credential: the control plane sends it over the worker's private IPC
 * channel when the worker starts (never in its environment or on disk, where other processes
 * could read it), and sends a renewed token well before it expires.
 */
import type { CredentialBundle } from '../../auth/credentials.js';
import { ConfigError } from '../../kernel/errors.js';

export const CREDENTIALS = 'evolith:credentials';
export const RENEWAL = 'evolith:credential-renewal';

export interface CredentialsMessage {
  type: typeof CREDENTIALS;
  bundle: CredentialBundle;
}

export interface RenewalMessage {
  type: typeof RENEWAL;
  token: string;
}

/** A credential lives this long; the control plane renews it at a third of that. */
export const CREDENTIAL_TTL_MS = 60 * 60 * 1000;

/** In a worker: waits for the credential its supervisor sends at start. */
export function receiveCredentials(timeoutMs = 10_000): Promise<CredentialBundle> {
  if (!process.send) {
    return Promise.reject(new ConfigError('a microservices worker must be started by its control plane (`evolith run --arch microservices`): it receives its credentials from it'));
  }
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      process.off('message', onMessage);
      reject(new ConfigError(`no credentials from the control plane within ${timeoutMs} ms`));
    }, timeoutMs);
    const onMessage = (m: unknown) => {
      if ((m as CredentialsMessage | undefined)?.type !== CREDENTIALS) return;
      clearTimeout(timer);
      process.off('message', onMessage);
      resolve((m as CredentialsMessage).bundle);
    };
    process.on('message', onMessage);
  });
}

/** In a worker: hands every renewed token the control plane sends to `apply`. */
export function onRenewal(apply: (token: string) => void): () => void {
  const listener = (m: unknown) => {
    if ((m as RenewalMessage | undefined)?.type === RENEWAL) apply((m as RenewalMessage).token);
  };
  process.on('message', listener);
  return () => process.off('message', listener);
}
