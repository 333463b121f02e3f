/**
 * Picks the instance for each attempt: the service's endpoints from discovery, minus ejected
 * ones and open circuits, untried ones first (a retry goes elsewhere when it can), then the
 * balancer's choice. The choice travels on the call (`call.endpoint`) to the links below and
 * the terminal, which sends there and nowhere else.
 */
import { endpointKey } from '../discovery/endpoint-stats.js';
import { UnavailableError } from '../kernel/errors.js';
import type { Call, Link, Next } from '../kernel/placement.js';
import type { Balancer, Discovery, Endpoint } from '../kernel/plugins.js';
import { attemptsOf, Terminal } from './attempts.js';
import type { EndpointGuards } from './endpoint-guards.js';

export class ChooseEndpointLink implements Link {
  readonly name = 'choose endpoint';

  constructor(
    private readonly service: string,
    private readonly discovery: Discovery,
    private readonly balancer: Balancer,
    private readonly guards: EndpointGuards,
  ) {}

  wrap(next: Next): Next {
    return (call) => {
      call.endpoint = this.choose(call);
      return next(call);
    };
  }

  private choose(call: Call): Endpoint {
    const { method } = call;
    const log = attemptsOf(call);
    const all = this.discovery.endpoints(this.service);
    log.endpoints = all;
    this.guards.observe(this.service, all);
    if (all.length === 0) {
      throw new Terminal(new UnavailableError(`${method.fullName}: no instance of ${this.service} is registered`, { method: method.fullName, maybeExecuted: false }));
    }
    const now = Date.now();
    let available: Endpoint[] | undefined;
    for (let i = 0; i < all.length; i++) {
      const e = all[i]!;
      const why = this.guards.peek(endpointKey(e))?.unavailable(now);
      if (why === undefined) {
        if (available) available.push(e);
        continue;
      }
      // The first endpoint passed over: the ones before it were available.
      available ??= all.slice(0, i);
      log.skipped.set(endpointKey(e), { endpoint: e, reason: why });
    }
    const usable = available ?? all;
    const untried = log.failures.size === 0 ? usable : usable.filter((e) => !log.failures.has(endpointKey(e)));
    // Hand the balancer the discovery list itself when nothing was filtered: it caches per list.
    const pool = untried.length > 0 ? untried : usable;
    if (pool.length === 0) throw new Terminal(undefined);
    return this.balancer.pick(pool, method, call.parsed) ?? pool[0]!;
  }
}
