/**
 * Logs as people and machines want them: readable lines in a terminal, JSON everywhere else
 * (files, pipes, log collectors). `EVOLITH_LOG_FORMAT=json|pretty` decides explicitly;
 * `EVOLITH_LOG_LEVEL` sets the level (default info); `NO_COLOR` turns colours off.
 */
import { createRequire } from 'node:module';
import pino, { type Bindings, type Logger } from 'pino';

const require = createRequire(import.meta.url);

/** True when logs should be readable lines rather than JSON. */
export function prettyLogs(): boolean {
  const format = process.env.EVOLITH_LOG_FORMAT;
  if (format === 'json') return false;
  if (format === 'pretty') return true;
  return process.stdout.isTTY === true;
}

const prettyOptions = () => ({ colorize: !process.env.NO_COLOR && process.stdout.isTTY === true, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true });

export function createLogger(base: Bindings): Logger {
  const level = process.env.EVOLITH_LOG_LEVEL ?? 'info';
  if (!prettyLogs()) return pino({ level, base });
  // Loaded only when asked for: a worker writing JSON to a pipe never pays for it.
  const pretty = require('pino-pretty') as (o: object) => NodeJS.WritableStream;
  return pino({ level, base }, pretty({ ...prettyOptions(), sync: true }));
}

/**
 * Turns the JSON log lines of other processes (workers the control plane supervises) into the
 * same readable form; lines that are not pino JSON pass through as they are.
 */
export function prettyLineFormatter(): (line: string) => string {
  const { prettyFactory } = require('pino-pretty') as { prettyFactory: (o: object) => (obj: object) => string };
  const format = prettyFactory(prettyOptions());
  return (line) => {
    if (!line.startsWith('{')) return line;
    try {
      const obj = JSON.parse(line) as { level?: unknown };
      return typeof obj.level === 'number' ? format(obj).trimEnd() : line;
    } catch {
      return line;
    }
  };
}
