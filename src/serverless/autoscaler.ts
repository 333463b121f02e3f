/**
 * How many instances a serverless function should run, decided from the concurrency it sees.
 * Modelled on Knative's pod autoscaler (KPA); this module only decides: the caller records
 * samples and asks for a decision with an explicit `now`, so every answer follows from the
 * recorded inputs alone and a test can replay any timeline.
 *
 * The algorithm, in order:
 *
 * 1. Samples of the total concurrency (calls in flight across every instance, plus calls held
 *    while none runs) fall into one-second buckets; a bucket's value is the mean of its samples.
 * 2. A window's average at `now` is the sum of the bucket values in the window's last seconds
 *    (the current, partial second included) divided by the window's length in seconds. A second
 *    without samples counts as 0. While the history is younger than the window, the divisor is
 *    the history's age in seconds instead, so a fresh demand is not diluted by seconds nobody
 *    measured. The history begins with the first non-zero sample (zeros before any demand say
 *    nothing) and is dropped when a decision goes to zero instances, so the next burst after an
 *    idle period is measured as itself rather than averaged with the idle minute before it.
 * 3. Two windows: the stable one (60 s) and the panic one (6 s). Each gives a wanted count,
 *    `ceil(average / targetConcurrency)`, kept within the rate limits relative to the ready
 *    instances: at most `ceil(ready × maxScaleUpRate)` and at least `floor(ready / maxScaleDownRate)`
 *    (with ready 0 the limits are taken against 1 up and 0 down).
 * 4. Panic begins when the panic count reaches `panicThreshold × ready` (ready counted as at least
 *    1, so a burst held at zero instances panics too). While panicking the decision never goes
 *    down: it is the largest of the stable count, the panic count and the highest panic decision
 *    so far. Panic ends once a full stable window has passed since the condition last held: by then
 *    the surge is inside the stable average, which takes over smoothly.
 * 5. The result is kept within [minInstances, maxInstances].
 * 6. Zero instances only when minInstances is 0, the stable average is 0, and the last request
 *    arrived more than `scaleToZeroGraceMs` ago; any demand in either window, or a request within
 *    the grace, keeps at least one instance (or starts one from zero).
 *
 * Settings and the Knative annotations (`autoscaling.knative.dev/...`) they stand for:
 *
 *   targetConcurrency    target (with metric "concurrency"), container-concurrency-target-default
 *   minInstances         min-scale
 *   maxInstances         max-scale
 *   stableWindowMs       window (stable-window in the config map)
 *   panicWindowMs        panic-window-percentage (here an absolute length: 6 s = 10 % of 60 s)
 *   panicThreshold       panic-threshold-percentage (here a ratio: 2.0 = 200 %)
 *   scaleToZeroGraceMs   scale-to-zero-pod-retention-period (with scale-to-zero-grace-period's role)
 *   maxScaleUpRate       max-scale-up-rate (config map)
 *   maxScaleDownRate     max-scale-down-rate (config map)
 */
import { ConfigError } from '../kernel/errors.js';

export interface ScalingSettings {
  /** Concurrent calls one instance should carry on average; > 0. */
  readonly targetConcurrency: number;
  /** Instances kept even with no demand; an integer >= 0. */
  readonly minInstances: number;
  /** Instances never exceeded; an integer >= max(1, minInstances). */
  readonly maxInstances: number;
  /** The averaging window of ordinary decisions. */
  readonly stableWindowMs: number;
  /** The short window that notices a surge; shorter than the stable one. */
  readonly panicWindowMs: number;
  /** Panic when the panic window wants this many times the ready instances (2.0 = 200 %). */
  readonly panicThreshold: number;
  /** After the last request, at least one instance stays this long. */
  readonly scaleToZeroGraceMs: number;
  /** One decision asks for at most ready × this. */
  readonly maxScaleUpRate: number;
  /** One decision asks for no fewer than ready / this. */
  readonly maxScaleDownRate: number;
}

export const DEFAULT_SCALING: Omit<ScalingSettings, 'targetConcurrency' | 'minInstances' | 'maxInstances'> = Object.freeze({
  stableWindowMs: 60_000,
  panicWindowMs: 6_000,
  panicThreshold: 2.0,
  scaleToZeroGraceMs: 30_000,
  maxScaleUpRate: 1000,
  maxScaleDownRate: 2,
});

const BUCKET_MS = 1000;

/**
 * Every problem with the settings (defaults filled in for what is absent), each a sentence that
 * names the setting and its value; empty when they are usable.
 */
