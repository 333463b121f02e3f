import { afterEach, describe, expect, test } from 'vitest';
import pino from 'pino';
import { Writable } from 'node:stream';
import { ConfigError } from '../../kernel/errors.js';
import { DnsDiscovery, resolverFromEnv } from './dns-discovery.js';

/** A resolver whose answers the test sets per name; counts lookups. */
class FakeDns {
  readonly answers = new Map<string, string[] | NodeJS.ErrnoException>();
  lookups = 0;
  resolve4 = async (name: string): Promise<string[]> => {
    this.lookups++;
    const a = this.answers.get(name);
    if (a === undefined) throw Object.assign(new Error(`queryA ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
    if (a instanceof Error) throw a;
    return a;
  };
}

function failure(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`queryA ${code}`), { code });
}

function capturedLog(): { log: pino.Logger; lines: { level: number; msg: string }[] } {
  const lines: { level: number; msg: string }[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      lines.push(JSON.parse(String(chunk)) as { level: number; msg: string });
      done();
    },
  });
  return { log: pino({ level: 'debug' }, sink), lines };
}

const open: DnsDiscovery[] = [];
afterEach(() => {
  for (const d of open.splice(0)) d.close();
});

function discovery(dns: FakeDns, log?: pino.Logger): DnsDiscovery {
  const d = new DnsDiscovery({ namespace: 'shop', clusterDomain: 'cluster.test', groups: { warehouse: ['warehouse', 'stock'], payment: ['payment'] }, resolve4: dns.resolve4, log, refreshMs: 60_000 });
  open.push(d);
  return d;
}

describe('DnsDiscovery', () => {
  test('offers each address of a group’s name as an endpoint of every service of the group', async () => {
    const dns = new FakeDns();
    dns.answers.set('warehouse.shop.svc.cluster.test', ['10.0.0.7', '10.0.0.3']);
    const d = discovery(dns).start();
    expect(await d.whenSynced(1_000)).toBe(true);
    expect(d.endpoints('warehouse').map((e) => e.address)).toEqual(['10.0.0.3:7000', '10.0.0.7:7000']);
    expect(d.endpoints('stock').map((e) => e.address)).toEqual(['10.0.0.3:7000', '10.0.0.7:7000']);
    expect(d.endpoints('stock')[0]).toMatchObject({ service: 'stock', id: 'stock@10.0.0.3', metadata: { group: 'warehouse', ip: '10.0.0.3' } });
    // NXDOMAIN (no Service, or no ready pod behind a headless one): no endpoints, not an error.
    expect(d.endpoints('payment')).toEqual([]);
  });

  test('follows changes, keeps ids stable per address, and tells watchers', async () => {
    const dns = new FakeDns();
    const name = 'warehouse.shop.svc.cluster.test';
    dns.answers.set(name, ['10.0.0.3']);
    const d = discovery(dns);
    const seen: string[][] = [];
    d.watch('warehouse', (list) => seen.push(list.map((e) => e.id)));
    await d.refresh();
    const first = d.endpoints('warehouse');
    dns.answers.set(name, ['10.0.0.3', '10.0.0.9']);
    await d.refresh();
    expect(d.endpoints('warehouse').map((e) => e.id)).toEqual(['warehouse@10.0.0.3', 'warehouse@10.0.0.9']);
    // An unchanged answer changes nothing (the same list object, no notification).
    const second = d.endpoints('warehouse');
    await d.refresh();
    expect(d.endpoints('warehouse')).toBe(second);
    // A pod that stops being ready leaves the answer; the last one leaving empties the list.
    dns.answers.set(name, ['10.0.0.9']);
    await d.refresh();
    dns.answers.delete(name);
    await d.refresh();
    expect(d.endpoints('warehouse')).toEqual([]);
    expect(seen).toEqual([['warehouse@10.0.0.3'], ['warehouse@10.0.0.3', 'warehouse@10.0.0.9'], ['warehouse@10.0.0.9'], []]);
    expect(first[0]!.id).toBe('warehouse@10.0.0.3');
  });

  test('an answer with no address (ENODATA) is an empty list', async () => {
    const dns = new FakeDns();
    dns.answers.set('warehouse.shop.svc.cluster.test', ['10.0.0.3']);
    const d = discovery(dns);
    await d.refresh();
    dns.answers.set('warehouse.shop.svc.cluster.test', failure('ENODATA'));
    await d.refresh();
    expect(d.endpoints('warehouse')).toEqual([]);
  });

  test('a failing lookup keeps the last good list, and is logged once when it starts and once when it ends', async () => {
    const dns = new FakeDns();
    const name = 'warehouse.shop.svc.cluster.test';
    dns.answers.set(name, ['10.0.0.3', '10.0.0.4']);
    const { log, lines } = capturedLog();
    const d = discovery(dns, log);
    await d.refresh();
    dns.answers.set(name, failure('ETIMEOUT'));
    for (let i = 0; i < 5; i++) await d.refresh();
    expect(d.endpoints('warehouse').map((e) => e.address)).toEqual(['10.0.0.3:7000', '10.0.0.4:7000']);
    const warnings = lines.filter((l) => l.level === 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.msg).toContain('keeping the last known endpoints');
    dns.answers.set(name, ['10.0.0.4']);
    await d.refresh();
    await d.refresh();
    expect(d.endpoints('warehouse').map((e) => e.address)).toEqual(['10.0.0.4:7000']);
    expect(lines.filter((l) => l.msg === 'DNS answers again')).toHaveLength(1);
    expect(lines.filter((l) => l.level === 40)).toHaveLength(1);
  });

  test('refreshes on its own every refreshMs until closed', async () => {
    const dns = new FakeDns();
    const name = 'payment.shop.svc.cluster.test';
    const d = new DnsDiscovery({ namespace: 'shop', clusterDomain: 'cluster.test', groups: { payment: ['payment'] }, resolve4: dns.resolve4, refreshMs: 20 }).start();
    open.push(d);
    await d.whenSynced();
    expect(d.endpoints('payment')).toEqual([]);
    dns.answers.set(name, ['10.1.2.3']);
    const end = Date.now() + 2_000;
    while (d.endpoints('payment').length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    expect(d.endpoints('payment').map((e) => e.address)).toEqual(['10.1.2.3:7000']);
    d.close();
    const count = dns.lookups;
    await new Promise((r) => setTimeout(r, 80));
    expect(dns.lookups).toBe(count);
  });

  test('EVOLITH_DNS_SERVER must be an ip:port', () => {
    expect(resolverFromEnv(undefined)).toBeUndefined();
    expect(typeof resolverFromEnv('127.0.0.1:5353')).toBe('function');
    expect(() => resolverFromEnv('dns.local')).toThrow(ConfigError);
  });
});
