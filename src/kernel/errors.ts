/**
 * Typed errors with stable codes. Every error that crosses a service boundary is
 * turned into plain data by `serializeError` and rebuilt by `deserializeError`, so a
 * caller sees the same class and code whether the callee ran in-process or remotely.
 */

export const ErrorCodes = {
  VALIDATION: 'EVOLITH_VALIDATION',
  TIMEOUT: 'EVOLITH_TIMEOUT',
  UNAVAILABLE: 'EVOLITH_UNAVAILABLE',
  FORBIDDEN: 'EVOLITH_FORBIDDEN',
  UNAUTHENTICATED: 'EVOLITH_UNAUTHENTICATED',
  NOT_FOUND: 'EVOLITH_NOT_FOUND',
  CONFLICT: 'EVOLITH_CONFLICT',
  NOT_SERIALIZABLE: 'EVOLITH_NOT_SERIALIZABLE',
  INTERNAL: 'EVOLITH_INTERNAL',
  CONFIG: 'EVOLITH_CONFIG',
} as const;

export interface SerializedError {
  code: string;
  message: string;
  details?: unknown;
  httpStatus?: number;
  /** Where the error was raised: `service.method`. */
  origin?: string;
}

export class EvolithError extends Error {
  readonly code: string;
  readonly details?: unknown;
  /** The HTTP status the edge answers with; business errors may choose their own. */
  readonly httpStatus: number;
  origin?: string;

  constructor(code: string, message: string, options: { details?: unknown; httpStatus?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = options.details;
    this.httpStatus = options.httpStatus ?? 500;
  }

  toJSON(): SerializedError {
    const out: SerializedError = { code: this.code, message: this.message, httpStatus: this.httpStatus };
    if (this.details !== undefined) out.details = this.details;
    if (this.origin !== undefined) out.origin = this.origin;
    return out;
  }
}

export interface ValidationIssue {
  path: string;
  message: string;
}

/** Input or output did not match the contract's schema; `issues` lists every violation. */
export class ValidationError extends EvolithError {
  readonly issues: ValidationIssue[];
  constructor(message: string, issues: ValidationIssue[]) {
    super(ErrorCodes.VALIDATION, message, { details: { issues }, httpStatus: 400 });
    this.issues = issues;
  }
}

/** The call's deadline passed before an answer arrived. */
export class TimeoutError extends EvolithError {
  constructor(message: string, details?: unknown) {
    super(ErrorCodes.TIMEOUT, message, { details, httpStatus: 504 });
  }
}

/** No instance could take the call (stopped, draining, unreachable, circuit open). */
export class UnavailableError extends EvolithError {
  constructor(message: string, details?: unknown) {
    super(ErrorCodes.UNAVAILABLE, message, { details, httpStatus: 503 });
  }
}

/** The caller is known (or anonymous) and lacks the authority the method requires. */
export class ForbiddenError extends EvolithError {
  constructor(message: string, details?: unknown) {
    super(ErrorCodes.FORBIDDEN, message, { details, httpStatus: 403 });
  }
}

/** A credential was presented and refused (bad signature, expired, malformed). */
export class UnauthenticatedError extends EvolithError {
  constructor(message: string, details?: unknown) {
    super(ErrorCodes.UNAUTHENTICATED, message, { details, httpStatus: 401 });
  }
}

export class NotFoundError extends EvolithError {
  constructor(message: string, details?: unknown) {
    super(ErrorCodes.NOT_FOUND, message, { details, httpStatus: 404 });
  }
}

/** The change conflicts with the current state (e.g. an id held by someone else). */
export class ConflictError extends EvolithError {
  constructor(message: string, details?: unknown) {
    super(ErrorCodes.CONFLICT, message, { details, httpStatus: 409 });
  }
}

/** A value that would not survive a network hop was passed across a service boundary. */
export class NotSerializableError extends EvolithError {
  constructor(message: string, details?: unknown) {
    super(ErrorCodes.NOT_SERIALIZABLE, message, { details, httpStatus: 500 });
  }
}

export class InternalError extends EvolithError {
  constructor(message: string, details?: unknown) {
    super(ErrorCodes.INTERNAL, message, { details, httpStatus: 500 });
  }
}

export class ConfigError extends EvolithError {
  constructor(message: string, details?: unknown) {
    super(ErrorCodes.CONFIG, message, { details, httpStatus: 500 });
  }
}

/**
 * A refusal by a business rule. Its code is the application's own (e.g. `INSUFFICIENT_STOCK`);
 * the default status is 409, and a rule may choose another (400 for input the rules reject).
 */
export class BusinessError extends EvolithError {
  constructor(code: string, message: string, options: { details?: unknown; httpStatus?: number } = {}) {
    if (code.startsWith('EVOLITH_')) throw new TypeError(`business error codes may not use the EVOLITH_ prefix: ${code}`);
    super(code, message, { details: options.details, httpStatus: options.httpStatus ?? 409 });
  }
}

const byCode: Record<string, (e: SerializedError) => EvolithError> = {
  [ErrorCodes.VALIDATION]: (e) => new ValidationError(e.message, ((e.details as { issues?: ValidationIssue[] })?.issues) ?? []),
  [ErrorCodes.TIMEOUT]: (e) => new TimeoutError(e.message, e.details),
  [ErrorCodes.UNAVAILABLE]: (e) => new UnavailableError(e.message, e.details),
  [ErrorCodes.FORBIDDEN]: (e) => new ForbiddenError(e.message, e.details),
  [ErrorCodes.UNAUTHENTICATED]: (e) => new UnauthenticatedError(e.message, e.details),
  [ErrorCodes.NOT_FOUND]: (e) => new NotFoundError(e.message, e.details),
  [ErrorCodes.CONFLICT]: (e) => new ConflictError(e.message, e.details),
  [ErrorCodes.NOT_SERIALIZABLE]: (e) => new NotSerializableError(e.message, e.details),
  [ErrorCodes.INTERNAL]: (e) => new InternalError(e.message, e.details),
  [ErrorCodes.CONFIG]: (e) => new ConfigError(e.message, e.details),
};

/** Turns any thrown value into plain data; unknown faults become EVOLITH_INTERNAL without leaking stack traces. */
export function serializeError(err: unknown): SerializedError {
  if (err instanceof EvolithError) return err.toJSON();
  return { code: ErrorCodes.INTERNAL, message: err instanceof Error ? err.message : String(err), httpStatus: 500 };
}

export function deserializeError(data: SerializedError): EvolithError {
  const make = byCode[data.code];
  const err = make
    ? make(data)
    : data.code.startsWith('EVOLITH_')
      ? // A code from a newer peer: keep it rather than fail the caller's error handling.
        new EvolithError(data.code, data.message, { details: data.details, httpStatus: data.httpStatus })
      : new BusinessError(data.code, data.message, { details: data.details, httpStatus: data.httpStatus });
  if (data.origin !== undefined) err.origin = data.origin;
  return err;
}

export function toEvolithError(err: unknown): EvolithError {
  return err instanceof EvolithError ? err : deserializeError(serializeError(err));
}
