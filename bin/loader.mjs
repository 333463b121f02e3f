// @ts-check
/**
 * Where Evolith's own code comes from, and the loader for TypeScript.
 *
 * In a checkout of the repository (src/ beside bin/) everything runs from the TypeScript
 * sources: tsx compiles them as they load, and `import ... from 'evolith'` resolves to
 * src/index.ts through the package's "evolith-source" export condition. An installed package
 * has no src/: it runs the JavaScript in dist/ with plain Node, and registers tsx only when it
 * loads an app written in TypeScript (see src/app/load.ts).
 */
import { existsSync } from 'node:fs';
import { register as registerHooks } from 'node:module';

/** True in a checkout of the repository, false in an installed package. */
export const fromSource = existsSync(new URL('../src/index.ts', import.meta.url));

/** The module holding the CLI's commands, as this copy of Evolith runs it. */
export const commandsModule = new URL(fromSource ? '../src/cli/commands.ts' : '../dist/cli/commands.js', import.meta.url).href;

/** Set once a TypeScript loader is registered in this process (src/app/load.ts checks it too). */
const LOADER = Symbol.for('evolith.typescript-loader');

// Adds the "evolith-source" condition to every resolution: `evolith` then means src/index.ts.
// `evolith` and `evolith/...` resolve from this checkout's root, so an example with a package.json
// of its own (examples/hello) runs this checkout too, installed or not.
const root = new URL('../package.json', import.meta.url).href;
const sourceCondition = `export async function resolve(specifier, context, next) {
  const own = specifier === 'evolith' || specifier.startsWith('evolith/');
  return next(specifier, { ...context, ...(own ? { parentURL: ${JSON.stringify(root)} } : {}), conditions: [...context.conditions, 'evolith-source'] });
}`;

/** Registers tsx (once per process); in the repository, also the condition that selects the sources. */
export async function useTypeScript() {
  const global = /** @type {{ [LOADER]?: boolean }} */ (globalThis);
  if (global[LOADER]) return;
  const { register } = await import('tsx/esm/api');
  register();
  // Registered after tsx, so it runs first and tsx sees the extra condition.
  if (fromSource) registerHooks(`data:text/javascript,${encodeURIComponent(sourceCondition)}`);
  global[LOADER] = true;
}
