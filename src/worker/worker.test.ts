import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { z } from 'zod';
import { eventually, Kit, silentLog } from '../../test/fixtures/unit-kit.js';
import { defineApp } from '../app/define.js';
import { defineContract } from '../contract/define.js';
import { loadTopology } from '../deploy/topology.js';
import { ConfigError, TimeoutError } from '../kernel/errors.js';
import type { Link, PlacementProvider } from '../kernel/placement.js';
import { implement } from '../kernel/service.js';
import { startWorker, type RunningWorker } from './worker.js';

const kit = new Kit();
const running: RunningWorker[] = [];
afterEach(async () => {
  for (const w of running.splice(0)) await w.stop();
  await kit.cleanup();
});

const clock = defineContract({
  name: 'clock',
  version: '1',
  methods: { nap: { input: z.object({ ms: z.number() }), output: z.number() } },
});
const front = defineContract({
  name: 'front',
  version: '1',
  methods: { napVia: { input: z.object({ ms: z.number() }), output: z.number() } },
});
const clockService = implement(clock, {
  handlers: {
    nap: async ({ ms }, ctx) => {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, ms);
        ctx.signal.addEventListener('abort', () => (clearTimeout(t), resolve()));
      });
      return ms;
    },
  },
});
const frontService = implement(front, { dependsOn: [clock], handlers: { napVia: async ({ ms }, ctx) => ctx.client(clock).nap({ ms }) } });
const app = defineApp({ name: 'napper', services: [clockService, frontService] });

function appDir(yaml: string): { dir: string; write(yaml: string): void } {
  const dir = kit.tmp('worker');
  const write = (text: string) => {
    writeFileSync(join(dir, 'next.yaml'), text);
    renameSync(join(dir, 'next.yaml'), join(dir, 'evolith.yaml'));
  };
  write(yaml);
  return { dir, write };
}

async function start(dir: string, services: string[], placement?: PlacementProvider): Promise<RunningWorker> {
  const w = await startWorker({
    app,
    appDir: dir,
    topology: loadTopology(dir),
    overrides: {},
    log: silentLog,
    architecture: 'test',
    services,
    edge: false,
    crossProcess: false,
    envelope: placement ? () => ({ placement }) : undefined,
  });
  running.push(w);
  return w;
}

describe('the worker runtime', () => {
  test('a live edit of evolith.yaml reaches the next call between services of the same worker', async () => {
    const { dir, write } = appDir('policies: {}\n');
    const w = await start(dir, ['clock', 'front']);
    const napVia = (ms: number) => w.runtime.client(front).napVia({ ms });
    await expect(napVia(100)).resolves.toBe(100);
    write('policies:\n  clock.nap: { timeoutMs: 30 }\n');
    await eventually(async () => expect(await napVia(300).catch((e) => e)).toBeInstanceOf(TimeoutError), 5_000, 50);
    // An invalid edit is refused whole (its generous timeout is not applied); the last good policies stay.
    write('port: -1\npolicies:\n  clock.nap: { timeoutMs: 5000 }\n');
    await new Promise((r) => setTimeout(r, 400));
    expect(await napVia(300).catch((e) => e)).toBeInstanceOf(TimeoutError);
  });

  test('callees it does not host go down the envelope’s chain; hosted ones stay function calls', async () => {
    const { dir } = appDir('{}\n');
    const through: string[] = [];
    const host = await start(dir, ['clock']);
    const note: Link = { name: 'note', wrap: (next) => (call) => (through.push(call.method.fullName), next(call)) };
    const placement: PlacementProvider = {
      placement: () => ({ links: [note], terminal: { name: 'other worker', send: (call) => host.runtime.host('clock').handle(call.method, call.input, call, true) } }),
    };
    const { dir: dir2 } = appDir('{}\n');
    const w = await start(dir2, ['front'], placement);
    await expect(w.runtime.client(front).napVia({ ms: 5 })).resolves.toBe(5);
    expect(through).toEqual(['clock.nap']);
  });

  test('asked to host a service the app does not have, it refuses to start', async () => {
    const { dir } = appDir('{}\n');
    await expect(start(dir, ['clock', 'ghost'])).rejects.toBeInstanceOf(ConfigError);
  });
});
