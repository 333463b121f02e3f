/**
 * Outlier detection, as Envoy does it for Istio's DestinationRule: an endpoint that fails
 * `consecutiveErrors` calls in a row is ejected (no call is sent to it) for `baseEjectionMs`
 * times the number of times it has been ejected, unless that would eject more than
 * `maxEjectionPercent` of the service's endpoints (one may always be). It comes back by itself when its time is up;
 * a success resets its count. Failures are what a server or the network did: a refused or
 * dropped connection, a timeout, an EVOLITH_UNAVAILABLE or EVOLITH_INTERNAL answer. Business
 * errors and refusals of the caller are not.
 */
export interface OutlierSettings {
  readonly consecutiveErrors: number;
  readonly baseEjectionMs: number;
  readonly maxEjectionPercent: number;
}

interface EndpointRecord {
  consecutive: number;
  ejections: number;
  ejectedUntil: number;
}

export class OutlierDetector {
  private readonly endpoints = new Map<string, EndpointRecord>();
  /** When the last ejection now in force ends: before it, some endpoint may be ejected; after it, none is. */
  private lastEnd = 0;

  constructor(private settings: OutlierSettings) {}

  configure(settings: OutlierSettings): void {
    this.settings = settings;
  }

  /** Whether any endpoint may be ejected now (false is certain: the common case costs no lookup). */
  anyEjected(now = Date.now()): boolean {
    return this.lastEnd > now;
  }

  /** Whether `endpoint` is ejected now. */
  ejected(endpoint: string, now = Date.now()): boolean {
    const r = this.endpoints.get(endpoint);
    return r !== undefined && r.ejectedUntil > now;
  }

  /** When the endpoint's ejection ends (epoch ms), if it is ejected now. */
  ejectedUntil(endpoint: string, now = Date.now()): number | undefined {
    const r = this.endpoints.get(endpoint);
    return r && r.ejectedUntil > now ? r.ejectedUntil : undefined;
  }

  succeeded(endpoint: string): void {
    const r = this.endpoints.get(endpoint);
    if (r) r.consecutive = 0;
  }

  /**
   * A failure at `endpoint`, one of `all` (the service's endpoints now). Returns true when it
   * ejected the endpoint.
   */
  failed(endpoint: string, all: readonly string[], now = Date.now()): boolean {
    let r = this.endpoints.get(endpoint);
    if (!r) this.endpoints.set(endpoint, (r = { consecutive: 0, ejections: 0, ejectedUntil: 0 }));
    r.consecutive++;
    if (r.consecutive < this.settings.consecutiveErrors || r.ejectedUntil > now) return false;
    let ejectedNow = 0;
    for (const e of all) if (e !== endpoint && this.ejected(e, now)) ejectedNow++;
    // As in Envoy, one endpoint may always be ejected, whatever the percentage says.
    if (ejectedNow > 0 && ((ejectedNow + 1) * 100) / Math.max(1, all.length) > this.settings.maxEjectionPercent) return false;
    r.ejections++;
    r.consecutive = 0;
    r.ejectedUntil = now + this.settings.baseEjectionMs * r.ejections;
    this.lastEnd = Math.max(this.lastEnd, r.ejectedUntil);
    return true;
  }

  /** Forgets endpoints that are gone, so addresses that come and go leave nothing behind. */
  retain(live: ReadonlySet<string>): void {
    for (const e of this.endpoints.keys()) if (!live.has(e)) this.endpoints.delete(e);
  }
}
