/**
 * Item state is written only by the job that holds the item, on SQLite and PostgreSQL, with
 * the real job engine, workflows and store, and a fabric that answers the provider
 * commands from the command queue:
 *
 * - a job whose lease another vault process took over while it was frozen changes nothing
 *   of its item when it wakes (LEASE_LOST), and the job ends as the vault holding it runs
 *   it; a job whose item was given to another job meanwhile changes nothing of it and
 *   fails with ITEM_NOT_HELD; a restarted job takes its item back only from a state its
 *   failure left the item in;
 * - the tasks that record history on an item (a failover, a changed point, a commit, a
 *   reprotect, a drill started and cleaned up) are safe to run twice: a vault process dies
 *   right after the task's write (its lease is no longer renewed), another takes the job
 *   over and runs the task again, and the item has one entry and one event, not two.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { systemClock } from '../../src/domain/clock.js';
import { ItemOperation } from '../../src/domain/item-transitions.js';
import { ProtectionState, type ProtectedItem } from '../../src/domain/resources.js';
import { JobEngine } from '../../src/jobs/engine.js';
import { Dialect, openDatabase, type VaultDatabase } from '../../src/store/database.js';
import { storeOn, type VaultStore } from '../../src/store/index.js';
import { ItemStore, type ItemChange, type ItemHolder } from '../../src/store/items.js';
import { JobState } from '../../src/store/jobs.js';
import type { JobRow } from '../../src/store/schema.js';
import { AlertNotifier } from '../../src/vault/notifier.js';
import { Alerting } from '../../src/workflows/alerting.js';
import { registerFailoverJobs } from '../../src/workflows/failover.js';
import { startItemOperation } from '../../src/workflows/item-jobs.js';
import { registerTestFailoverJobs } from '../../src/workflows/test-failover.js';
import { createTestDatabase, type TestDatabase } from '../support/databases.js';
import { waitFor } from '../support/lab.js';
import { assertRejectsCode } from '../support/unit.js';
import { gate } from '../support/vault.js';
import { createCa, signGrant } from '../../src/pki/index.js';
import type { GrantSigner } from '../../src/workflows/grants.js';

type Handler = (body: Record<string, unknown>) => Promise<unknown>;
const point = (id: string) => ({ id, at: new Date().toISOString(), consistency: 'crash' as const });

/** The recovery and primary sites' providers, answering from the command queue as a provider would. */
function fabric(store: VaultStore, handlers: Record<string, Handler>): { stop(): Promise<void> } {
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      for (const site of ['site-a', 'site-b']) {
        for (const c of await store.commands.take(site, 10, 60_000)) {
          const h = handlers[c.kind];
          void (async () => {
            try {
              const result = h ? await h(JSON.parse(c.body) as Record<string, unknown>) : {};
              await store.commands.complete(site, c.id, { result });
            } catch (e) {
              await store.commands.complete(site, c.id, { error: { code: 'JOB_FAILED', message: (e as Error).message } });
            }
          })();
        }
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
    },
  };
}

/**
 * The items of a vault process that dies right after a job's final change of an item: the
 * change is written, then the process stops renewing its lease and never runs another line
 * of the job (kill -9, as the vault sees it).
 */
class DiesAfterFinalChange extends ItemStore {
  engine: JobEngine | undefined;
  readonly died = gate();
  private stopping: Promise<void> | undefined;
  private bail: (e: Error) => void = () => undefined;
  private readonly never = new Promise<never>((_, reject) => (this.bail = reject));

  override async transition(id: string, by: ItemHolder, from: readonly ProtectionState[], c: ItemChange): Promise<ProtectedItem> {
    const item = await super.transition(id, by, from, c);
    if (c.release && by.owner !== null && !this.stopping) {
      this.stopping = this.engine!.stop();
      this.died.open();
      await this.never;
    }
    return item;
  }

  /** What is left of the dead process goes, once the test is done with it. */
  async bury(): Promise<void> {
    // nothing after the write runs: the rest of the task fails, and the run finds its lease gone
    this.bail(new Error('this vault process is gone'));
    await this.stopping;
  }
}

/**
 * The items of a vault process that freezes right before a job's final change of an item
 * (SIGSTOP, a long pause): its lease is not renewed meanwhile. Once thawed it goes on with
 * the change, and what the store answers is kept.
 */
class FreezesBeforeFinalChange extends ItemStore {
  engine: JobEngine | undefined;
  readonly frozen = gate();
  private readonly thawed = gate();
  private stopping: Promise<void> | undefined;
  answer: string | undefined;

