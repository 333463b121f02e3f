/**
 * bench:cli — how long `evolith` takes to answer what needs no app: `--version`, a wrong option,
 * a missing app directory. Baseline, measured in the same run: a bare `node -e 0`, the floor
 * no command can go below. For comparison, the start of a command that loads the TypeScript
 * loader and the runtime (what every invocation paid before arguments were parsed first).
 * Target: an argument error answers in well under a second.
 */
import { spawnSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { median, printTable } from './support/stats.js';

const ROUNDS = Number(process.env.ROUNDS ?? 15);
const REPRODUCE = `ROUNDS=${ROUNDS} npm run bench:cli`;
const root = resolve(import.meta.dirname, '..');
const bin = join(root, 'bin', 'evolith.mjs');

const contenders: { name: string; args: string[]; code: number }[] = [
  { name: 'node -e 0 (baseline)', args: ['-e', '0'], code: 0 },
  { name: 'evolith --version', args: [bin, '--version'], code: 0 },
  { name: 'evolith --bogus', args: [bin, '--bogus'], code: 2 },
  { name: 'evolith run no/such/app', args: [bin, 'run', 'no/such/app'], code: 2 },
  {
    name: 'tsx + the runtime loaded (before)',
    args: [
      '--input-type=module',
      '-e',
      `const { register } = await import('tsx/esm/api'); register();
       await import(${JSON.stringify(join(root, 'src/deploy/monolith.ts'))});
       await import(${JSON.stringify(join(root, 'src/deploy/microservices/control-plane.ts'))});`,
    ],
    code: 0,
  },
];

function once(args: string[], expected: number): number {
  const started = process.hrtime.bigint();
  const r = spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8' });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (r.status !== expected) throw new Error(`${args.join(' ')} exited ${r.status}, expected ${expected}:\n${r.stderr}`);
  return ms;
}

console.log(`bench:cli — reproduce with: ${REPRODUCE}`);
const times = new Map(contenders.map((c) => [c.name, [] as number[]]));
// Interleaved: every round runs each contender once, so a busy moment hits them all alike.
for (let round = 0; round < ROUNDS; round++) for (const c of contenders) times.get(c.name)!.push(once(c.args, c.code));
const base = median(times.get(contenders[0]!.name)!);
printTable(`wall time from spawn to exit, median of ${ROUNDS} rounds`, [
  ['command', 'median', 'p90', 'over baseline'],
  ...contenders.map((c) => {
    const t = [...times.get(c.name)!].sort((a, b) => a - b);
    const m = median(t);
    return [c.name, `${m.toFixed(0)} ms`, `${t[Math.floor(t.length * 0.9)]!.toFixed(0)} ms`, `+${(m - base).toFixed(0)} ms (${(m / base).toFixed(2)}×)`];
  }),
]);
