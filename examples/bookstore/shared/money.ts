/**
 * Money is stored as whole cents so sums and debits are exact; the API speaks in yuan with
 * two decimals (129.0, 12.5), as the bookstore's clients expect.
 */
export function toCents(amount: number): number {
  return Math.round(amount * 100);
}

export function fromCents(cents: number): number {
  return Number(cents) / 100;
}