  override async transition(id: string, by: ItemHolder, from: readonly ProtectionState[], c: ItemChange): Promise<ProtectedItem> {
    if (c.release && by.owner !== null && !this.stopping) {
      this.stopping = this.engine!.stop();
      this.frozen.open();
      await this.thawed.wait;
      try {
        const item = await super.transition(id, by, from, c);
        this.answer = 'written';
        return item;
      } catch (e) {
        this.answer = (e as { code?: string }).code ?? String(e);
        throw e;
      }
    }
    return super.transition(id, by, from, c);
  }

  async thaw(): Promise<void> {
    this.thawed.open();
    await this.stopping;
  }
}

const grantCa = await createCa({ commonName: 'item state test CA' });

interface Vault {
  store: VaultStore;
  engine: JobEngine;
}

function vault(database: VaultDatabase, owner: string, items?: ItemStore): Vault {
  const store = { ...storeOn(database), ...(items ? { items } : {}) };
  const alerting = new Alerting(store.activity, new AlertNotifier(store.activity, systemClock, { vaultName: 'items' }));
  const engine = new JobEngine({ jobs: store.jobs, commands: store.commands, owner, leaseMs: 600, pollMs: 20 });
  const grants: GrantSigner = (g) => signGrant(grantCa, { ...g, issuedAt: new Date().toISOString() });
  registerFailoverJobs(engine, { store, alerting, clock: systemClock, grants });
  registerTestFailoverJobs(engine, { store, alerting, clock: systemClock, grants });
  return { store, engine };
}

