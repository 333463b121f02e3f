import { afterEach, describe, expect, test } from 'vitest';
import { z } from 'zod';
import { Kit } from '../../test/fixtures/unit-kit.js';
import { defineContract, type MethodDef } from '../contract/define.js';
import { ConsistentHashBalancer, RoundRobinBalancer } from '../discovery/balancers.js';
import { BusinessError, ConfigError, ErrorCodes, ForbiddenError, TimeoutError, UnavailableError, ValidationError } from '../kernel/errors.js';
import { assemble, Call, type Next, type PlacementProvider } from '../kernel/placement.js';
import type { CallMeta, Discovery, Endpoint } from '../kernel/plugins.js';
import { checkOverrides, PolicyTable, type PolicyOverrides } from '../kernel/policy-table.js';
import { implement } from '../kernel/service.js';
import { newTrace } from '../kernel/trace.js';
import type { Affinity } from '../discovery/balancers.js';
import { Resilience, type ResilienceOptions } from './resilience.js';

const warehouse = defineContract({
  name: 'warehouse',
  version: '1.0.0',
  methods: {
    getProduct: { input: z.object({ id: z.string() }), output: z.unknown(), idempotent: true, timeoutMs: 2_000 },
    freeze: { input: z.object({ id: z.string() }), output: z.unknown() },
    list: { input: z.object({}), output: z.unknown(), idempotent: true },
  },
});
const { getProduct, freeze, list } = warehouse.methods;

class StaticDiscovery implements Discovery {
  constructor(public list: Endpoint[]) {}
  endpoints(): readonly Endpoint[] {
    return this.list;
  }
}

const ep = (n: number): Endpoint => ({ service: 'warehouse', id: `w${n}`, address: `10.0.0.${n}:7001` });
const A = ep(1);
const B = ep(2);
const C = ep(3);

const refused = (): Error => Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
/** The request went out and the connection dropped: it may have run. */
const dropped = (e: Endpoint): UnavailableError =>
  new UnavailableError(`connection to ${e.address} closed before the call answered`, { address: e.address, maybeExecuted: true });

const meta = (ms = 1_000): CallMeta => ({ deadline: Date.now() + ms, trace: newTrace() });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Behaviour = (m: CallMeta, e: Endpoint) => Promise<unknown>;

/** A fake transport: what each endpoint does, and a log of every attempt. */
class Fake {
  readonly attempts: Array<{ address: string; deadline: number; at: number }> = [];
  constructor(public behaviour: Record<string, Behaviour>) {}
  attempt = (m: CallMeta, e: Endpoint): Promise<unknown> => {
    this.attempts.push({ address: e.address, deadline: m.deadline, at: Date.now() });
    return this.behaviour[e.address]!(m, e);
  };
  to(address: string): number {
    return this.attempts.filter((a) => a.address === address).length;
  }
}

const ok: Behaviour = async (_m, e) => ({ from: e.id });

/**
 * The resilience links of one process, driven the way a chain drives them: each call runs down
 * bulkhead → retry → choose endpoint → circuit to a terminal that makes `attempt` against the
 * chosen endpoint.
 */
class Harness {
  readonly resilience: Resilience;
  private readonly chains = new Map<string, Next>();
  constructor(options: ResilienceOptions) {
    this.resilience = new Resilience(options);
  }
  get stats() {
    return this.resilience.stats;
  }
  execute(method: MethodDef, attempt: (m: CallMeta, e: Endpoint) => Promise<unknown>, m: CallMeta, input?: unknown): Promise<unknown> {
    let chain = this.chains.get(method.service);
    if (!chain) {
      chain = assemble({ links: this.resilience.links(method.service), terminal: { name: 'fake', send: (call: Call) => current.get(call)!(call, call.endpoint!) } });
      this.chains.set(method.service, chain);
    }
    const call = new Call(method, input, input, m.deadline, m.trace, m.caller, m.from);
    current.set(call, attempt);
    return chain(call);
  }
  health() {
    return this.resilience.health();
  }
  guard(e: Endpoint) {
    return this.resilience.guards.guard(e);
  }
  timeoutFor(method: MethodDef): number {
    return this.resilience.policies.timeoutFor(method);
  }
  setOverrides(overrides: PolicyOverrides): void {
    this.resilience.policies.set(overrides);
  }
  /** A configuration push: all of it or, if any part is invalid, none of it. */
  configure(update: { policies?: PolicyOverrides; affinity?: Affinity }): void {
    if (update.policies) checkOverrides(update.policies);
    if (update.affinity) this.resilience.setAffinity(update.affinity);
    if (update.policies) this.setOverrides(update.policies);
  }
}
const current = new WeakMap<Call, (m: CallMeta, e: Endpoint) => Promise<unknown>>();

