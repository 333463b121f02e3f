/**
 * The client library's resilience, as links of a placement chain (see kernel/placement.ts).
 * For each callee service, outermost first:
 *
 *   bulkhead (per callee: max concurrent + queue; overflow is EVOLITH_UNAVAILABLE)
 *   → retry (idempotent methods, retryable failures, backoff with jitter, budget; the deadline)
 *   → choose endpoint (discovery → skip ejected endpoints and open circuits → balancer)
 *   → circuit (per endpoint; statistics; ejection)
 *   → the deployer's terminal (TCP to the chosen endpoint)
 *
 * One Resilience per process holds what the links share across calls: endpoint statistics
 * and guards, retry budgets, the balancer, and the live policy table.
 */
import pino, { type Logger } from 'pino';
import { ConsistentHashBalancer, createBalancer, keyOfPath, type Affinity } from '../discovery/balancers.js';
import { EndpointStats } from '../discovery/endpoint-stats.js';
import { ConfigError } from '../kernel/errors.js';
import type { Link } from '../kernel/placement.js';
import type { Balancer, Discovery } from '../kernel/plugins.js';
import { PolicyTable, type BulkheadSize } from '../kernel/policy-table.js';
import { BulkheadLink } from './bulkhead-link.js';
import { ChooseEndpointLink } from './choose-endpoint-link.js';
import { CircuitLink } from './circuit-link.js';
import type { CircuitOptions, EjectionOptions } from './endpoint-guard.js';
import { EndpointGuards, type EndpointHealth } from './endpoint-guards.js';
import { DEFAULT_RETRY, RetryLink, type RetryOptions } from './retry-link.js';
import { RetryBudget, type RetryBudgetOptions } from './retry-budget.js';

export type { EndpointHealth } from './endpoint-guards.js';

export interface ResilienceOptions {
  discovery: Discovery;
  /** The process's live policy table (timeouts, retries, bulkheads from the topology). */
  policies?: PolicyTable;
  /** Shared with the balancer, so its choices see the calls these links make. */
  stats?: EndpointStats;
  /** Default: power of two choices over `stats`, with `affinity` on top. */
  balancer?: Balancer;
  /** Consistent-hash affinity by method (`'warehouse.getProduct': 'id'`), for the default balancer. */
  affinity?: Affinity;
  retry?: Partial<RetryOptions>;
  budget?: RetryBudgetOptions;
  circuit?: Partial<CircuitOptions>;
  ejection?: Partial<EjectionOptions>;
  /** Per callee service: calls in flight (default 256) and calls waiting for a slot (default 512). */
  bulkhead?: Partial<BulkheadSize>;
  log?: Logger;
}

export class Resilience {
  readonly stats: EndpointStats;
  readonly guards: EndpointGuards;
  readonly policies: PolicyTable;
  readonly balancer: Balancer;
  private readonly discovery: Discovery;
  private readonly retry: RetryOptions;
  private readonly bulkheadDefaults: BulkheadSize;
  private readonly budgetOptions: RetryBudgetOptions;
  private readonly budgets = new Map<string, RetryBudget>();
  private readonly log: Logger;

  constructor(options: ResilienceOptions) {
    this.discovery = options.discovery;
    this.log = options.log ?? pino({ level: 'silent' });
    this.policies = options.policies ?? new PolicyTable();
    this.stats = options.stats ?? new EndpointStats();
    this.balancer = options.balancer ?? createBalancer({ stats: this.stats, affinity: options.affinity });
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.bulkheadDefaults = { maxConcurrent: 256, maxQueue: 512, ...options.bulkhead };
    this.budgetOptions = options.budget ?? {};
    this.guards = new EndpointGuards(
      this.stats,
      { consecutiveFailures: 5, halfOpenAfterMs: 5_000, ...options.circuit },
      { consecutiveFailures: 5, baseMs: 10_000, maxMs: 300_000, maxPercent: 50, ...options.ejection },
      this.log,
    );
    this.warnIgnoredKeys();
    this.policies.onChange(() => this.warnIgnoredKeys());
  }

  /** The resilience links for calls to `service`, outermost first. */
  links(service: string): Link[] {
    return [
      new BulkheadLink(service, this.policies, this.bulkheadDefaults),
      new RetryLink(service, this.policies, this.budget(service), this.guards, this.retry),
      new ChooseEndpointLink(service, this.discovery, this.balancer, this.guards),
      new CircuitLink(service, this.guards),
    ];
  }

  /** Circuit, ejection and statistics of every endpoint called so far. */
  health(): EndpointHealth[] {
    return this.guards.health();
  }

  /**
   * Applies a new affinity table (a configuration push from the topology); an invalid one is
   * refused whole with a ConfigError.
   */
  setAffinity(affinity: Affinity): void {
    if (!(this.balancer instanceof ConsistentHashBalancer)) throw new ConfigError('affinity needs the default (consistent-hash capable) balancer');
    for (const k of Object.values(affinity)) if (typeof k === 'string') keyOfPath(k);
    this.balancer.setAffinity(affinity);
  }

  private budget(service: string): RetryBudget {
    let b = this.budgets.get(service);
    if (!b) this.budgets.set(service, (b = new RetryBudget(this.budgetOptions)));
    return b;
  }

  private warnIgnoredKeys(): void {
    const ignored = this.policies.ignoredBulkheadKeys();
    if (ignored.length > 0) this.log.warn({ keys: ignored }, 'maxConcurrent/maxQueue apply per service; set them on the service or "*"');
  }
}
