import client from 'prom-client';
import { ConfigError } from '../kernel/errors.js';

/**
 * What a serverless platform charges: a price per request and a price per GB-second of
 * memory held while an invocation runs, its duration rounded up to the billing granularity.
 */
export interface PriceModel {
  readonly name: string;
  /** USD per million invocations. */
  readonly perMillionRequests: number;
  /** USD per GB-second (memory in GiB, as the provider counts it, times billed seconds). */
  readonly perGbSecond: number;
  /** Durations are rounded up to a whole number of these milliseconds; a positive integer. */
  readonly billingGranularityMs: number;
}

/**
 * AWS Lambda on x86 in us-east-1, from the published price list (aws.amazon.com/lambda/pricing):
 * $0.20 per 1M requests and $0.0000166667 per GB-second (the first tier, up to 6 billion GB-s a
 * month), billed per 1 ms since December 2020. The monthly free tier is left out: it is a
 * per-account allowance, not a price, and would hide the cost of small loads entirely.
 */
export const LAMBDA_PRICES: PriceModel = Object.freeze({
  name: 'AWS Lambda (x86, us-east-1)',
  perMillionRequests: 0.2,
  perGbSecond: 0.0000166667,
  billingGranularityMs: 1,
});

/** An always-on machine to compare with: its on-demand hourly price and its size. */
export interface VmPrice {
  readonly name: string;
  /** USD per hour, on demand. */
  readonly perHour: number;
  readonly vcpus: number;
  readonly memoryGb: number;
}

/**
 * AWS EC2 t3.small (2 vCPU, 2 GiB) running Linux in us-east-1, on demand: $0.0208 per hour,
 * from the published price list (aws.amazon.com/ec2/pricing/on-demand). EC2 bills Linux
 * instances per second with a 60-second minimum, which `alwaysOnCost` follows.
 */
export const ALWAYS_ON_VM: VmPrice = Object.freeze({
  name: 'AWS EC2 t3.small (2 vCPU, 2 GiB, Linux, us-east-1)',
  perHour: 0.0208,
  vcpus: 2,
  memoryGb: 2,
});

export interface FunctionSettings {
  /** Memory given to each instance of the function, in MB (the provider's MB: GB-s divide by 1024). */
  readonly memoryMb: number;
}

/** One function's usage over a report's period, with its cost under the report's prices. */
export interface FunctionUsage {
  fn: string;
  /** 0 when the function only appeared in instance events that gave no settings. */
  memoryMb: number;
  invocations: number;
  coldStarts: number;
  /** Sum of every invocation's billed duration: an integer number of milliseconds. */
  billedMs: number;
  gbSeconds: number;
  requestCost: number;
  computeCost: number;
  cost: number;
  /** Seconds its instances were up, idle or not: what an always-on process pays for. */
  instanceSeconds: number;
}

export interface MeteringReport {
  readonly prices: PriceModel;
  readonly since: number;
  readonly until: number;
  /** Sorted by function name, so reports compare line by line. */
  readonly functions: FunctionUsage[];
  readonly total: { invocations: number; gbSeconds: number; cost: number };
}

/** MB-ms per GB-s: 1000 ms a second times 1024 MB a GB. */
const MB_MS_PER_GB_SECOND = 1000 * 1024;

/** A function's running sums. Billed time is kept in whole milliseconds so totals are exact. */
interface Ledger {
  memoryMb: number;
  invocations: number;
  coldStarts: number;
  billedMs: number;
  running: number;
  /** Time of the last instance event; instance time up to it is in `instanceMs`. */
  lastAt: number;
  instanceMs: number;
}

function checkPrices(prices: PriceModel): void {
  const g = prices.billingGranularityMs;
  if (!Number.isInteger(g) || g < 1) throw new ConfigError(`${prices.name}: billingGranularityMs must be a positive integer, got ${g}`);
  if (!(prices.perMillionRequests >= 0) || !(prices.perGbSecond >= 0)) {
    throw new ConfigError(`${prices.name}: prices must be non-negative numbers`);
  }
}

