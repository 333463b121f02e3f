/**
 * `require` for packages Evolith loads by path at run time (a worker thread's program, for one).
 * Resolved from Evolith's own code, as its imports are: in a bundle (see deploy/bundle.ts) the
 * code runs from the app's directory, where those packages may not be (a linked Evolith keeps
 * them beside itself), so the bundle's entry records where Evolith's code lives before loading it.
 */
import { createRequire } from 'node:module';
import { join } from 'node:path';

/** Set by a bundle's entry: the directory of the Evolith code it was built from. */
export const EVOLITH_CODE_DIR = Symbol.for('evolith.codeDir');

export function packageRequire(): NodeJS.Require {
  const dir = (globalThis as Record<symbol, unknown>)[EVOLITH_CODE_DIR];
  return createRequire(typeof dir === 'string' ? join(dir, 'index.js') : import.meta.url);
}
