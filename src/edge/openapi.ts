import type { AppDefinition } from '../app/define.js';
import { toSchema } from '../contract/schema.js';

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
