import { z } from 'zod';
import type { AnyContract } from './define.js';

type JsonSchema = Record<string, unknown>;

/** The JSON Schema (draft 2020-12) of what a schema accepts (`input`) or produces (`output`). */
export function toSchema(schema: z.ZodType, io: 'input' | 'output'): JsonSchema {
  const { $schema: _ignored, ...rest } = z.toJSONSchema(schema, { io, unrepresentable: 'any', target: 'draft-2020-12' }) as JsonSchema;
  return rest;
}

export interface ContractDocument {
  name: string;
  version: string;
  methods: Record<string, { input: JsonSchema; output: JsonSchema; idempotent: boolean; timeoutMs?: number; roles?: readonly string[] }>;
  events: Record<string, { topic: string; payload: JsonSchema }>;
}

/** The JSON Schema of every method and event of a contract: the system's IDL, for other languages and tools. */
export function contractDocument(contract: AnyContract): ContractDocument {
  const methods: ContractDocument['methods'] = {};
  for (const [name, m] of Object.entries(contract.methods)) {
    methods[name] = {
      input: toSchema(m.input, 'input'),
      output: toSchema(m.output, 'output'),
      idempotent: m.idempotent,
      ...(m.timeoutMs !== undefined ? { timeoutMs: m.timeoutMs } : {}),
      ...(m.roles ? { roles: m.roles } : {}),
    };
  }
  const events: ContractDocument['events'] = {};
  for (const [name, e] of Object.entries(contract.events)) events[name] = { topic: e.topic, payload: toSchema(e.schema, 'output') };
  return { name: contract.name, version: contract.version, methods, events };
}
