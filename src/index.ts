/** Evolith's public entry: everything an app imports comes from here. */
export { z } from 'zod';
export { sql, type Kysely, type Transaction, type Generated, type Selectable, type Insertable, type Updateable } from 'kysely';
export { defineContract } from './contract/define.js';
export type {
  AnyContract,
  Contract,
  ContractSpec,
  EventDef,
  EventPayload,
  HandlerInput,
  HandlerOutput,
  MethodDef,
  MethodInput,
  MethodOutput,
  MethodSpec,
} from './contract/define.js';
export { implement, database } from './kernel/service.js';
export type {
  CallOptions,
  Client,
  DatabaseSpec,
  EmitOptions,
  EventContext,
  Migration,
  ServiceContext,
  ServiceDefinition,
  TransactionContext,
} from './kernel/service.js';
export {
  BusinessError,
  ConfigError,
  ErrorCodes,
  EvolithError,
  ForbiddenError,
  InternalError,
  NotFoundError,
  NotSerializableError,
  TimeoutError,
  UnauthenticatedError,
  UnavailableError,
  ValidationError,
  deserializeError,
  serializeError,
} from './kernel/errors.js';
export type { SerializedError, ValidationIssue } from './kernel/errors.js';
export type { Identity, CallMeta, Dialect } from './kernel/plugins.js';
export { defineApp, route } from './app/define.js';
export type { AppDefinition, EdgeReply, EdgeRequest, EdgeSpec, RouteSpec } from './app/define.js';
export { createTokenService, type TokenService, type TokenPair, type SigningKeyStore } from './auth/tokens.js';
export { closePasswordWorkers, hashPassword, PasswordChecksBusyError, PasswordWorkers, verifyPassword, type PasswordWorkersOptions } from './auth/passwords.js';
