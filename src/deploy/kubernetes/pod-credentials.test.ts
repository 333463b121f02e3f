import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, describe, expect, test } from 'vitest';
import { Kit, eventually, sleep } from '../../../test/fixtures/unit-kit.js';
import { DeploymentAuthority } from '../../auth/credentials.js';
import { InternalPlane } from '../../auth/internal-plane.js';
import { ConfigError } from '../../kernel/errors.js';
import { readCredentialBundle, watchCredentials } from './pod-credentials.js';

const kit = new Kit();
afterEach(() => kit.cleanup());

function capturedLog(): { log: pino.Logger; messages: string[] } {
  const messages: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      messages.push((JSON.parse(String(chunk)) as { msg: string }).msg);
      done();
    },
  });
  return { log: pino({ level: 'info' }, sink), messages };
}

describe('pod credentials', () => {
  test('a bundle file is read; a wrong one is refused naming what is missing', () => {
    const dir = kit.tmp('creds');
    const authority = new DeploymentAuthority('shop');
    const bundle = authority.issue({ sub: 'warehouse', svc: ['warehouse'] });
    writeFileSync(join(dir, 'bundle.json'), JSON.stringify(bundle));
    expect(readCredentialBundle(join(dir, 'bundle.json'))).toEqual(bundle);
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ trust: { deployment: 'x' } }));
    const err = (() => {
      try {
        readCredentialBundle(join(dir, 'bad.json'));
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.message).toContain('token is missing; privateKey is missing; trust.authority is missing; trust.assertions is missing');
    expect(() => readCredentialBundle(join(dir, 'none.json'))).toThrow(/cannot be read/);
  });

  test('a renewed token of the same credential is taken; a different credential is logged as needing a restart', async () => {
    const dir = kit.tmp('creds');
    const file = join(dir, 'bundle.json');
    const authority = new DeploymentAuthority('shop');
    const bundle = authority.issue({ sub: 'warehouse', svc: ['warehouse'] }, 60_000);
    writeFileSync(file, JSON.stringify(bundle));
    const plane = new InternalPlane(readCredentialBundle(file));
    const { log, messages } = capturedLog();
    const w = watchCredentials(file, plane, log, 20);
    try {
      await sleep(5); // the renewal below must carry a later issue time
      const renewed = authority.renew(bundle.token, 365 * 24 * 3600_000);
      writeFileSync(file, JSON.stringify({ ...bundle, token: renewed }));
      await eventually(() => expect(plane.credential.token).toBe(renewed));
      expect(plane.claims.exp).toBeGreaterThan(Date.now() + 300 * 24 * 3600_000);
      const other = authority.issue({ sub: 'warehouse', svc: ['warehouse'] });
      writeFileSync(file, JSON.stringify(other));
      await eventually(() => expect(messages).toContain('the credentials file now holds a different credential; restart the pod to take it'));
      expect(plane.credential.token).toBe(renewed);
      const foreign = new DeploymentAuthority('shop').issue({ sub: 'warehouse', svc: ['warehouse'] });
      writeFileSync(file, JSON.stringify(foreign));
      await eventually(() => expect(messages.some((m) => m.includes('not one this deployment issued'))).toBe(true));
      expect(plane.credential.token).toBe(renewed);
    } finally {
      w.close();
    }
  });
});
