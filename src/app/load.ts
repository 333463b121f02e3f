import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError } from '../kernel/errors.js';
import type { AppDefinition } from './define.js';

const APP_ENTRIES = ['app.ts', 'app.js', 'index.ts', 'index.js'];

/** The file an app directory's app is exported from by default (app.ts, then index.ts, …). */
export function appEntry(appDir: string): string {
  if (!existsSync(appDir)) throw new ConfigError(`app directory ${appDir} does not exist`);
  const entry = APP_ENTRIES.map((f) => join(appDir, f)).find((f) => existsSync(f));
  if (!entry) throw new ConfigError(`no app entry in ${appDir}: expected one of ${APP_ENTRIES.join(', ')}`);
  return entry;
}

/** Checks that a module's default export is an app. */
export function asApp(mod: { default?: unknown }, entry: string): AppDefinition {
  const app = mod.default as AppDefinition | undefined;
  if (!app || app.kind !== 'app') throw new ConfigError(`${entry} must export default defineApp({...})`);
  return app;
}

/** Set once a TypeScript loader is registered in this process (bin/loader.mjs sets it too). */
const LOADER = Symbol.for('evolith.typescript-loader');

/**
 * Makes `import()` of a TypeScript file work: registers tsx once per process. The repository's
 * own command has done so before anything loads; an installed package runs plain JavaScript
 * and registers it here, only when an app written in TypeScript is loaded.
 */
async function useTypeScript(): Promise<void> {
  const global = globalThis as { [LOADER]?: boolean };
  if (global[LOADER]) return;
  const { register } = await import('tsx/esm/api');
  register();
  global[LOADER] = true;
}

/** Loads the app an app directory exports by default. */
export async function loadApp(appDir: string): Promise<AppDefinition> {
  const entry = appEntry(appDir);
  if (/\.[cm]?tsx?$/.test(entry)) await useTypeScript();
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(entry).href)) as { default?: unknown };
  } catch (err) {
    // Outside an ESM package, TypeScript files load as CommonJS and fail with a riddle instead.
    if ((err as NodeJS.ErrnoException).code === 'ERR_REQUIRE_CYCLE_MODULE' || /require\(\) ES Module/.test(String(err))) {
      throw new ConfigError(`${entry} could not be loaded as an ES module: put a package.json with "type": "module" in ${appDir} or a parent directory`);
    }
    throw err;
  }
  return asApp(mod, entry);
}