type HarnessOptions = Omit<Partial<ResilienceOptions>, 'policies'> & { overrides?: PolicyOverrides; defaultTimeoutMs?: number; failoverUnsent?: boolean };

function harness(endpoints: Endpoint[], options: HarnessOptions = {}): Harness {
  const { overrides, defaultTimeoutMs, failoverUnsent, ...rest } = options;
  return new Harness({
    discovery: new StaticDiscovery(endpoints),
    balancer: new RoundRobinBalancer(),
    ...rest,
    retry: { initialDelayMs: 1, maxDelayMs: 5, ...(failoverUnsent === undefined ? {} : { failoverUnsent }), ...rest.retry },
    policies: new PolicyTable(overrides ?? {}, defaultTimeoutMs),
  });
}

const policy = harness;

async function failure(p: Promise<unknown>): Promise<any> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected the call to fail');
}

describe('retries', () => {
  test('an idempotent call that fails on one endpoint is retried on another', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)), [B.address]: ok });
    const out = await policy([A, B]).execute(getProduct, fake.attempt, meta(), { id: 'p1' });
    expect(out).toEqual({ from: 'w2' });
    expect(fake.attempts.map((a) => a.address)).toEqual([A.address, B.address]);
  });

  test('a timeout raised by the transport is retried while time remains', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(new TimeoutError(`${A.address} did not answer in time`)), [B.address]: ok });
    expect(await policy([A, B]).execute(getProduct, fake.attempt, meta())).toEqual({ from: 'w2' });
    expect(fake.attempts).toHaveLength(2);
  });

  test('a call that is not idempotent is never retried once it may have run', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)), [B.address]: ok });
    const err = await failure(policy([A, B]).execute(freeze, fake.attempt, meta(), { id: 'p1' }));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toBe(`warehouse.freeze: ${dropped(A).message}; not retried: warehouse.freeze is not idempotent`);
    expect(fake.attempts).toHaveLength(1);
  });

  test('a call that provably never left (connection refused) goes to another endpoint even when not idempotent', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(refused()), [B.address]: ok });
    expect(await policy([A, B]).execute(freeze, fake.attempt, meta())).toEqual({ from: 'w2' });
    expect(fake.attempts.map((a) => a.address)).toEqual([A.address, B.address]);
    // ...unless failover of unsent calls is turned off.
    const strict = new Fake({ [A.address]: async () => Promise.reject(refused()), [B.address]: ok });
    await failure(policy([A, B], { failoverUnsent: false }).execute(freeze, strict.attempt, meta()));
    expect(strict.attempts).toHaveLength(1);
  });

  test('validation, business and authorisation failures are never retried and reach the caller unchanged', async () => {
    for (const thrown of [
      new ValidationError('bad id', [{ path: 'id', message: 'too short' }]),
      new BusinessError('OUT_OF_STOCK', 'no stock left'),
      new ForbiddenError('needs ROLE_ADMIN'),
    ]) {
      const fake = new Fake({ [A.address]: async () => Promise.reject(thrown), [B.address]: ok });
      const p = policy([A, B]);
      expect(await failure(p.execute(getProduct, fake.attempt, meta()))).toBe(thrown);
      expect(fake.attempts).toHaveLength(1);
      expect(p.health()[0]).toMatchObject({ circuit: 'closed', consecutiveFailures: 0 });
    }
  });

  test('a failure from further down the chain is neither retried nor held against the endpoint', async () => {
    const deep = new UnavailableError('billing is down');
    deep.origin = 'billing.charge';
    const fake = new Fake({ [A.address]: async () => Promise.reject(deep), [B.address]: ok });
    const p = policy([A, B], { circuit: { consecutiveFailures: 1 } });
    expect(await failure(p.execute(getProduct, fake.attempt, meta()))).toBe(deep);
    expect(fake.attempts).toHaveLength(1);
    expect(p.health()[0]).toMatchObject({ address: A.address, circuit: 'closed', consecutiveFailures: 0 });
  });

  test('gives up after the configured number of attempts, with a message naming each failure', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)) });
    const err = await failure(policy([A]).execute(getProduct, fake.attempt, meta()));
    expect(fake.attempts).toHaveLength(3); // 1 + 2 retries by default
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toMatch(/^warehouse\.getProduct: all 1 endpoint unavailable \(connection to 10\.0\.0\.1:7001 closed/);
    expect(err.details).toMatchObject({ method: 'warehouse.getProduct', attempts: [{ endpoint: A.address, code: ErrorCodes.UNAVAILABLE }, {}, {}] });
  });

  test('the retry budget caps retries at its share of requests', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)) });
    const p = policy([A], {
      budget: { ratio: 0.2, minRetries: 0 },
      circuit: { consecutiveFailures: 10_000 },
    });
    const errors: Error[] = [];
    for (let i = 0; i < 100; i++) errors.push(await failure(p.execute(getProduct, fake.attempt, meta())));
    // Without the budget this would be 300 attempts (1 + 2 retries each).
    expect(fake.attempts.length - 100).toBe(20);
    expect(errors.filter((e) => /retry budget for warehouse exhausted/.test(e.message)).length).toBeGreaterThan(70);
  });
});

