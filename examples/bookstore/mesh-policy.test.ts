/**
 * The bookstore's traffic policy (mesh.yaml) against the bookstore itself: it is valid, every
 * call the code makes between services is allowed, and nothing else is.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { appShape } from '../../src/deploy/mesh/mesh-control.js';
import { loadTopology } from '../../src/deploy/topology.js';
import { loadMeshPolicy } from '../../src/mesh/policy.js';
import app from './app.js';

const dir = fileURLToPath(new URL('.', import.meta.url));
const policy = loadMeshPolicy(join(dir, 'mesh.yaml'), appShape(app, loadTopology(dir)));

/** Every call between services the bookstore's code makes, caller → callee.method. */
const CALLS: [string, string, string][] = [
  ['account', 'auth', 'setCredentials'],
  ['payment', 'account', 'getByUsername'],
  ['payment', 'warehouse', 'prices'],
  ['payment', 'warehouse', 'freeze'],
  ['payment', 'warehouse', 'release'],
  ['payment', 'warehouse', 'consume'],
];

describe("the bookstore's mesh policy", () => {
  it('lets the edge call every method of every service', () => {
    for (const s of app.services) {
      for (const m of Object.values(s.contract.methods)) expect(policy.authorize(s.contract.name, 'edge', m.name)).toEqual({ allowed: true });
    }
  });

  it('allows each call the services make to each other', () => {
    for (const [from, to, method] of CALLS) expect(policy.authorize(to, from, method), `${from} → ${to}.${method}`).toEqual({ allowed: true });
  });

  it('denies every other call between services: account may not call payment.updateState', () => {
    const denied = policy.authorize('payment', 'account', 'updateState');
    expect(denied).toEqual({ allowed: false, reason: expect.stringContaining('account may not call payment.updateState') });
    for (const s of app.services) {
      for (const m of Object.values(s.contract.methods)) {
        for (const from of app.services.map((x) => x.contract.name)) {
          if (from === s.contract.name || CALLS.some(([f, t, meth]) => f === from && t === s.contract.name && meth === m.name)) continue;
          expect(policy.authorize(s.contract.name, from, m.name).allowed, `${from} → ${s.contract.name}.${m.name}`).toBe(false);
        }
      }
    }
  });
});
