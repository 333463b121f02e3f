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

export const DEFAULT_MAX_HELD_UNITS = 20;

/**
 * `config.payment.maxHeldUnitsPerAccount`: how many units of stock one account may hold frozen
 * in waiting payments at once. Without a limit, one new account with an empty wallet could
 * freeze a book's whole stock for the payment's lifetime, and again when it times out.
 * Administrators, who may set the stock anyway, are not limited.
 */
export function maxHeldUnitsPerAccount(config: Readonly<Record<string, unknown>>): number {
  const value = config.maxHeldUnitsPerAccount;
  if (value === undefined) return DEFAULT_MAX_HELD_UNITS;
  const units = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  if (typeof units !== 'number' || !Number.isInteger(units) || units <= 0) {
    throw new ConfigError(`config.payment.maxHeldUnitsPerAccount must be a positive whole number of units, not ${JSON.stringify(value)}`);
  }
  return units;
}
