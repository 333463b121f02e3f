import { describe, expect, test } from 'vitest';
import { z } from 'zod';
import { defineApp, route } from '../app/define.js';
import { implement } from '../kernel/service.js';
import { defineContract } from './define.js';
import { openApiDocument } from '../edge/openapi.js';
import { contractDocument } from './schema.js';

const shop = defineContract({
  name: 'shop',
  version: '3.2.1',
  methods: {
    getItem: {
      input: z.object({ id: z.string().min(1), expand: z.boolean().default(false) }),
      output: z.object({ id: z.string(), price: z.number().int().nonnegative(), tags: z.array(z.string()) }),
      idempotent: true,
      timeoutMs: 500,
      description: 'one item',
    },
    addItem: {
      input: z.object({ name: z.string().max(40), price: z.number() }),
      output: z.object({ id: z.string() }),
      roles: ['ROLE_ADMIN'],
    },
    removeItem: { input: z.object({ id: z.string() }), output: z.null() },
  },
  events: {
    itemAdded: z.object({ id: z.string(), price: z.number() }),
    itemRemoved: z.object({ id: z.string(), at: z.string().transform((s) => new Date(s)) }),
  },
});

describe('contractDocument', () => {
  const doc = contractDocument(shop);

  test('names the contract and lists every method and event', () => {
    expect(doc.name).toBe('shop');
    expect(doc.version).toBe('3.2.1');
    expect(Object.keys(doc.methods).sort()).toEqual(['addItem', 'getItem', 'removeItem']);
    expect(Object.keys(doc.events).sort()).toEqual(['itemAdded', 'itemRemoved']);
    expect(doc.events.itemAdded!.topic).toBe('shop.itemAdded');
  });

  test('method input and output are JSON Schema, with the input as callers send it', () => {
    const get = doc.methods.getItem!;
    expect(get.input).toMatchObject({
      type: 'object',
      properties: { id: { type: 'string', minLength: 1 }, expand: { type: 'boolean', default: false } },
      required: ['id'],
    });
    expect(get.output).toMatchObject({
      type: 'object',
      properties: { id: { type: 'string' }, price: { type: 'integer', minimum: 0 }, tags: { type: 'array', items: { type: 'string' } } },
      required: ['id', 'price', 'tags'],
    });
    expect(get.input).not.toHaveProperty('$schema');
    expect(doc.methods.addItem!.input).toMatchObject({ properties: { name: { type: 'string', maxLength: 40 } } });
    expect(doc.methods.removeItem!.output).toEqual({ type: 'null' });
  });

  test('carries call policy: idempotent, timeoutMs, roles', () => {
    expect(doc.methods.getItem).toMatchObject({ idempotent: true, timeoutMs: 500 });
    expect(doc.methods.getItem).not.toHaveProperty('roles');
    expect(doc.methods.addItem).toMatchObject({ idempotent: false, roles: ['ROLE_ADMIN'] });
    expect(doc.methods.addItem).not.toHaveProperty('timeoutMs');
  });

  test('event payloads are JSON Schema', () => {
    expect(doc.events.itemAdded!.payload).toMatchObject({
      type: 'object',
      properties: { id: { type: 'string' }, price: { type: 'number' } },
      required: ['id', 'price'],
    });
    // A transform is not representable as output; the document still holds the field.
    expect(doc.events.itemRemoved!.payload).toMatchObject({ type: 'object', required: ['id', 'at'] });
  });

  test('is plain JSON', () => {
    expect(JSON.parse(JSON.stringify(doc))).toEqual(doc);
  });
});

describe('openApiDocument', () => {
  const svc = implement(shop, {
    handlers: {
      async getItem(i) {
        return { id: i.id, price: 1, tags: [] };
      },
      async addItem() {
        return { id: 'x' };
      },
      async removeItem() {
        return null;
      },
    },
  });
  const app = defineApp({
    name: 'shop-app',
    services: [svc],
    edge: {
      routes: [
        route('GET /items/:id', shop.methods.getItem),
        route('POST /items', shop.methods.addItem, { summary: 'add an item' }),
        route('DELETE /items/:id', shop.methods.removeItem),
      ],
    },
  });
  const doc = openApiDocument(app) as {
    openapi: string;
    info: { title: string; version: string };
    paths: Record<string, Record<string, Record<string, any>>>;
    components: Record<string, any>;
  };

  test('is OpenAPI 3.1 titled after the app', () => {
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.info).toEqual({ title: 'shop-app', version: '3.2.1' });
    expect(doc.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
  });

  test('turns :params into {params} and documents them', () => {
    expect(Object.keys(doc.paths).sort()).toEqual(['/items', '/items/{id}']);
    const get = doc.paths['/items/{id}']!.get!;
    expect(get.operationId).toBe('shop.getItem');
    expect(get.summary).toBe('one item');
    expect(get.parameters[0]).toEqual({ name: 'id', in: 'path', required: true, schema: { type: 'string' } });
    expect(get.parameters.filter((p: { in: string }) => p.in === 'path')).toHaveLength(1);
    expect(doc.paths['/items/{id}']!.delete!.operationId).toBe('shop.removeItem');
  });

  test('responses carry the output schema; bodies the input schema (not for GET/DELETE)', () => {
    const get = doc.paths['/items/{id}']!.get!;
    expect(get.responses['200'].content['application/json'].schema).toMatchObject({ type: 'object', required: ['id', 'price', 'tags'] });
    expect(get.requestBody).toBeUndefined();
    expect(doc.paths['/items/{id}']!.delete!.requestBody).toBeUndefined();
    const post = doc.paths['/items']!.post!;
    expect(post.summary).toBe('add an item');
    expect(post.requestBody.content['application/json'].schema).toMatchObject({ type: 'object', required: ['name', 'price'] });
  });

  test('routes to methods with roles declare bearer security and a 403', () => {
    const post = doc.paths['/items']!.post!;
    expect(post.security).toEqual([{ bearer: [] }]);
    expect(post.responses['403'].description).toContain('ROLE_ADMIN');
    const get = doc.paths['/items/{id}']!.get!;
    expect(get.security).toBeUndefined();
    expect(get.responses['403']).toBeUndefined();
  });

  // GET routes take their input from the query string (see the gateway's defaultInput), so the
  // query fields are part of the HTTP contract: without them a generated client cannot send `expand`.
  test('a GET route documents its non-path input fields as query parameters', () => {
    const get = doc.paths['/items/{id}']!.get!;
    expect(get.parameters).toContainEqual(expect.objectContaining({ name: 'expand', in: 'query' }));
  });
});
