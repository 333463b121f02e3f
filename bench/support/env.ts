/** Bench settings from the environment: one reader, so every bench refuses a bad value the same way. */

/** The number in `name` (or `fallback`): positive (or zero with `allowZero`), whole with `integer`; else exits naming it. */
export function envNumber(bench: string, name: string, fallback: number, integer: boolean, allowZero = false): number {
  const raw = process.env[name];
  const v = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isFinite(v) || v < 0 || (!allowZero && v === 0) || (integer && !Number.isInteger(v))) {
    console.error(`${bench}: ${name} must be a positive ${integer ? 'integer' : 'number'}, got ${String(raw)}`);
    process.exit(2);
  }
  return v;
}
