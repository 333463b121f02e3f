/**
 * Failure tests of the microservices architecture (issue 3, item 8): real processes started
 * through the CLI, real signals. What is proven here:
 *
 * - kill -9 of one of two warehouse replicas under steady read load: zero failed requests, and
 *   the supervisor restarts the replica;
 * - kill -9 of a payment replica during non-idempotent settlements: every client gets a Payment
 *   or a typed error, no payment is created twice, no stock is lost;
 * - a dead dependency fails fast with a typed error and opens its circuit; it serves again
 *   after the restart; a hung one times out, opens its circuit, and a half-open probe closes it;
 * - the registry down (its process stopped): calls keep working, and its return does not make
 *   clients forget live instances;
 * - editing evolith.yaml adds and removes a replica live while requests keep succeeding.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBookstore, type Bookstore } from '../support/bookstore-process.js';
import { ADMIN, getStock, setStock, settlementBody, UUID } from '../support/bookstore.js';
import {
  attempt,
  describeOutcomes,
  edgeEndpoints,
  live,
  makeBookstoreAppDir,
  pidOf,
  processAlive,
  readControlPlane,
  registryStatus,
  runLoad,
  waitFor,
  waitForInstances,
  watchRegistry,
  type ControlPlane,
  type Outcome,
  type RegistryInstance,
} from '../support/control-plane.js';
import { sleep } from '../support/eventually.js';
import { eventsApplied } from '../support/events.js';
import { Http, login } from '../support/http.js';

/** Worker start-up takes seconds (tsx, SQLite, registration), more on a busy 2-core machine. */
const RESTART_MS = 25_000;
const START_MS = 90_000;

const PRODUCT_IDS = [1, 2, 3, 4, 5, 6, 7, 8];

function read(base: string, loop: number, i: number): Promise<Outcome> {
  if (i % 2 === 1) return attempt('GET /restful/products', `${base}/restful/products`);
  const id = PRODUCT_IDS[(loop + i) % PRODUCT_IDS.length]!;
  return attempt(`GET /restful/products/${id}`, `${base}/restful/products/${id}`);
}

/** A read answered well: 200 with the product asked for, or the whole catalogue. */
function readOk(o: Outcome): boolean {
  if (o.status !== 200) return false;
  const m = /^GET \/restful\/products\/(\d+)$/.exec(o.label);
  if (m) return (o.body as { id?: unknown } | undefined)?.id === Number(m[1]);
  return Array.isArray(o.body) && o.body.length >= PRODUCT_IDS.length;
}

function settleAttempt(base: string, token: string, productId: number, amount = 1): Promise<Outcome> {
  return attempt(`POST /restful/settlements (${amount} of product ${productId})`, `${base}/restful/settlements`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `bearer ${token}` },
    body: JSON.stringify(settlementBody([[productId, amount]])),
  });
}

/** The bookstore's typed failure: a 4xx/5xx status with `{code: 1, message}`. */
function typedFailure(o: Outcome): boolean {
  const body = o.body as { code?: unknown; message?: unknown } | undefined;
  return o.status !== undefined && o.status >= 400 && o.status < 600 && body?.code === 1 && typeof body.message === 'string' && body.message.length > 0;
}

function fails(outcomes: readonly Outcome[], ok: (o: Outcome) => boolean): { count: number; sample: string } {
  const bad = outcomes.filter((o) => !ok(o));
  return { count: bad.length, sample: describeOutcomes(bad) };
}

function describeInstance(i: RegistryInstance): string {
  return `${i.id}@${i.address} (pid ${i.metadata?.pid})`;
}

