/**
 * Prebuilt JavaScript for the processes a deployment starts. A worker runs one bundle — the
 * app, Evolith and a small entry, compiled by esbuild — instead of compiling TypeScript in every
 * process at start: it starts sooner and holds no compiler in memory. Packages stay external
 * (Node loads them from node_modules as usual); only Evolith is bundled, so that the app's
 * `evolith` and the worker's entry are one copy (from the sources in the repository, from
 * dist/ in an installed package).
 *
 * Bundles are written under `<appDir>/.evolith/build/`, named by a hash of their content, so
 * deployments of the same code share one, and a restarted worker finds the bundle it was
 * started from even after the code has changed. Packages resolve from node_modules above the
 * app directory, as the app's own imports do.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, extname, join, relative, resolve, sep } from 'node:path';
import { isBuiltin } from 'node:module';
import { fileURLToPath } from 'node:url';
import { build, stop as stopEsbuild, type Plugin } from 'esbuild';
import { appEntry } from '../app/load.js';
import { ConfigError } from '../kernel/errors.js';

const here = fileURLToPath(import.meta.url);
// src/index.ts beside these sources in the repository; dist/index.js in an installed package.
const evolithEntry = resolve(dirname(here), '..', `index${extname(here)}`);
/** Bundles nobody has used for this long are removed when a new one is written. */
const STALE_MS = 7 * 24 * 60 * 60 * 1000;

/** The code of this copy of Evolith: src/ in the repository, dist/ in an installed package. */
const evolithCode = resolve(dirname(here), '..');

/**
 * Where a package that Evolith's own code imports lives, found from Evolith's directory as Node
 * would find it for Evolith unbundled; undefined when it cannot be told here.
 */
