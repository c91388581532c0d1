/**
 * The vault's own doors, against real HTTPS, real files and a real database: webhooks
 * reach public addresses only unless an Owner allow-lists them, follow no redirect and
 * keep a bounded answer that only roles configuring plans see; a new SMTP host does not
 * get the old one's password; unauthenticated requests write no audit rows and are
 * counted in /metrics, guessing tokens is slowed down and then refused with 429; a slow
 * request is cut off; history older than the retention is pruned on the vault's clock;
 * the database, its -wal and -shm, the token file and the CA key file are 0600 whatever
 * the umask, and the CA key is not in the database (an older database has it moved out).
 */
import assert from 'node:assert/strict';
import dnsPromises from 'node:dns/promises';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { systemClock } from '../../src/domain/clock.js';
import { openDatabase } from '../../src/store/database.js';
import { Vault } from '../../src/vault/server.js';
import { checkWebhookTarget, nonPublicReason, postWebhook } from '../../src/workflows/webhook.js';
import { tempDir, waitFor } from '../support/lab.js';
import { spawnVault } from '../support/vault.js';

type Obj = Record<string, unknown>;

interface Answer {
  status: number;
  body: Obj;
  headers: http.IncomingHttpHeaders;
  ms: number;
}

/** One HTTPS request to the vault, trusting its CA. */
function request(v: Vault, method: string, url: string, o: { token?: string; body?: unknown } = {}): Promise<Answer> {
  const started = Date.now();
  const u = new URL(url, v.url);
  return new Promise((resolve, reject) => {
    const req = https.request(
      u,
      {
        method,
        ca: v.ctx.identity.ca.certPem,
        agent: false,
        headers: { ...(o.token ? { authorization: `Bearer ${o.token}` } : {}), ...(o.body !== undefined ? { 'content-type': 'application/json' } : {}) },
      },
      (res) => {
        let t = '';
        res.on('data', (c: Buffer) => (t += c));
        res.on('end', () => {
          let body: Obj = {};
          try {
            body = t ? (JSON.parse(t) as Obj) : {};
          } catch {
            body = { text: t };
          }
          resolve({ status: res.statusCode ?? 0, body, headers: res.headers, ms: Date.now() - started });
        });
      },
    );
    req.on('error', reject);
    req.end(o.body !== undefined ? JSON.stringify(o.body) : undefined);
  });
}

let offset = 0;
const clock = { now: () => Date.now() + offset, sleep: systemClock.sleep };
let vault: Vault;
let owner = '';
const dataDir = tempDir('osr-vault-hardening-');

/** a receiver on the loopback address: answers per path */
const calls: string[] = [];
let receiver: http.Server;
let receiverUrl = '';

