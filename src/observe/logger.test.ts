import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { prettyLineFormatter, prettyLogs } from './logger.js';

const loggerModule = fileURLToPath(new URL('./logger.ts', import.meta.url));

/** Logs one line from a fresh process (stdout is a pipe there) and returns what it wrote. */
function logFromChild(env: Record<string, string>): string {
  const script = `import { createLogger } from ${JSON.stringify(loggerModule)};
createLogger({ app: 'shop' }).info({ order: 7 }, 'order placed');`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, NO_COLOR: '1', ...env },
    encoding: 'utf8',
  });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.trim();
}

describe('createLogger', () => {
  const saved = process.env.EVOLITH_LOG_FORMAT;
  afterEach(() => {
    if (saved === undefined) delete process.env.EVOLITH_LOG_FORMAT;
    else process.env.EVOLITH_LOG_FORMAT = saved;
  });

  it('writes JSON lines when its output is not a terminal', () => {
    const line = logFromChild({ EVOLITH_LOG_FORMAT: '' });
    const obj = JSON.parse(line) as Record<string, unknown>;
    expect(obj).toMatchObject({ app: 'shop', order: 7, msg: 'order placed', level: 30 });
  });

  it('writes readable lines when asked to, whatever the output is', () => {
    const line = logFromChild({ EVOLITH_LOG_FORMAT: 'pretty' });
    expect(line).not.toMatch(/^\{/);
    expect(line).toMatch(/INFO.*order placed/);
    expect(line).toContain('"order":7');
  });

  it('EVOLITH_LOG_FORMAT decides over the terminal check', () => {
    process.env.EVOLITH_LOG_FORMAT = 'json';
    expect(prettyLogs()).toBe(false);
    process.env.EVOLITH_LOG_FORMAT = 'pretty';
    expect(prettyLogs()).toBe(true);
  });
});

describe('prettyLineFormatter', () => {
  it("turns another process's JSON log line into a readable one and passes other lines through", () => {
    const format = prettyLineFormatter();
    const json = JSON.stringify({ level: 50, time: Date.now(), app: 'shop', msg: 'database unreachable' });
    const out = format(json);
    expect(out).toMatch(/ERROR.*database unreachable/);
    expect(out).not.toContain('\n');
    expect(format('evolith: warehouse#0 serving on 127.0.0.1:4000')).toBe('evolith: warehouse#0 serving on 127.0.0.1:4000');
    expect(format('{not json')).toBe('{not json');
    expect(format('{"no":"level"}')).toBe('{"no":"level"}');
  });
});
