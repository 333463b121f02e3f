import { ConfigError } from 'evolith';

export const DEFAULT_EXPIRES_MS = 2 * 60 * 1000;

/** `config.payment.paymentExpiresMs` from the topology file: how long a payment waits for its buyer. */
export function paymentExpiresMs(config: Readonly<Record<string, unknown>>): number {
  const value = config.paymentExpiresMs;
  if (value === undefined) return DEFAULT_EXPIRES_MS;
  const ms = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  if (typeof ms !== 'number' || !Number.isInteger(ms) || ms <= 0) {
    throw new ConfigError(`config.payment.paymentExpiresMs must be a positive whole number of milliseconds, not ${JSON.stringify(value)}`);
  }
  return ms;
}
