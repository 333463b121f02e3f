import { afterAll, beforeAll, describe, expect, test } from 'vitest';
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

// The same HTTP test in every architecture: the app runs as `evolith run --arch <architecture>` does.
describe.each(availableArchitectures)('over HTTP, as %s', (architecture) => {
  let app: StartedApp;
  beforeAll(async () => {
    app = await startApp(import.meta.dirname, { architecture });
  }, 120_000);
  afterAll(() => app?.stop(), 30_000);

  const greet = (body: unknown) =>
    fetch(`${app.url}/greetings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  test('POST /greetings greets and counts; GET /greetings/:name tells the count', async () => {
    expect(await (await greet({ name: 'Ada' })).json()).toEqual({ message: 'Hello, Ada!', count: 1 });
    const second = await greet({ name: 'Ada' });
    expect(second.status).toBe(200);
    expect(await second.json()).toEqual({ message: 'Hello, Ada!', count: 2 });
    const count = await fetch(`${app.url}/greetings/Ada`);
    expect(await count.json()).toEqual({ name: 'Ada', count: 2 });
  }, 30_000);

  test('invalid input is answered with 400 and the reason', async () => {
    const reply = await greet({ name: 'x'.repeat(41) });
    expect(reply.status).toBe(400);
    expect(JSON.stringify(await reply.json())).toContain('name must be at most 40 characters');
  }, 30_000);
});