/** Stops a deployment and makes sure none of its workers outlives it. */
async function shutDown(app: Bookstore | undefined, cp: ControlPlane | undefined): Promise<void> {
  if (!app) return;
  let pids: number[] = [];
  if (cp) {
    try {
      pids = (await registryStatus(cp.registryUrl, 1_000)).instances.map((i) => Number(i.metadata?.pid)).filter((p) => p > 0);
    } catch {
      /* already gone */
    }
  }
  try {
    process.kill(app.pid, 'SIGCONT'); // in case a test was interrupted while it was stopped
  } catch {
    /* exited */
  }
  await app.stop(15_000);
  const end = Date.now() + 10_000;
  while (pids.some(processAlive) && Date.now() < end) await sleep(100);
  for (const pid of pids.filter(processAlive)) process.kill(pid, 'SIGKILL');
}

describe('microservices failures · two warehouse and two payment replicas', () => {
  let app: Bookstore;
  let http: Http;
  let base: string;
  let cp: ControlPlane;
  const expected = { edge: 1, account: 1, auth: 1, warehouse: 2, payment: 2 };

  beforeAll(async () => {
    app = await startBookstore({
      arch: 'microservices',
      readyTimeoutMs: START_MS,
      set: { 'replicas.warehouse': 2, 'replicas.payment': 2, 'config.payment.paymentExpiresMs': 6_000 },
    });
    http = new Http(app.baseUrl);
    base = app.baseUrl;
    cp = readControlPlane(app.dataDir);
    expect(cp.url).toBe(app.baseUrl);
    expect(cp.pid, 'deployment.json names the process the CLI started').toBe(app.pid);
    await waitForInstances(cp.registryUrl, expected, 30_000);
  }, START_MS + 40_000);

  afterAll(() => shutDown(app, cp), 40_000);

  it('answers every read with 200 while one of two warehouse replicas is killed -9 under load, and the supervisor restarts it', async () => {
    const before = await waitForInstances(cp.registryUrl, expected, RESTART_MS);
    const warehouses = live(before, 'warehouse');
    const victim = warehouses.find((i) => i.metadata?.replica === '1') ?? warehouses[0]!;
    const victimPid = pidOf(victim);
    const survivor = warehouses.find((i) => i !== victim)!;
    expect(processAlive(victimPid)).toBe(true);
    // Both replicas take traffic before the kill (the edge knows both).
    for (let i = 0; i < 16; i++) expect(readOk(await read(base, i, 0))).toBe(true);

    let killedAt = 0;
    const outcomes = await runLoad({
      concurrency: 8,
      durationMs: 4_000,
      step: (loop, i) => read(base, loop, i),
      during: async () => {
        await sleep(1_000);
        process.kill(victimPid, 'SIGKILL');
        killedAt = Date.now();
      },
    });

    const bad = fails(outcomes, readOk);
    expect(bad.count, `${bad.count} of ${outcomes.length} reads failed across the kill of ${describeInstance(victim)}:\n${bad.sample}`).toBe(0);
    expect(outcomes.filter((o) => o.startedAt < killedAt).length, 'reads before the kill').toBeGreaterThan(20);
    expect(outcomes.filter((o) => o.startedAt >= killedAt).length, 'reads after the kill').toBeGreaterThan(40);

    // The supervisor restarts the replica: the same instance id registers again from a new process.
    const replacement = await waitFor(
      `a new process for ${victim.id}`,
      async () => live(await registryStatus(cp.registryUrl), 'warehouse').find((i) => i.id === victim.id && pidOf(i) !== victimPid),
      RESTART_MS,
      200,
    );
    expect(processAlive(victimPid)).toBe(false);
    const after = await registryStatus(cp.registryUrl);
    expect(live(after, 'warehouse').map(pidOf).sort()).toEqual([pidOf(survivor), pidOf(replacement)].sort());

    // And the edge sends reads to it again.
    await waitFor(
      `the edge calling the restarted replica at ${replacement.address}`,
      async () => {
        await Promise.all(PRODUCT_IDS.map((_, i) => read(base, i, 0)));
        const e = (await edgeEndpoints(base)).find((x) => x.service === 'warehouse' && x.address === replacement.address);
        return e && e.circuit === 'closed' && e.successes > 0 ? e : undefined;
      },
      10_000,
      200,
    );
  }, 60_000);

  it('kill -9 of a payment replica during settlements: a Payment or a typed error for every client, no payment twice, no stock lost', async () => {
    const PRODUCT = 2;
    const INITIAL = 5_000;
    const EXPIRES = 6_000;
    const before = await waitForInstances(cp.registryUrl, expected, RESTART_MS);
    const token = (await login(http, ADMIN.username, ADMIN.password)).access_token;
    await setStock(http, token, PRODUCT, INITIAL);
    expect(await getStock(http, token, PRODUCT)).toMatchObject({ amount: INITIAL, frozen: 0 });

    const payments = live(before, 'payment');
    const victim = payments.find((i) => i.metadata?.replica === '1') ?? payments[0]!;
    const victimPid = pidOf(victim);
    expect(processAlive(victimPid)).toBe(true);

    let killedAt = 0;
    const outcomes = await runLoad({
      concurrency: 8,
      durationMs: 3_000,
      step: () => settleAttempt(base, token, PRODUCT),
      during: async () => {
        await sleep(1_000);
        process.kill(victimPid, 'SIGKILL');
        killedAt = Date.now();
      },
    });
    const loadEnded = Date.now();

    // Every client got an answer: no reset, no hang (the edge's deadline is far below the client's 15 s).
    const transport = outcomes.filter((o) => o.error !== undefined);
    expect(transport.length, `requests without an HTTP answer:\n${describeOutcomes(transport)}`).toBe(0);
    const successes = outcomes.filter((o) => o.status === 200);
    const errors = outcomes.filter((o) => o.status !== 200);
    for (const o of successes) {
      expect(o.body, o.text).toMatchObject({ payId: expect.stringMatching(UUID), payState: 'WAITING', expires: EXPIRES, totalPrice: expect.any(Number) });
    }
    const untyped = errors.filter((o) => !typedFailure(o));
    expect(untyped.length, `failures without a typed {code: 1, message} body:\n${describeOutcomes(untyped)}`).toBe(0);
    expect(successes.length, 'settlements that succeeded').toBeGreaterThan(20);
    expect(outcomes.filter((o) => o.startedAt >= killedAt).length, 'settlements started after the kill').toBeGreaterThan(10);
    expect(loadEnded - killedAt).toBeGreaterThan(1_000);

    // No payment is handed out twice.
    const payIds = successes.map((o) => (o.body as { payId: string }).payId);
    expect(new Set(payIds).size).toBe(payIds.length);

    // Stock right after the load: nothing lost or created, every payment that surely still waits
    // holds its unit, and nothing beyond one unit per request is frozen (a payment created twice
    // would freeze a second unit for one request).
    const stock = await getStock(http, token, PRODUCT);
    const readAt = Date.now();
    expect(stock.amount + stock.frozen, JSON.stringify(stock)).toBe(INITIAL);
    const surelyWaiting = successes.filter((o) => {
      const p = o.body as { createTime: string; expires: number };
      return Date.parse(p.createTime) + p.expires > readAt;
    }).length;
    expect(stock.frozen, `frozen units vs ${surelyWaiting} payments still waiting`).toBeGreaterThanOrEqual(surelyWaiting);
    expect(stock.frozen, `frozen units vs ${successes.length} successes + ${errors.length} failures`).toBeLessThanOrEqual(successes.length + errors.length);

    // Pay a few of the successful ones while they still wait: their units are consumed, not released.
    let paid = 0;
    const payable = successes
      .map((o) => o.body as { payId: string; createTime: string; expires: number })
      .filter((p) => Date.parse(p.createTime) + p.expires > Date.now() + 2_000)
      .slice(-3);
    for (const p of payable) {
      const r = await attempt(`PATCH /restful/pay/${p.payId}`, `${base}/restful/pay/${p.payId}?state=PAYED`, {
        method: 'PATCH',
        headers: { authorization: `bearer ${token}` },
      });
      expect(r.status, r.text).toBe(200);
      expect(r.body).toMatchObject({ code: 0 });
      paid++;
    }

    // Once every waiting payment has timed out (durable timers, whichever replica runs them),
    // the stock is whole again: amount + units paid == initial, nothing left frozen.
    let last = stock;
    try {
      await waitFor(
        'all frozen stock released or consumed',
        async () => {
          last = await getStock(http, token, PRODUCT);
          return last.frozen === 0 && last.amount === INITIAL - paid ? last : undefined;
        },
        45_000,
        500,
      );
    } catch (err) {
      throw new Error(
        `${(err as Error).message}: stock is ${JSON.stringify(last)}, expected amount ${INITIAL - paid} (${INITIAL} - ${paid} paid) and frozen 0; ` +
          `${successes.length} settlements succeeded, ${errors.length} failed (statuses ${[...new Set(errors.map((e) => e.status))].join(', ')})`,
      );
    }

    // The supervisor restarted the killed payment replica.
    await waitFor(
      `a new process for ${victim.id}`,
      async () => live(await registryStatus(cp.registryUrl), 'payment').find((i) => i.id === victim.id && pidOf(i) !== victimPid),
      RESTART_MS,
      200,
    );
  }, 90_000);

  it('keeps serving reads, logins and settlements while the registry is down (control plane stopped), and the registry is healthy after', async () => {
    const before = await waitForInstances(cp.registryUrl, expected, RESTART_MS);
    const token = (await login(http, ADMIN.username, ADMIN.password)).access_token;
    const PRODUCT = 3;
    await setStock(http, token, PRODUCT, 1_000);

    const outcomes: Outcome[] = [];
    process.kill(cp.pid, 'SIGSTOP');
    try {
      // The registry really is unreachable.
      const probe = await attempt('GET registry /status', `${cp.registryUrl}/status`, { timeoutMs: 500 });
      expect(probe.status, 'the stopped control plane answered').toBeUndefined();

      const pending = new Map<number, string>();
      outcomes.push(
        ...(await runLoad({
          concurrency: 4,
          durationMs: 4_000,
          step: async (loop, i) => {
            if (loop === 0) return read(base, 0, i);
            if (loop === 1) {
              return i % 2 === 0
                ? attempt('GET /oauth/token', `${base}/oauth/token?grant_type=password&username=${ADMIN.username}&password=${encodeURIComponent(ADMIN.password)}&client_id=bookstore_frontend&client_secret=bookstore_secret`)
                : attempt(`GET /restful/accounts/${ADMIN.username}`, `${base}/restful/accounts/${ADMIN.username}`);
            }
            // Settle, then pay what was settled: payment → account, warehouse and the event bus.
            const payId = pending.get(loop);
            if (payId === undefined) {
              const o = await settleAttempt(base, token, PRODUCT);
              if (o.status === 200) pending.set(loop, (o.body as { payId: string }).payId);
              return o;
            }
            pending.delete(loop);
            return attempt(`PATCH /restful/pay/${payId}`, `${base}/restful/pay/${payId}?state=PAYED`, { method: 'PATCH', headers: { authorization: `bearer ${token}` } });
          },
        })),
      );

      const still = await attempt('GET registry /status', `${cp.registryUrl}/status`, { timeoutMs: 500 });
      expect(still.status, 'the control plane answered while stopped').toBeUndefined();
    } finally {
      process.kill(cp.pid, 'SIGCONT');
    }

    const bad = fails(outcomes, (o) => o.status === 200);
    expect(bad.count, `${bad.count} of ${outcomes.length} calls failed while the registry was down:\n${bad.sample}`).toBe(0);
    for (const label of ['GET /oauth/token', 'POST /restful/settlements', 'PATCH /restful/pay/']) {
      expect(outcomes.filter((o) => o.label.startsWith(label)).length, label).toBeGreaterThan(3);
    }

    // Back: the same registry (not a restart) answers, every instance heartbeats again.
    const after = await waitForInstances(cp.registryUrl, expected, 15_000);
    expect(after.bootId).toBe(before.bootId);
    await waitFor(
      'fresh heartbeats from every instance',
      async () => {
        const s = await registryStatus(cp.registryUrl);
        return s.instances.every((i) => i.health === 'passing' && (i.heartbeatAgeMs ?? Infinity) < 5_000) ? s : undefined;
      },
      10_000,
      250,
    );
    for (let i = 0; i < 8; i++) expect(readOk(await read(base, i, i))).toBe(true);
  }, 60_000);

  it('does not tell clients that live instances are gone after the registry was stopped for longer than their TTL', async () => {
    const before = await waitForInstances(cp.registryUrl, expected, RESTART_MS);
    const ttl = Math.max(...before.instances.map((i) => i.ttlMs ?? 10_000));
    const watch = watchRegistry(cp.registryUrl);
    const outcomes: Outcome[] = [];
    let resumedAt = 0;
    try {
      await watch.synced;
      await sleep(200);
      const stoppedFor = ttl + 1_500;
      outcomes.push(
        ...(await runLoad({
          concurrency: 8,
          durationMs: stoppedFor + 3_500,
          step: (loop, i) => read(base, loop, i),
          during: async () => {
            await sleep(500);
            process.kill(cp.pid, 'SIGSTOP');
            try {
              await sleep(stoppedFor);
            } finally {
              process.kill(cp.pid, 'SIGCONT');
              resumedAt = Date.now();
            }
          },
        })),
      );
      await waitForInstances(cp.registryUrl, expected, 15_000);
    } finally {
      process.kill(cp.pid, 'SIGCONT');
      watch.close();
    }

    // Every process kept running, so the registry must not push a shorter list to its clients.
    const shrunk = watch.events
      .filter((e) => e.event === 'endpoints' && e.data.service in expected)
      .filter((e) => e.data.endpoints.length < expected[e.data.service as keyof typeof expected])
      .map((e) => `${e.at - resumedAt} ms after SIGCONT: ${e.data.service} → ${e.data.endpoints.length} endpoint(s)`);
    const bad = fails(outcomes, readOk);
    expect(
      { shrunk, failedReads: bad.count },
      `the registry dropped live instances after its pause (${outcomes.length} reads, ${bad.count} failed):\n${shrunk.join('\n')}\n${bad.sample}`,
    ).toEqual({ shrunk: [], failedReads: 0 });
  }, 60_000);
});