describe('circuit breaker per endpoint', () => {
  test('opens after consecutive failures, refusing calls without sending them', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)) });
    const p = policy([A], { circuit: { consecutiveFailures: 3, halfOpenAfterMs: 10_000 } });
    for (let i = 0; i < 3; i++) await failure(p.execute(freeze, fake.attempt, meta()));
    expect(p.health()[0]!.circuit).toBe('open');
    const err = await failure(p.execute(freeze, fake.attempt, meta()));
    expect(fake.attempts).toHaveLength(3);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toBe('warehouse.freeze: all 1 endpoint unavailable (circuit open on 10.0.0.1:7001)');
  });

  test('calls go to the healthy endpoints while one circuit is open', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)), [B.address]: ok, [C.address]: ok });
    const p = policy([A, B, C], { circuit: { consecutiveFailures: 2, halfOpenAfterMs: 10_000 }, ejection: { consecutiveFailures: 1_000 } });
    let failed = 0;
    for (let i = 0; i < 30; i++) await p.execute(freeze, fake.attempt, meta()).catch(() => failed++);
    expect(fake.to(A.address)).toBe(2);
    expect(failed).toBe(2);
    expect(fake.to(B.address) + fake.to(C.address)).toBe(28);
  });

  test('after the pause one probe goes through; its success closes the circuit', async () => {
    let healthy = false;
    let release: () => void = () => undefined;
    const fake = new Fake({
      [A.address]: async () => {
        if (!healthy) throw dropped(A);
        await new Promise<void>((r) => (release = r));
        return 'ok';
      },
    });
    const p = policy([A], { circuit: { consecutiveFailures: 2, halfOpenAfterMs: 80 } });
    for (let i = 0; i < 2; i++) await failure(p.execute(freeze, fake.attempt, meta()));
    expect(p.health()[0]!.circuit).toBe('open');
    healthy = true;
    await sleep(100);
    const probe = p.execute(freeze, fake.attempt, meta());
    await sleep(5);
    expect(p.health()[0]!.circuit).toBe('half-open');
    // While the probe is out, nobody else is sent to the endpoint.
    const during = await failure(p.execute(freeze, fake.attempt, meta()));
    expect(during.message).toMatch(/circuit half-open on 10\.0\.0\.1:7001 \(a probe call is in flight\)/);
    release();
    expect(await probe).toBe('ok');
    expect(p.health()[0]!.circuit).toBe('closed');
    const next = p.execute(freeze, fake.attempt, meta());
    await sleep(5);
    release();
    expect(await next).toBe('ok');
    expect(fake.attempts).toHaveLength(4);
  });

  test('a failed probe opens the circuit again', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)) });
    const p = policy([A], { circuit: { consecutiveFailures: 2, halfOpenAfterMs: 50 } });
    for (let i = 0; i < 2; i++) await failure(p.execute(freeze, fake.attempt, meta()));
    await sleep(70);
    await failure(p.execute(freeze, fake.attempt, meta()));
    expect(fake.attempts).toHaveLength(3);
    expect(p.health()[0]!.circuit).toBe('open');
    expect((await failure(p.execute(freeze, fake.attempt, meta()))).message).toMatch(/circuit open on/);
    expect(fake.attempts).toHaveLength(3);
  });

  test('the caller is told what failed on every endpoint', async () => {
    let aFails = true;
    const fake = new Fake({
      [A.address]: async () => {
        if (aFails) throw dropped(A);
        return 'ok';
      },
      [B.address]: async () => Promise.reject(refused()),
    });
    const p = policy([A, B], { circuit: { consecutiveFailures: 1, halfOpenAfterMs: 10_000 } });
    await failure(p.execute(freeze, fake.attempt, meta())); // opens A's circuit
    aFails = false;
    const err = await failure(p.execute(freeze, fake.attempt, meta()));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toBe('warehouse.freeze: all 2 endpoints unavailable (circuit open on 10.0.0.1:7001; 10.0.0.2:7001 refused connection)');
    expect(err.details.skipped).toEqual([{ endpoint: A.address, reason: 'circuit open on 10.0.0.1:7001' }]);
  });
});

