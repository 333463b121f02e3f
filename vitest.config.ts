import { defineConfig } from 'vitest/config';

export default defineConfig({
  // `evolith` resolves to the TypeScript sources here, as in tsconfig.json (see package.json's exports).
  resolve: { conditions: ['evolith-source'] },
  ssr: { resolve: { conditions: ['evolith-source'], externalConditions: ['evolith-source'] } },
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts', 'examples/**/*.test.ts'],
    typecheck: { enabled: true, include: ['src/**/*.test-d.ts', 'test/**/*.test-d.ts'] },
    // Many tests start real processes (the CLI compiles TypeScript on start): generous on a busy 2-core machine.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    maxWorkers: 2,
  },
});