for (const dialect of [Dialect.Sqlite, Dialect.Postgres]) {
  describe(`item state on ${dialect}`, () => {
    let t: TestDatabase;
    let database: VaultDatabase;
    let store: VaultStore;
    let provider: { stop(): Promise<void> };
    let epoch = 1;
    const release = gate();
    const holdChangePoint = { on: false };
    const failTestStart = { on: false };

    before(async () => {
      t = await createTestDatabase(dialect);
      database = await openDatabase({ database: t.database, dataDir: t.dataDir });
      store = storeOn(database);
      const now = Date.now();
      for (const id of ['site-a', 'site-b']) await database.db.insertInto('fabrics').values({ id, name: id, kind: 'test', version: '1', inventory_scope: '"all"', last_heartbeat_at: null, heartbeat_lost: 0, inventory_at: null, created_at: now }).execute();
      await database.db.insertInto('policies').values({ id: 'pol', name: 'pol', settings: JSON.stringify({ copyFrequencySeconds: 300 }), created_at: now, updated_at: now }).execute();
      await database.db.insertInto('cloud_pairings').values({ id: 'pair', policy_id: 'pol', source_cloud_id: 'site-a.c1', target_cloud_id: 'site-b.c2', created_at: now }).execute();
      provider = fabric(store, {
        'failover.prepare': async () => ({ point: point('p-final') }),
        'failover.promote': async (b) => ({ vmId: `${String(b.item)}-replica`, epoch: ++epoch, point: point(String(b.point)), points: [point('p1'), point('p-final')] }),
        'failover.fence': async () => ({}),
        'failover.change-point': async (b) => {
          if (holdChangePoint.on) await release.wait;
          return { point: point(String(b.point)) };
        },
        'failover.commit': async () => ({}),
        'failover.demote': async (b) => ({ replicaVmId: `${String(b.vmId)}-r`, hostId: 'site-a.h1', agent: { address: '127.0.0.1', port: 8084 } }),
        'replication.enable': async () => ({}),
        'replication.initial': async () => ({ recoveryPoint: point('p-back') }),
        'testfailover.start': async (b) => {
          if (failTestStart.on) throw new Error('the recovery host has no room');
          return { testVmId: `${String(b.item)}-test`, disks: [] };
        },
        'testfailover.cleanup': async () => ({}),
      });
    });

    after(async () => {
      await provider?.stop();
      await database?.close();
      await t?.drop();
    });

    /** A Protected item with a replica at site-b and a point there. */
    async function protectedItem(id: string): Promise<void> {
      await store.items.create({ id, name: id, fabricId: 'site-a', pairingId: 'pair', state: ProtectionState.Protected, activeJobId: null });
      await store.items.update(id, { replication: { sourceFabricId: 'site-a', targetFabricId: 'site-b', policyId: 'pol', replica: { replicaVmId: `${id}-replica`, hostId: 'site-b.h1', agent: { address: '127.0.0.1', port: 8084 } } }, lastPointAt: Date.now() });
      await store.items.replacePoints(id, [{ id: 'p1', at: Date.now(), consistency: 'crash' }]);
    }

    const ended = (s: VaultStore, id: string) =>
      waitFor(`job ${id} ended`, async () => {
        const j = await s.jobs.get(id);
        return ([JobState.Succeeded, JobState.Failed, JobState.Cancelled] as string[]).includes(j.state) ? j : undefined;
      }, 30_000, 20);
    const eventsOf = async (item: string, kind: string) => (await store.activity.events({ target: item, kind, limit: 100 })).length;

    /**
     * Run `op` on the item in a vault process that dies right after the job's final change
     * of the item; another process takes the job over and finishes it.
     */
    async function runDyingAfterWrite(itemId: string, op: ItemOperation, input: Record<string, unknown> = {}): Promise<JobRow> {
      const items = new DiesAfterFinalChange(database.db, Date.now, database.dialect);
      const dying = vault(database, `dying-${op}`, items);
      items.engine = dying.engine;
      const job = await startItemOperation(dying.engine, dying.store, op, { itemId, input: (i) => ({ itemId: i.id, ...input }), actor: 'test' });
      dying.engine.start();
      await items.died.wait;
      const next = vault(database, `next-${op}`);
      next.engine.start();
      try {
        const done = await ended(store, job.id);
        assert.equal(done.state, JobState.Succeeded, done.error ?? '');
        assert.equal(done.attempts, 2, 'taken over after the first process died');
        return done;
      } finally {
        await next.engine.stop();
        await items.bury();
      }
    }

    test('the history tasks run twice (a vault dies after each write) leave one entry and one event each', async () => {
      const id = 'site-a.vm1';
      await protectedItem(id);

      const failover = await runDyingAfterWrite(id, ItemOperation.PlannedFailover);
      let item = await store.items.get(id);
      assert.equal(item.state, ProtectionState.FailedOver);
      assert.equal(item.activeJobId, null);
      assert.equal(item.replication.failover!.jobId, failover.id);
      assert.equal(await eventsOf(id, 'failover.completed'), 1);

      await runDyingAfterWrite(id, ItemOperation.ChangeRecoveryPoint, { recoveryPoint: 'p1' });
      item = await store.items.get(id);
      const changes = item.replication.failover!.pointChanges ?? [];
      assert.equal(changes.length, 1, JSON.stringify(changes));
      assert.equal(item.replication.failover!.point.id, 'p1');
      assert.equal(await eventsOf(id, 'failover.point-changed'), 1);

      const commit = await runDyingAfterWrite(id, ItemOperation.Commit);
      item = await store.items.get(id);
      assert.equal(item.state, ProtectionState.Committed);
      assert.equal(item.replication.failover!.commitJobId, commit.id);
      assert.equal(await eventsOf(id, 'failover.committed'), 1);

      const reprotect = await runDyingAfterWrite(id, ItemOperation.Reprotect);
      item = await store.items.get(id);
      assert.equal(item.state, ProtectionState.Protected);
      const failovers = item.replication.failovers!;
      assert.deepEqual(failovers.map((f) => [f.jobId, f.reprotectJobId]), [[failover.id, reprotect.id]], 'the failover joined the item\'s failovers once');
      assert.equal(item.replication.sourceFabricId, 'site-b', 'the direction swapped once');
      assert.equal(await eventsOf(id, 'failover.reprotected'), 1);

      const drill = await runDyingAfterWrite(id, ItemOperation.TestFailover, { recoveryPoint: 'latest', network: 'none' });
      item = await store.items.get(id);
      assert.equal(item.state, ProtectionState.TestFailoverComplete);
      assert.equal(item.replication.testFailover!.jobId, drill.id);
      assert.equal(await eventsOf(id, 'testfailover.completed'), 1);

      const cleanup = await runDyingAfterWrite(id, ItemOperation.TestFailoverCleanup, { notes: 'twice' });
      item = await store.items.get(id);
      assert.equal(item.state, ProtectionState.Protected);
      const drills = item.replication.drills!;
      assert.deepEqual(drills.map((d) => [d.testFailoverJob, d.cleanupJob]), [[drill.id, cleanup.id]], 'one drill');
      assert.equal(await eventsOf(id, 'testfailover.cleaned-up'), 1);
    });

    test('a job whose lease another vault process took over changes nothing of its item (LEASE_LOST)', async () => {
      const id = 'site-a.vm3';
      await protectedItem(id);
      const a = vault(database, 'vault-a');
      a.engine.start();
      try {
        const failover = await startItemOperation(a.engine, a.store, ItemOperation.PlannedFailover, { itemId: id, input: (i) => ({ itemId: i.id }), actor: 'test' });
        assert.equal((await ended(store, failover.id)).state, JobState.Succeeded);
      } finally {
        await a.engine.stop();
      }
      const items = new FreezesBeforeFinalChange(database.db, Date.now, database.dialect);
      const frozen = vault(database, 'vault-frozen', items);
      items.engine = frozen.engine;
      const change = await startItemOperation(frozen.engine, frozen.store, ItemOperation.ChangeRecoveryPoint, { itemId: id, input: (i) => ({ itemId: i.id, recoveryPoint: 'p1' }), actor: 'test' });
      frozen.engine.start();
      await items.frozen.wait;
      // its lease runs out; another vault process takes the job over and finishes it
      const b = vault(database, 'vault-b');
      b.engine.start();
      let done: JobRow;
      try {
        done = await ended(store, change.id);
      } finally {
        await b.engine.stop();
      }
      assert.equal(done.state, JobState.Succeeded);
      assert.deepEqual((JSON.parse(done.data!) as { vaults: string[] }).vaults, ['vault-frozen', 'vault-b']);
      const before = await store.items.get(id);
      assert.equal(before.state, ProtectionState.FailedOver);
      assert.equal(before.activeJobId, null);
      // the frozen process wakes up and makes its change: refused, nothing changes
      await items.thaw();
      assert.equal(items.answer, 'LEASE_LOST');
      const item = await store.items.get(id);
      assert.deepEqual(item, before);
      assert.equal(item.replication.failover!.pointChanges?.length, 1);
      assert.equal(await eventsOf(id, 'failover.point-changed'), 1);
    });

    test('a restarted job takes its item back only from a state its failure left it in', async () => {
      const id = 'site-a.vm4';
      await protectedItem(id);
      const a = vault(database, 'vault-a');
      a.engine.start();
      try {
        failTestStart.on = true;
        const drill = await startItemOperation(a.engine, a.store, ItemOperation.TestFailover, { itemId: id, input: (i) => ({ itemId: i.id, recoveryPoint: 'latest', network: 'none' }), actor: 'test' });
        assert.equal((await ended(store, drill.id)).state, JobState.Failed);
        failTestStart.on = false;
        // the failed job's end handler gives the item back just after the job is marked failed
        await waitFor('the item given back', async () => ((await store.items.get(id)).state === ProtectionState.Protected ? true : undefined), 10_000);
        const failover = await startItemOperation(a.engine, a.store, ItemOperation.PlannedFailover, { itemId: id, input: (i) => ({ itemId: i.id }), actor: 'test' });
        assert.equal((await ended(store, failover.id)).state, JobState.Succeeded);
        const before = await store.items.get(id);
        await assertRejectsCode(a.engine.restart(drill.id), 'INVALID_STATE', /is FailedOver; a restarted test-failover takes it back only from TestFailoverInProgress or Protected or TestFailoverComplete/);
        assert.deepEqual(await store.items.get(id), before);
        assert.equal((await store.jobs.get(drill.id)).state, JobState.Failed);
      } finally {
        failTestStart.on = false;
        await a.engine.stop();
      }
    });

    test('a job whose item another job holds now changes nothing of it and fails with ITEM_NOT_HELD', async () => {
      const id = 'site-a.vm2';
      await protectedItem(id);
      const a = vault(database, 'vault-a');
      a.engine.start();
      try {
        const failover = await startItemOperation(a.engine, a.store, ItemOperation.PlannedFailover, { itemId: id, input: (i) => ({ itemId: i.id }), actor: 'test' });
        assert.equal((await ended(store, failover.id)).state, JobState.Succeeded);
        holdChangePoint.on = true;
        const change = await startItemOperation(a.engine, a.store, ItemOperation.ChangeRecoveryPoint, { itemId: id, input: (i) => ({ itemId: i.id, recoveryPoint: 'p1' }), actor: 'test' });
        await waitFor('the point change under way', async () => (await store.jobs.get(change.id)).current_step === 'Change recovery point', 10_000, 20);
        // meanwhile the item is given to another job (one this vault does not run: it only holds the item)
        const other = await store.jobs.create({ kind: 'held-elsewhere', target: id, input: { itemId: id } });
        assert.equal(await store.items.takeActiveJob(id, { jobId: other.id, expected: change.id, from: ProtectionState.FailedOver, state: ProtectionState.FailedOver }), true);
        const before = await store.items.get(id);
        release.open();
        const done = await ended(store, change.id);
        assert.equal(done.state, JobState.Failed);
        assert.equal((JSON.parse(done.error!) as { code: string }).code, 'ITEM_NOT_HELD');
        const item = await store.items.get(id);
        assert.deepEqual(item, before, 'the item is as the other job holds it');
        assert.equal(item.replication.failover!.pointChanges, undefined);
        assert.equal(await eventsOf(id, 'failover.point-changed'), 0);
      } finally {
        holdChangePoint.on = false;
        await a.engine.stop();
      }
    });
  });
}