describe('microservices failures · one warehouse, editable topology', () => {
  const topology = (replicas: number) =>
    [
      'architecture: microservices',
      'config:',
      '  payment:',
      '    paymentExpiresMs: 3000',
      'policies:',
      '  warehouse:',
      '    timeoutMs: 3000',
      'replicas:',
      `  warehouse: ${replicas}`,
      '',
    ].join('\n');
  let appDir: ReturnType<typeof makeBookstoreAppDir>;
  let app: Bookstore;
  let base: string;
  let cp: ControlPlane;
  const expected = (warehouse: number) => ({ edge: 1, account: 1, auth: 1, warehouse, payment: 1 });

  beforeAll(async () => {
    appDir = makeBookstoreAppDir(topology(1));
    app = await startBookstore({ arch: 'microservices', app: appDir.dir, readyTimeoutMs: START_MS });
    base = app.baseUrl;
    cp = readControlPlane(app.dataDir);
    await waitForInstances(cp.registryUrl, expected(1), 30_000);
  }, START_MS + 40_000);

  afterAll(() => shutDown(app, cp), 40_000);

  it('answers a typed 503 at once while the only warehouse is dead, opens its circuit, and serves again once it is restarted', async () => {
    const before = await waitForInstances(cp.registryUrl, expected(1), RESTART_MS);
    const [warehouse] = live(before, 'warehouse');
    const pid = pidOf(warehouse!);
    for (let i = 0; i < 4; i++) expect(readOk(await read(base, i, 1))).toBe(true);
    const healthy = (await edgeEndpoints(base)).find((e) => e.service === 'warehouse' && e.address === warehouse!.address);
    expect(healthy?.circuit).toBe('closed');

    process.kill(pid, 'SIGKILL');
    const down: Outcome[] = [];
    for (let i = 0; i < 12; i++) down.push(await attempt('GET /restful/products', `${base}/restful/products`));
    const endpoints = await edgeEndpoints(base);
    const replaced = live(await registryStatus(cp.registryUrl), 'warehouse').some((i) => pidOf(i) !== pid);
    expect(replaced, 'the warehouse came back before the test could observe it dead').toBe(false);

    const untyped = down.filter((o) => !(o.status === 503 && typedFailure(o) && /warehouse/.test((o.body as { message: string }).message)));
    expect(untyped.length, `answers while the warehouse is dead that are not a typed 503:\n${describeOutcomes(untyped)}`).toBe(0);
    // Fast: well inside the call's deadline (3 s for warehouse calls here), never a hang.
    const slow = down.filter((o) => o.ms > 1_500);
    expect(slow.length, `answers that took long:\n${describeOutcomes(slow)}`).toBe(0);
    // After a few refused connections the circuit is open: calls fail without trying.
    const open = endpoints.find((e) => e.service === 'warehouse' && e.address === warehouse!.address);
    expect(open?.circuit, JSON.stringify(endpoints)).toMatch(/^(open|isolated)$/);
    expect((down.at(-1)!.body as { message: string }).message).toMatch(/circuit open/);
    // Health says so: degraded, the warehouse not ready and why (without its address), /ready 503.
    const health = await fetch(`${base}/health`);
    expect(health.status).toBe(200);
    const h = (await health.json()) as { status: string; architecture: string; dependencies: Record<string, { ready: boolean; detail?: string }> };
    expect(h).toMatchObject({ status: 'degraded', architecture: 'microservices', dependencies: { warehouse: { ready: false } } });
    expect(h.dependencies.warehouse!.detail).toMatch(/circuit open on an instance|ejected/);
    expect(h.dependencies.payment).toEqual({ ready: true });
    const readyAnswer = await fetch(`${base}/ready`);
    expect(readyAnswer.status).toBe(503);
    expect(((await readyAnswer.json()) as { waitingFor: string[] }).waitingFor).toEqual(['warehouse']);

    // Recovery: the supervisor restarts it, requests succeed again, and the edge's circuit for it is closed.
    const back = await waitFor(
      'the restarted warehouse',
      async () => live(await registryStatus(cp.registryUrl), 'warehouse').find((i) => pidOf(i) !== pid),
      RESTART_MS,
      200,
    );
    await waitFor('reads answered again', async () => (readOk(await read(base, 0, 1)) ? true : undefined), 15_000, 200);
    for (let i = 0; i < 8; i++) expect(readOk(await read(base, i, i))).toBe(true);
    const recovered = await edgeEndpoints(base);
    const current = recovered.filter((e) => e.service === 'warehouse');
    expect(current.map((e) => [e.address, e.circuit]), JSON.stringify(recovered)).toEqual([[back.address, 'closed']]);
    expect(await (await fetch(`${base}/health`)).json()).toMatchObject({ status: 'ok' });
    expect((await fetch(`${base}/ready`)).status).toBe(200);
  }, 60_000);

  it('a dead warehouse is blamed on the warehouse: paying and cancelling keep working, the circuit to payment stays closed, and the payment events apply the stock changes once it is back', async () => {
    const before = await waitForInstances(cp.registryUrl, expected(1), RESTART_MS);
    const [warehouse] = live(before, 'warehouse');
    const pid = pidOf(warehouse!);
    const http = new Http(base);
    const token = (await login(http, ADMIN.username, ADMIN.password)).access_token;
    const stockBefore = await getStock(http, token, 2);
    const open: string[] = [];
    for (let i = 0; i < 3; i++) {
      const o = await settleAttempt(base, token, 2);
      expect(o.status, o.text).toBe(200);
      open.push((o.body as { payId: string }).payId);
    }

    process.kill(pid, 'SIGKILL');
    // Settlements need the warehouse: each fails with a 503 that names it, more than the circuit's threshold.
    for (let i = 0; i < 8; i++) {
      const o = await settleAttempt(base, token, 2);
      expect(o.status, o.text).toBe(503);
      expect((o.body as { message: string }).message).toMatch(/warehouse/);
    }
    const replaced = live(await registryStatus(cp.registryUrl), 'warehouse').some((i) => pidOf(i) !== pid);
    expect(replaced, 'the warehouse came back before the test could observe it dead').toBe(false);
    // The payment service is healthy: pay and cancel succeed (they ask the warehouse to apply the
    // stock change at once, but a warehouse that cannot only delays it to the payment event)…
    for (const [i, payId] of open.entries()) {
      const o = await attempt(`PATCH /restful/pay/${payId}`, `${base}/restful/pay/${payId}?state=${i === 0 ? 'PAYED' : 'CANCEL'}`, {
        method: 'PATCH',
        headers: { authorization: `bearer ${token}` },
      });
      expect(o.status, o.text).toBe(200);
    }
    // …and the edge holds nothing against it: the warehouse's failures were never payment's.
    const payment = (await edgeEndpoints(base)).filter((e) => e.service === 'payment');
    expect(payment.length).toBeGreaterThan(0);
    for (const e of payment) expect([e.circuit, e.consecutiveFailures], JSON.stringify(e)).toEqual(['closed', 0]);
    await waitFor('the restarted warehouse', async () => live(await registryStatus(cp.registryUrl), 'warehouse').find((i) => pidOf(i) !== pid), RESTART_MS, 200);
    // Once it is back the events apply what the direct calls could not: one unit sold, two released, each once.
    const expectedStock = { amount: stockBefore.amount - 1, frozen: stockBefore.frozen };
    await waitFor(
      'the stock changes of the payment events',
      async () => {
        const r = await http.get(`/restful/products/stockpile/2`, { token });
        return r.status === 200 && r.body.amount === expectedStock.amount && r.body.frozen === expectedStock.frozen ? r.body : undefined;
      },
      20_000,
      200,
    );
    await eventsApplied(app.dataDir);
    expect(await getStock(http, token, 2)).toMatchObject(expectedStock);
  }, 90_000);

  it('times out calls to a hung warehouse (SIGSTOP), opens its circuit, and closes it with a half-open probe once it resumes', async () => {
    const before = await waitForInstances(cp.registryUrl, expected(1), RESTART_MS);
    const [warehouse] = live(before, 'warehouse');
    const pid = pidOf(warehouse!);
    for (let i = 0; i < 4; i++) expect(readOk(await read(base, i, 1))).toBe(true);

    let hung: Outcome[] = [];
    let fast: Outcome | undefined;
    let whileOpen: Awaited<ReturnType<typeof edgeEndpoints>> = [];
    process.kill(pid, 'SIGSTOP');
    try {
      // Six concurrent reads each wait out the 3 s warehouse timeout: six endpoint failures.
      hung = await Promise.all(PRODUCT_IDS.slice(0, 6).map((id) => attempt(`GET /restful/products/${id}`, `${base}/restful/products/${id}`)));
      whileOpen = await edgeEndpoints(base);
      fast = await attempt('GET /restful/products', `${base}/restful/products`);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    const untyped = hung.filter((o) => !(typedFailure(o) && (o.status === 504 || o.status === 503)));
    expect(untyped.length, `answers from the hung warehouse that are not a typed 503/504:\n${describeOutcomes(untyped)}`).toBe(0);
    const late = hung.filter((o) => o.ms > 6_000);
    expect(late.length, `answers later than the 3 s deadline allows:\n${describeOutcomes(late)}`).toBe(0);
    const open = whileOpen.find((e) => e.service === 'warehouse' && e.address === warehouse!.address);
    expect(open?.circuit, JSON.stringify(whileOpen)).toMatch(/^(open|isolated)$/);
    expect(fast!.status, fast!.text).toBe(503);
    expect(typedFailure(fast!)).toBe(true);
    expect(fast!.ms, 'a call against an open circuit does not wait for the deadline').toBeLessThan(1_000);

    // Once the half-open pause is over, a probe reaches the resumed process and closes the circuit
    // of the same endpoint (it never left the registry: same pid, same address).
    const closed = await waitFor(
      'the circuit closed again',
      async () => {
        const r = await read(base, 0, 1);
        const e = (await edgeEndpoints(base)).find((x) => x.service === 'warehouse' && x.address === warehouse!.address);
        return readOk(r) && e?.circuit === 'closed' ? e : undefined;
      },
      15_000,
      250,
    );
    expect(closed.consecutiveFailures).toBe(0);
    const after = live(await registryStatus(cp.registryUrl), 'warehouse');
    expect(after.map((i) => [i.address, pidOf(i)])).toEqual([[warehouse!.address, pid]]);
  }, 60_000);

  it('adds and removes a warehouse replica live when evolith.yaml changes, while requests keep succeeding', async () => {
    const before = await waitForInstances(cp.registryUrl, expected(1), RESTART_MS);
    const [original] = live(before, 'warehouse');
    const others = before.instances.map((i) => `${i.id}:${i.metadata?.pid}`).sort();

    let running = true;
    const load = runLoad({
      concurrency: 3,
      durationMs: 60_000,
      until: () => !running,
      step: async (loop, i) => {
        const o = await read(base, loop, i);
        await sleep(20);
        return o;
      },
    });
    let outcomes: Outcome[] = [];
    try {
      await sleep(500);
      appDir.writeTopology(topology(2));
      const added = await waitFor(
        'a second warehouse instance',
        async () => live(await registryStatus(cp.registryUrl), 'warehouse').find((i) => i.id !== original!.id),
        RESTART_MS,
        200,
      );
      const addedPid = pidOf(added);
      expect(added.metadata?.replica).toBe('1');
      // The edge balances onto it.
      await waitFor(
        `the edge calling the new replica at ${added.address}`,
        async () => {
          const e = (await edgeEndpoints(base)).find((x) => x.service === 'warehouse' && x.address === added.address);
          return e && e.successes > 0 ? e : undefined;
        },
        10_000,
        200,
      );

      appDir.writeTopology(topology(1));
      await waitFor(
        'the second warehouse gone from the registry',
        async () => {
          const s = await registryStatus(cp.registryUrl);
          return s.instances.some((i) => i.id === added.id && i.health === 'passing') ? undefined : s;
        },
        20_000,
        200,
      );
      await waitFor(`its process ${addedPid} stopped`, async () => (processAlive(addedPid) ? undefined : true), 20_000, 200);
      await sleep(1_000); // requests keep flowing after the removal
    } finally {
      running = false;
      outcomes = await load;
    }

    const bad = fails(outcomes, readOk);
    expect(bad.count, `${bad.count} of ${outcomes.length} reads failed while replicas changed:\n${bad.sample}`).toBe(0);
    expect(outcomes.length).toBeGreaterThan(30);
    // Nothing else was restarted: the same processes as before serve every other instance.
    const after = await waitForInstances(cp.registryUrl, expected(1), 5_000);
    expect(after.instances.map((i) => `${i.id}:${i.metadata?.pid}`).sort()).toEqual(others);

    // An invalid edit changes nothing and is reported once (by the control plane), not once per
    // process that watches the file.
    const ignored = () => app.output().split('\n').filter((l) => l.includes('topology change ignored')).length;
    const seenBefore = ignored();
    appDir.writeTopology('services: [not: a, map\n');
    await waitFor('the invalid edit reported', async () => (ignored() > seenBefore ? true : undefined), 10_000, 100);
    await sleep(1_000); // time for every worker to have read the same file
    expect(ignored() - seenBefore).toBe(1);
    const unchanged = await waitForInstances(cp.registryUrl, expected(1), 5_000);
    expect(unchanged.instances.map((i) => `${i.id}:${i.metadata?.pid}`).sort()).toEqual(others);
    appDir.writeTopology(topology(1));
  }, 90_000);
});
