import { z } from 'zod';
import { afterEach, describe, expect, test } from 'vitest';
import { Kit, silentLog } from '../../../test/fixtures/unit-kit.js';
import { defineContract } from '../../contract/define.js';
import { UnavailableError } from '../../kernel/errors.js';
import { Call, type Terminal } from '../../kernel/placement.js';
import { database, implement } from '../../kernel/service.js';
import { newTrace } from '../../kernel/trace.js';
import { listenProbes, PodProbes } from './pod-probes.js';
import { ResolvingTerminal } from './pod-http.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

const notes = defineContract({ name: 'notes', version: '1', methods: { count: { input: z.object({}), output: z.number() } } });
const notesService = implement(notes, {
  database: database<{ note: { id: number } }>({ migrations: { '001': async (db) => void (await db.schema.createTable('note').addColumn('id', 'integer').execute()) } }),
  handlers: { count: async () => 0 },
});

describe('pod probes', () => {
  test('/ready: 503 while starting, 200 once the services run and their stores answer, 503 once stopping; /health 200 throughout', async () => {
    const probes = new PodProbes();
    const listener = await listenProbes(probes, '127.0.0.1', 0, silentLog);
    const url = (path: string) => `http://127.0.0.1:${listener.port}${path}`;
    try {
      expect((await fetch(url('/health'))).status).toBe(200);
      const starting = await fetch(url('/ready'));
      expect(starting.status).toBe(503);
      expect(await starting.json()).toEqual({ status: 'starting' });
      const runtime = await kit.start([notesService]);
      probes.serving(runtime);
      expect((await fetch(url('/ready'))).status).toBe(200);
      // A store that does not answer: not ready, saying which.
      await runtime.hosts.get('notes')!.store!.close();
      const broken = await fetch(url('/ready'));
      expect(broken.status).toBe(503);
      expect(JSON.stringify(await broken.json())).toContain('notes database');
      probes.stop();
      expect(await (await fetch(url('/ready'))).json()).toEqual({ status: 'stopping' });
      expect((await fetch(url('/health'))).status).toBe(200);
      expect((await fetch(url('/metrics'))).status).toBe(404);
    } finally {
      await listener.close();
    }
  });
});

describe('ResolvingTerminal', () => {
  const method = notes.methods.count;
  const call = (address: string) => {
    const c = new Call(method, {}, {}, Date.now() + 1_000, newTrace(), undefined, undefined);
    c.endpoint = { service: 'notes', id: 'notes@notes', address };
    return c;
  };

  test('sends to an address the Service name resolves to, keeping the port, and leaves the call’s endpoint as it was', async () => {
    const sent: string[] = [];
    const inner: Terminal = { name: 'http', send: async (c) => sent.push(c.endpoint!.address) };
    let lookups = 0;
    const t = new ResolvingTerminal(inner, async (name) => {
      lookups++;
      expect(name).toBe('notes.shop.svc.cluster.test');
      return ['10.0.0.5'];
    });
    const c = call('http://notes.shop.svc.cluster.test:7000');
    await t.send(c);
    await t.send(c);
    expect(sent).toEqual(['http://10.0.0.5:7000', 'http://10.0.0.5:7000']);
    expect(c.endpoint!.address).toBe('http://notes.shop.svc.cluster.test:7000');
    // Asked once within the cache's lifetime.
    expect(lookups).toBe(1);
    await t.send(call('http://10.1.1.1:7000'));
    expect(sent[2]).toBe('http://10.1.1.1:7000');
  });

  test('a name without an address is a failure the call was not sent for', async () => {
    const inner: Terminal = { name: 'http', send: async () => 'sent' };
    const t = new ResolvingTerminal(inner, async () => {
      throw Object.assign(new Error('queryA ENOTFOUND'), { code: 'ENOTFOUND' });
    });
    const err = await t.send(call('http://notes.shop.svc.cluster.test')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as UnavailableError).message).toContain('no pod behind it is ready');
    expect((err as UnavailableError).details).toMatchObject({ maybeExecuted: false });
  });
});
