import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  // `evolith` is the TypeScript sources here, as in tsconfig.json (see package.json's exports), also
  // from examples with a package.json of their own (examples/hello).
  resolve: {
    alias: [
      { find: /^evolith$/, replacement: fileURLToPath(new URL('./src/index.ts', import.meta.url)) },
      { find: /^evolith\/testing$/, replacement: fileURLToPath(new URL('./src/testing/index.ts', import.meta.url)) },
    ],
  },
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts', 'examples/**/*.test.ts'],
    typecheck: { enabled: true, include: ['src/**/*.test-d.ts', 'test/**/*.test-d.ts'] },
    // Many tests start real processes (the CLI compiles TypeScript on start): generous on a busy 2-core machine.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    maxWorkers: 2,
  },
});
