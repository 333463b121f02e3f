/**
 * The code of an Evolith image: `pod.mjs` (the app, Evolith and the pod entry, bundled by
 * esbuild; packages stay external) and its chunks. The image lays it out as
 *
 *   /app/pod.mjs         the bundle (+ chunks beside it)
 *   /app/app/            the app directory (its evolith.yaml, mesh policy, static files)
 *   /app/node_modules/   the packages, installed by `npm ci --omit=dev`
 *
 * and a local image directory (`buildPodImage`) has the same layout, with the app directory and
 * node_modules linked rather than copied, so that `node <dir>/pod.mjs --app-dir <dir>/app …`
 * runs as the container does.
 */
import { existsSync, lstatSync, mkdirSync, readlinkSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../../kernel/errors.js';
import { buildBundle } from '../bundle.js';
import { CONFIG_EXIT } from './pod-args.js';

const here = fileURLToPath(import.meta.url);
const podEntry = resolve(dirname(here), `pod-main${extname(here)}`);

/** The bundle's file name in an image. */
export const POD_BUNDLE = 'pod.mjs';

/** Writes `<outDir>/pod.mjs` and its chunks for the app in `appDir`; returns the bundle's path. */
export async function buildPod(appDir: string, outDir: string): Promise<string> {
  const app = resolve(appDir);
  if (!existsSync(app) || !statSync(app).isDirectory()) throw new ConfigError(`app directory ${app} does not exist`);
  mkdirSync(outDir, { recursive: true });
  // An app that cannot load is a configuration problem of the image: exit as a pod that cannot start.
  return buildBundle(app, podEntry, 'pod', { outDir: resolve(outDir), loadFailureExit: CONFIG_EXIT });
}

/**
 * The node_modules the bundle's packages resolve from: the nearest above Evolith's own code (the
 * repository's, or the project's that installed Evolith).
 */
export function packagesDir(): string {
  let dir = dirname(here);
  for (;;) {
    const candidate = join(dir, 'node_modules');
    if (existsSync(candidate) && statSync(candidate).isDirectory()) return candidate;
    const parent = dirname(dir);
    if (parent === dir) throw new ConfigError(`no node_modules above ${dirname(here)}: install Evolith's dependencies first`);
    dir = parent;
  }
}

/** Points `link` at `target`, replacing a link that points elsewhere; refuses to replace anything else. */
function linkTo(link: string, target: string): void {
  let existing: ReturnType<typeof lstatSync> | undefined;
  try {
    existing = lstatSync(link);
  } catch {
    existing = undefined;
  }
  if (existing) {
    if (!existing.isSymbolicLink()) throw new ConfigError(`${link} exists and is not a link: remove it, or build the image into another directory`);
    if (resolve(dirname(link), readlinkSync(link)) === target) return;
    rmSync(link);
  }
  symlinkSync(target, link, 'dir');
}

/**
 * A local image directory for the app in `appDir`: `<imageDir>/pod.mjs` (+ chunks), and links
 * `<imageDir>/app` → the app directory and `<imageDir>/node_modules` → the packages' directory.
 * Returns the bundle's path.
 */
export async function buildPodImage(appDir: string, imageDir: string): Promise<string> {
  const dir = resolve(imageDir);
  const bundle = await buildPod(appDir, dir);
  linkTo(join(dir, 'app'), resolve(appDir));
  linkTo(join(dir, 'node_modules'), packagesDir());
  return bundle;
}