describe('outlier ejection', () => {
  test('an endpoint with consecutive failures is ejected for a period that grows each time', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)), [B.address]: ok, [C.address]: ok });
    const p = policy([A, B, C], { circuit: { consecutiveFailures: 1_000 }, ejection: { consecutiveFailures: 2, baseMs: 300 } });
    const t0 = Date.now();
    for (let i = 0; i < 6; i++) await p.execute(freeze, fake.attempt, meta()).catch(() => undefined);
    expect(fake.to(A.address)).toBe(2);
    const first = p.health().find((h) => h.address === A.address)!.ejectedUntil!;
    expect(first - t0).toBeGreaterThanOrEqual(300);
    for (let i = 0; i < 10; i++) await p.execute(freeze, fake.attempt, meta());
    expect(fake.to(A.address)).toBe(2);
    await sleep(first - Date.now() + 20);
    // Back in rotation on probation: its next failure ejects it again, for twice as long.
    for (let i = 0; i < 3; i++) await p.execute(freeze, fake.attempt, meta()).catch(() => undefined);
    expect(fake.to(A.address)).toBe(3);
    const second = p.health().find((h) => h.address === A.address)!.ejectedUntil!;
    expect(second - first).toBeGreaterThanOrEqual(600);
    expect(p.guard(A).ejections).toBe(2);
  });

  test('never ejects more than maxPercent of the endpoints', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)), [B.address]: async () => Promise.reject(dropped(B)) });
    const p = policy([A, B], { circuit: { consecutiveFailures: 1_000 }, ejection: { consecutiveFailures: 1, maxPercent: 50 } });
    for (let i = 0; i < 6; i++) await failure(p.execute(freeze, fake.attempt, meta()));
    expect(p.health().filter((h) => h.ejectedUntil !== undefined)).toHaveLength(1);
  });
});

