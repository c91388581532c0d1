/**
 * Route tests through inject(): auth and roles with their codes, the audit trail, policy
 * rules, configuration errors, recovery plan rules, jobs (filters, export, actions), the
 * OpenAPI document, and every mutating route fed malformed, oversized and wrongly typed
 * bodies — always a 4xx with a code, never a 5xx.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ERROR_CODES } from '../../src/domain/errors.js';
import { systemClock } from '../../src/domain/clock.js';
import { Vault } from '../../src/vault/server.js';
import { tempDir } from '../support/lab.js';

let vault: Vault;
let owner = '';
const offset = 0;
const clock = { now: () => Date.now() + offset, sleep: systemClock.sleep };

type Obj = Record<string, unknown>;

interface Res {
  status: number;
  body: Record<string, unknown> & { code?: string; items?: Record<string, unknown>[] };
  text: string;
  headers: Record<string, unknown>;
}

async function call(method: string, url: string, o: { token?: string | null; body?: unknown; raw?: string; contentType?: string } = {}): Promise<Res> {
  const token = o.token === undefined ? owner : o.token;
  const r = await vault.app.inject({
    method: method as 'GET',
    url: `/api/v1${url}`,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(o.body !== undefined || o.raw !== undefined ? { 'content-type': o.contentType ?? 'application/json' } : {}) },
    ...(o.raw !== undefined ? { payload: o.raw } : o.body !== undefined ? { payload: JSON.stringify(o.body) } : {}),
  });
  let body: Res['body'] = {};
  try {
    body = r.body ? JSON.parse(r.body) : {};
  } catch {
    // CSV and empty answers
  }
  return { status: r.statusCode, body, text: r.body, headers: r.headers };
}

async function tokenFor(role: string): Promise<string> {
  const r = await call('POST', '/tokens', { body: { name: `${role.toLowerCase()}-token`, role } });
  assert.equal(r.status, 201, r.text);
  return r.body.secret as string;
}

before(async () => {
  vault = await Vault.create({ dataDir: tempDir('osr-vault-routes-'), logLevel: 'silent', clock, jobPollMs: 20, onInitialToken: (t) => (owner = t) });
  vault.startWork();
});
after(() => vault.close());

describe('vault routes', () => {
  test('the first start made one Owner token; no token is 401, a wrong one 401, a weaker role 403, each with its code', async () => {
    assert.match(owner, /^osr_[0-9a-f]{12}_/);
    const none = await call('GET', '/policies', { token: null });
    assert.equal(none.status, 401);
    assert.equal(none.body.code, 'UNAUTHENTICATED');
    const wrong = await call('GET', '/policies', { token: 'osr_000000000000_nope' });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.code, 'UNAUTHENTICATED');

    const reader = await tokenFor('Reader');
    const operator = await tokenFor('Operator');
    const contributor = await tokenFor('Contributor');
    assert.equal((await call('GET', '/policies', { token: reader })).status, 200);
    const denied = await call('POST', '/policies', { token: reader, body: { name: 'r' } });
    assert.equal(denied.status, 403);
    assert.equal(denied.body.code, 'FORBIDDEN');
    // an Operator runs operations but cannot change configuration
    assert.equal((await call('POST', '/policies', { token: operator, body: { name: 'op' } })).body.code, 'FORBIDDEN');
    assert.equal((await call('POST', '/jobs/no-such-job/cancel', { token: operator })).body.code, 'NOT_FOUND');
    // a Contributor configures but does not manage tokens
    assert.equal((await call('POST', '/policies', { token: contributor, body: { name: 'by-contributor' } })).status, 201);
    assert.equal((await call('POST', '/tokens', { token: contributor, body: { name: 'x', role: 'Owner' } })).body.code, 'FORBIDDEN');

    // revoked: refused at once
    const tokens = (await call('GET', '/tokens')).body.items!;
    const readerId = tokens.find((t) => t.name === 'reader-token')!.id as string;
    assert.equal((await call('DELETE', `/tokens/${readerId}`)).status, 200);
    assert.equal((await call('GET', '/policies', { token: reader })).body.code, 'UNAUTHENTICATED');
    assert.ok(tokens.every((t) => !('secret' in t) && !('secret_hash' in t)), 'secrets are never listed');
  });

  test('every mutating call is audited: who, what, when, the result and its code', async () => {
    await call('POST', '/policies', { body: { name: 'audited', settings: { copyFrequencySeconds: 7 } } });
    const trail = (await call('GET', '/audit?limit=50')).body.items!;
    const refused = trail.find((e) => e.action === 'POST /api/v1/policies' && e.status === 400);
    assert.ok(refused, 'the refused call is in the trail');
    assert.equal(refused!.code, 'POLICY_INVALID');
    assert.match(refused!.actor as string, /^owner \(/);
    assert.equal(refused!.role, 'Owner');
    assert.ok(Date.parse(refused!.at as string) > 0);
    assert.ok(trail.some((e) => e.action === 'POST /api/v1/tokens' && e.status === 201));
    assert.ok(!trail.some((e) => e.method === 'GET'), 'reads are not audited');
  });

  test('policy rules: copy frequency, retention, app-consistent frequency, Kerberos, schedule, offline paths', async () => {
    const cases: [Record<string, unknown>, string, string][] = [
      [{ copyFrequencySeconds: 60 }, 'POLICY_INVALID', 'copyFrequencySeconds'],
      [{ retentionHours: 25 }, 'POLICY_INVALID', 'retentionHours'],
      [{ retentionHours: 4, appConsistentFrequencyHours: 4 }, 'POLICY_INVALID', 'appConsistentFrequencyHours'],
      [{ retentionHours: 24, appConsistentFrequencyHours: 13 }, 'POLICY_INVALID', 'appConsistentFrequencyHours'],
      [{ authentication: 'kerberos' }, 'NOT_SUPPORTED', 'authentication'],
      [{ initialReplication: { method: 'scheduled', startAt: new Date(clock.now() + 25 * 3600_000).toISOString() } }, 'POLICY_INVALID', 'initialReplication.startAt'],
      [{ initialReplication: { method: 'offline', exportPath: '/export' } }, 'POLICY_INVALID', 'initialReplication.importPath'],
      [{ port: 70000 }, 'POLICY_INVALID', 'port'],
    ];
    for (const [settings, code, field] of cases) {
      const r = await call('POST', '/policies', { body: { name: 'bad', settings } });
      assert.equal(r.body.code, code, `${JSON.stringify(settings)}: ${r.text}`);
      assert.equal((r.body.details as { field: string }).field, field);
      assert.ok(r.status === 400 || r.status === 422);
    }
    const ok = await call('POST', '/policies', {
      body: { name: 'gold', settings: { copyFrequencySeconds: 30, retentionHours: 24, appConsistentFrequencyHours: 12, initialReplication: { method: 'scheduled', startAt: new Date(clock.now() + 23 * 3600_000).toISOString() } } },
    });
    assert.equal(ok.status, 201, ok.text);
    const s = ok.body.settings as Record<string, unknown>;
    assert.equal(s.port, 8084);
    assert.equal(s.compression, true);
    assert.equal((await call('POST', '/policies', { body: { name: 'gold' } })).body.code, 'ALREADY_EXISTS');
    const changed = await call('PUT', `/policies/${String(ok.body.id)}`, { body: { settings: { copyFrequencySeconds: 900 } } });
    assert.equal((changed.body.settings as Record<string, unknown>).copyFrequencySeconds, 900);
  });

  test('pairings and mappings need clouds and networks that exist; recovery plans keep their shape rules', async () => {
    const policy = (await call('GET', '/policies')).body.items![0]!;
    const pair = await call('POST', '/cloud-pairings', { body: { policyId: policy.id, sourceCloudId: 'nowhere.gold', targetCloudId: 'elsewhere.gold' } });
    assert.equal(pair.body.code, 'NOT_FOUND');
    assert.equal((await call('POST', '/cloud-pairings', { body: { policyId: policy.id, sourceCloudId: 'a.c', targetCloudId: 'a.c' } })).body.code, 'INVALID_ARGUMENT');
    assert.equal((await call('POST', '/network-mappings', { body: { sourceId: 'x.n1', targetId: 'y.n1' } })).body.code, 'NOT_FOUND');

    const plan = { name: 'Finance', groups: [{ name: 'Group 1', items: ['a.vm1'] }, { name: 'Group 2', items: ['a.vm2', 'a.vm3'], pre: [{ name: 'check', kind: 'manual', target: 'confirm the DNS switch' }] }], dependencies: { 'a.vm3': ['a.vm2'] } };
    const created = await call('POST', '/recovery-plans', { body: plan });
    assert.equal(created.status, 201, created.text);
    assert.equal((await call('GET', '/recovery-plans/Finance')).body.id, created.body.id);
    const twice = await call('POST', '/recovery-plans', { body: { name: 'Dup', groups: [{ name: 'G', items: ['a.vm1'] }, { name: 'H', items: ['a.vm1'] }] } });
    assert.equal(twice.body.code, 'INVALID_ARGUMENT');
    const later = await call('POST', '/recovery-plans', { body: { name: 'Later', groups: [{ name: 'G', items: ['a.vm1'] }, { name: 'H', items: ['a.vm2'] }], dependencies: { 'a.vm1': ['a.vm2'] } } });
    assert.match(later.body.message as string, /later group/);
    const cycle = await call('POST', '/recovery-plans', { body: { name: 'Cycle', groups: [{ name: 'G', items: ['a.vm1', 'a.vm2'] }], dependencies: { 'a.vm1': ['a.vm2'], 'a.vm2': ['a.vm1'] } } });
    assert.match(cycle.body.message as string, /cycle/);
    const inherited = await call('POST', '/recovery-plans', { body: { name: 'Proto', groups: [{ name: 'G', items: ['constructor', 'toString'] }], dependencies: { toString: ['constructor'] } } });
    assert.equal(inherited.status, 201, 'item names that are also object properties are plain names');
    // more than ASR's 7 groups is fine
    const big = await call('POST', '/recovery-plans', { body: { name: 'Big', groups: Array.from({ length: 12 }, (_, i) => ({ name: `G${i}`, items: [`a.vm${i}`] })) } });
    assert.equal(big.status, 201);
  });

  test('registration keys: created valid for 5 days, listed without secrets, revocable', async () => {
    const k = await call('POST', '/registration-keys');
    assert.equal(k.status, 201);
    const days = (Date.parse(k.body.expiresAt as string) - Date.parse(k.body.createdAt as string)) / 86_400_000;
    assert.equal(days, 5);
    assert.ok(typeof k.body.key === 'string' && (k.body.key as string).length > 40);
    const listed = (await call('GET', '/registration-keys')).body.items!;
    assert.ok(listed.every((x) => !('key' in x) && !('secret_hash' in x)));
    const revoked = await call('POST', `/registration-keys/${String(k.body.id)}/revoke`);
    assert.ok(revoked.body.revokedAt);
  });

  test('jobs: waiting for input, resume with a comment, cancel, restart, filters, JSON and CSV export', async () => {
    let failNext = true;
    vault.engine.register<{ n: number }>({
      kind: 'test.manual',
      tasks: [
        {
          name: 'Ask',
          async run(ctx) {
            const a = ctx.waitForInput({ message: 'check the far site' });
            ctx.data.output = { comment: a.comment, by: a.by };
          },
        },
        {
          name: 'Flaky',
          async run() {
            if (failNext) {
              failNext = false;
              throw new Error('boom, "quoted", with a comma');
            }
          },
        },
      ],
    });
    const job = await vault.engine.submit('test.manual', { target: 'item-1', input: { n: 1 }, createdBy: 'test' });
    const waiting = await poll(async () => {
      const r = await call('GET', `/jobs/${job.id}`);
      return r.body.state === 'WaitingForInput' ? r : undefined;
    });
    assert.deepEqual(waiting.body.allowedActions, ['resume', 'cancel']);
    assert.equal((waiting.body.waitingFor as { message: string }).message, 'check the far site');
    assert.equal((await call('POST', `/jobs/${job.id}/restart`)).body.code, 'INVALID_STATE');
    const resumed = await call('POST', `/jobs/${job.id}/resume`, { body: { comment: 'far site checked' } });
    assert.equal(resumed.status, 200, resumed.text);
    const failed = await poll(async () => {
      const r = await call('GET', `/jobs/${job.id}`);
      return r.body.state === 'Failed' ? r : undefined;
    });
    assert.deepEqual(failed.body.allowedActions, ['restart']);
    const tasks = failed.body.tasks as { name: string; state: string }[];
    assert.deepEqual(tasks.map((t) => t.state), ['Succeeded', 'Failed']);
    assert.equal((await call('POST', `/jobs/${job.id}/restart`)).status, 200);
    const done = await poll(async () => {
      const r = await call('GET', `/jobs/${job.id}`);
      return r.body.state === 'Succeeded' ? r : undefined;
    });
    // the answered task was not asked again: its answer is the output
    assert.deepEqual(done.body.output, { comment: 'far site checked', by: `owner (${owner.split('_')[1]})` });
    assert.equal((await call('POST', `/jobs/${job.id}/cancel`)).body.code, 'INVALID_STATE');

    const other = await vault.engine.submit('test.manual', { target: 'item-2', input: { n: 2 } });
    await poll(async () => ((await call('GET', `/jobs/${other.id}`)).body.state === 'WaitingForInput' ? true : undefined));
    assert.equal((await call('POST', `/jobs/${other.id}/cancel`)).body.state, 'Cancelled');

    assert.deepEqual((await call('GET', '/jobs?target=item-2')).body.items!.map((j) => j.id), [other.id]);
    assert.deepEqual((await call('GET', '/jobs?state=Succeeded&kind=test.manual')).body.items!.map((j) => j.id), [job.id]);
    assert.equal((await call('GET', '/jobs?state=Bogus')).body.code, 'INVALID_ARGUMENT');
    const json = await call('GET', '/jobs/export?format=json&kind=test.manual');
    assert.equal((json.body as unknown as unknown[]).length, 2);
    const csv = await call('GET', '/jobs/export?format=csv&kind=test.manual');
    assert.match(String(csv.headers['content-type']), /text\/csv/);
    const lines = csv.text.trim().split('\r\n');
    assert.equal(lines[0], 'id,kind,target,state,progress,currentStep,attempts,createdBy,createdAt,startedAt,endedAt,errorCode,errorMessage');
    assert.equal(lines.length, 3);
    assert.ok(lines.some((l) => l.startsWith(other.id) && l.includes(',Cancelled,')));
  });

  test('alert settings: the SMTP password is never shown, and writing back what was read keeps it', async () => {
    const settings = { webhooks: ['https://hooks.example.com/osr'], emails: ['ops@example.com'], smtp: { host: 'mail.example.com', port: 587, secure: false, from: 'osr@example.com', user: 'osr', password: 's3cret' } };
    const put = await call('PUT', '/alert-settings', { body: settings });
    assert.equal((put.body.smtp as Obj).password, '********');
    const read = await call('GET', '/alert-settings');
    assert.equal((read.body.smtp as Obj).password, '********');
    await call('PUT', '/alert-settings', { body: read.body });
    const stored = await vault.store.activity.setting<{ smtp: { password: string } }>('alerts', { smtp: { password: '' } });
    assert.equal(stored.smtp.password, 's3cret');
    assert.equal((await call('PUT', '/alert-settings', { body: { ...settings, webhooks: ['ftp://x'] } })).body.code, 'INVALID_ARGUMENT');
  });

  test('the OpenAPI document lists the routes with their schemas', async () => {
    const r = await call('GET', '/openapi.json', { token: null });
    assert.equal(r.status, 200);
    const paths = r.body.paths as Record<string, Record<string, { requestBody?: unknown }>>;
    for (const p of ['/api/v1/policies', '/api/v1/protected-items', '/api/v1/jobs/{id}/resume', '/api/v1/registrations', '/api/v1/provider/commands', '/api/v1/cloud-pairings']) assert.ok(paths[p], `${p} is documented`);
    assert.ok(paths['/api/v1/policies']!.post!.requestBody, 'request bodies are described');
  });

  test('malformed, oversized and wrongly typed bodies on every mutating route: 4xx with a registered code, never 5xx', async () => {
    const doc = (await call('GET', '/openapi.json', { token: null })).body.paths as Record<string, Record<string, unknown>>;
    const bodies: { raw?: string; body?: unknown; contentType?: string }[] = [
      { raw: '{"name":' },
      { raw: 'null' },
      { raw: '[]' },
      { raw: '"text"' },
      { raw: '42' },
      { body: { name: 12, settings: 'x', groups: 'x', key: [], vmId: {}, comment: 7, sourceId: null, role: 'King' } },
      { body: { name: 'x'.repeat(5000) } },
      { raw: JSON.stringify({ name: 'big', pad: 'x'.repeat(2 * 1024 * 1024) }) },
      { raw: '<xml/>', contentType: 'application/xml' },
      { raw: '{"__proto__":{"admin":true}}' },
    ];
    let calls = 0;
    for (const [p, methods] of Object.entries(doc)) {
      for (const m of Object.keys(methods)) {
        const method = m.toUpperCase();
        if (!['POST', 'PUT', 'PATCH', 'DELETE'].includes(method)) continue;
        const url = p.replace('/api/v1', '').replace(/\{id\}/g, 'no-such-id');
        for (const b of bodies) {
          const r = await call(method, url, b);
          calls++;
          assert.ok(r.status >= 400 && r.status < 500, `${method} ${url} with ${String(b.raw ?? JSON.stringify(b.body)).slice(0, 60)} answered ${r.status}: ${r.text.slice(0, 300)}`);
          assert.ok(typeof r.body.code === 'string' && r.body.code in ERROR_CODES, `${method} ${url}: ${r.text.slice(0, 200)}`);
          assert.equal(typeof r.body.message, 'string');
        }
      }
    }
    assert.ok(calls > 200, `${calls} calls`);
    // still alive and answering
    assert.equal((await call('GET', '/health', { token: null })).status, 200);
  });
});

async function poll<T>(fn: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}
