import { expect, test } from 'vitest';
import * as sources from '../../src/index.js';

// In the repository, tests and the command run the TypeScript sources, built or not: one copy of
// every class (errors are told apart with instanceof), whatever dist/ holds.
test('in the repository, `evolith` is the TypeScript sources (the "evolith-source" export condition)', async () => {
  const pkg = await import('evolith');
  expect(pkg.defineContract).toBe(sources.defineContract);
  expect(pkg.EvolithError).toBe(sources.EvolithError);
});
