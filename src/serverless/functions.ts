/**
 * A function's settings as `evolith.yaml` gives them (`serverless.defaults` under
 * `serverless.functions.<name>`), completed with the platform's defaults and checked as a whole.
 * A function is a service group: the services that share a process in microservices share an
 * instance here.
 */
import { ConfigError } from '../kernel/errors.js';
import type { Topology } from '../deploy/topology.js';
import type { ServiceGroup } from '../deploy/microservices/groups.js';
import { checkScaling, DEFAULT_SCALING, type ScalingSettings } from './autoscaler.js';

export interface FunctionConfig extends ScalingSettings {
  readonly name: string;
  readonly services: readonly string[];
  /** Resident memory limit of an instance (MB), and what GB-seconds are billed on. */
  readonly memoryMb: number;
  /** Calls one instance runs at once; more queue in it, up to `queueLimit`. */
  readonly maxConcurrency: number;
  /** Calls that may wait in one instance beyond `maxConcurrency` before one is refused as not run. */
  readonly queueLimit: number;
  /** One invocation's time limit (ms). */
  readonly timeoutMs: number;
}

/** The platform's defaults: Lambda's usual memory and a Knative-like concurrency model. */
export const FUNCTION_DEFAULTS = Object.freeze({
  memoryMb: 256,
  maxConcurrency: 100,
  /** Knative's target utilisation: aim at 70 % of the hard limit. */
  targetUtilisation: 0.7,
  timeoutMs: 30_000,
  minInstances: 0,
  maxInstances: 10,
});

/** Every function of the app with its complete settings; a ConfigError lists every problem. */
export function functionConfigs(groups: readonly ServiceGroup[], topology: Topology): FunctionConfig[] {
  const problems: string[] = [];
  const known = new Set(groups.map((g) => g.name));
  for (const name of Object.keys(topology.serverless.functions)) {
    if (!known.has(name)) problems.push(`serverless.functions.${name}: no function (service group) has that name; functions: ${[...known].join(', ')}`);
  }
  const configs: FunctionConfig[] = [];
  for (const g of groups) {
    const own = { ...definedOnly(topology.serverless.defaults), ...definedOnly(topology.serverless.functions[g.name] ?? {}) };
    const maxConcurrency = own.maxConcurrency ?? FUNCTION_DEFAULTS.maxConcurrency;
    const scaling: Partial<ScalingSettings> = {
      ...DEFAULT_SCALING,
      targetConcurrency: own.targetConcurrency ?? Math.max(1, Math.floor(maxConcurrency * FUNCTION_DEFAULTS.targetUtilisation)),
      minInstances: own.minInstances ?? FUNCTION_DEFAULTS.minInstances,
      maxInstances: own.maxInstances ?? Math.max(FUNCTION_DEFAULTS.maxInstances, own.minInstances ?? 0),
      ...(own.stableWindowMs !== undefined && { stableWindowMs: own.stableWindowMs }),
      // Unset, the burst window is a tenth of the stable one (Knative's panic-window-percentage), at least a second.
      ...(own.panicWindowMs !== undefined
        ? { panicWindowMs: own.panicWindowMs }
        : own.stableWindowMs !== undefined && { panicWindowMs: Math.max(1000, Math.round(own.stableWindowMs / 10)) }),
      ...(own.panicThreshold !== undefined && { panicThreshold: own.panicThreshold }),
      ...(own.scaleToZeroGraceMs !== undefined && { scaleToZeroGraceMs: own.scaleToZeroGraceMs }),
    };
    for (const p of checkScaling(scaling)) problems.push(`serverless.functions.${g.name}: ${p}`);
    if (scaling.targetConcurrency! > maxConcurrency) {
      problems.push(`serverless.functions.${g.name}: targetConcurrency (${scaling.targetConcurrency}) is above maxConcurrency (${maxConcurrency}), which no instance can reach`);
    }
    configs.push({
      ...(scaling as ScalingSettings),
      name: g.name,
      services: g.services,
      memoryMb: own.memoryMb ?? FUNCTION_DEFAULTS.memoryMb,
      maxConcurrency,
      queueLimit: maxConcurrency * 10,
      timeoutMs: own.timeoutMs ?? FUNCTION_DEFAULTS.timeoutMs,
    });
  }
  if (problems.length) throw new ConfigError(`invalid serverless settings:\n${problems.map((p) => `  ${p}`).join('\n')}`, { problems });
  return configs;
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
