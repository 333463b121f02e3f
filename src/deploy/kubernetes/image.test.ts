/**
 * What the image's runtime stage has is `npm ci --omit=dev`: a package the pod bundle imports
 * that is only a development dependency works in this checkout and fails in the container. So
 * the bundle the Dockerfile builds is scanned for the packages it imports, and each must be a
 * Node built-in or one of the project's `dependencies`.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { buildPod } from './build.js';

const root = resolve(import.meta.dirname, '../../..');
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** The package a bare import specifier names (`@scope/name/sub` → `@scope/name`). */
function packageOf(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

test("the bookstore's pod bundle imports only built-ins and production dependencies", async () => {
  const out = mkdtempSync(join(tmpdir(), 'evolith-pod-bundle-'));
  dirs.push(out);
  await buildPod(join(root, 'examples/bookstore'), out);
  const files = readdirSync(out, { recursive: true, encoding: 'utf8' }).filter((f) => /\.(m?js)$/.test(f));
  expect(files).toContain('pod.mjs');
  const imported = new Set<string>();
  for (const f of files) {
    const code = readFileSync(join(out, f), 'utf8');
    const patterns = [/^\s*(?:import|export)\b[^'"`;]*?\bfrom\s*["']([^"']+)["']/gm, /^\s*import\s*["']([^"']+)["']/gm, /\bimport\(\s*["']([^"']+)["']\s*\)/g];
    for (const pattern of patterns) for (const m of code.matchAll(pattern)) if (!/^[./]/.test(m[1]!)) imported.add(m[1]!);
  }
  const packages = [...imported].filter((s) => !isBuiltin(s)).map(packageOf);
  // The scan finds the packages the app really uses (a scan that found nothing would prove nothing).
  expect(packages).toEqual(expect.arrayContaining(['fastify', 'kysely', 'pg']));
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  const missing = [...new Set(packages)].filter((p) => !(p in pkg.dependencies)).sort();
  expect(missing, `imported by the pod bundle but not in package.json's dependencies (npm ci --omit=dev leaves them out of the image): ${missing.join(', ')}`).toEqual([]);
}, 120_000);