/** The duration an invocation is charged for: rounded up to the granularity, and never less than one unit. */
export function billedDurationMs(durationMs: number, granularityMs: number): number {
  if (!Number.isFinite(durationMs) || durationMs < 0) throw new RangeError(`invocation duration must be a finite number of ms >= 0, got ${durationMs}`);
  return Math.max(1, Math.ceil(durationMs / granularityMs)) * granularityMs;
}

/**
 * Counts what serverless functions use and prices it: invocations, billed milliseconds,
 * GB-seconds and cold starts per function, plus the seconds their instances were up, which is
 * what the same work costs when processes stay on between requests.
 *
 * Times given to the instance events and to `report` are milliseconds on one clock (epoch or
 * monotonic, the meter does not read a clock itself), non-decreasing per function.
 */
export class Meter {
  readonly prices: PriceModel;
  /** Start of the metered period. */
  readonly since: number;
  private readonly ledgers = new Map<string, Ledger>();

  constructor(prices: PriceModel = LAMBDA_PRICES, since: number = Date.now()) {
    checkPrices(prices);
    this.prices = prices;
    this.since = since;
  }

  private ledger(fn: string, settings: FunctionSettings | undefined): Ledger {
    if (settings !== undefined && (!Number.isInteger(settings.memoryMb) || settings.memoryMb < 1)) {
      throw new ConfigError(`function ${fn}: memoryMb must be a positive integer, got ${settings.memoryMb}`);
    }
    let l = this.ledgers.get(fn);
    if (!l) {
      l = { memoryMb: 0, invocations: 0, coldStarts: 0, billedMs: 0, running: 0, lastAt: this.since, instanceMs: 0 };
      this.ledgers.set(fn, l);
    }
    if (settings !== undefined) {
      // One row per function prices all its time at one memory size; a resized function is a new deployment to meter apart.
      if (l.memoryMb !== 0 && l.memoryMb !== settings.memoryMb) {
        throw new ConfigError(`function ${fn} is metered at ${l.memoryMb} MB and was invoked with ${settings.memoryMb} MB`);
      }
      l.memoryMb = settings.memoryMb;
    }
    return l;
  }

  /**
   * One invocation of `fn` finished: its duration in ms (fractional), whether it was a cold start.
   * The duration is what gets billed, so for a cold start it should include the instance's
   * initialization when the modelled provider charges for that.
   */
  invocation(fn: string, settings: FunctionSettings, durationMs: number, coldStart: boolean): void {
    const billed = billedDurationMs(durationMs, this.prices.billingGranularityMs);
    const l = this.ledger(fn, settings);
    l.invocations++;
    l.billedMs += billed;
    if (coldStart) l.coldStarts++;
  }

  /**
   * Several invocations of `fn` at once, already billed: `billedMs` is the sum of their
   * durations each rounded up to the price model's granularity (as an instance reports them).
   */
  invocations(fn: string, settings: FunctionSettings, count: number, billedMs: number, coldStarts: number): void {
    for (const [name, v] of [['count', count], ['billedMs', billedMs], ['coldStarts', coldStarts]] as const) {
      if (!Number.isInteger(v) || v < 0) throw new RangeError(`function ${fn}: ${name} must be a whole number >= 0, got ${v}`);
    }
    if (coldStarts > count) throw new RangeError(`function ${fn}: ${coldStarts} cold starts among ${count} invocations`);
    const l = this.ledger(fn, settings);
    l.invocations += count;
    l.billedMs += billedMs;
    l.coldStarts += coldStarts;
  }

  /** Brings instance time up to `at`: every running instance accrues the time since the last event. */
  private advance(fn: string, l: Ledger, at: number): void {
    if (!Number.isFinite(at) || at < l.lastAt) throw new RangeError(`function ${fn}: instance event at ${at} is before the previous one at ${l.lastAt}`);
    l.instanceMs += l.running * (at - l.lastAt);
    l.lastAt = at;
  }

