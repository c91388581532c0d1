/**
 * Jobs survive vault processes: two `osr vault` processes on one PostgreSQL database run
 * 500 enable-protection jobs, each exactly once; a vault killed with kill -9 in the middle
 * of a job's initial replication finishes the job after it starts again, without sending
 * the commands of the tasks that were done.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { VaultClient } from '../../src/provider/vault-client.js';
import { createTestDatabase } from '../support/databases.js';
import { freePort, tempDir, waitFor } from '../support/lab.js';
import { Dialect } from '../../src/store/database.js';
import { openDatabase } from '../../src/store/database.js';
import { gate, initialProgress, siteInventory, spawnVault, TestProvider } from '../support/vault.js';

type Obj = Record<string, unknown>;

async function caOf(database: string, dataDir: string): Promise<string> {
  const d = await openDatabase({ database, dataDir });
  try {
    const row = await d.db.selectFrom('settings').select('value').where('key', '=', 'ca').executeTakeFirstOrThrow();
    return (JSON.parse(row.value) as { certPem: string }).certPem;
  } finally {
    await d.close();
  }
}

async function configure(api: VaultClient, source: string, target: string): Promise<void> {
  const policy = await api.request<Obj>('POST', '/api/v1/policies', { name: 'p', settings: { copyFrequencySeconds: 300 } });
  await api.request('POST', '/api/v1/cloud-pairings', { policyId: policy.id, sourceCloudId: source, targetCloudId: target });
}

describe('vault durability', () => {
  test('two vault processes on one PostgreSQL database run 500 jobs, each exactly once', { timeout: 600_000 }, async () => {
    const t = await createTestDatabase(Dialect.Postgres);
    const dir = tempDir('osr-two-vaults-');
    const args = (n: string) => ['--database', t.database, '--data-dir', path.join(dir, n), '--job-poll', '100ms', '--job-concurrency', '32'];
    const a = await spawnVault(args('a'));
    const b = await spawnVault(args('b'));
    const providers: TestProvider[] = [];
    try {
      const ca = await caOf(t.database, dir);
      assert.ok(a.token, 'the first vault made the Owner token');
      assert.equal(b.token, undefined, 'the second did not make another');
      const apiA = new VaultClient(a.url, { ca, token: a.token });
      const apiB = new VaultClient(b.url, { ca, token: a.token });
      const key = async (api: VaultClient) => (await api.request<Obj>('POST', '/api/v1/registration-keys')).key as string;
      const n = 500;
      const src = await TestProvider.start(a.url, await key(apiA), { fabric: 'Site-A', inventory: siteInventory('a', ['Cloud1'], n), steps: 1 });
      const dst = await TestProvider.start(b.url, await key(apiB), { fabric: 'Site-B', inventory: siteInventory('b', ['Cloud2'], 0) });
      providers.push(src, dst);
      await configure(apiA, 'site-a.cloud1', 'site-b.cloud2');

      const jobIds: string[] = [];
      for (let i = 0; i < n; i += 25) {
        const batch = await Promise.all(Array.from({ length: Math.min(25, n - i) }, (_, k) => ((i + k) % 2 === 0 ? apiA : apiB).request<Obj>('POST', '/api/v1/protected-items', { vmId: `site-a.cloud1-vm${i + k}` })));
        jobIds.push(...batch.map((j) => j.jobId as string));
      }
      const started = Date.now();
      await waitFor(
        '500 jobs to finish',
        async () => {
          const done = await apiA.request<Obj[]>('GET', '/api/v1/jobs/export?format=json&kind=enable-protection&state=Succeeded&limit=1000');
          return done.length === n;
        },
        480_000,
        500,
      );
      const seconds = (Date.now() - started) / 1000;
      const jobs = await apiB.request<Obj[]>('GET', '/api/v1/jobs/export?format=json&kind=enable-protection&limit=1000');
      assert.equal(jobs.length, n);
      assert.deepEqual(new Set(jobs.map((j) => j.id)), new Set(jobIds));
      assert.ok(jobs.every((j) => j.state === 'Succeeded' && j.attempts === 1 && (j.ranBy as string[]).length === 1), 'every job claimed once');
      const vaults = new Set(jobs.map((j) => (j.ranBy as string[])[0]));
      assert.equal(vaults.size, 2, `both vault processes ran jobs: ${[...vaults].join(', ')}`);
      // each VM's commands reached the providers once
      for (const [p, kinds] of [
        [src, ['replication.enable', 'replication.initial']],
        [dst, ['replica.prepare']],
      ] as const) {
        for (const kind of kinds) {
          const cmds = p.received.filter((c) => c.kind === kind);
          assert.equal(cmds.length, n, `${kind}: ${cmds.length}`);
          assert.equal(new Set(cmds.map((c) => c.id)).size, n);
          assert.equal(new Set(cmds.map((c) => c.body.item)).size, n);
        }
      }
      const items = await apiA.request<{ items: Obj[] }>('GET', '/api/v1/protected-items?state=Protected&limit=1000');
      assert.equal(items.items.length, n);
      console.log(`# 500 enable-protection jobs on two vault processes in ${seconds.toFixed(1)} s`);
      apiA.close();
      apiB.close();
    } finally {
      for (const p of providers) await p.stop();
      await Promise.all([a.kill(), b.kill()]);
      await t.drop();
    }
  });

  test('a vault killed with kill -9 in the middle of a job continues it after restart', { timeout: 120_000 }, async () => {
    const dir = tempDir('osr-vault-kill-');
    const port = await freePort();
    const args = ['--data-dir', dir, '--listen', `127.0.0.1:${port}`, '--job-lease', '2s', '--job-poll', '100ms'];
    let vault = await spawnVault(args);
    const providers: TestProvider[] = [];
    const release = gate();
    try {
      const ca = await caOf(path.join(dir, 'vault.db'), dir);
      const api = new VaultClient(vault.url, { ca, token: vault.token });
      const key = async () => (await api.request<Obj>('POST', '/api/v1/registration-keys')).key as string;
      const src = await TestProvider.start(vault.url, await key(), {
        fabric: 'Site-A',
        inventory: siteInventory('a', ['Cloud1'], 1),
        handlers: {
          'replication.initial': async (_c, progress) => {
            await progress(initialProgress(0.3, 1000));
            await release.wait;
            return { recoveryPoint: { id: 'p1', at: new Date().toISOString(), consistency: 'crash' } };
          },
        },
      });
      const dst = await TestProvider.start(vault.url, await key(), { fabric: 'Site-B', inventory: siteInventory('b', ['Cloud2'], 0) });
      providers.push(src, dst);
      await configure(api, 'site-a.cloud1', 'site-b.cloud2');
      const job = await api.request<Obj>('POST', '/api/v1/protected-items', { vmId: 'site-a.cloud1-vm0' });
      await waitFor('initial replication under way', async () => (await api.request<Obj>('GET', job.url as string)).currentStep === 'Initial replication' && src.received.some((c) => c.kind === 'replication.initial'), 20_000);

      await vault.kill('SIGKILL');
      // the provider finishes while the vault is down; its result waits for the vault
      release.open();
      vault = await spawnVault(args);
      const done = await waitFor(
        'the job to finish in the restarted vault',
        async () => {
          const j = await api.request<Obj>('GET', job.url as string);
          return j.state === 'Succeeded' ? j : undefined;
        },
        60_000,
        200,
      );
      assert.equal(done.attempts, 2, 'claimed again after the kill');
      assert.equal((done.ranBy as string[]).length, 2);
      assert.deepEqual((done.tasks as Obj[]).map((x) => x.state), ['Succeeded', 'Succeeded', 'Succeeded', 'Succeeded']);
      // tasks done before the kill were not run again: each command was sent once
      assert.deepEqual(dst.received.map((c) => c.kind), ['replica.prepare']);
      assert.deepEqual(src.received.map((c) => c.kind), ['replication.enable', 'replication.initial'], JSON.stringify(src.received));
      const item = await api.request<Obj>('GET', '/api/v1/protected-items/site-a.cloud1-vm0');
      assert.equal(item.state, 'Protected');
      api.close();
    } finally {
      for (const p of providers) await p.stop();
      await vault.kill();
    }
  });
});
