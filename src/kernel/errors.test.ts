import { describe, expect, test } from 'vitest';
import {
  BusinessError,
  ConfigError,
  ErrorCodes,
  EvolithError,
  ForbiddenError,
  InternalError,
  ConflictError,
  NotFoundError,
  NotSerializableError,
  TimeoutError,
  UnauthenticatedError,
  UnavailableError,
  ValidationError,
  deserializeError,
  serializeError,
  toEvolithError,
} from './errors.js';

/** Goes through JSON, as it would on a wire. */
const roundTrip = (err: unknown): EvolithError => deserializeError(JSON.parse(JSON.stringify(serializeError(err))));

const builtIns: [string, new (message: string, details?: unknown) => EvolithError, number][] = [
  [ErrorCodes.TIMEOUT, TimeoutError, 504],
  [ErrorCodes.UNAVAILABLE, UnavailableError, 503],
  [ErrorCodes.FORBIDDEN, ForbiddenError, 403],
  [ErrorCodes.UNAUTHENTICATED, UnauthenticatedError, 401],
  [ErrorCodes.NOT_FOUND, NotFoundError, 404],
  [ErrorCodes.CONFLICT, ConflictError, 409],
  [ErrorCodes.NOT_SERIALIZABLE, NotSerializableError, 500],
  [ErrorCodes.INTERNAL, InternalError, 500],
  [ErrorCodes.CONFIG, ConfigError, 500],
];

describe('serializeError / deserializeError', () => {
  test('every code in ErrorCodes has a built-in class covered here', () => {
    const covered = new Set([...builtIns.map(([c]) => c), ErrorCodes.VALIDATION]);
    expect(new Set(Object.values(ErrorCodes))).toEqual(covered);
  });

  test.each(builtIns)('%s keeps its class, code, details, status and origin', (code, Cls, status) => {
    const original = new Cls('it failed: do this instead', { attempt: 3, where: ['a', 'b'] });
    original.origin = 'catalog.getItem';
    const back = roundTrip(original);
    expect(back).toBeInstanceOf(Cls);
    expect(back).toBeInstanceOf(EvolithError);
    expect(back).toBeInstanceOf(Error);
    expect(back.name).toBe(Cls.name);
    expect(back.code).toBe(code);
    expect(back.message).toBe('it failed: do this instead');
    expect(back.details).toEqual({ attempt: 3, where: ['a', 'b'] });
    expect(back.httpStatus).toBe(status);
    expect(back.origin).toBe('catalog.getItem');
  });

  test('a ValidationError keeps its class and the list of issues', () => {
    const issues = [
      { path: 'name', message: 'Required' },
      { path: 'items.0.qty', message: 'Too small' },
    ];
    const original = new ValidationError('invalid input', issues);
    original.origin = 'shop.buy';
    const back = roundTrip(original);
    expect(back).toBeInstanceOf(ValidationError);
    expect(back.code).toBe(ErrorCodes.VALIDATION);
    expect(back.httpStatus).toBe(400);
    expect((back as ValidationError).issues).toEqual(issues);
    expect(back.details).toEqual({ issues });
    expect(back.origin).toBe('shop.buy');
  });

  test('a BusinessError keeps its own code, details, chosen status and origin', () => {
    const original = new BusinessError('INSUFFICIENT_STOCK', 'only 2 left', { details: { left: 2 }, httpStatus: 422 });
    original.origin = 'warehouse.reserve';
    const back = roundTrip(original);
    expect(back).toBeInstanceOf(BusinessError);
    expect(back.code).toBe('INSUFFICIENT_STOCK');
    expect(back.message).toBe('only 2 left');
    expect(back.details).toEqual({ left: 2 });
    expect(back.httpStatus).toBe(422);
    expect(back.origin).toBe('warehouse.reserve');
  });

  test('a BusinessError defaults to 409 and keeps it across the round trip', () => {
    const back = roundTrip(new BusinessError('TAKEN', 'name taken'));
    expect(back.httpStatus).toBe(409);
    expect(back.details).toBeUndefined();
    expect(back.origin).toBeUndefined();
  });

  test('serialized errors are plain data without stack traces', () => {
    const s = serializeError(new NotFoundError('no book 7', { id: 7 }));
    expect(s).toEqual({ code: ErrorCodes.NOT_FOUND, message: 'no book 7', details: { id: 7 }, httpStatus: 404 });
    expect(JSON.stringify(s)).not.toContain('at ');
  });

  test.each([
    ['an Error', new Error('db is down'), 'db is down'],
    ['a TypeError', new TypeError('x is not a function'), 'x is not a function'],
    ['a string', 'plain string', 'plain string'],
    ['a number', 42, '42'],
    ['undefined', undefined, 'undefined'],
    ['an object', { weird: true }, '[object Object]'],
  ])('an unknown thrown value (%s) becomes EVOLITH_INTERNAL', (_what, thrown, message) => {
    const s = serializeError(thrown);
    expect(s).toEqual({ code: ErrorCodes.INTERNAL, message, httpStatus: 500 });
    expect(JSON.stringify(s)).not.toMatch(/\n\s+at /);
    const e = toEvolithError(thrown);
    expect(e).toBeInstanceOf(InternalError);
    expect(e.code).toBe(ErrorCodes.INTERNAL);
  });

  test('toEvolithError returns Evolith errors unchanged', () => {
    const e = new ForbiddenError('no');
    expect(toEvolithError(e)).toBe(e);
  });

  // A peer on a newer version may send a framework code this version does not know yet; the
  // caller must still get an error to handle, not a TypeError from the BusinessError guard.
  test('an unknown EVOLITH_ code from a newer peer still deserializes to an EvolithError', () => {
    let back: unknown;
    expect(() => {
      back = deserializeError({ code: 'EVOLITH_RATE_LIMITED', message: 'slow down', httpStatus: 429, origin: 'a.b' });
    }).not.toThrow();
    expect(back).toBeInstanceOf(EvolithError);
    expect((back as EvolithError).code).toBe('EVOLITH_RATE_LIMITED');
    expect((back as EvolithError).httpStatus).toBe(429);
  });
});

describe('BusinessError', () => {
  test.each(['EVOLITH_TIMEOUT', 'EVOLITH_ANYTHING'])('refuses the reserved prefix (%s)', (code) => {
    expect(() => new BusinessError(code, 'x')).toThrow(TypeError);
    expect(() => new BusinessError(code, 'x')).toThrow(/EVOLITH_ prefix/);
  });

  test('accepts its own codes', () => {
    const e = new BusinessError('OUT_OF_STOCK', 'gone', { httpStatus: 400 });
    expect(e).toBeInstanceOf(EvolithError);
    expect(e.name).toBe('BusinessError');
    expect(e.httpStatus).toBe(400);
  });
});

describe('EvolithError', () => {
  test('keeps the cause and omits absent fields from JSON', () => {
    const cause = new Error('root');
    const e = new EvolithError('X_Y', 'outer', { cause });
    expect(e.cause).toBe(cause);
    expect(e.httpStatus).toBe(500);
    expect(e.toJSON()).toEqual({ code: 'X_Y', message: 'outer', httpStatus: 500 });
  });
});
