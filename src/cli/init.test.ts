import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { appName, init, scaffold } from './init.js';

const root = resolve(import.meta.dirname, '../..');
const evolith = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string; devDependencies: Record<string, string> };
const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'evolith-init-'));
  dirs.push(d);
  return d;
}

describe('evolith init', () => {
  test('examples/hello is exactly what the template writes', () => {
    const files = scaffold('hello', evolith, 'file:../..');
    for (const [path, text] of Object.entries(files)) expect(readFileSync(join(root, 'examples/hello', path), 'utf8'), path).toBe(text);
    const pkg = JSON.parse(files['package.json']!);
    expect(pkg.scripts).toEqual({ start: 'evolith run .', test: 'vitest run' });
    expect(pkg.devDependencies.vitest).toBe(evolith.devDependencies.vitest);
    expect(JSON.parse(scaffold('hello', evolith)['package.json']!).dependencies).toEqual({ evolith: `^${evolith.version}` });
  });

  test('writes the app into a new or empty directory, named after it', () => {
    const base = tmp();
    const written = init(join(base, 'My Shop'), evolith);
    expect(written.map((f) => f.slice(f.indexOf('My Shop') + 'My Shop/'.length)).sort()).toEqual(Object.keys(scaffold('x', evolith)).sort());
    expect(JSON.parse(readFileSync(join(base, 'My Shop/package.json'), 'utf8')).name).toBe('my-shop');
    expect(readFileSync(join(base, 'My Shop/app.ts'), 'utf8')).toContain("name: 'my-shop'");
    mkdirSync(join(base, 'empty'));
    init(join(base, 'empty'), evolith, { name: 'shop' });
    expect(readdirSync(join(base, 'empty')).sort()).toEqual(['.gitignore', 'app.test.ts', 'app.ts', 'contracts', 'evolith.yaml', 'package.json', 'services', 'tsconfig.json']);
  });

  test('refuses a directory that is not empty, a file, and a name npm would not take, changing nothing', () => {
    const base = tmp();
    writeFileSync(join(base, 'notes.txt'), 'mine');
    expect(() => init(base, evolith)).toThrow(`${base} is not empty (notes.txt): choose a new or empty directory`);
    expect(readdirSync(base)).toEqual(['notes.txt']);
    expect(() => init(join(base, 'notes.txt'), evolith)).toThrow('exists and is not a directory');
    expect(() => init(join(base, 'new'), evolith, { name: 'Bad Name' })).toThrow('app name "Bad Name" must start with a lower-case letter');
    expect(readdirSync(base)).toEqual(['notes.txt']);
    expect(appName('/x/2024 Shop!')).toBe('shop');
    expect(appName('/x/123')).toBe('app');
  });
});