before(async () => {
  vault = await Vault.create({
    dataDir,
    port: 0,
    logLevel: 'silent',
    clock,
    jobPollMs: 20,
    alertAttempts: 1,
    portalDir: false,
    onInitialToken: (t) => (owner = t),
    timeouts: { requestMs: 1000 },
    settings: { pruneIntervalMs: 200, authThrottle: { windowMs: 60_000, free: 2, stepMs: 200, maxDelayMs: 800, limit: 6 } },
  });
  await vault.listen();
  receiver = http.createServer((req, res) => {
    calls.push(req.url ?? '');
    req.resume();
    req.on('end', () => {
      if (req.url === '/redirect') res.writeHead(307, { location: '/hook' }).end();
      else if (req.url === '/big') res.writeHead(200, { 'content-type': 'text/plain' }).end('x'.repeat(100_000));
      else res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
});

after(async () => {
  await vault.close();
  await new Promise<void>((r) => receiver.close(() => r()));
});

async function tokenFor(role: string): Promise<string> {
  const r = await request(vault, 'POST', '/api/v1/tokens', { token: owner, body: { name: `${role.toLowerCase()}-${Math.random()}`, role } });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.secret as string;
}

describe('vault hardening', () => {
  test('addresses that are not public are recognised, IPv4 and IPv6, mapped ones included', async () => {
    for (const a of ['127.0.0.1', '127.8.9.10', '0.0.0.0', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '::', '::1', '::ffff:127.0.0.1', '::ffff:7f00:1', '0:0:0:0:0:ffff:a9fe:a9fe', 'fe80::1', 'fc00::1', 'fd12:3456::1', 'ff02::1']) {
      assert.ok(nonPublicReason(a), `${a} is not public`);
    }
    for (const a of ['8.8.8.8', '1.1.1.1', '2606:4700:4700::1111', '::ffff:8.8.8.8']) assert.equal(nonPublicReason(a), undefined, `${a} is public`);
    // a name is checked by every address it resolves to
    await assert.rejects(checkWebhookTarget(new URL('http://localhost:1/'), []), { code: 'WEBHOOK_REFUSED' });
    await assert.rejects(checkWebhookTarget(new URL('http://[::ffff:169.254.169.254]/'), []), { code: 'WEBHOOK_REFUSED' });
    await assert.rejects(checkWebhookTarget(new URL('http://[fd00::1]/'), []), { code: 'WEBHOOK_REFUSED' });
    assert.equal((await checkWebhookTarget(new URL('http://[fd00::1]/'), ['fd00::/8'])).length, 1);
    assert.equal((await checkWebhookTarget(new URL('http://localhost:1/'), ['localhost'])).length > 0, true);
  });

  test('alert webhooks: a loopback address is refused until an Owner allow-lists it; redirects are not followed', async () => {
    await request(vault, 'PUT', '/api/v1/alert-settings', { token: owner, body: { webhooks: [`${receiverUrl}/hook`], emails: [], smtp: null } });
    const before = calls.length;
    const a = (await vault.ctx.alerting.raise({ key: 'test-1', kind: 'Test', severity: 'Warning', message: 'first' }))!;
    await waitFor('the delivery recorded', async () => (await vault.store.activity.alert(a.id)).deliveries.length > 0, 10_000);
    const d = (await vault.store.activity.alert(a.id)).deliveries[0]!;
    assert.equal(d.ok, false);
    assert.match(d.error ?? '', /127\.0\.0\.1.*loopback.*allow-list/);
    assert.equal(calls.length, before, 'the receiver was never called');

    // only an Owner may allow-list
    const contributor = await tokenFor('Contributor');
    const denied = await request(vault, 'PUT', '/api/v1/webhook-settings', { token: contributor, body: { allow: ['127.0.0.1'] } });
    assert.equal(denied.status, 403);
    assert.equal(denied.body.code, 'FORBIDDEN');
    assert.equal((await request(vault, 'PUT', '/api/v1/webhook-settings', { token: owner, body: { allow: ['not a host!'] } })).body.code, 'INVALID_ARGUMENT');
    const ok = await request(vault, 'PUT', '/api/v1/webhook-settings', { token: owner, body: { allow: ['127.0.0.0/8'] } });
    assert.deepEqual(ok.body, { allow: ['127.0.0.0/8'] });
    assert.deepEqual((await request(vault, 'GET', '/api/v1/webhook-settings', { token: contributor })).body, { allow: ['127.0.0.0/8'] });

    const b = (await vault.ctx.alerting.raise({ key: 'test-2', kind: 'Test', severity: 'Warning', message: 'second' }))!;
    await waitFor('the delivery recorded', async () => (await vault.store.activity.alert(b.id)).deliveries.length > 0, 10_000);
    assert.equal((await vault.store.activity.alert(b.id)).deliveries[0]!.ok, true);
    assert.equal(calls.at(-1), '/hook');

    // a redirect is a refusal: the place it points to is not called
    await request(vault, 'PUT', '/api/v1/alert-settings', { token: owner, body: { webhooks: [`${receiverUrl}/redirect`], emails: [], smtp: null } });
    const n = calls.length;
    const c = (await vault.ctx.alerting.raise({ key: 'test-3', kind: 'Test', severity: 'Warning', message: 'third' }))!;
    await waitFor('the delivery recorded', async () => (await vault.store.activity.alert(c.id)).deliveries.length > 0, 10_000);
    const dc = (await vault.store.activity.alert(c.id)).deliveries[0]!;
    assert.equal(dc.ok, false);
    assert.match(dc.error ?? '', /307, a redirect.*does not follow redirects/);
    assert.deepEqual(calls.slice(n), ['/redirect']);

    // the answer kept is bounded
    const big = await postWebhook({ url: `${receiverUrl}/big`, body: {}, allow: ['127.0.0.1'], signal: AbortSignal.timeout(5000) });
    assert.equal(big.status, 200);
    assert.equal(big.text.length, 4096);
    assert.equal(big.truncated, true);

    // the connection goes to the address that was checked: a name only the check can resolve still reaches it
    const lookup = dnsPromises.lookup;
    let lookups = 0;
    (dnsPromises as { lookup: unknown }).lookup = async () => {
      lookups++;
      return [{ address: '127.0.0.1', family: 4 }];
    };
    try {
      const port = new URL(receiverUrl).port;
      assert.equal((await postWebhook({ url: `http://rebind.invalid:${port}/hook`, body: {}, allow: ['127.0.0.1'], signal: AbortSignal.timeout(5000) })).status, 204);
      await assert.rejects(postWebhook({ url: `http://rebind.invalid:${port}/hook`, body: {}, allow: [], signal: AbortSignal.timeout(5000) }), { code: 'WEBHOOK_REFUSED' });
    } finally {
      (dnsPromises as { lookup: unknown }).lookup = lookup;
    }
    assert.equal(lookups, 2, 'one resolution per call');
    assert.equal(calls.at(-1), '/hook');
    await request(vault, 'PUT', '/api/v1/webhook-settings', { token: owner, body: { allow: [] } });
  });

  test('a new SMTP host without a password drops the stored password; the same host keeps it', async () => {
    const smtp = { host: 'mail.example.com', port: 587, secure: false, from: 'osr@example.com', user: 'osr', password: 's3cret' };
    await request(vault, 'PUT', '/api/v1/alert-settings', { token: owner, body: { webhooks: [], emails: ['ops@example.com'], smtp } });
    const stored = () => vault.store.activity.setting<{ smtp: { host: string; password?: string } }>('alerts', { smtp: { host: '' } });
    const { password: _, ...withoutPassword } = smtp;
    await request(vault, 'PUT', '/api/v1/alert-settings', { token: owner, body: { webhooks: [], emails: ['ops@example.com'], smtp: { ...withoutPassword, port: 2525 } } });
    assert.equal((await stored()).smtp.password, 's3cret', 'the same host keeps its password');
    const moved = await request(vault, 'PUT', '/api/v1/alert-settings', { token: owner, body: { webhooks: [], emails: ['ops@example.com'], smtp: { ...withoutPassword, host: 'mail.attacker.example', password: '********' } } });
    assert.equal((moved.body.smtp as Obj).password, undefined);
    assert.equal((await stored()).smtp.host, 'mail.attacker.example');
    assert.equal((await stored()).smtp.password, undefined, 'the password is not sent to a new host');
  });

  test('unauthenticated requests write no audit rows and are counted in /metrics; guessing tokens is slowed down, then refused with 429 and Retry-After', async () => {
    const auditRows = async () => (await vault.store.activity.auditTrail({ limit: 1000 })).length;
    const rows = await auditRows();
    const r1 = await request(vault, 'POST', '/api/v1/policies', { body: { name: 'x' } });
    assert.equal(r1.status, 401);
    const r2 = await request(vault, 'DELETE', '/api/v1/tokens/000000000000', { token: 'osr_000000000000_wrong' });
    assert.equal(r2.status, 401);
    assert.equal(await auditRows(), rows, 'no audit row for unauthenticated requests');
    const metrics = await new Promise<string>((resolve, reject) => {
      https.get(new URL('/metrics', vault.url), { ca: vault.ctx.identity.ca.certPem, agent: false }, (res) => {
        let t = '';
        res.on('data', (c: Buffer) => (t += c)).on('end', () => resolve(t));
      }).on('error', reject);
    });
    assert.match(metrics, /osr_vault_unauthenticated_requests_total\{reason="no-token"\} 1/);
    assert.match(metrics, /osr_vault_unauthenticated_requests_total\{reason="bad-token"\} 1/);

    // wrong tokens: 2 free failures in the window (one is spent above), then a pause that doubles, then 429
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await request(vault, 'GET', '/api/v1/policies', { token: `osr_000000000000_guess${i}` });
      assert.equal(r.status, 401);
      times.push(r.ms);
    }
    assert.ok(times[0]! < times[3]! - 400, `the second failure is answered without the pause (${times.join(', ')} ms)`);
    assert.ok(times[1]! >= 190 && times[2]! >= 390 && times[3]! >= 790 && times[4]! >= 790, `pauses grow to their cap: ${times.join(', ')} ms`);
    const refused = await request(vault, 'GET', '/api/v1/policies', { token: owner });
    assert.equal(refused.status, 429);
    assert.equal(refused.body.code, 'AUTH_THROTTLED');
    const retry = Number(refused.headers['retry-after']);
    assert.ok(retry > 0 && retry <= 60, `Retry-After ${refused.headers['retry-after']}`);
    assert.equal(await auditRows(), rows);
    // once the window has passed (the vault's clock), the address may try again
    offset += 61_000;
    assert.equal((await request(vault, 'GET', '/api/v1/policies', { token: owner })).status, 200);
    offset -= 61_000;
  });

  test('a request that does not arrive whole within the request timeout is cut off', async () => {
    const port = Number(new URL(vault.url).port);
    const socket = tls.connect({ host: '127.0.0.1', port, ca: vault.ctx.identity.ca.certPem, servername: 'localhost' });
    await new Promise<void>((r) => socket.once('secureConnect', () => r()));
    const started = Date.now();
    socket.write('GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n');
    let answer = '';
    socket.on('data', (b: Buffer) => (answer += b.toString()));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('the vault kept a half-sent request open for 10 s')), 10_000);
      socket.once('close', () => {
        clearTimeout(t);
        resolve();
      });
    });
    assert.ok(Date.now() - started < 5000);
    assert.match(answer, /^HTTP\/1\.1 408/);
  });

  test('events, ended jobs and audit records older than the retention are pruned on the vault\'s clock', async () => {
    const { activity } = vault.store;
    const old = await activity.event({ kind: 'test.old', severity: 'Info', message: 'old' });
    await request(vault, 'POST', '/api/v1/policies', { token: owner, body: { name: 'audited-old', settings: { copyFrequencySeconds: 300 } } });
    const auditBefore = (await activity.auditTrail({ limit: 1000 })).length;
    assert.ok(auditBefore > 0);
    // 91 days later: the vault prunes at its next round
    offset += 91 * 86_400_000;
    try {
      await activity.event({ kind: 'test.new', severity: 'Info', message: 'new' });
      await waitFor('old events pruned', async () => !(await activity.events({ limit: 1000 })).some((e) => e.id === old.id), 10_000, 50);
      const events = await activity.events({ limit: 1000 });
      assert.deepEqual(events.map((e) => e.kind), ['test.new']);
      assert.equal((await activity.auditTrail({ limit: 1000 })).length, 0);
    } finally {
      offset -= 91 * 86_400_000;
    }
  });
});

