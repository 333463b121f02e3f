import { describe, expect, test } from 'vitest';
import { z } from 'zod';
import { defineContract } from './define.js';

const ok = { input: z.object({}), output: z.null() };

describe('defineContract', () => {
  test('derives method and event definitions from the spec', () => {
    const c = defineContract({
      name: 'catalog',
      version: '2.1.0',
      methods: { getItem: { ...ok, idempotent: true, timeoutMs: 250, roles: ['ROLE_USER'] }, addItem: ok },
      events: { itemAdded: z.object({ id: z.string() }) },
    });
    expect(c.kind).toBe('contract');
    expect(c.methods.getItem).toMatchObject({ kind: 'method', service: 'catalog', name: 'getItem', fullName: 'catalog.getItem', idempotent: true, timeoutMs: 250 });
    expect(c.methods.addItem.idempotent).toBe(false);
    expect(c.events.itemAdded).toMatchObject({ kind: 'event', service: 'catalog', name: 'itemAdded', topic: 'catalog.itemAdded' });
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.methods.getItem)).toBe(true);
    expect(() => {
      (c.methods as Record<string, unknown>).extra = ok;
    }).toThrow(TypeError);
  });

  test('a contract without events has an empty event map', () => {
    expect(defineContract({ name: 'a', version: '1', methods: {} }).events).toEqual({});
  });

  test.each(['Catalog', '1catalog', 'cat_alog', 'cat alog', '', '-cat', 'cat.alog'])('refuses the contract name %j', (name) => {
    expect(() => defineContract({ name, version: '1', methods: {} })).toThrow(new RegExp(`contract name "${name.replace('.', '\\.')}"`));
  });

  test.each(['GetItem', 'get_item', '2get', 'get item', ''])('refuses the method name %j', (name) => {
    expect(() => defineContract({ name: 'catalog', version: '1', methods: { [name]: ok } })).toThrow(`method name "catalog.${name}"`);
  });

  test.each(['ItemAdded', 'item_added', ''])('refuses the event name %j', (name) => {
    expect(() => defineContract({ name: 'catalog', version: '1', methods: {}, events: { [name]: z.object({}) } })).toThrow(
      `event name "catalog.${name}"`,
    );
  });

  test('refuses a method without an input or output schema', () => {
    const noInput = { output: z.null() } as unknown as typeof ok;
    const noOutput = { input: z.object({}) } as unknown as typeof ok;
    expect(() => defineContract({ name: 'catalog', version: '1', methods: { get: noInput } })).toThrow(
      'method catalog.get needs zod schemas for input and output',
    );
    expect(() => defineContract({ name: 'catalog', version: '1', methods: { get: noOutput } })).toThrow(
      'method catalog.get needs zod schemas for input and output',
    );
  });

  test('refuses schemas that are not zod schemas (e.g. a plain JSON Schema)', () => {
    const jsonSchema = { input: { type: 'object' }, output: z.null() } as unknown as typeof ok;
    expect(() => defineContract({ name: 'catalog', version: '1', methods: { get: jsonSchema } })).toThrow(TypeError);
  });

  test.each([0, -5, Number.NaN])('refuses timeoutMs %s', (timeoutMs) => {
    expect(() => defineContract({ name: 'catalog', version: '1', methods: { get: { ...ok, timeoutMs } } })).toThrow(
      'method catalog.get: timeoutMs must be positive',
    );
  });

  // A common slip: writing the payload's fields instead of a z.object. The method check refuses
  // the same slip; an event must too, or it only breaks at the first emit.
  test('refuses an event whose payload is not a zod schema', () => {
    const shapeNotSchema = { id: z.string() } as unknown as z.ZodType;
    expect(() => defineContract({ name: 'catalog', version: '1', methods: {}, events: { itemAdded: shapeNotSchema } })).toThrow(TypeError);
    expect(() =>
      defineContract({ name: 'catalog', version: '1', methods: {}, events: { itemAdded: undefined as unknown as z.ZodType } }),
    ).toThrow(TypeError);
  });
});
