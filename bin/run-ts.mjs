#!/usr/bin/env node
// Runs a TypeScript script (benchmarks, tools) with the same loader the CLI uses.
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { useTypeScript } from './loader.mjs';
await useTypeScript();
const [script, ...rest] = process.argv.slice(2);
if (!script) { console.error('usage: run-ts <script.ts> [args...]'); process.exit(2); }
process.argv = [process.argv[0], resolve(script), ...rest];
await import(pathToFileURL(resolve(script)).href);
