/**
 * The store contract: the same tests on SQLite and on PostgreSQL, against real databases.
 * Migrations (idempotent, serialized between two vaults, refused on a newer schema) and
 * the job lease protocol (claim, renew, fencing by owner, takeover after a lease runs out,
 * every job claimed exactly once by two vaults at once), item samples over time, a
 * fabric's capabilities as its provider's heartbeats report them, and retention (old
 * events, audit records and ended jobs pruned).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { openDatabase, Dialect, type VaultDatabase } from '../../src/store/database.js';
import { Health, ProtectionState } from '../../src/domain/resources.js';
import { ItemStore } from '../../src/store/items.js';
import { JobState, JobStore } from '../../src/store/jobs.js';
import { SCHEMA_VERSION } from '../../src/store/migrations.js';
import { ActivityStore } from '../../src/store/activity.js';
import { FabricStore } from '../../src/store/inventory.js';
import { LAB_CAPABILITIES } from '../../src/lab/lab-driver.js';
import { CommandStore } from '../../src/store/commands.js';
import { pruneBefore } from '../../src/store/retention.js';
import { createTestDatabase, type TestDatabase } from '../support/databases.js';
import { assertRejectsCode } from '../support/unit.js';
import { siteInventory } from '../support/vault.js';

async function withDatabase(dialect: Dialect, fn: (t: TestDatabase) => Promise<void>): Promise<void> {
  const t = await createTestDatabase(dialect);
  try {
    await fn(t);
  } finally {
    await t.drop();
  }
}

const open = (t: TestDatabase, o: { poolSize?: number } = {}) => openDatabase({ database: t.database, dataDir: t.dataDir, ...o });

/** Open (and so migrate) the database from another thread: a second vault with an event loop of its own. */
function openElsewhere(t: TestDatabase): Promise<void> {
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.module)
      .then(async (m) => { const d = await m.openDatabase({ database: workerData.database, dataDir: workerData.dataDir }); await d.close(); parentPort.postMessage(null); })
      .catch((e) => parentPort.postMessage(String(e && e.message || e)));`;
  const worker = new Worker(code, { eval: true, workerData: { module: new URL('../../src/store/database.js', import.meta.url).href, database: t.database, dataDir: t.dataDir } });
  return new Promise((resolve, reject) => {
    worker.once('message', (err: string | null) => (err ? reject(new Error(err)) : resolve()));
    worker.once('error', reject);
  });
}

/** A fabric `site`, a policy `pol` and a pairing `p` of its clouds: what a protected item refers to. */
async function seedPairing(h: VaultDatabase, now: number): Promise<void> {
  await h.db.insertInto('fabrics').values({ id: 'site', name: 'site', kind: 'test', version: '1', inventory_scope: '"all"', last_heartbeat_at: null, heartbeat_lost: 0, inventory_at: null, created_at: now }).execute();
  await h.db.insertInto('policies').values({ id: 'pol', name: 'pol', settings: '{}', created_at: now, updated_at: now }).execute();
  await h.db.insertInto('cloud_pairings').values({ id: 'p', policy_id: 'pol', source_cloud_id: 'site.c1', target_cloud_id: 'site.c2', created_at: now }).execute();
}

for (const dialect of [Dialect.Sqlite, Dialect.Postgres]) {
  describe(`store on ${dialect}`, () => {
    test('migrations run once, two vaults opening a fresh database at once migrate it once, and a newer schema is refused', () =>
      withDatabase(dialect, async (t) => {
        const [a] = await Promise.all([open(t), openElsewhere(t)]);
        const b = await open(t);
        try {
          const rows = await a.db.selectFrom('schema_migrations').selectAll().execute();
          assert.deepEqual(
            rows.map((r) => r.version),
            Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1),
          );
          // a newer osr migrated this database since: this one must not use it
          await b.db.insertInto('schema_migrations').values({ version: SCHEMA_VERSION + 1, name: 'from the future', applied_at: Date.now() }).execute();
        } finally {
          await Promise.all([a.close(), b.close()]);
        }
        const err = await assertRejectsCode(open(t), 'STORE_SCHEMA_NEWER');
        assert.equal(err.details?.databaseVersion, SCHEMA_VERSION + 1);
      }));

    test('an inventory report writes only what changed: the same report twice changes nothing, an object changed, added or removed is the only one written', () =>
      withDatabase(dialect, async (t) => {
        const d = await open(t);
        try {
          let now = Date.parse('2026-12-07T00:00:00Z');
          const fabrics = new FabricStore(d.db, () => now);
          const { fabric } = await fabrics.registerProvider({ providerId: 'prov-inv', fabricName: 'Site-Inv', fabricKind: 'lab', serverName: 's1', version: '1', certSerial: '02', certFingerprint: 'AB', proxy: null, inventoryScope: 'all' });
          const doc = siteInventory('inv', ['C1'], 3);
          const first = await fabrics.replaceInventory(fabric.id, doc);
          assert.ok(first.length > 3 && first.every((c) => c.change === 'added'));
          const vm = (n: number) => fabrics.object(`${fabric.id}.c1-vm${n}`, 'vm');
          const at0 = (await vm(0)).updatedAt;
          now += 60_000;
          assert.deepEqual(await fabrics.replaceInventory(fabric.id, doc), []);
          assert.equal((await vm(0)).updatedAt, at0, 'an unchanged object is not written');
          // vm1 powered off, vm2 gone, vm3 new
          const next = siteInventory('inv', ['C1'], 4);
          next.vms[1]!.powerState = 'Off';
          next.vms.splice(2, 1);
          const changes = await fabrics.replaceInventory(fabric.id, next);
          assert.deepEqual(changes.map((c) => `${c.change} ${c.id}`).sort(), [`added ${fabric.id}.c1-vm3`, `changed ${fabric.id}.c1-vm1`, `removed ${fabric.id}.c1-vm2`]);
          assert.equal((await vm(0)).updatedAt, at0);
          assert.equal((await vm(1)).updatedAt, new Date(now).toISOString());
          assert.equal((await vm(1)).properties.powerState, 'Off');
          assert.equal((await vm(3)).name, next.vms[2]!.name);
          await assertRejectsCode(vm(2), 'NOT_FOUND');
        } finally {
          await d.close();
        }
      }));

    test('fabric capabilities: none until a heartbeat reports them; kept as reported; a heartbeat without them keeps them', () =>
      withDatabase(dialect, async (t) => {
        const d = await open(t);
        try {
          const fabrics = new FabricStore(d.db);
          const { fabric, provider } = await fabrics.registerProvider({ providerId: 'prov-1', fabricName: 'Site-A', fabricKind: 'lab', serverName: 's1', version: '1', certSerial: '01', certFingerprint: 'AA', proxy: null, inventoryScope: 'all' });
          assert.equal(fabric.capabilities, null);
          await fabrics.heartbeat(provider.id, LAB_CAPABILITIES);
          assert.deepEqual((await fabrics.get(fabric.id)).capabilities, LAB_CAPABILITIES);
          const fewer = { ...LAB_CAPABILITIES, testFailover: false, initialReplication: ['now' as const] };
          await fabrics.heartbeat(provider.id, fewer);
          await fabrics.heartbeat(provider.id);
          assert.deepEqual((await fabrics.list()).find((f) => f.id === fabric.id)?.capabilities, fewer);
        } finally {
          await d.close();
        }
      }));

    test('jobs: create, list with filters, claim under a lease, fencing by owner, takeover after the lease ran out, finish', () =>
      withDatabase(dialect, async (t) => {
        const vdb = await open(t);
        try {
          let now = 1_000_000;
          const jobs = new JobStore(vdb.db, vdb.dialect, () => now);
          const first = await jobs.create({ kind: 'enable-protection', target: 'vm1', input: { policy: 'gold' } });
          now += 10;
          await jobs.create({ kind: 'disable-protection', target: 'vm2' });
          assert.deepEqual(
            (await jobs.list()).map((j) => j.target),
            ['vm2', 'vm1'],
            'newest first',
          );
          assert.deepEqual(
            (await jobs.list({ kind: 'enable-protection' })).map((j) => j.id),
            [first.id],
          );
          assert.equal((await jobs.list({ state: JobState.Queued })).length, 2);
          assert.deepEqual(JSON.parse((await jobs.get(first.id)).input), { policy: 'gold' });
          await assertRejectsCode(jobs.get('no-such-job'), 'NOT_FOUND');
          assert.deepEqual([...(await jobs.many([first.id, 'no-such-job'])).keys()], [first.id]);

          const claimed = await jobs.claim('vault-a', 30_000);
          assert.equal(claimed?.id, first.id, 'the oldest job first');
          assert.equal(claimed?.state, JobState.Running);
          assert.equal(claimed?.attempts, 1);
          const second = await jobs.claim('vault-a', 30_000);
          assert.ok(second && second.id !== first.id);
          assert.equal(await jobs.claim('vault-b', 30_000), undefined, 'nothing left to claim while the leases hold');

          await jobs.update(first.id, 'vault-a', { progress: 0.5, currentStep: 'initial replication' });
          await assertRejectsCode(jobs.update(first.id, 'vault-b', { progress: 0.9 }), 'LEASE_LOST');
          await jobs.renew(first.id, 'vault-a', 30_000);

          // vault-a stops renewing; once the lease runs out vault-b takes the job over
          now += 60_000;
          const taken = await jobs.claim('vault-b', 30_000);
          assert.ok(taken && [first.id, second.id].includes(taken.id));
          assert.equal(taken.attempts, 2);
          assert.equal(taken.progress, taken.id === first.id ? 0.5 : 0, 'progress survives the takeover');
          await assertRejectsCode(jobs.update(taken.id, 'vault-a', { progress: 1 }), 'LEASE_LOST');
          await assertRejectsCode(jobs.finish(taken.id, 'vault-b', JobState.Running), 'INVALID_ARGUMENT');
          await jobs.finish(taken.id, 'vault-b', JobState.Succeeded, { output: { point: 3 } });
          const done = await jobs.get(taken.id);
          assert.equal(done.state, JobState.Succeeded);
          assert.equal(done.locked_by, null);
          assert.equal(done.progress, 1);
          assert.deepEqual(JSON.parse(done.output!), { point: 3 });
          await assertRejectsCode(jobs.renew(taken.id, 'vault-b', 1000), 'LEASE_LOST', /no vault/);
        } finally {
          await vdb.close();
        }
      }));

    test('item samples: one a minute at most, oldest first, a week kept, gone with their item; the RPO of all items in buckets', () =>
      withDatabase(dialect, async (t) => {
        const h = await open(t);
        try {
          let now = Date.parse('2026-12-01T00:00:00Z');
          const items = new ItemStore(h.db, () => now);
          await seedPairing(h, now);
          await items.create({ id: 'site.vm1', name: 'vm1', fabricId: 'site', pairingId: 'p', state: ProtectionState.Protected, activeJobId: null });
          const sample = (pending: number) => ({ rpoSeconds: 12.5, churnBytesPerSec: 1500.5, peakChurnBytesPerSec: 4000, pendingLogBytes: pending });
          assert.equal(await items.addSample('site.vm1', sample(1)), true);
          now += 30_000;
          assert.equal(await items.addSample('site.vm1', sample(2)), false, 'within a minute of the last: dropped');
          now += 30_000;
          assert.equal(await items.addSample('site.vm1', sample(3 * 1024 ** 3)), true);
          const got = await items.samples('site.vm1', 0);
          assert.deepEqual(got, [
            { at: '2026-12-01T00:00:00.000Z', ...sample(1) },
            { at: '2026-12-01T00:01:00.000Z', ...sample(3 * 1024 ** 3) },
          ]);
          assert.deepEqual((await items.samples('site.vm1', now)).map((x) => x.pendingLogBytes), [3 * 1024 ** 3]);
          await items.create({ id: 'site.vm2', name: 'vm2', fabricId: 'site', pairingId: 'p', state: ProtectionState.Protected, activeJobId: null });
          assert.equal(await items.addSample('site.vm2', { ...sample(5), rpoSeconds: 40 }), true);
          const start = Date.parse('2026-12-01T00:00:00Z');
          assert.deepEqual(await items.rpoHistory(start, 60_000), [
            { at: '2026-12-01T00:00:00.000Z', worstRpoSeconds: 12.5, meanRpoSeconds: 12.5, items: 1 },
            { at: '2026-12-01T00:01:00.000Z', worstRpoSeconds: 40, meanRpoSeconds: 26.25, items: 2 },
          ]);
          assert.deepEqual(await items.rpoHistory(start, 3600_000), [{ at: '2026-12-01T00:00:00.000Z', worstRpoSeconds: 40, meanRpoSeconds: (12.5 + 12.5 + 40) / 3, items: 2 }], 'an hour\'s bucket: both items, all three samples');
          await items.remove('site.vm2');
          now += 8 * 24 * 3600_000;
          await items.addSample('site.vm1', { rpoSeconds: null, churnBytesPerSec: null, peakChurnBytesPerSec: null, pendingLogBytes: null });
          assert.deepEqual((await items.samples('site.vm1', 0)).map((x) => x.rpoSeconds), [null], 'older than a week: gone');
          await items.remove('site.vm1');
          assert.deepEqual(await items.samples('site.vm1', 0), []);
        } finally {
          await h.close();
        }
      }));

    test('item summary: counts by health and state, the worst RPO, and the Protected items whose drill is due (a drill kept in the record counts)', () =>
      withDatabase(dialect, async (t) => {
        const h = await open(t);
        try {
          const now = Date.parse('2026-12-07T00:00:00Z');
          const items = new ItemStore(h.db, () => now, h.dialect);
          await seedPairing(h, now);
          assert.deepEqual(await items.summary(now), { total: 0, byHealth: {}, byState: {}, worstRpo: null, drillsDue: { count: 0, items: [] } });
          for (const [i, state] of [ProtectionState.Protected, ProtectionState.Protected, ProtectionState.Protected, ProtectionState.InitialReplication].entries()) {
            await items.create({ id: `site.vm${i}`, name: `vm${i}`, fabricId: 'site', pairingId: 'p', state, activeJobId: null });
          }
          await items.update('site.vm0', { health: Health.Critical, rpoSeconds: 900 });
          await items.update('site.vm1', { health: Health.Healthy, rpoSeconds: 30 });
          const drill = (daysAgo: number, succeeded = true) => ({ testFailoverJob: 'j1', cleanupJob: 'j2', point: { id: '1', at: '', consistency: 'crash' }, network: 'none', rtoSeconds: 3, startedAt: '', cleanedUpAt: new Date(now - daysAgo * 86400_000).toISOString(), notes: null, succeeded });
          // vm1 drilled 3 days ago; vm2 40 days ago, and a failed drill since does not count
          await items.update('site.vm1', { replication: { drills: [drill(3)] } });
          await items.update('site.vm2', { replication: { drills: [drill(1, false), drill(40)] } });
          const s = await items.summary(now);
          assert.equal(s.total, 4);
          assert.deepEqual(s.byState, { Protected: 3, InitialReplication: 1 });
          assert.equal(s.byHealth.Critical, 1);
          assert.equal(Object.values(s.byHealth).reduce((a, b) => a + b, 0), 4);
          assert.deepEqual(s.worstRpo, { id: 'site.vm0', name: 'vm0', rpoSeconds: 900 });
          assert.deepEqual(s.drillsDue, {
            count: 2,
            items: [
              { id: 'site.vm0', name: 'vm0', lastDrillAt: null },
              { id: 'site.vm2', name: 'vm2', lastDrillAt: new Date(now - 40 * 86400_000).toISOString() },
            ],
          });
          assert.equal((await items.summary(now, 1)).drillsDue.items.length, 1);
        } finally {
          await h.close();
        }
      }));

    test('replication groups: an item\'s group from its creation, kept with every change of its record, its members listed; points keep their cut', () =>
      withDatabase(dialect, async (t) => {
        const h = await open(t);
        try {
          const now = Date.parse('2026-12-07T00:00:00Z');
          const items = new ItemStore(h.db, () => now, h.dialect);
          await seedPairing(h, now);
          for (const [i, group] of ['app', 'app', undefined].entries()) await items.create({ id: `site.vm${i}`, name: `vm${i}`, fabricId: 'site', pairingId: 'p', state: ProtectionState.Protected, activeJobId: null, group });
          assert.equal((await items.get('site.vm0')).replication.group, 'app');
          assert.deepEqual((await items.list({ group: 'app' })).map((i) => i.id), ['site.vm0', 'site.vm1']);
          // the record rewritten without the group leaves the group
          await items.update('site.vm1', { replication: { sourceFabricId: 'site' } });
          await items.update('site.vm2', { replication: { sourceFabricId: 'site', group: 'app' } });
          assert.deepEqual((await items.list({ group: 'app' })).map((i) => i.id), ['site.vm0', 'site.vm2']);
          await items.replacePoints('site.vm0', [
            { id: '7', at: now - 30_000, consistency: 'crash', cut: 'cut-abc-1' },
            { id: '8', at: now, consistency: 'crash' },
          ]);
          assert.deepEqual(await items.points('site.vm0'), [
            { id: '8', at: new Date(now).toISOString(), consistency: 'crash' },
            { id: '7', at: new Date(now - 30_000).toISOString(), consistency: 'crash', cut: 'cut-abc-1' },
          ]);
        } finally {
          await h.close();
        }
      }));

    test('item state: a change by a job checks, in one statement, that it holds the item and its own lease and finds the state it expects', () =>
      withDatabase(dialect, async (t) => {
        const h = await open(t);
        try {
          let now = 2_000_000;
          const jobs = new JobStore(h.db, h.dialect, () => now);
          const items = new ItemStore(h.db, () => now, h.dialect);
          await seedPairing(h, now);
          await items.create({ id: 'site.vm1', name: 'vm1', fabricId: 'site', pairingId: 'p', state: ProtectionState.Protected, activeJobId: null });
          const job = await jobs.create({ kind: 'planned-failover', target: 'site.vm1' });
          now += 1;
          const other = await jobs.create({ kind: 'test-failover', target: 'site.vm1' });

          // taking the item: its active job and its state are both checked
          assert.equal(await items.takeActiveJob('site.vm1', { jobId: job.id, expected: null, from: ProtectionState.Resynchronizing, state: ProtectionState.FailoverInProgress }), false, 'not in the state the taker saw');
          assert.equal(await items.takeActiveJob('site.vm1', { jobId: job.id, expected: null, from: ProtectionState.Protected, state: ProtectionState.FailoverInProgress }), true);
          assert.equal(await items.takeActiveJob('site.vm1', { jobId: other.id, expected: null, from: ProtectionState.FailoverInProgress, state: ProtectionState.TestFailoverInProgress }), false, 'another job holds it');

          assert.equal((await jobs.claim('vault-a', 30_000))?.id, job.id);
          const a = { jobId: job.id, owner: 'vault-a' };
          const b = { jobId: job.id, owner: 'vault-b' };
          await items.transition('site.vm1', a, [ProtectionState.FailoverInProgress], { progress: 0.5 });
          await assertRejectsCode(items.transition('site.vm1', b, [ProtectionState.FailoverInProgress], { progress: 0.9 }), 'LEASE_LOST', /held by vault-a/);

          // vault-a's lease runs out and vault-b takes the job over: vault-a changes nothing any more
          now += 60_000;
          assert.equal((await jobs.claim('vault-b', 30_000))?.id, job.id);
          const before = await items.get('site.vm1');
          await assertRejectsCode(items.transition('site.vm1', a, [ProtectionState.FailoverInProgress], { state: ProtectionState.FailedOver, release: true, points: [] }), 'LEASE_LOST', /held by vault-b/);
          await assertRejectsCode(items.removeHeld('site.vm1', a, [ProtectionState.FailoverInProgress]), 'LEASE_LOST');
          await assertRejectsCode(items.transition('site.vm1', b, [ProtectionState.Protected], { state: ProtectionState.FailedOver, release: true }), 'INVALID_STATE', /expected it Protected/);
          assert.deepEqual(await items.get('site.vm1'), before, 'unchanged');

          // another job is made the item's active job: the first one no longer holds it
          assert.equal(await items.takeActiveJob('site.vm1', { jobId: other.id, expected: job.id, from: ProtectionState.FailoverInProgress, state: ProtectionState.TestFailoverInProgress }), true);
          const taken = await items.get('site.vm1');
          await assertRejectsCode(items.transition('site.vm1', b, [ProtectionState.FailoverInProgress, ProtectionState.TestFailoverInProgress], { state: ProtectionState.FailedOver, release: true }), 'ITEM_NOT_HELD', new RegExp(`job ${other.id} does`));
          await assertRejectsCode(items.removeHeld('site.vm1', b, [ProtectionState.TestFailoverInProgress]), 'ITEM_NOT_HELD');
          assert.deepEqual(await items.get('site.vm1'), taken, 'unchanged');

          // the job that holds the item changes it, its points in the same transaction
          assert.equal((await jobs.claim('vault-a', 30_000))?.id, other.id);
          const after = await items.transition('site.vm1', { jobId: other.id, owner: 'vault-a' }, [ProtectionState.TestFailoverInProgress], { state: ProtectionState.TestFailoverComplete, release: true, points: [{ id: 'p1', at: now, consistency: 'crash' }] });
          assert.equal(after.state, ProtectionState.TestFailoverComplete);
          assert.equal(after.activeJobId, null);
          assert.deepEqual((await items.points('site.vm1')).map((p) => p.id), ['p1']);

          // an ended job's end handler (no vault holds it) writes only while the job stays ended
          await jobs.finish(other.id, 'vault-a', JobState.Failed, { error: { code: 'JOB_FAILED', message: 'x' } });
          assert.equal(await items.takeActiveJob('site.vm1', { jobId: other.id, expected: null, from: ProtectionState.TestFailoverComplete, state: ProtectionState.TestFailoverInProgress }), true);
          await jobs.restart(other.id);
          await assertRejectsCode(items.transition('site.vm1', { jobId: other.id, owner: null }, [ProtectionState.TestFailoverInProgress], { state: ProtectionState.Protected, release: true }), 'LEASE_LOST', /Queued again/);
          assert.equal((await items.get('site.vm1')).state, ProtectionState.TestFailoverInProgress);
          assert.equal((await jobs.claim('vault-a', 30_000))?.id, other.id);
          await jobs.finish(other.id, 'vault-a', JobState.Cancelled);
          await items.transition('site.vm1', { jobId: other.id, owner: null }, [ProtectionState.TestFailoverInProgress], { state: ProtectionState.Protected, release: true });
          assert.equal((await items.get('site.vm1')).state, ProtectionState.Protected);
          await assertRejectsCode(items.transition('nope', a, [ProtectionState.Protected], {}), 'NOT_FOUND');
        } finally {
          await h.close();
        }
      }));

    test('retention: events, audit records and ended jobs (with their tasks and commands) older than the cutoff are deleted; running jobs and an item\'s active job are kept', () =>
      withDatabase(dialect, async (t) => {
        const h = await open(t);
        try {
          const day = 24 * 3600_000;
          let now = Date.parse('2026-01-01T00:00:00Z');
          const activity = new ActivityStore(h.db, () => now);
          const jobs = new JobStore(h.db, h.dialect, () => now);
          const ended = async (kind: string, state: string) => {
            const j = await jobs.create({ kind, target: kind });
            await h.db.updateTable('jobs').set({ state, ended_at: state === 'Running' ? null : now }).where('id', '=', j.id).execute();
            await h.db.insertInto('job_tasks').values({ job_id: j.id, position: 0, name: 'task', state: 'Succeeded', started_at: now, ended_at: now, error: null, progress: null, detail: null }).execute();
            await h.db.insertInto('provider_commands').values({ id: `cmd-${j.id}`, fabric_id: 'site', kind: 'x', body: '{}', job_id: j.id, state: 'Done', deliveries: 1, created_at: now }).execute();
            return j.id;
          };
          await activity.event({ kind: 'old', severity: 'Info', message: 'old' });
          await activity.audit({ actor: 'a', role: 'Owner', method: 'POST', path: '/x', action: 'POST /x', status: 200, code: null });
          const oldDone = await ended('old-done', 'Succeeded');
          const oldFailed = await ended('old-failed', 'Failed');
          const oldActive = await ended('old-active', 'Failed');
          const stillRunning = await ended('running', 'Running');
          // a failed protection job its item still points at may be restarted: it stays
          await seedPairing(h, now);
          await new ItemStore(h.db, () => now).create({ id: 'site.vm1', name: 'vm1', fabricId: 'site', pairingId: 'p', state: ProtectionState.ProtectionFailed, activeJobId: oldActive });

          now += 100 * day;
          await activity.event({ kind: 'new', severity: 'Info', message: 'new' });
          await activity.audit({ actor: 'b', role: 'Owner', method: 'POST', path: '/y', action: 'POST /y', status: 200, code: null });
          const newDone = await ended('new-done', 'Succeeded');

          assert.deepEqual(await pruneBefore(h.db, now - 90 * day), { events: 1, jobs: 2, audit: 1 });
          assert.deepEqual((await activity.events()).map((e) => e.kind), ['new']);
          assert.deepEqual((await activity.auditTrail()).map((e) => e.actor), ['b']);
          const left = (await h.db.selectFrom('jobs').select('id').execute()).map((r) => r.id).sort();
          assert.deepEqual(left, [oldActive, stillRunning, newDone].sort());
          assert.ok(!left.includes(oldDone) && !left.includes(oldFailed));
          const tasks = (await h.db.selectFrom('job_tasks').select('job_id').execute()).map((r) => r.job_id).sort();
          assert.deepEqual(tasks, left, 'tasks go with their jobs');
          const cmds = (await h.db.selectFrom('provider_commands').select('job_id').execute()).map((r) => r.job_id).sort();
          assert.deepEqual(cmds, left, 'provider commands go with their jobs');
          assert.deepEqual(await pruneBefore(h.db, now - 90 * day), { events: 0, jobs: 0, audit: 0 }, 'running it again deletes nothing more');
        } finally {
          await h.close();
        }
      }));

    test('commands: a job\'s finished commands forget every access field (an Azure container\'s SAS), a command under way keeps its body, and a second call changes nothing', () =>
      withDatabase(dialect, async (t) => {
        const h = await open(t);
        try {
          const commands = new CommandStore(h.db, () => 1);
          const jobs = new JobStore(h.db, h.dialect, () => 1);
          const j = await jobs.create({ kind: 'enable-protection', target: 'vm1' });
          const sas = 'sv=2025-01-01&si=osr-agent&sr=c&sig=c2VjcmV0';
          await commands.enqueue({ id: 'prep', fabricId: 'azure', kind: 'replica.prepare', body: { item: 'vm1' }, jobId: j.id });
          await commands.enqueue({ id: 'enable', fabricId: 'site', kind: 'replication.enable', body: { item: 'vm1', target: { agent: { kind: 'azure', containerUrl: 'https://a.blob.core.windows.net/osr-x' }, access: { sas, expiresAt: 'x' } } }, jobId: j.id });
          await commands.enqueue({ id: 'later', fabricId: 'site', kind: 'replication.enable', body: { target: { access: { sas } } }, jobId: j.id });
          await commands.take('azure', 10, 60_000);
          await commands.take('site', 10, 60_000);
          await commands.complete('azure', 'prep', { result: { replicaVmId: 'osr-x', access: { sas, expiresAt: 'x' }, nics: [] } });
          await commands.complete('site', 'enable', { result: {} });
          assert.equal(await commands.forgetAccess(j.id), 2);
          const row = async (id: string) => (await commands.get(id))!;
          assert.doesNotMatch(`${(await row('prep')).result}${(await row('enable')).body}`, /sig=/);
          assert.deepEqual(JSON.parse((await row('prep')).result!), { replicaVmId: 'osr-x', nics: [] }, 'the rest of the answer stays');
          assert.match((await row('later')).body, /sig=/, 'a command under way may be delivered again: its body stays');
          assert.equal(await commands.forgetAccess(j.id), 0);
        } finally {
          await h.close();
        }
      }));

    test('two vaults claiming at once on one database: every job runs exactly once', () =>
      withDatabase(dialect, async (t) => {
        const handles: VaultDatabase[] = [await open(t, { poolSize: 4 }), await open(t, { poolSize: 4 })];
        try {
          const setup = new JobStore(handles[0]!.db, handles[0]!.dialect);
          const count = 300;
          for (let i = 0; i < count; i++) await setup.create({ kind: 'noop', input: { i } });
          const ran = new Map<string, string[]>();
          const worker = async (name: string, h: VaultDatabase) => {
            const jobs = new JobStore(h.db, h.dialect);
            for (;;) {
              const j = await jobs.claim(name, 60_000);
              if (!j) return;
              ran.set(j.id, [...(ran.get(j.id) ?? []), name]);
              await jobs.finish(j.id, name, JobState.Succeeded);
            }
          };
          // several claimers per vault, so claims really overlap on PostgreSQL's pool
          await Promise.all(handles.flatMap((h, i) => [0, 1, 2].map((k) => worker(`vault-${i}.${k}`, h))));
          assert.equal(ran.size, count, 'every job ran');
          const twice = [...ran].filter(([, by]) => by.length > 1);
          assert.deepEqual(twice, [], 'no job ran twice');
          const final = await setup.list({ state: JobState.Succeeded, limit: 1000 });
          assert.equal(final.length, count);
          const byVault = new Set([...ran.values()].map((by) => by[0]!.split('.')[0]));
          if (dialect === Dialect.Postgres) assert.equal(byVault.size, 2, 'both vaults took part');
        } finally {
          await Promise.all(handles.map((h) => h.close()));
        }
      }));
  });
}

test('a database that cannot be reached or opened is STORE_UNAVAILABLE, naming it', async () => {
  const err = await assertRejectsCode(openDatabase({ database: 'postgres://postgres@127.0.0.1:1/none', dataDir: '/tmp' }), 'STORE_UNAVAILABLE');
  assert.match(err.message, /127\.0\.0\.1:1/);
  await assertRejectsCode(openDatabase({ database: '/etc/hostname/vault.db', dataDir: '/tmp' }), 'STORE_UNAVAILABLE');
});
