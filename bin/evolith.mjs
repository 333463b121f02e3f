#!/usr/bin/env node
// @ts-check
/**
 * The `evolith` command's entry. Before anything else loads (nothing but Node's own modules
 * here), it checks that this platform and this Node are ones Evolith supports — package.json's
 * "os" and "engines" say which — so that an unsupported one gets one clear line instead of a
 * failure deep inside a dependency (a native module, a loader hook Node lacks).
 * EVOLITH_UNSUPPORTED_PLATFORM=1 skips the check, to try anyway.
 */
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

/** `[major, minor, patch]` of a version such as 20.11.0. @param {string} version */
const parts = (version) => version.split('.').map((n) => Number.parseInt(n, 10) || 0);

/** Why this platform is not supported, or undefined. */
function unsupported() {
  const os = /** @type {string[]} */ (pkg.os ?? []);
  if (os.length > 0 && !os.includes(process.platform)) {
    const names = { linux: 'Linux', darwin: 'macOS', win32: 'Windows' };
    const supported = os.map((o) => names[/** @type {keyof typeof names} */ (o)] ?? o).join(' and ');
    return `${names[/** @type {keyof typeof names} */ (process.platform)] ?? process.platform} is not supported: Evolith runs on ${supported}${process.platform === 'win32' ? ' (on Windows, use WSL 2)' : ''}. Set EVOLITH_UNSUPPORTED_PLATFORM=1 to try anyway.`;
  }
  const minimum = /^>=\s*([\d.]+)$/.exec(pkg.engines?.node ?? '')?.[1];
  if (minimum) {
    const have = parts(process.versions.node);
    const need = parts(minimum);
    const older = need.findIndex((n, i) => (have[i] ?? 0) !== n);
    if (older !== -1 && (have[older] ?? 0) < (need[older] ?? 0)) {
      return `Node.js ${process.versions.node} is too old: Evolith needs Node.js ${minimum} or newer.`;
    }
  }
  return undefined;
}

const problem = process.env.EVOLITH_UNSUPPORTED_PLATFORM === '1' ? undefined : unsupported();
if (problem) {
  process.stderr.write(`evolith: ${problem}\n`);
  process.exit(1);
}
await import('./cli.mjs');