export function checkScaling(s: Partial<ScalingSettings>): string[] {
  const full: Partial<ScalingSettings> = { ...DEFAULT_SCALING, ...definedOnly(s) };
  const problems: string[] = [];
  const num = (name: keyof ScalingSettings): number | undefined => {
    const v = full[name];
    if (v === undefined) {
      problems.push(`${name} is required`);
      return undefined;
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      problems.push(`${name} (${String(v)}) is not a finite number`);
      return undefined;
    }
    return v;
  };
  const target = num('targetConcurrency');
  if (target !== undefined && target <= 0) problems.push(`targetConcurrency (${target}) must be above 0`);
  const min = num('minInstances');
  if (min !== undefined && (!Number.isInteger(min) || min < 0)) problems.push(`minInstances (${min}) must be a whole number >= 0`);
  const max = num('maxInstances');
  if (max !== undefined) {
    if (!Number.isInteger(max) || max < 1) problems.push(`maxInstances (${max}) must be a whole number >= 1`);
    else if (min !== undefined && max < min) problems.push(`maxInstances (${max}) is below minInstances (${min})`);
  }
  const stable = num('stableWindowMs');
  if (stable !== undefined && stable < BUCKET_MS) problems.push(`stableWindowMs (${stable}) must be at least ${BUCKET_MS} (one bucket)`);
  const panic = num('panicWindowMs');
  if (panic !== undefined) {
    if (panic < BUCKET_MS) problems.push(`panicWindowMs (${panic}) must be at least ${BUCKET_MS} (one bucket)`);
    else if (stable !== undefined && panic >= stable) problems.push(`panicWindowMs (${panic}) must be shorter than stableWindowMs (${stable})`);
  }
  // At or below 1 the service would panic whenever it runs at its target, which is the normal state.
  const threshold = num('panicThreshold');
  if (threshold !== undefined && threshold <= 1) problems.push(`panicThreshold (${threshold}) must be above 1 (100 %)`);
  const grace = num('scaleToZeroGraceMs');
  if (grace !== undefined && grace < 0) problems.push(`scaleToZeroGraceMs (${grace}) must be >= 0`);
  // A rate of 1 would forbid any change at all.
  const up = num('maxScaleUpRate');
  if (up !== undefined && up <= 1) problems.push(`maxScaleUpRate (${up}) must be above 1`);
  const down = num('maxScaleDownRate');
  if (down !== undefined && down <= 1) problems.push(`maxScaleDownRate (${down}) must be above 1`);
  return problems;
}

/** Complete settings from partial ones and the defaults; a ConfigError lists every problem. */
export function scalingSettings(s: Partial<ScalingSettings>): ScalingSettings {
  const problems = checkScaling(s);
  if (problems.length > 0) throw new ConfigError(`Invalid scaling settings: ${problems.join('; ')}`, { problems });
  return Object.freeze({ ...DEFAULT_SCALING, ...definedOnly(s) }) as ScalingSettings;
}

/** `{ x: undefined }` must not hide a default when spread over it. */
function definedOnly(s: Partial<ScalingSettings>): Partial<ScalingSettings> {
  return Object.fromEntries(Object.entries(s).filter(([, v]) => v !== undefined)) as Partial<ScalingSettings>;
}

export interface Decision {
  /** Instances wanted now. */
  readonly desired: number;
  readonly panic: boolean;
  /** Average concurrency over the stable window. */
  readonly stableConcurrency: number;
  /** Average concurrency over the panic window. */
  readonly panicConcurrency: number;
  /** One line with the inputs and each step that changed the count. */
  readonly reason: string;
}

interface Bucket {
  sum: number;
  count: number;
}

export class Autoscaler {
  private settings: ScalingSettings;
  /** Second index → the samples of that second. */
  private readonly buckets = new Map<number, Bucket>();
  /** The second the history begins; undefined while there is none. */
  private firstSecond: number | undefined;
  private lastRequestAt: number | undefined;
  /** When the current panic began, and when its condition last held. */
  private panicStartedAt: number | undefined;
  private panicLastHeldAt = 0;
  /** The highest decision of the current panic: while it lasts, no decision goes below it. */
  private maxPanicDesired = 0;

  constructor(settings: ScalingSettings) {
    this.settings = scalingSettings(settings);
  }

  /**
   * Takes new settings from now on. The recorded history stays; a longer stable window than
   * before sees no more of it than the old one kept. An ongoing panic continues under the new
   * thresholds.
   */
  configure(settings: ScalingSettings): void {
    this.settings = scalingSettings(settings);
  }

  /** Concurrency observed now (calls in flight across all instances, including calls held at the activator while none runs). */
  record(now: number, concurrency: number): void {
    if (!Number.isFinite(now) || !Number.isFinite(concurrency) || concurrency < 0) {
      throw new RangeError(`A concurrency sample needs a finite time and a count >= 0, got ${concurrency} at ${now}`);
    }
    const second = Math.floor(now / BUCKET_MS);
    if (this.firstSecond === undefined) {
      if (concurrency === 0) return;
      this.firstSecond = second;
    }
    const bucket = this.buckets.get(second);
    if (bucket) {
      bucket.sum += concurrency;
      bucket.count += 1;
    } else {
      this.buckets.set(second, { sum: concurrency, count: 1 });
    }
    this.prune(second);
  }

  /** A request arrived (for the scale-to-zero grace). */
  requestArrived(now: number): void {
    if (this.lastRequestAt === undefined || now > this.lastRequestAt) this.lastRequestAt = now;
  }