describe('bulkhead per callee', () => {
  test('overflow beyond max concurrent + queue is refused with a typed error saying so', async () => {
    const gates: Array<() => void> = [];
    const fake = new Fake({ [A.address]: () => new Promise((r) => gates.push(() => r('ok'))) });
    const p = policy([A], { overrides: { warehouse: { maxConcurrent: 2, maxQueue: 1 } } });
    const running = [1, 2, 3].map(() => p.execute(getProduct, fake.attempt, meta()));
    await sleep(5);
    expect(fake.attempts).toHaveLength(2);
    const err = await failure(p.execute(getProduct, fake.attempt, meta()));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.code).toBe(ErrorCodes.UNAVAILABLE);
    expect(err.message).toBe(
      'warehouse.getProduct: too many calls to warehouse (bulkhead full: 2 in flight, 1 queued); shed load or raise policies.warehouse.maxConcurrent',
    );
    // The queued call runs once a slot frees.
    gates.shift()!();
    await sleep(5);
    expect(fake.attempts).toHaveLength(3);
    for (const g of gates.splice(0)) g();
    await sleep(5);
    for (const g of gates.splice(0)) g();
    expect(await Promise.all(running)).toEqual(['ok', 'ok', 'ok']);
  });

  test('a call that waits in the queue past its deadline times out without being sent', async () => {
    let release: () => void = () => undefined;
    const fake = new Fake({ [A.address]: () => new Promise((r) => (release = () => r('ok'))) });
    const p = policy([A], { overrides: { '*': { maxConcurrent: 1, maxQueue: 5 } } });
    const first = p.execute(getProduct, fake.attempt, meta(1_000));
    const queued = await failure(p.execute(getProduct, fake.attempt, meta(50)));
    expect(queued).toBeInstanceOf(TimeoutError);
    release();
    await first;
    await sleep(5);
    expect(fake.attempts).toHaveLength(1);
  });
});

describe('deadlines', () => {
  test('every attempt gets the caller\'s deadline, never a later one', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)), [B.address]: async () => Promise.reject(dropped(B)) });
    const m = meta(1_000);
    await failure(policy([A, B]).execute(getProduct, fake.attempt, m));
    expect(fake.attempts).toHaveLength(3);
    for (const a of fake.attempts) expect(a.deadline).toBe(m.deadline);
  });

  test('a call that does not answer fails with a TimeoutError at its deadline', async () => {
    const fake = new Fake({ [A.address]: () => new Promise(() => undefined) });
    const t0 = Date.now();
    const err = await failure(policy([A]).execute(getProduct, fake.attempt, meta(100)));
    const took = Date.now() - t0;
    expect(err).toBeInstanceOf(TimeoutError);
    expect(err.message).toMatch(/^warehouse\.getProduct: no answer within the \d+ ms the call had/);
    expect(took).toBeGreaterThanOrEqual(95);
    expect(took).toBeLessThan(400);
  });

  test('backoff is cut short so a retry still fits before the deadline', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)) });
    const p = policy([A], { retry: { initialDelayMs: 5_000, maxDelayMs: 5_000, minTimeLeftMs: 200 } });
    const m = meta(600);
    const t0 = Date.now();
    const err = await failure(p.execute(getProduct, fake.attempt, m));
    // A 5 s backoff would have left room for one attempt only; capped, the retry ran in time,
    // leaving it the minimum time (so it waited about 400 ms, not 0 and not 5 s).
    expect(fake.attempts.length).toBeGreaterThanOrEqual(2);
    expect(fake.attempts[1]!.at - t0).toBeGreaterThanOrEqual(300);
    for (const a of fake.attempts) expect(a.at).toBeLessThan(m.deadline);
    expect(Date.now() - t0).toBeLessThan(600);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toMatch(/; no time left before the deadline$/);
    expect(fake.attempts.every((a) => a.deadline === m.deadline)).toBe(true);
  });

  test('a call whose deadline has already passed is not attempted', async () => {
    const fake = new Fake({ [A.address]: ok });
    const err = await failure(policy([A]).execute(getProduct, fake.attempt, { deadline: Date.now() - 1, trace: newTrace() }));
    expect(err).toBeInstanceOf(TimeoutError);
    expect(fake.attempts).toHaveLength(0);
  });
});