  /** Instance lifecycle, for instance-seconds (what an always-on equivalent would have paid for idle time too). */
  instanceStarted(fn: string, at: number, settings?: FunctionSettings): void {
    const l = this.ledger(fn, settings);
    this.advance(fn, l, at);
    l.running++;
  }

  instanceStopped(fn: string, at: number): void {
    const l = this.ledger(fn, undefined);
    if (l.running === 0) throw new RangeError(`function ${fn}: an instance stopped at ${at} while none was running`);
    this.advance(fn, l, at);
    l.running--;
  }

  /** Instances of `fn` running now. */
  running(fn: string): number {
    return this.ledgers.get(fn)?.running ?? 0;
  }

  /** Usage and cost from `since` to `now`; instances still running count up to `now`. */
  report(now: number): MeteringReport {
    if (!(now >= this.since)) throw new RangeError(`report time ${now} is before the metering start ${this.since}`);
    const p = this.prices;
    const functions: FunctionUsage[] = [];
    let invocations = 0;
    let mbMs = 0;
    for (const fn of [...this.ledgers.keys()].sort()) {
      const l = this.ledgers.get(fn)!;
      if (now < l.lastAt) throw new RangeError(`report time ${now} is before function ${fn}'s last instance event at ${l.lastAt}`);
      const fnMbMs = l.billedMs * l.memoryMb;
      const gbSeconds = fnMbMs / MB_MS_PER_GB_SECOND;
      const requestCost = (l.invocations * p.perMillionRequests) / 1e6;
      const computeCost = gbSeconds * p.perGbSecond;
      functions.push({
        fn,
        memoryMb: l.memoryMb,
        invocations: l.invocations,
        coldStarts: l.coldStarts,
        billedMs: l.billedMs,
        gbSeconds,
        requestCost,
        computeCost,
        cost: requestCost + computeCost,
        instanceSeconds: (l.instanceMs + l.running * (now - l.lastAt)) / 1000,
      });
      invocations += l.invocations;
      mbMs += fnMbMs;
    }
    // Totals from the integer sums, not from adding the rounded per-function figures.
    const gbSeconds = mbMs / MB_MS_PER_GB_SECOND;
    const cost = (invocations * p.perMillionRequests) / 1e6 + gbSeconds * p.perGbSecond;
    return { prices: p, since: this.since, until: now, functions, total: { invocations, gbSeconds, cost } };
  }

  /** Prometheus counters (invocations, billed ms, GB-seconds, cold starts, per function) registered on `registry`. */
  register(registry: client.Registry): void {
    const ledgers = this.ledgers;
    // The sums live in the ledgers: each scrape sets the counters from them, as the call telemetry does.
    const counter = (name: string, help: string, value: (l: Ledger) => number): void => {
      new client.Counter({
        name,
        help,
        labelNames: ['function'],
        registers: [registry],
        collect() {
          this.reset();
          for (const [fn, l] of ledgers) this.inc({ function: fn }, value(l));
        },
      });
    };
    counter('evolith_serverless_invocations_total', 'Function invocations', (l) => l.invocations);
    counter('evolith_serverless_cold_starts_total', 'Invocations that started a new instance', (l) => l.coldStarts);
    counter('evolith_serverless_billed_milliseconds_total', 'Billed invocation time, each rounded up to the billing granularity', (l) => l.billedMs);
    counter('evolith_serverless_gb_seconds_total', 'Billed GB-seconds: billed time times configured memory', (l) => (l.billedMs * l.memoryMb) / MB_MS_PER_GB_SECOND);
    new client.Gauge({
      name: 'evolith_serverless_instances',
      help: 'Function instances running',
      labelNames: ['function'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [fn, l] of ledgers) this.set({ function: fn }, l.running);
      },
    });
  }
}

