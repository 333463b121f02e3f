import { NotSerializableError } from './errors.js';

/**
 * Fails for any value that would not cross a network hop unchanged: functions, symbols,
 * class instances (other than Date and byte arrays), Map/Set, cycles, undefined in arrays,
 * NaN and Infinity. Monolith mode runs it (when enabled) so that a later split never surprises.
 */
export function assertSerializable(value: unknown, what: string): void {
  const problem = findProblem(value, '$', new Set());
  if (problem) throw new NotSerializableError(`${what} would not survive a network hop: ${problem}`, { path: problem });
}

function findProblem(v: unknown, path: string, seen: Set<object>): string | undefined {
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return undefined;
    case 'number':
      return Number.isFinite(v) ? undefined : `${path} is ${v}`;
    case 'undefined':
      return undefined;
    case 'bigint':
      return `${path} is a bigint`;
    case 'function':
      return `${path} is a function`;
    case 'symbol':
      return `${path} is a symbol`;
  }
  if (v === null) return undefined;
  const obj = v as object;
  if (obj instanceof Date) return Number.isNaN(obj.getTime()) ? `${path} is an invalid Date` : undefined;
  if (obj instanceof Uint8Array) return undefined;
  if (seen.has(obj)) return `${path} is a circular reference`;
  seen.add(obj);
  try {
    if (Array.isArray(obj)) {
      for (let i = 0; i < obj.length; i++) {
        if (obj[i] === undefined) return `${path}[${i}] is undefined`;
        const p = findProblem(obj[i], `${path}[${i}]`, seen);
        if (p) return p;
      }
      return undefined;
    }
    const proto = Object.getPrototypeOf(obj);
    if (proto !== Object.prototype && proto !== null) {
      return `${path} is an instance of ${(obj.constructor as { name?: string } | undefined)?.name ?? 'a class'}`;
    }
    for (const key of Object.keys(obj)) {
      const p = findProblem((obj as Record<string, unknown>)[key], `${path}.${key}`, seen);
      if (p) return p;
    }
    if (Object.getOwnPropertySymbols(obj).length > 0) return `${path} has symbol keys`;
    return undefined;
  } finally {
    seen.delete(obj);
  }
}