  /** The decision at `now`, given how many instances are ready. */
  decide(now: number, readyInstances: number): Decision {
    const s = this.settings;
    const ready = Math.max(0, Math.floor(readyInstances));
    const inGrace = this.lastRequestAt !== undefined && now - this.lastRequestAt < s.scaleToZeroGraceMs;
    const graceNote = (): string =>
      this.lastRequestAt === undefined ? 'no request recorded' : `last request ${seconds(now - this.lastRequestAt)} ago, grace ${seconds(s.scaleToZeroGraceMs)}`;

    if (this.firstSecond === undefined) {
      // Nothing measured: the floor, or one instance for a request that is waiting for it.
      const desired = inGrace ? Math.min(s.maxInstances, Math.max(1, s.minInstances)) : s.minInstances;
      const reason = inGrace ? `no samples yet; ${graceNote()} → ${desired}` : `no samples yet → min ${desired}`;
      return this.endPanic({ desired, panic: false, stableConcurrency: 0, panicConcurrency: 0, reason });
    }

    const stable = this.average(now, s.stableWindowMs);
    const panicAvg = this.average(now, s.panicWindowMs);
    const stableWant = Math.ceil(stable / s.targetConcurrency);
    const panicWant = Math.ceil(panicAvg / s.targetConcurrency);
    const parts = [
      `stable avg ${stable.toFixed(1)} / target ${s.targetConcurrency} → ${stableWant}`,
      `panic avg ${panicAvg.toFixed(1)} → ${panicWant}`,
    ];

    const maxUp = Math.ceil(Math.max(1, ready) * s.maxScaleUpRate);
    const maxDown = Math.floor(ready / s.maxScaleDownRate);
    const limit = (n: number): number => Math.min(Math.max(n, maxDown), maxUp);
    const stableLimited = limit(stableWant);
    const panicLimited = limit(panicWant);

    // Ready 0 is compared as 1: a burst held while nothing runs is the surge panic exists for.
    const overThreshold = panicWant >= s.panicThreshold * Math.max(1, ready);
    if (overThreshold) {
      this.panicStartedAt ??= now;
      this.panicLastHeldAt = now;
    } else if (this.panicStartedAt !== undefined && now - this.panicLastHeldAt >= s.stableWindowMs) {
      this.panicStartedAt = undefined;
      this.maxPanicDesired = 0;
      parts.push(`panic over (threshold last met ${seconds(now - this.panicLastHeldAt)} ago)`);
    }

    let desired = stableLimited;
    let unlimited = stableWant;
    const panicking = this.panicStartedAt !== undefined;
    if (panicking) {
      desired = Math.max(stableLimited, panicLimited, this.maxPanicDesired);
      unlimited = Math.max(stableWant, panicWant, this.maxPanicDesired);
      this.maxPanicDesired = desired;
      parts[1] += ` (panicking for ${seconds(now - (this.panicStartedAt ?? now))}, holding ${desired})`;
    }
    if (desired !== unlimited) parts.push(`rate limits with ${ready} ready [${maxDown}, ${maxUp}] → ${desired}`);

    if (desired > s.maxInstances) {
      desired = s.maxInstances;
      parts.push(`capped at max ${desired}`);
    }
    if (desired < s.minInstances) {
      desired = s.minInstances;
      parts.push(`raised to min ${desired}`);
    }

    // Any demand in the stable window rounds up to at least one instance above, so only an idle
    // window reaches 0 here; the grace still holds one for a request that arrived lately.
    if (desired === 0) {
      if (inGrace) {
        desired = 1;
        parts.push(`${graceNote()} → 1`);
      } else {
        // Idle for a full stable window and past the grace: the next demand starts a fresh history.
        this.buckets.clear();
        this.firstSecond = undefined;
        parts.push(`idle, ${graceNote()} → 0`);
      }
    }

    return { desired, panic: panicking, stableConcurrency: stable, panicConcurrency: panicAvg, reason: parts.join('; ') };
  }

  /** No history means no panic either. */
  private endPanic(d: Decision): Decision {
    this.panicStartedAt = undefined;
    this.maxPanicDesired = 0;
    return d;
  }

  /** The window's average at `now`, as the module comment describes. */
  private average(now: number, windowMs: number): number {
    if (this.firstSecond === undefined) return 0;
    const nowSecond = Math.floor(now / BUCKET_MS);
    const windowSeconds = Math.ceil(windowMs / BUCKET_MS);
    const age = nowSecond - this.firstSecond + 1;
    if (age <= 0) return 0;
    const divisor = Math.min(windowSeconds, age);
    let sum = 0;
    for (let sec = nowSecond - divisor + 1; sec <= nowSecond; sec++) {
      const b = this.buckets.get(sec);
      if (b) sum += b.sum / b.count;
    }
    return sum / divisor;
  }

  /** Keeps only the seconds the stable window can still see. */
  private prune(nowSecond: number): void {
    const oldest = nowSecond - Math.ceil(this.settings.stableWindowMs / BUCKET_MS) + 1;
    for (const sec of this.buckets.keys()) if (sec < oldest) this.buckets.delete(sec);
  }
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}
