/**
 * `evolith contracts`: a readable summary of an app's contracts, one line per method and event,
 * written as TypeScript-like signatures from the same JSON Schema that `--json` prints:
 *
 *     payment.updateState(payId: string, state: "PAYED" | "CANCEL") → { code: number, message?: string }
 *
 * A schema that carries a name (zod's `.meta({ title })` or `.meta({ id })`) is shown by that name.
 */
import type { ContractDocument } from '../contract/schema.js';

type Schema = Record<string, unknown>;

/** Objects nested deeper than this are shown as `{…}`: a line stays a line. */
const MAX_DEPTH = 2;

function refName(ref: string): string {
  return ref.slice(ref.lastIndexOf('/') + 1);
}

function literal(value: unknown): string {
  return JSON.stringify(value);
}

function union(parts: string[]): string {
  const unique = [...new Set(parts)];
  return unique.length === 0 ? 'never' : unique.join(' | ');
}

/** A member of an array or a union operand: unions need parentheses there. */
function grouped(text: string): string {
  return text.includes(' | ') && !/^[{(]/.test(text) ? `(${text})` : text;
}

/** The fields of an object schema as `name: type, other?: type`. */
export function fields(schema: Schema, depth = 0): string {
  const properties = (schema.properties ?? {}) as Record<string, Schema>;
  const required = new Set((schema.required ?? []) as string[]);
  const parts = Object.entries(properties).map(([name, s]) => `${name}${required.has(name) ? '' : '?'}: ${typeText(s, depth + 1)}`);
  const extra = schema.additionalProperties;
  if (extra && typeof extra === 'object' && Object.keys(extra).length > 0) parts.push(`[key: string]: ${typeText(extra as Schema, depth + 1)}`);
  return parts.join(', ');
}

/** One schema as a TypeScript-like type. */
export function typeText(schema: Schema | boolean | undefined, depth = 0): string {
  if (schema === undefined || schema === true) return 'unknown';
  if (schema === false) return 'never';
  const name = (schema.title as string | undefined) ?? (typeof schema.$ref === 'string' ? refName(schema.$ref) : undefined);
  if (name) return name;
  if ('const' in schema) return literal(schema.const);
  if (Array.isArray(schema.enum)) return union(schema.enum.map(literal));
  for (const key of ['anyOf', 'oneOf'] as const) {
    if (Array.isArray(schema[key])) return union((schema[key] as Schema[]).map((s) => typeText(s, depth)));
  }
  if (Array.isArray(schema.allOf)) return (schema.allOf as Schema[]).map((s) => grouped(typeText(s, depth))).join(' & ');
  const type = schema.type;
  if (Array.isArray(type)) return union(type.map((t) => typeText({ ...schema, type: t }, depth)));
  switch (type) {
    case 'string':
      return 'string';
    case 'number':
    case 'integer':
      return 'number';
    case 'boolean':
      return 'boolean';
    case 'null':
      return 'null';
    case 'array': {
      if (Array.isArray(schema.prefixItems)) return `[${(schema.prefixItems as Schema[]).map((s) => typeText(s, depth + 1)).join(', ')}]`;
      return `${grouped(typeText(schema.items as Schema | undefined, depth))}[]`;
    }
    case 'object': {
      if (!schema.properties && schema.additionalProperties && typeof schema.additionalProperties === 'object') {
        return `Record<string, ${typeText(schema.additionalProperties as Schema, depth + 1)}>`;
      }
      if (depth > MAX_DEPTH) return '{…}';
      const inner = fields(schema, depth);
      return inner ? `{ ${inner} }` : '{}';
    }
    default:
      return name ?? 'unknown';
  }
}

/** A method's or event's input as a parameter list: an object's fields, or the one value. */
function parameters(schema: Schema): string {
  if (schema.type === 'object' && schema.properties && !schema.title) return fields(schema);
  const text = typeText(schema, 1);
  return text === '{}' ? '' : `input: ${text}`;
}

/** The readable summary of an app's contracts. */
export function contractsSummary(app: string, contracts: readonly ContractDocument[], descriptions: Record<string, string | undefined> = {}): string {
  const lines = [`app ${app}: ${contracts.length} ${contracts.length === 1 ? 'service' : 'services'}`];
  for (const c of contracts) {
    lines.push('', `${c.name} ${c.version}${descriptions[c.name] ? ` — ${descriptions[c.name]}` : ''}`);
    for (const [name, m] of Object.entries(c.methods)) {
      const notes = [
        ...(m.idempotent ? ['idempotent'] : []),
        ...(m.timeoutMs !== undefined ? [`timeout ${m.timeoutMs} ms`] : []),
        ...(m.roles ? [`roles ${m.roles.join(', ')}`] : []),
      ];
      lines.push(`  ${c.name}.${name}(${parameters(m.input)}) → ${typeText(m.output)}${notes.length ? `  [${notes.join('; ')}]` : ''}`);
    }
    for (const [, e] of Object.entries(c.events)) lines.push(`  event ${e.topic}(${parameters(e.payload)})`);
  }
  return lines.join('\n') + '\n';
}
