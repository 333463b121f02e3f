import { z } from 'evolith';

/**
 * The bookstore API's operation result. Success carries code 0; failures travel as typed
 * errors, which the edge renders as `{code: 1, message}` with the error's status.
 */
export const CodedMessage = z.object({ code: z.number().int(), message: z.string() });
export type CodedMessage = z.infer<typeof CodedMessage>;

export function success(message: string): CodedMessage {
  return { code: 0, message };
}
