/**
 * The package as a team gets it: `npm pack` (which builds dist/), installed into a new project
 * from the tarball, then used from TypeScript (checked by tsc against the installed
 * declarations), from plain JavaScript under plain Node (no TypeScript loader), and through the
 * installed `evolith` command.
 *
 * Then `evolith init` from the installed command, and the new app's own test and `npm start`.
 *
 * Dependencies come from the npm cache (--prefer-offline). Install scripts are skipped: the one
 * that matters, better-sqlite3's native addon, is the one this repository already built for this
 * Node (compiling SQLite again would test better-sqlite3's install, not Evolith's package).
 */
import { execFile, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';

const run = promisify(execFile);
const root = resolve(import.meta.dirname, '../..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string; devDependencies: Record<string, string> };
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
// A clean environment for npm: the one running these tests (npm test) must not leak its settings.
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)));

const APP = `import { defineContract, implement, defineApp, route, z, NotFoundError, type MethodOutput } from 'evolith';

const books = defineContract({
  name: 'books',
  version: '1.0.0',
  methods: { find: { input: z.object({ id: z.number().int() }), output: z.object({ id: z.number(), title: z.string() }) } },
});
const service = implement(books, {
  handlers: {
    async find({ id }) {
      if (id < 0) throw new NotFoundError('no such book');
      return { id, title: 'Dune' };
    },
  },
});
export default defineApp({ name: 'shelf', services: [service], edge: { routes: [route('GET /books/:id', books.methods.find)] } });
`;

let dir: string;
let project: string;
let tarball: string;
let files: string[];

