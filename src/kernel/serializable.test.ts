import { describe, expect, test } from 'vitest';
import { NotSerializableError } from './errors.js';
import { assertSerializable } from './serializable.js';

class Money {
  constructor(readonly cents: number) {}
}

const cyclic = (): unknown => {
  const a: Record<string, unknown> = { name: 'a' };
  a.self = a;
  return { wrapper: a };
};

describe('assertSerializable', () => {
  test.each<[string, unknown, string]>([
    ['a function', { f: () => 1 }, '$.f is a function'],
    ['a class instance', { price: new Money(5) }, '$.price is an instance of Money'],
    ['a Map', { m: new Map([[1, 2]]) }, '$.m is an instance of Map'],
    ['a Set', [new Set([1])], '$[0] is an instance of Set'],
    ['a cycle', cyclic(), '$.wrapper.self is a circular reference'],
    ['NaN', { n: Number.NaN }, '$.n is NaN'],
    ['Infinity', { n: [1, -Infinity] }, '$.n[1] is -Infinity'],
    ['a bigint', { id: 10n }, '$.id is a bigint'],
    ['a symbol', { s: Symbol('x') }, '$.s is a symbol'],
    ['undefined in an array', [1, undefined], '$[1] is undefined'],
    ['an invalid Date', { d: new Date('nope') }, '$.d is an invalid Date'],
    ['a Promise', { p: Promise.resolve(1) }, '$.p is an instance of Promise'],
    ['an Error', { e: new Error('x') }, '$.e is an instance of Error'],
    ['a top-level function', () => 1, '$ is a function'],
  ])('refuses %s and names where it is', (_what, value, where) => {
    let caught: unknown;
    try {
      assertSerializable(value, 'output of shop.get');
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(NotSerializableError);
    expect((caught as NotSerializableError).message).toBe(`output of shop.get would not survive a network hop: ${where}`);
    expect((caught as NotSerializableError).code).toBe('EVOLITH_NOT_SERIALIZABLE');
  });

  test('refuses symbol keys', () => {
    expect(() => assertSerializable({ [Symbol('k')]: 1 }, 'input')).toThrow(NotSerializableError);
  });

  test('finds a problem deep inside nested data', () => {
    expect(() => assertSerializable({ a: [{ b: { c: [1, 2, { d: new Map() }] } }] }, 'x')).toThrow('$.a[0].b.c[2].d is an instance of Map');
  });

  test.each<[string, unknown]>([
    ['strings, numbers, booleans, null', { s: 'x', n: 1.5, b: false, z: null, neg: -0 }],
    ['a Date', { at: new Date(0) }],
    ['a Uint8Array', { bytes: new Uint8Array([1, 2, 3]) }],
    ['a Buffer (a Uint8Array)', { bytes: Buffer.from('hi') }],
    ['nested plain data', { a: [{ b: { c: [1, 'two', [3], { d: null }] } }], e: {} }],
    ['an object without a prototype', Object.assign(Object.create(null), { a: 1 })],
    ['undefined object fields (dropped on the wire)', { a: undefined, b: 1 }],
    ['the same object twice (shared, not cyclic)', (() => {
      const shared = { x: 1 };
      return { a: shared, b: shared, list: [shared, shared] };
    })()],
    ['top-level primitives', 'just a string'],
    ['undefined (a method without output)', undefined],
  ])('accepts %s', (_what, value) => {
    expect(() => assertSerializable(value, 'input')).not.toThrow();
  });
});
