import { z } from 'zod';

/** What a method promises: schemas for its input and output, and how it may be called. */
export interface MethodSpec<I extends z.ZodType = z.ZodType, O extends z.ZodType = z.ZodType> {
  input: I;
  output: O;
  /** Safe to run twice with the same input: only idempotent methods are ever retried. */
  idempotent?: boolean;
  /** Default deadline for a call, in milliseconds, unless the caller or topology sets a shorter one. */
  timeoutMs?: number;
  /** The caller needs at least one of these roles; omitted means anyone, including anonymous callers. */
  roles?: readonly string[];
  /** Only other services may call it; the edge (and any caller outside a handler) is refused. */
  internal?: boolean;
  description?: string;
}

export interface ContractSpec {
  name: string;
  version: string;
  description?: string;
  methods: Record<string, MethodSpec>;
  events?: Record<string, z.ZodType>;
}

export interface MethodDef<I extends z.ZodType = z.ZodType, O extends z.ZodType = z.ZodType> extends MethodSpec<I, O> {
  readonly kind: 'method';
  readonly service: string;
  readonly name: string;
  /** `service.method`, used in logs, metrics and policies. */
  readonly fullName: string;
  readonly idempotent: boolean;
  readonly internal: boolean;
}

export interface EventDef<P extends z.ZodType = z.ZodType> {
  readonly kind: 'event';
  readonly service: string;
  readonly name: string;
  /** `service.event`: the topic subscribers listen on. */
  readonly topic: string;
  readonly schema: P;
}

export type Contract<S extends ContractSpec = ContractSpec> = {
  readonly kind: 'contract';
  readonly name: S['name'];
  readonly version: S['version'];
  readonly description?: string;
  readonly methods: { readonly [K in keyof S['methods'] & string]: MethodDef<S['methods'][K]['input'], S['methods'][K]['output']> };
  readonly events: { readonly [K in keyof NonNullable<S['events']> & string]: EventDef<NonNullable<S['events']>[K]> };
};

export type AnyContract = Contract<ContractSpec>;

/** The value a caller passes to a method. */
export type MethodInput<M> = M extends MethodDef<infer I, z.ZodType> ? z.input<I> : never;
/** The value a caller receives from a method. */
export type MethodOutput<M> = M extends MethodDef<z.ZodType, infer O> ? z.output<O> : never;
/** The value a handler receives, after the schema's defaults and transforms. */
export type HandlerInput<M> = M extends MethodDef<infer I, z.ZodType> ? z.output<I> : never;
/** The value a handler returns, before the output schema's transforms. */
export type HandlerOutput<M> = M extends MethodDef<z.ZodType, infer O> ? z.input<O> : never;
export type EventPayload<E> = E extends EventDef<infer P> ? z.output<P> : never;
export type EventInput<E> = E extends EventDef<infer P> ? z.input<P> : never;

const namePattern = /^[a-z][a-zA-Z0-9-]*$/;

/**
 * Defines a service contract as a value. Clients, handlers, HTTP routes and JSON Schema all
 * derive their types from it, with no code generation.
 */
export function defineContract<const S extends ContractSpec>(spec: S): Contract<S> {
  if (!namePattern.test(spec.name)) {
    throw new TypeError(`contract name "${spec.name}" must start with a lower-case letter and hold only letters, digits and dashes`);
  }
  const methods: Record<string, MethodDef> = {};
  for (const [name, m] of Object.entries(spec.methods)) {
    if (!namePattern.test(name)) throw new TypeError(`method name "${spec.name}.${name}" is not a valid identifier`);
    if (!(m.input instanceof z.ZodType) || !(m.output instanceof z.ZodType)) {
      throw new TypeError(`method ${spec.name}.${name} needs zod schemas for input and output`);
    }
    if (m.timeoutMs !== undefined && !(m.timeoutMs > 0)) throw new TypeError(`method ${spec.name}.${name}: timeoutMs must be positive`);
    methods[name] = Object.freeze({
      ...m,
      kind: 'method' as const,
      service: spec.name,
      name,
      fullName: `${spec.name}.${name}`,
      idempotent: m.idempotent ?? false,
      internal: m.internal ?? false,
    });
  }
  const events: Record<string, EventDef> = {};
  for (const [name, schema] of Object.entries(spec.events ?? {})) {
    if (!namePattern.test(name)) throw new TypeError(`event name "${spec.name}.${name}" is not a valid identifier`);
    if (!(schema instanceof z.ZodType)) throw new TypeError(`event ${spec.name}.${name} needs a zod schema for its payload`);
    events[name] = Object.freeze({ kind: 'event' as const, service: spec.name, name, topic: `${spec.name}.${name}`, schema });
  }
  return Object.freeze({
    kind: 'contract' as const,
    name: spec.name,
    version: spec.version,
    description: spec.description,
    methods: Object.freeze(methods),
    events: Object.freeze(events),
  }) as unknown as Contract<S>;
}
