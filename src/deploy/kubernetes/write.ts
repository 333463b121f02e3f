/**
 * The output directory of `evolith deploy kubernetes`: written whole on every run, kept apart
 * from anything else (a directory that holds files evolith did not generate is refused), and
 * home of the deployment's authority, so that running the command again issues credentials the
 * pods already running trust.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { DeploymentAuthority, type AuthorityKeys } from '../../auth/credentials.js';
import { ConfigError } from '../../kernel/errors.js';
import { GENERATED_MARKER, type KubernetesManifests } from './manifests.js';

/** Never applied: the authority's private keys (`.gitignore` lists it). */
export const AUTHORITY_FILE = '.authority.json';
/** Files holding secrets: readable by their owner only. */
const PRIVATE_FILES = new Set([AUTHORITY_FILE, 'secrets.yaml']);

interface SavedAuthority extends AuthorityKeys {
  readonly version: 1;
  /** The in-cluster PostgreSQL's password (--with-backends): its data volume keeps the first one. */
  readonly backendPassword: string;
}

export interface OutputAuthority {
  readonly authority: DeploymentAuthority;
  readonly backendPassword: string;
  /** True when this run made it (first run, or `--new-authority`). */
  readonly created: boolean;
}

/** Whether `dir` holds output of this command (its kustomization.yaml starts with the marker). */
function generatedHere(dir: string): boolean {
  const file = join(dir, 'kustomization.yaml');
  return existsSync(file) && readFileSync(file, 'utf8').split('\n', 1)[0] === GENERATED_MARKER;
}

/**
 * Checks that `dir` may be written: absent, empty, or this command's own output. Throws a
 * ConfigError otherwise, before anything is generated.
 */
export function checkOutputDirectory(dir: string): void {
  const path = resolve(dir);
  if (!existsSync(path)) return;
  if (!statSync(path).isDirectory()) throw new ConfigError(`--out ${path} is a file, not a directory`);
  if (readdirSync(path).length === 0 || generatedHere(path)) return;
  throw new ConfigError(
    `--out ${path} is not empty and holds no output of evolith deploy kubernetes (no generated kustomization.yaml): give a new or empty directory, or the one an earlier run wrote`,
  );
}

/** The authority kept in `dir`, or a new one (first run, or `fresh`). */
export function outputAuthority(dir: string, fresh = false): OutputAuthority {
  const file = join(resolve(dir), AUTHORITY_FILE);
  if (!fresh && existsSync(file)) {
    let saved: SavedAuthority;
    try {
      saved = JSON.parse(readFileSync(file, 'utf8')) as SavedAuthority;
      if (saved.version !== 1 || typeof saved.backendPassword !== 'string') throw new TypeError('not a saved authority of this version');
      return { authority: DeploymentAuthority.fromKeys(saved), backendPassword: saved.backendPassword, created: false };
    } catch (err) {
      throw new ConfigError(`${file} cannot be read (${(err as Error).message}): restore it, or give --new-authority (every pod must then restart with new credentials)`);
    }
  }
  return { authority: new DeploymentAuthority(), backendPassword: randomBytes(18).toString('base64url'), created: true };
}

/**
 * Writes every file of the manifests and the authority into `dir`, after removing the files an
 * earlier run generated there (a group that is gone leaves no stale manifest). Returns the
 * written paths, relative to `dir`, sorted.
 */
export function writeOutput(dir: string, manifests: KubernetesManifests, authority: OutputAuthority): string[] {
  const path = resolve(dir);
  checkOutputDirectory(path);
  mkdirSync(path, { recursive: true });
  if (generatedHere(path)) {
    const previous = YAML.parse(readFileSync(join(path, 'kustomization.yaml'), 'utf8')) as { resources?: unknown };
    const stale = [...(Array.isArray(previous?.resources) ? previous.resources : []), 'Dockerfile', '.dockerignore', '.gitignore', 'kustomization.yaml'];
    // Only plain names: a hand-edited kustomization must not make this delete outside the directory.
    for (const f of stale) if (typeof f === 'string' && /^[A-Za-z0-9._-]+$/.test(f)) rmSync(join(path, f), { force: true });
  }
  const saved: SavedAuthority = { version: 1, ...authority.authority.exportKeys(), backendPassword: authority.backendPassword };
  const files: Record<string, string> = { ...manifests.files, [AUTHORITY_FILE]: `${JSON.stringify(saved, null, 2)}\n` };
  for (const [name, text] of Object.entries(files)) {
    const file = join(path, name);
    writeFileSync(file, text, { mode: PRIVATE_FILES.has(name) ? 0o600 : 0o644 });
    // An existing file keeps its mode on write: make the private ones private whatever they were.
    if (PRIVATE_FILES.has(name)) chmodSync(file, 0o600);
  }
  return Object.keys(files).sort();
}
