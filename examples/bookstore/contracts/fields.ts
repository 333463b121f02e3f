import { z } from 'evolith';
import { normaliseUsername, usernameProblems } from '../shared/username.js';

/**
 * Field schemas whose messages name the field and say what is wrong with it, because the
 * edge shows them to people: "name is required" when it is missing, "name must be text" when
 * it has the wrong type.
 */
const missingOr = (field: string, kind: string) => (issue: { input: unknown }) =>
  issue.input === undefined || issue.input === null ? `${field} is required` : `${field} must be ${kind}`;

export function requiredText(field: string, max: number) {
  return z
    .string({ error: missingOr(field, 'text') })
    .trim()
    .min(1, `${field} is required`)
    .max(max, `${field} must be at most ${max} characters`);
}

export function optionalText(field: string, max: number) {
  return z.string({ error: `${field} must be text` }).trim().max(max, `${field} must be at most ${max} characters`).nullish();
}

export function requiredNumber(field: string) {
  return z.number({ error: missingOr(field, 'a number') });
}

export function wholeNumber(field: string) {
  return requiredNumber(field).int(`${field} must be a whole number`);
}

export function positiveId(field: string) {
  return wholeNumber(field).positive(`${field} must be positive`);
}

/**
 * A username as people will read it: stored in NFKC form, at most `max` characters, without
 * control or invisible characters and without path characters. Every problem is listed.
 */
export function username(max = 50) {
  return z
    .string({ error: missingOr('username', 'text') })
    .overwrite(normaliseUsername)
    .min(1, 'username is required')
    .max(max, `username must be at most ${max} characters`)
    .superRefine((name, ctx) => {
      for (const message of usernameProblems(name)) ctx.addIssue({ code: 'custom', message });
    });
}