describe('timeouts and live overrides', () => {
  test('timeouts: method, then service, then the contract, then "*", then the default', () => {
    const p = policy([A], { defaultTimeoutMs: 9_000 });
    expect(p.timeoutFor(getProduct)).toBe(2_000);
    expect(p.timeoutFor(list)).toBe(9_000);
    p.setOverrides({ '*': { timeoutMs: 500 } });
    expect(p.timeoutFor(getProduct)).toBe(2_000);
    expect(p.timeoutFor(list)).toBe(500);
    p.setOverrides({ warehouse: { timeoutMs: 300 }, 'warehouse.getProduct': { timeoutMs: 100 } });
    expect(p.timeoutFor(getProduct)).toBe(100);
    expect(p.timeoutFor(list)).toBe(300);
    p.setOverrides({});
    expect(p.timeoutFor(getProduct)).toBe(2_000);
  });

  test('retries set by the topology apply to the next call', async () => {
    const fake = new Fake({ [A.address]: async () => Promise.reject(dropped(A)) });
    const p = policy([A], { circuit: { consecutiveFailures: 1_000 } });
    p.setOverrides({ 'warehouse.getProduct': { retries: 0 } });
    await failure(p.execute(getProduct, fake.attempt, meta()));
    expect(fake.attempts).toHaveLength(1);
    p.setOverrides({ warehouse: { retries: 4 } });
    await failure(p.execute(getProduct, fake.attempt, meta()));
    expect(fake.attempts).toHaveLength(6);
  });

  test('a bulkhead resized by the topology applies to the next call', async () => {
    const gates: Array<() => void> = [];
    const fake = new Fake({ [A.address]: () => new Promise((r) => gates.push(() => r('ok'))) });
    const p = policy([A], { overrides: { warehouse: { maxConcurrent: 1, maxQueue: 0 } } });
    const first = p.execute(getProduct, fake.attempt, meta());
    expect((await failure(p.execute(getProduct, fake.attempt, meta()))).message).toMatch(/bulkhead full: 1 in flight, 0 queued/);
    p.setOverrides({ warehouse: { maxConcurrent: 3, maxQueue: 0 } });
    const more = [p.execute(getProduct, fake.attempt, meta()), p.execute(getProduct, fake.attempt, meta()), p.execute(getProduct, fake.attempt, meta())];
    await sleep(5);
    expect(fake.attempts).toHaveLength(4);
    for (const g of gates) g();
    await Promise.all([first, ...more]);
  });

  test('an invalid push is refused whole and the running overrides stay', () => {
    const p = harness([A], { balancer: undefined });
    p.setOverrides({ warehouse: { timeoutMs: 300 } });
    expect(() => p.setOverrides({ warehouse: { timeoutMs: 100 }, '*': { retries: -1 } })).toThrow(ConfigError);
    expect(p.timeoutFor(list)).toBe(300);
    expect(() => p.configure({ policies: { warehouse: { timeoutMs: 100 } }, affinity: { 'warehouse.getProduct': 'a..b' } })).toThrow(ConfigError);
    expect(p.timeoutFor(list)).toBe(300);
  });

  test('affinity pushed live applies to the next call', async () => {
    const fake = new Fake({ [A.address]: ok, [B.address]: ok, [C.address]: ok });
    const p = harness([A, B, C], { balancer: undefined });
    p.configure({ affinity: { 'warehouse.getProduct': 'id' }, policies: { warehouse: { timeoutMs: 400 } } });
    const first = await p.execute(getProduct, fake.attempt, meta(), { id: 'p-3' });
    for (let i = 0; i < 10; i++) expect(await p.execute(getProduct, fake.attempt, meta(), { id: 'p-3' })).toEqual(first);
    expect(p.timeoutFor(getProduct)).toBe(400);
  });
});