function evolithDependency(specifier: string): string | undefined {
  const resolveHere = (import.meta as { resolve?: (specifier: string) => string }).resolve;
  if (!resolveHere) return undefined;
  try {
    const url = resolveHere(specifier);
    return url.startsWith('file:') ? fileURLToPath(url) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Bundles `evolith` itself (this copy of it); every other package stays external. The packages
 * Evolith's own code imports are loaded from where Evolith finds them, not from the app's
 * directory: with a linked Evolith (a file: dependency, npm link) they are beside it, not in
 * the app's node_modules.
 */
function bundleEvolith(portable: boolean): Plugin {
  return {
    name: 'evolith',
    setup(b) {
      b.onResolve({ filter: /^evolith$/ }, () => ({ path: evolithEntry }));
      // A portable bundle (an image's) names packages only: they resolve from the
      // node_modules beside it, wherever it is copied to.
      if (portable) return;
      b.onResolve({ filter: /^[^./]/ }, (args) => {
        if (isBuiltin(args.path) || !args.importer.startsWith(evolithCode + sep)) return undefined;
        const path = evolithDependency(args.path);
        return path ? { path, external: true } : undefined;
      });
    },
  };
}

/**
 * Writes (or reuses) the bundle that runs `entryModule`'s `main(app)` for the app in `appDir`;
 * returns the path of its entry file. Code that is imported dynamically (the edge, drivers a
 * topology may not use) goes to chunks of its own, loaded only when a process needs it.
 */
export interface BundleOptions {
  /** The exit code of a process whose app cannot be loaded (default 1). */
  loadFailureExit?: number;
  /** Bundle the app (default); a process of Evolith's own (a mesh proxy) runs `main()` without it. */
  withApp?: boolean;
  /**
   * Write a portable bundle to this directory instead, as `<name>.mjs` and its chunks, for an
   * image: packages are imported by name (from the node_modules beside or above the bundle,
   * wherever it is copied), and Evolith's code directory is the bundle's own. Files of an
   * earlier build in the directory (`.mjs` and their maps) are replaced.
   */
  outDir?: string;
}

export async function buildBundle(appDir: string, entryModule: string, name: string, options: BundleOptions = {}): Promise<string> {
  const withApp = options.withApp ?? true;
  const entry = withApp ? appEntry(appDir) : undefined;
  const portable = options.outDir !== undefined;
  const dir = options.outDir !== undefined ? resolve(options.outDir) : join(appDir, '.evolith', 'build');
  mkdirSync(dir, { recursive: true });
  const work = join(dir, `.${name}-${process.pid}-${randomBytes(4).toString('hex')}`);
  mkdirSync(work);
  try {
    const entryFile = join(work, `${name}.ts`);
    // The app and the packages it needs load when the process starts; one that cannot (a
    // package missing where the process looks, a module that throws) says why in one line and
    // exits with the code that tells its supervisor not to try again.
    const loadFailureExit = options.loadFailureExit ?? 1;
    writeFileSync(
      entryFile,
      [
        ...(portable
          ? ["import { fileURLToPath as evolithPath } from 'node:url';", "(globalThis as any)[Symbol.for('evolith.codeDir')] = evolithPath(new URL('.', import.meta.url));"]
          : [`(globalThis as any)[Symbol.for('evolith.codeDir')] = ${JSON.stringify(evolithCode)};`]),
        'let app: any;',
        'let main: (app: any) => Promise<void>;',
        'try {',
        ...(entry ? [`  app = (await import(${JSON.stringify(entry)})).default;`] : []),
        `  ({ main } = await import(${JSON.stringify(entryModule)}));`,
        '} catch (err) {',
        "  process.stderr.write(`evolith: the app could not be loaded: ${err instanceof Error ? err.message : String(err)}\\n`);",
        `  process.exit(${loadFailureExit});`,
        '}',
        'await main(app);',
        '',
      ].join('\n'),
    );
    let files: { path: string; contents: Uint8Array }[];
    try {
      const out = await build({
        entryPoints: [entryFile],
        outdir: join(work, 'out'),
        bundle: true,
        splitting: true,
        platform: 'node',
        format: 'esm',
        target: 'node20',
        outExtension: { '.js': '.mjs' },
        chunkNames: '[name]-[hash]',
        packages: 'external',
        plugins: [bundleEvolith(portable)],
        sourcemap: 'linked',
        sourcesContent: false,
        keepNames: true,
        write: false,
        logLevel: 'silent',
      });
      files = out.outputFiles;
    } catch (err) {
      stopEsbuild();
      const errors = (err as { errors?: { text: string; location?: { file: string; line: number } }[] }).errors ?? [];
      const lines = errors.map((e) => `  ${e.location ? `${e.location.file}:${e.location.line}: ` : ''}${e.text}`);
      throw new ConfigError(`the app in ${appDir} could not be built:\n${lines.join('\n') || (err as Error).message}`);
    }
    // esbuild keeps a compiler process alive for the next build; a deployment builds once.
    stopEsbuild();
    if (portable) return writePortable(dir, files.map((f) => ({ path: relative(join(work, 'out'), f.path), contents: f.contents })), name);
    const hash = createHash('sha256');
    for (const f of [...files].sort((a, b) => a.path.localeCompare(b.path))) hash.update(relative(work, f.path)).update(f.contents);
    const target = join(dir, `${name}-${hash.digest('hex').slice(0, 16)}`);
    if (!existsSync(target)) {
      const staged = join(work, 'staged');
      for (const f of files) {
        const path = join(staged, relative(join(work, 'out'), f.path));
        mkdirSync(dirname(path), { recursive: true });
        writeFileSync(path, f.contents);
      }
      // Rename: deployments building the same code at once never see half a bundle.
      try {
        renameSync(staged, target);
      } catch (err) {
        if (!existsSync(target)) throw err;
      }
    }
    removeStale(dir, target);
    return join(target, `${name}.mjs`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
/**
 * Writes a portable bundle's files into `dir` (each by a rename, so a process starting from the
 * directory never reads half a file) and removes the bundle files of an earlier build.
 */
function writePortable(dir: string, files: readonly { path: string; contents: Uint8Array }[], name: string): string {
  const keep = new Set(files.map((f) => f.path));
  for (const f of files) {
    const path = join(dir, f.path);
    mkdirSync(dirname(path), { recursive: true });
    const staged = `${path}.${process.pid}.tmp`;
    writeFileSync(staged, f.contents);
    renameSync(staged, path);
  }
  for (const f of readdirSync(dir)) {
    if (!keep.has(f) && /\.mjs(\.map)?$/.test(f)) rmSync(join(dir, f), { force: true });
  }
  return join(dir, `${name}.mjs`);
}

/** Removes bundles not built for a week (a bundle built again is touched). */
function removeStale(dir: string, keep: string): void {
  const now = Date.now();
  utimesSync(keep, new Date(now), new Date(now));
  for (const f of readdirSync(dir)) {
    const path = join(dir, f);
    if (path === keep || f.startsWith('.')) continue;
    try {
      if (now - statSync(path).mtimeMs > STALE_MS) rmSync(path, { recursive: true, force: true });
    } catch {
      /* another deployment removed it first */
    }
  }
}
