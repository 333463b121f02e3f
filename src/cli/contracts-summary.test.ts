import { describe, expect, test } from 'vitest';
import { z } from 'zod';
import { defineContract } from '../contract/define.js';
import { contractDocument } from '../contract/schema.js';
import { contractsSummary, typeText } from './contracts-summary.js';

const Payment = z.object({ id: z.number().int(), payState: z.enum(['WAITING', 'PAYED']) }).meta({ title: 'Payment' });

const payment = defineContract({
  name: 'payment',
  version: '2.1.0',
  description: 'Payments.',
  methods: {
    pay: { input: z.object({ id: z.number(), state: z.enum(['PAYED', 'CANCEL']) }), output: Payment, roles: ['ROLE_USER'] },
    find: {
      input: z.object({ ids: z.array(z.number().int()).optional(), note: z.string().nullable() }),
      output: z.array(Payment),
      idempotent: true,
      timeoutMs: 250,
    },
    tree: {
      input: z.object({}),
      output: z.object({ a: z.object({ b: z.object({ c: z.object({ d: z.string() }) }) }), tags: z.record(z.string(), z.boolean()) }),
    },
    echo: { input: z.union([z.string(), z.literal(7)]), output: z.tuple([z.string(), z.number()]) },
  },
  events: { paid: z.object({ payId: z.string() }) },
});

describe('contracts summary', () => {
  test('one line per method: fields as parameters, named schemas by name, nested objects cut short', () => {
    const text = contractsSummary('shop', [contractDocument(payment)], { payment: payment.description });
    expect(text.split('\n')).toEqual([
      'app shop: 1 service',
      '',
      'payment 2.1.0 — Payments.',
      '  payment.pay(id: number, state: "PAYED" | "CANCEL") → Payment  [roles ROLE_USER]',
      '  payment.find(ids?: number[], note: string | null) → Payment[]  [idempotent; timeout 250 ms]',
      '  payment.tree() → { a: { b: { c: {…} } }, tags: Record<string, boolean> }',
      '  payment.echo(input: string | 7) → [string, number]',
      '  event payment.paid(payId: string)',
      '',
    ]);
  });

  test('types of the JSON Schema forms zod produces', () => {
    expect(typeText({ type: 'array', items: { anyOf: [{ type: 'string' }, { type: 'null' }] } })).toBe('(string | null)[]');
    expect(typeText({ type: ['string', 'null'] })).toBe('string | null');
    expect(typeText({ $ref: '#/$defs/Book' })).toBe('Book');
    expect(typeText({ allOf: [{ $ref: '#/$defs/A' }, { $ref: '#/$defs/B' }] })).toBe('A & B');
    expect(typeText({})).toBe('unknown');
    expect(typeText({ const: 'x' })).toBe('"x"');
  });
});