describe('vault files', () => {
  test('with umask 000 the database, its -wal and -shm, the token file and the CA key are 0600; the CA key is not in the database, and an older database has it moved out', async () => {
    const dir = tempDir('osr-vault-files-');
    const data = path.join(dir, 'vault');
    const tokenFile = path.join(dir, 'owner.token');
    const mode = (f: string) => (fs.statSync(f).mode & 0o777).toString(8);
    const old = process.umask(0);
    let v;
    try {
      v = await spawnVault(['--data-dir', data, '--initial-token-file', tokenFile]);
    } finally {
      process.umask(old);
    }
    try {
      for (const f of ['vault.db', 'vault.db-wal', 'vault.db-shm', 'ca.key']) assert.equal(mode(path.join(data, f)), '600', f);
      assert.equal(mode(tokenFile), '600', 'the token file');
    } finally {
      await v.kill();
    }
    const keyPem = fs.readFileSync(path.join(data, 'ca.key'), 'utf8');
    const keyBody = keyPem.split('\n')[1]!;
    let caPem = '';
    const d = await openDatabase({ dataDir: data });
    try {
      const row = JSON.parse((await d.db.selectFrom('settings').select('value').where('key', '=', 'ca').executeTakeFirstOrThrow()).value) as Obj;
      assert.equal(row.keyPem, undefined, 'no private key in the database');
      assert.equal(row.keyFile, path.join(data, 'ca.key'));
      caPem = row.certPem as string;
      // an older osr kept the key in the database: make the database look like that
      await d.db.updateTable('settings').set({ value: JSON.stringify({ certPem: row.certPem, keyPem }) }).where('key', '=', 'ca').execute();
    } finally {
      await d.close();
    }
    fs.rmSync(path.join(data, 'ca.key'));
    const contains = (f: string, s: string) => fs.existsSync(f) && fs.readFileSync(f).includes(s);
    assert.ok(contains(path.join(data, 'vault.db'), keyBody) || contains(path.join(data, 'vault.db-wal'), keyBody), 'the old layout has the key in the database');

    const old2 = process.umask(0);
    let again;
    try {
      again = await spawnVault(['--data-dir', data]);
    } finally {
      process.umask(old2);
    }
    try {
      assert.equal(fs.readFileSync(path.join(data, 'ca.key'), 'utf8'), keyPem, 'the key moved to its file');
      assert.equal(mode(path.join(data, 'ca.key')), '600');
      for (const f of ['vault.db', 'vault.db-wal']) assert.ok(!contains(path.join(data, f), keyBody), `${f} no longer holds the key`);
      // the vault works with the key from its file: its server certificate is from the same CA
      const health = await new Promise<number>((resolve, reject) => {
        https.get(new URL('/api/v1/health', again.url), { ca: caPem, agent: false }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        }).on('error', reject);
      });
      assert.equal(health, 200);
    } finally {
      await again.kill();
    }
    // a missing key file is reported with its code, not a new CA
    fs.renameSync(path.join(data, 'ca.key'), path.join(dir, 'elsewhere.key'));
    await assert.rejects(spawnVault(['--data-dir', data]), /CA_KEY_UNAVAILABLE/);
    const moved = await spawnVault(['--data-dir', data, '--ca-key-file', path.join(dir, 'elsewhere.key')]);
    await moved.kill();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
