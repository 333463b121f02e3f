#!/usr/bin/env node
// Apps are written in TypeScript; tsx lets the CLI load them (and Evolith's own sources) directly.
import { register } from 'tsx/esm/api';
register();
const { main } = await import('../src/cli/main.ts');
await main(process.argv);