async function sh(command: string, args: string[], cwd: string, timeout = 180_000): Promise<{ stdout: string; stderr: string }> {
  try {
    return await run(command, args, { cwd, env: { ...env, NO_COLOR: '1' }, timeout, maxBuffer: 32 * 1024 * 1024 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${command} ${args.join(' ')} failed in ${cwd}: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
  }
}

/** Makes the installed better-sqlite3 usable: this repository's build of the addon when the versions match. */
async function provideSqliteAddon(): Promise<void> {
  const version = (p: string) => (JSON.parse(readFileSync(join(p, 'node_modules/better-sqlite3/package.json'), 'utf8')) as { version: string }).version;
  const addon = 'node_modules/better-sqlite3/build/Release/better_sqlite3.node';
  if (existsSync(join(root, addon)) && version(root) === version(project)) {
    mkdirSync(join(project, 'node_modules/better-sqlite3/build/Release'), { recursive: true });
    copyFileSync(join(root, addon), join(project, addon));
  } else {
    await sh(npm, ['rebuild', 'better-sqlite3'], project, 600_000);
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'evolith-pack-'));
  const packed = JSON.parse((await sh(npm, ['pack', '--json', '--pack-destination', dir], root)).stdout) as { filename: string; files: { path: string }[] }[];
  tarball = join(dir, packed[0]!.filename);
  files = packed[0]!.files.map((f) => f.path);
  project = join(dir, 'project');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'adopter', private: true, type: 'module' }, null, 2));
  await sh(npm, ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', tarball, `@types/node@${pkg.devDependencies['@types/node']}`, `vitest@${pkg.devDependencies.vitest}`], project);
  await provideSqliteAddon();
}, 600_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the npm package', () => {
  test('the tarball holds the built code, its declarations, the command and the licence, and no tests, benches or sources', () => {
    expect(files).toEqual(expect.arrayContaining(['package.json', 'LICENSE', 'bin/evolith.mjs', 'bin/cli.mjs', 'bin/loader.mjs', 'dist/index.js', 'dist/index.d.ts', 'dist/testing/index.js', 'dist/testing/index.d.ts']));
    expect(files.filter((f) => /\.test(-d)?\.|test-helpers|(^|\/)(bench|test|src|examples)\//.test(f))).toEqual([]);
    expect(files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts'))).toEqual([]);
    expect(readFileSync(join(project, 'node_modules/evolith/LICENSE'), 'utf8')).toContain('Apache License\n                           Version 2.0, January 2004');
  });

  test('a TypeScript project type-checks against the installed declarations', async () => {
    writeFileSync(
      join(project, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, types: ['node'] }, include: ['check.ts'] }),
    );
    writeFileSync(
      join(project, 'check.ts'),
      `${APP}import { startServices } from 'evolith/testing';

const local = await startServices([service]);
const found: MethodOutput<typeof books.methods.find> = await local.client(books).find({ id: 1 });
const title: string = found.title;
// @ts-expect-error the input is checked against the contract: id is a number
await local.client(books).find({ id: 'one' });
// @ts-expect-error the output is typed: there is no author
found.author;
await local.stop();
export { title };
`,
    );
    // Clean, so the declarations resolve and agree with the code; and not `any`: each @ts-expect-error
    // above must meet an error, or tsc reports it as unused.
    const checked = await sh(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], project).catch((err: Error) => err);
    expect(checked instanceof Error ? checked.message : '').toBe('');
  }, 180_000);

  test('plain JavaScript runs under plain Node: defines a service and calls it in the process', async () => {
    writeFileSync(
      join(project, 'plain.mjs'),
      `import { defineContract, implement, database, z, ValidationError } from 'evolith';
import { startServices } from 'evolith/testing';

const notes = defineContract({
  name: 'notes',
  version: '1.0.0',
  methods: {
    add: { input: z.object({ text: z.string().min(1) }), output: z.object({ id: z.number(), count: z.number() }) },
  },
});
const service = implement(notes, {
  database: database({ migrations: { '001': (db) => db.schema.createTable('note').addColumn('id', 'integer', (c) => c.primaryKey()).addColumn('text', 'text').execute() } }),
  handlers: {
    async add({ text }, ctx) {
      const row = await ctx.db.insertInto('note').values({ text }).returning('id').executeTakeFirstOrThrow();
      const { count } = await ctx.db.selectFrom('note').select((eb) => eb.fn.countAll().as('count')).executeTakeFirstOrThrow();
      return { id: row.id, count: Number(count) };
    },
  },
});
const local = await startServices([service]);
const client = local.client(notes);
const first = await client.add({ text: 'one' });
const second = await client.add({ text: 'two' });
const invalid = await client.add({ text: '' }).catch((err) => err);
await local.stop();
console.log(JSON.stringify({ first, second, invalid: invalid instanceof ValidationError, loaders: process.execArgv }));
`,
    );
    const { stdout } = await sh(process.execPath, ['plain.mjs'], project);
    expect(JSON.parse(stdout)).toEqual({ first: { id: 1, count: 1 }, second: { id: 2, count: 2 }, invalid: true, loaders: [] });
    expect(existsSync(join(project, 'node_modules/evolith/src'))).toBe(false);
  });

  test('the installed command: --version, and an app written in TypeScript (loaded with tsx)', async () => {
    const version = await sh(npm, ['exec', '--', 'evolith', '--version'], project);
    expect(version.stdout.trim()).toBe(pkg.version);
    mkdirSync(join(project, 'shelf'));
    writeFileSync(join(project, 'shelf/app.ts'), APP);
    const contracts = await sh(npm, ['exec', '--', 'evolith', 'contracts', 'shelf'], project);
    expect(contracts.stdout).toContain('books.find(id: number) → { id: number, title: string }');
  });

  test('evolith init writes an app whose test passes in every architecture and that npm start serves', async () => {
    const created = await sh(npm, ['exec', '--', 'evolith', 'init', 'hello'], project);
    expect(created.stdout).toContain('evolith: created 8 files in hello:');
    const again = await sh(npm, ['exec', '--', 'evolith', 'init', 'hello'], project).catch((err: Error) => err);
    expect(again).toBeInstanceOf(Error);
    expect((again as Error).message).toMatch(/evolith: \S+hello is not empty \(/);
    const app = join(project, 'hello');
    expect(JSON.parse(readFileSync(join(app, 'package.json'), 'utf8')).dependencies).toEqual({ evolith: `^${pkg.version}` });

    // Its dependencies are the project's (installed above): the installed evolith from the tarball, and vitest.
    const tested = await sh(npm, ['test'], app, 300_000);
    // One in-process test, and two over HTTP in each architecture (monolith, microservices, mesh, serverless).
    expect(tested.stdout).toMatch(/Tests\s+9 passed/);
    expect(tested.stdout).toContain('app.test.ts');

    const data = join(dir, 'hello-data');
    const child = spawn(npm, ['start', '--', '--port', '0', '--data', data], { cwd: app, env: { ...env, EVOLITH_LOG_LEVEL: 'warn' }, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (b: Buffer) => (output += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (output += b.toString()));
    const exited = new Promise((done) => child.once('exit', done));
    try {
      const end = Date.now() + 60_000;
      let url: string | undefined;
      while (!url && Date.now() < end && child.exitCode === null) {
        url = /evolith: listening on (http:\/\/\S+)/.exec(output)?.[1];
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(url, output).toBeDefined();
      const reply = await fetch(`${url}/greetings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":"Lin"}' });
      expect(reply.status).toBe(200);
      expect(await reply.json()).toEqual({ message: 'Hello, Lin!', count: 1 });
      expect(readdirSync(data)).toContain('greeter.sqlite');
    } finally {
      // npm start's process group: npm, evolith and anything it started.
      process.kill(-child.pid!, 'SIGTERM');
      await exited;
    }
  }, 420_000);
});
