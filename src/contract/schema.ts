import { z } from 'zod';
import type { AppDefinition } from '../app/define.js';
import type { AnyContract } from './define.js';

type JsonSchema = Record<string, unknown>;

function toSchema(schema: z.ZodType, io: 'input' | 'output'): JsonSchema {
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

/** OpenAPI 3.1 for the app's HTTP edge, derived from its routes and their methods' schemas. */
export function openApiDocument(app: AppDefinition): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of app.edge?.routes ?? []) {
    const path = r.path.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
    const pathNames = [...r.path.matchAll(/:([A-Za-z0-9_]+)/g)].map((m) => m[1]!);
    const params: Record<string, unknown>[] = pathNames.map((name) => ({ name, in: 'path', required: true, schema: { type: 'string' } }));
    if ((r.verb === 'GET' || r.verb === 'DELETE') && !r.input) {
      // The edge fills these verbs' input from the query string: document the fields there.
      const input = toSchema(r.method.input, 'input') as { properties?: Record<string, unknown>; required?: string[] };
      for (const [name, schema] of Object.entries(input.properties ?? {})) {
        if (pathNames.includes(name)) continue;
        params.push({ name, in: 'query', required: input.required?.includes(name) ?? false, schema });
      }
    }
    const op: Record<string, unknown> = {
      operationId: `${r.method.service}.${r.method.name}`,
      summary: r.summary ?? r.method.description ?? r.method.fullName,
      parameters: params,
      responses: {
        '200': { description: 'success', content: { 'application/json': { schema: toSchema(r.method.output, 'output') } } },
        '400': { description: 'invalid input; the message lists every violation' },
        ...(r.method.roles ? { '403': { description: `requires one of ${r.method.roles.join(', ')}` } } : {}),
      },
    };
    if (r.verb !== 'GET' && r.verb !== 'DELETE') {
      op.requestBody = { content: { 'application/json': { schema: toSchema(r.method.input, 'input') } } };
    }
    if (r.method.roles) op.security = [{ bearer: [] }];
    (paths[path] ??= {})[r.verb.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: { title: app.name, version: app.services[0]?.contract.version ?? '0.0.0' },
    paths,
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } } },
  };
}
