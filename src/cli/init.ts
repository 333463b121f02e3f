/**
 * `evolith init <dir>`: a new app with one service — a contract, its handlers with a database,
 * an HTTP route, the topology file and a test that runs the app in every available
 * architecture. examples/hello in the repository is this template's output
 * (`evolith init examples/hello --evolith-version file:../..`).
 */
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { CliError } from './cli-error.js';

export interface InitOptions {
  /** The app's name (package and `defineApp`); default the directory's name. */
  name?: string;
  /** How package.json names the evolith dependency; default `^<this version>`. */
  evolithVersion?: string;
}

interface PackageInfo {
  version: string;
  devDependencies?: Record<string, string>;
}

/** A name npm and `defineApp` accept, from a directory name. */
export function appName(dir: string): string {
  const name = basename(resolve(dir))
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^[^a-z]+/, '')
    .replace(/-+$/, '');
  return name || 'app';
}

/** The files of a new app, by path relative to its directory. */
export function scaffold(name: string, evolith: PackageInfo, evolithVersion = `^${evolith.version}`): Record<string, string> {
  const pkg = {
    name,
    version: '0.1.0',
    private: true,
    type: 'module',
    scripts: { start: 'evolith run .', test: 'vitest run' },
    dependencies: { evolith: evolithVersion },
    devDependencies: { vitest: evolith.devDependencies?.vitest ?? '^4.1.0' },
  };
  return {
    'package.json': JSON.stringify(pkg, null, 2) + '\n',
    '.gitignore': 'node_modules/\ndata/\n.evolith/\n',
    'evolith.yaml': `# Where and how the app runs. Change the architecture here (or with --arch): the code stays the same.
architecture: monolith        # or microservices
port: 8080
data: data                    # one SQLite file per service
`,
    'tsconfig.json':
      JSON.stringify(
        { compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, skipLibCheck: true, noEmit: true }, include: ['**/*.ts'], exclude: ['node_modules', 'data', '.evolith'] },
        null,
        2,
      ) + '\n',
    'contracts/greeter.ts': `import { defineContract, z } from 'evolith';

/** What the greeter answers. A title names the schema in \`evolith contracts\`. */
export const Greeting = z.object({ message: z.string(), count: z.number().int() }).meta({ title: 'Greeting' });

/** The greeter's contract: what callers may ask and what they get back, checked on every call. */
export const greeterContract = defineContract({
  name: 'greeter',
  version: '1.0.0',
  description: 'Greets people and counts how often it greeted each.',
  methods: {
    hello: {
      input: z.object({ name: z.string().trim().min(1, 'name is required').max(40, 'name must be at most 40 characters') }),
      output: Greeting,
      description: 'Greets someone and counts the greeting.',
    },
    greetings: {
      input: z.object({ name: z.string() }),
      output: z.object({ name: z.string(), count: z.number().int() }),
      idempotent: true,
      description: 'How often someone was greeted.',
    },
  },
  events: {
    greeted: z.object({ name: z.string(), count: z.number().int() }),
  },
});
`,
    'services/greeter.ts': `import { database, implement } from 'evolith';
import { greeterContract } from '../contracts/greeter.js';

/** The greeter's own database (every service owns its data). */
interface Tables {
  greeting: { name: string; count: number };
}

export const greeter = implement(greeterContract, {
  database: database<Tables>({
    migrations: {
      '001-greeting': async (db) => {
        await db.schema
          .createTable('greeting')
          .addColumn('name', 'text', (c) => c.primaryKey())
          .addColumn('count', 'integer', (c) => c.notNull())
          .execute();
      },
    },
  }),
  handlers: {
    async hello({ name }, ctx) {
      // The row and the event commit together: subscribers hear of every counted greeting, once.
      return ctx.transaction(async (tx) => {
        const { count } = await tx.db
          .insertInto('greeting')
          .values({ name, count: 1 })
          .onConflict((oc) => oc.column('name').doUpdateSet((eb) => ({ count: eb('greeting.count', '+', 1) })))
          .returning('count')
          .executeTakeFirstOrThrow();
        await tx.emit(greeterContract.events.greeted, { name, count });
        return { message: \`Hello, \${name}!\`, count };
      });
    },
    async greetings({ name }, ctx) {
      const row = await ctx.db.selectFrom('greeting').select('count').where('name', '=', name).executeTakeFirst();
      return { name, count: row?.count ?? 0 };
    },
  },
});
`,
    'app.ts': `import { defineApp, route } from 'evolith';
import { greeterContract } from './contracts/greeter.js';
import { greeter } from './services/greeter.js';

export default defineApp({
  name: '${name}',
  services: [greeter],
  edge: {
    routes: [
      // The body (and path parameters) are the method's input; invalid input is answered with 400.
      route('POST /greetings', greeterContract.methods.hello),
      route('GET /greetings/:name', greeterContract.methods.greetings),
    ],
  },
});
`,
    'app.test.ts': `import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { availableArchitectures, startApp, startServices, type StartedApp } from 'evolith/testing';
import { greeterContract } from './contracts/greeter.js';
import { greeter } from './services/greeter.js';

test('the greeter counts greetings per name (in this process)', async () => {
  const services = await startServices([greeter]);
  try {
    const client = services.client(greeterContract);
    expect(await client.hello({ name: 'Ada' })).toEqual({ message: 'Hello, Ada!', count: 1 });
    expect(await client.hello({ name: ' Ada ' })).toEqual({ message: 'Hello, Ada!', count: 2 });
    expect(await client.greetings({ name: 'Ada' })).toEqual({ name: 'Ada', count: 2 });
    expect(await client.greetings({ name: 'Grace' })).toEqual({ name: 'Grace', count: 0 });
    await expect(client.hello({ name: '' })).rejects.toThrow('name is required');
  } finally {
    await services.stop();
  }
});

// The same HTTP test in every architecture: the app runs as \`evolith run --arch <architecture>\` does.
describe.each(availableArchitectures)('over HTTP, as %s', (architecture) => {
  let app: StartedApp;
  beforeAll(async () => {
    app = await startApp(import.meta.dirname, { architecture });
  }, 120_000);
  afterAll(() => app?.stop(), 30_000);

  const greet = (body: unknown) =>
    fetch(\`\${app.url}/greetings\`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  test('POST /greetings greets and counts; GET /greetings/:name tells the count', async () => {
    expect(await (await greet({ name: 'Ada' })).json()).toEqual({ message: 'Hello, Ada!', count: 1 });
    const second = await greet({ name: 'Ada' });
    expect(second.status).toBe(200);
    expect(await second.json()).toEqual({ message: 'Hello, Ada!', count: 2 });
    const count = await fetch(\`\${app.url}/greetings/Ada\`);
    expect(await count.json()).toEqual({ name: 'Ada', count: 2 });
  }, 30_000);

  test('invalid input is answered with 400 and the reason', async () => {
    const reply = await greet({ name: 'x'.repeat(41) });
    expect(reply.status).toBe(400);
    expect(JSON.stringify(await reply.json())).toContain('name must be at most 40 characters');
  }, 30_000);
});
`,
  };
}

/** `evolith init`: writes a new app into `dirArg`, which must not exist or be empty. Returns what it wrote. */
export function init(dirArg: string, evolith: PackageInfo, options: InitOptions = {}): string[] {
  const dir = resolve(dirArg);
  if (existsSync(dir)) {
    if (!statSync(dir).isDirectory()) throw new CliError(`${dir} exists and is not a directory`);
    const present = readdirSync(dir);
    if (present.length > 0) {
      throw new CliError(`${dir} is not empty (${present.slice(0, 3).join(', ')}${present.length > 3 ? ', …' : ''}): choose a new or empty directory`);
    }
  }
  const name = options.name ?? appName(dir);
  if (!/^[a-z][a-z0-9-]*$/.test(name)) throw new CliError(`app name "${name}" must start with a lower-case letter and hold only lower-case letters, digits and dashes`);
  const files = scaffold(name, evolith, options.evolithVersion);
  for (const [path, text] of Object.entries(files)) {
    const file = join(dir, path);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, text, { flag: 'wx' });
  }
  return Object.keys(files).map((f) => relative(process.cwd(), join(dir, f)));
}