/**
 * What the same period costs always on: `processes` processes, each needing `memoryMbEach`,
 * packed on `vm` instances for `seconds`.
 *
 * A VM holds one process per vCPU, and no more than fit in its memory (the whole memory is
 * counted, leaving nothing to the OS, which flatters the always-on side). Each VM is billed per
 * second with a 60-second minimum, as EC2 bills Linux on demand.
 */
export function alwaysOnCost(
  processes: number,
  memoryMbEach: number,
  seconds: number,
  vm: VmPrice = ALWAYS_ON_VM,
): { vms: number; cost: number; explanation: string } {
  if (!Number.isInteger(processes) || processes < 0) throw new RangeError(`processes must be a non-negative integer, got ${processes}`);
  if (!(memoryMbEach > 0)) throw new RangeError(`memory per process must be positive, got ${memoryMbEach}`);
  if (!Number.isFinite(seconds) || seconds < 0) throw new RangeError(`seconds must be a finite number >= 0, got ${seconds}`);
  const byMemory = Math.floor((vm.memoryGb * 1024) / memoryMbEach);
  const perVm = Math.min(vm.vcpus, byMemory);
  if (perVm < 1) throw new ConfigError(`a process of ${memoryMbEach} MB does not fit on ${vm.name} (${vm.memoryGb} GiB)`);
  const vms = Math.ceil(processes / perVm);
  const billedSeconds = vms === 0 ? 0 : Math.max(60, Math.ceil(seconds));
  const cost = (vms * vm.perHour * billedSeconds) / 3600;
  const explanation =
    `${processes} process${processes === 1 ? '' : 'es'} of ${memoryMbEach} MB, ${perVm} per ${vm.name} ` +
    `(one per vCPU, within ${vm.memoryGb} GiB): ${vms} VM${vms === 1 ? '' : 's'} × $${vm.perHour}/h × ${billedSeconds} s = ${usd(cost)}`;
  return { vms, cost, explanation };
}

/** Dollars with enough places for micro-dollar loads. */
function usd(n: number): string {
  return `$${n.toFixed(6)}`;
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  // First column left-aligned (names), the numbers right-aligned.
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];
}

/** A plain-text report for `evolith metering` (a table per function, totals, and the always-on comparison line). */
export function formatReport(report: MeteringReport, alwaysOn?: ReturnType<typeof alwaysOnCost>): string {
  const seconds = (report.until - report.since) / 1000;
  const out = [`Metering, ${report.prices.name}, over ${seconds.toFixed(3)} s`, ''];
  const rows = report.functions.map((f) => [
    f.fn,
    String(f.memoryMb),
    String(f.invocations),
    String(f.coldStarts),
    String(f.billedMs),
    f.gbSeconds.toFixed(6),
    f.instanceSeconds.toFixed(3),
    usd(f.requestCost),
    usd(f.computeCost),
    usd(f.cost),
  ]);
  const { total } = report;
  const coldStarts = report.functions.reduce((n, f) => n + f.coldStarts, 0);
  const billedMs = report.functions.reduce((n, f) => n + f.billedMs, 0);
  const instanceSeconds = report.functions.reduce((n, f) => n + f.instanceSeconds, 0);
  const requestCost = (total.invocations * report.prices.perMillionRequests) / 1e6;
  const computeCost = total.gbSeconds * report.prices.perGbSecond;
  rows.push(['total', '', String(total.invocations), String(coldStarts), String(billedMs), total.gbSeconds.toFixed(6), instanceSeconds.toFixed(3), usd(requestCost), usd(computeCost), usd(total.cost)]);
  out.push(...table(['function', 'MB', 'invocations', 'cold', 'billed ms', 'GB-s', 'instance-s', 'requests', 'compute', 'cost'], rows));
  if (alwaysOn) {
    const ratio = total.cost > 0 ? ` (${(alwaysOn.cost / total.cost).toFixed(1)}× serverless)` : '';
    out.push('', `Serverless: ${usd(total.cost)}. Always on: ${usd(alwaysOn.cost)}${ratio}: ${alwaysOn.explanation}`);
  }
  return out.join('\n') + '\n';
}