describe('endpoint choice', () => {
  test('with no instance registered the caller is told so', async () => {
    const fake = new Fake({});
    const err = await failure(policy([]).execute(getProduct, fake.attempt, meta()));
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err.message).toBe('warehouse.getProduct: no instance of warehouse is registered');
  });

  test('affinity keeps a key on one endpoint, and moves it only while that endpoint is out', async () => {
    const fake = new Fake({ [A.address]: ok, [B.address]: ok, [C.address]: ok });
    const p = policy([A, B, C], {
      balancer: new ConsistentHashBalancer({ 'warehouse.getProduct': 'id' }),
      circuit: { consecutiveFailures: 1, halfOpenAfterMs: 10_000 },
    });
    const home = (await p.execute(getProduct, fake.attempt, meta(), { id: 'p-9' })) as { from: string };
    for (let i = 0; i < 5; i++) expect(await p.execute(getProduct, fake.attempt, meta(), { id: 'p-9' })).toEqual(home);
    const owner = [A, B, C].find((e) => e.id === home.from)!;
    fake.behaviour[owner.address] = async () => Promise.reject(dropped(owner));
    const moved = (await p.execute(getProduct, fake.attempt, meta(), { id: 'p-9' })) as { from: string };
    expect(moved.from).not.toBe(home.from);
    expect(await p.execute(getProduct, fake.attempt, meta(), { id: 'p-9' })).toEqual(moved);
  });

  test('the balancer sees the calls in flight through shared statistics', async () => {
    const gates: Array<() => void> = [];
    const fake = new Fake({ [A.address]: () => new Promise((r) => gates.push(() => r('a'))), [B.address]: ok });
    const p = harness([A, B], { balancer: undefined });
    const slow = [1, 2, 3].map(() => p.execute(list, fake.attempt, meta()));
    await sleep(5);
    // Power of two choices: with two endpoints, every pick compares both.
    for (let i = 0; i < 10; i++) await p.execute(list, fake.attempt, meta());
    expect(fake.to(A.address)).toBeLessThanOrEqual(3);
    expect(p.stats.get(A).outstanding).toBe(fake.to(A.address));
    for (const g of gates) g();
    await Promise.all(slow);
    expect(p.stats.get(A).outstanding).toBe(0);
  });
});

describe('with the Runtime', () => {
  const kit = new Kit();
  afterEach(() => kit.cleanup());

  const stock = defineContract({
    name: 'stock',
    version: '1.0.0',
    methods: { level: { input: z.object({ sku: z.string() }), output: z.object({ n: z.number() }), idempotent: true, timeoutMs: 700 } },
  });
  const shop = defineContract({
    name: 'shop',
    version: '1.0.0',
    methods: { check: { input: z.object({ sku: z.string() }), output: z.object({ n: z.number() }) } },
  });
  const shopService = implement(shop, { dependsOn: [stock], handlers: { check: async ({ sku }, ctx) => ctx.client(stock).level({ sku }) } });

  test('as a placement: calls reach a live endpoint with the caller\'s input and the contract\'s timeout', async () => {
    const s1: Endpoint = { service: 'stock', id: 's1', address: '10.0.1.1:7001' };
    const s2: Endpoint = { service: 'stock', id: 's2', address: '10.0.1.2:7001' };
    const sent: Array<{ address: string; input: unknown; method: MethodDef; budgetMs: number }> = [];
    const policies = new PolicyTable();
    const resilience = new Resilience({ discovery: new StaticDiscovery([s1, s2]), balancer: new RoundRobinBalancer(), policies });
    const placement: PlacementProvider = {
      placement: (service) => ({
        links: resilience.links(service),
        terminal: {
          name: 'fake',
          send: async (call) => {
            const e = call.endpoint!;
            sent.push({ address: e.address, input: call.input, method: call.method, budgetMs: call.deadline - Date.now() });
            if (e === s1) throw refused();
            return { n: 5 };
          },
        },
      }),
    };
    const rt = await kit.start([shopService], { placement, policies });
    expect(await rt.client(shop).check({ sku: 'x' })).toEqual({ n: 5 });
    expect(sent.map((s) => s.address)).toEqual([s1.address, s2.address]);
    expect(sent[1]).toMatchObject({ input: { sku: 'x' } });
    expect(sent[1]!.method.fullName).toBe('stock.level');
    expect(sent[0]!.budgetMs).toBeLessThanOrEqual(700);
    expect(sent[0]!.budgetMs).toBeGreaterThan(600);
    // The runtime and the links read one table: an edit reaches the next call's deadline.
    policies.set({ stock: { timeoutMs: 200 } });
    sent.length = 0;
    expect(await rt.client(shop).check({ sku: 'y' })).toEqual({ n: 5 });
    expect(sent[0]!.budgetMs).toBeLessThanOrEqual(200);
  });
});
