/**
 * Test failover and its cleanup, for one protected item, as jobs.
 *
 * Test failover: prerequisites (the item is Protected, the point exists, the network is
 * one of the recovery fabric's) → start the test VM (the recovery fabric opens the point
 * writable beside the replica and starts it; replication goes on) → the item is
 * TestFailoverComplete, with the drill's point, network and measured RTO.
 *
 * Cleanup: remove the test VM (and a network made for the drill) → the item is Protected
 * again and the drill is recorded with its notes. A drill counts as successful only once
 * its cleanup succeeded.
 */
import { Commands } from '../domain/commands.js';
import { OsrError } from '../domain/errors.js';
import { ItemOperation } from '../domain/item-transitions.js';
import { chooseRecoveryPoint, PointChoice } from '../domain/recovery-point.js';
import type { TestNetwork, TestVm } from '../domain/replicas.js';
import { ProtectionState, Severity, type RecoveryPoint, type TestFailoverRecord } from '../domain/resources.js';
import { drillEvidence, type DrillEvidence } from '../domain/runs.js';
import type { JobContext, JobData, JobEngine } from '../jobs/engine.js';
import { JobState } from '../store/jobs.js';
import { AlertKind } from './alerting.js';
import { changeItem, eventIdFor, releaseItem, retakeItem } from './item-state.js';
import type { WorkflowDeps } from './protection.js';

export const TestFailoverJobs = { TestFailover: 'test-failover', Cleanup: 'test-failover-cleanup' } as const;

/** How many drills an item keeps in its record (older ones stay in the events). */
const DRILLS_KEPT = 20;

export interface TestFailoverInput {
  itemId: string;
  /** latest, latest-app-consistent, or a point's id */
  recoveryPoint: string;
  /** none, temporary, or the vault id of a VM network at the recovery fabric */
  network: string;
}

export interface CleanupInput {
  itemId: string;
  notes?: string;
}

/** What a test failover keeps between its tasks. */
interface TestFailoverData extends JobData {
  point?: RecoveryPoint;
  network?: TestNetwork;
  startedAt?: number;
  testVm?: TestVm;
  rtoSeconds?: number;
}

/** What a cleanup keeps between its tasks. */
interface CleanupData extends JobData {
  /** the drill's VM, once its removal was asked for */
  testVm?: TestVm;
  /** what the test VM showed before its removal (the provider's answer, bounded) */
  evidence?: DrillEvidence | null;
}

export const failoverAlertKey = (itemId: string) => `failover-failed:${itemId}`;

export function registerTestFailoverJobs(engine: JobEngine, deps: WorkflowDeps): void {
  const { store, alerting, clock } = deps;

  engine.register<TestFailoverInput, TestFailoverData>({
    kind: TestFailoverJobs.TestFailover,
    tasks: [
      {
        name: 'Prerequisites check',
        async run(ctx) {
          const item = await store.items.get(ctx.input.itemId);
          const r = item.replication;
          if (!r.targetFabricId || !r.replica?.replicaVmId) throw new OsrError('INVALID_STATE', `${item.name} has no replica yet; wait for its protection to finish`);
          const point = chooseRecoveryPoint(await store.items.points(item.id), ctx.input.recoveryPoint, item.name);
          let network: TestNetwork = { mode: 'none' };
          if (ctx.input.network === 'temporary') network = { mode: 'temporary' };
          else if (ctx.input.network !== 'none') {
            const n = await store.fabrics.findObject(ctx.input.network);
            if (!n || n.kind !== 'vm-network') throw new OsrError('NOT_FOUND', `VM network ${ctx.input.network} does not exist; give none, temporary, or a VM network of the recovery site`);
            if (n.fabricId !== r.targetFabricId) throw new OsrError('INVALID_ARGUMENT', `VM network ${n.name} is not at the recovery site (fabric ${r.targetFabricId}) of ${item.name}`);
            network = { mode: 'existing', vmNetwork: n.id };
          }
          ctx.data.point = point;
          ctx.data.network = network;
          ctx.data.startedAt = clock.now();
        },
      },
      {
        name: 'Start test VM',
        async run(ctx) {
          const item = await store.items.get(ctx.input.itemId);
          const r = item.replication;
          const point = ctx.data.point!;
          const replicaVmId = r.replica!.replicaVmId;
          const latest = ctx.input.recoveryPoint === PointChoice.Latest;
          ctx.data.testVm = await ctx.command(r.targetFabricId!, Commands.StartTestFailover, { item: item.id, replicaVmId, point: point.id, ...(latest ? { latest } : {}), network: ctx.data.network! }, { timeoutMs: 10 * 60_000 });
          // the replica folded the chosen point into a newer cut (continuous replication): the drill runs that one
          if (latest && ctx.data.testVm.point) ctx.data.point = ctx.data.testVm.point;
          ctx.data.rtoSeconds = (clock.now() - ctx.data.startedAt!) / 1000;
        },
      },
      {
        name: 'Finalize test failover',
        async run(ctx) {
          const eventId = await eventIdFor(ctx, 'testfailover.completed');
          const item = await store.items.get(ctx.input.itemId);
          const record: TestFailoverRecord = {
            jobId: ctx.jobId,
            point: ctx.data.point!,
            network: ctx.input.network,
            testVm: ctx.data.testVm!,
            startedAt: new Date(ctx.data.startedAt!).toISOString(),
            rtoSeconds: ctx.data.rtoSeconds!,
          };
          // run again after the drill was recorded, it changes nothing
          if (!(item.activeJobId !== ctx.jobId && item.replication.testFailover?.jobId === ctx.jobId)) {
            await changeItem(store, ctx, item.id, ItemOperation.TestFailover, { state: ProtectionState.TestFailoverComplete, release: true, replication: { ...item.replication, testFailover: record } });
          }
          await alerting.event({ id: eventId, target: item.id, kind: 'testfailover.completed', severity: Severity.Info, message: `test failover of ${item.name} from point ${record.point.id} (${record.point.at}): test VM ${record.testVm.testVmId} runs, RTO ${record.rtoSeconds} s; clean it up to finish the drill`, details: { job: ctx.jobId, rtoSeconds: record.rtoSeconds, point: record.point, testVm: record.testVm.testVmId } });
        },
      },
    ],
    async onRestart(ctx: JobContext<TestFailoverInput, TestFailoverData>) {
      await retakeItem(store, ctx, ctx.input.itemId, ItemOperation.TestFailover);
    },
    async onEnd(ctx: JobContext<TestFailoverInput, TestFailoverData>, state, err) {
      // the drill's VM, if it was started, is left for the cleanup to remove
      const started = ctx.data.testVm !== undefined;
      const item = await releaseItem(store, ctx, ctx.input.itemId, ItemOperation.TestFailover, started ? ProtectionState.TestFailoverComplete : ProtectionState.Protected);
      if (!item) return;
      const failed = state === JobState.Failed;
      await alerting.event({ target: item.id, kind: 'testfailover.failed', severity: failed ? Severity.Critical : Severity.Warning, message: `test failover of ${item.name} ${failed ? `failed: ${err?.message}` : 'was cancelled'}${started ? '; clean up its test VM' : ''}`, details: { job: ctx.jobId } });
      if (failed) await alerting.raise({ key: failoverAlertKey(item.id), kind: AlertKind.FailoverFailed, severity: Severity.Critical, target: item.id, message: `test failover of ${item.name} failed: ${err?.message}` });
    },
  });

  engine.register<CleanupInput, CleanupData>({
    kind: TestFailoverJobs.Cleanup,
    tasks: [
      {
        name: 'Remove test VM',
        async run(ctx) {
          const item = await store.items.get(ctx.input.itemId);
          const r = item.replication;
          const vm = r.testFailover?.testVm ?? ctx.data.testVm;
          ctx.data.testVm = vm;
          if (vm) {
            const answer = await ctx.command(r.targetFabricId!, Commands.CleanupTestFailover, { item: item.id, testVmId: vm.testVmId }, { timeoutMs: 10 * 60_000 });
            // run again after the VM went, the answer has none: the first run's stays
            ctx.data.evidence = drillEvidence(answer.evidence) ?? ctx.data.evidence ?? null;
          }
        },
      },
      {
        name: 'Record the drill',
        async run(ctx) {
          const eventId = await eventIdFor(ctx, 'testfailover.cleaned-up');
          const item = await store.items.get(ctx.input.itemId);
          const r = item.replication;
          const tf = r.testFailover;
          const drills = [...(r.drills ?? [])];
          if (tf) {
            drills.unshift({ testFailoverJob: tf.jobId, cleanupJob: ctx.jobId, point: tf.point, network: tf.network, rtoSeconds: tf.rtoSeconds, startedAt: tf.startedAt, cleanedUpAt: new Date(clock.now()).toISOString(), notes: ctx.input.notes ?? null, succeeded: true, evidence: ctx.data.evidence ?? null });
          }
          const { testFailover: _done, ...rest } = r;
          // run again after the drill was recorded (or the item released without one): it is there once
          const recorded = item.activeJobId !== ctx.jobId ? ((r.drills ?? []).find((d) => d.cleanupJob === ctx.jobId) ?? (tf ? undefined : null)) : undefined;
          if (recorded === undefined) {
            await changeItem(store, ctx, item.id, ItemOperation.TestFailoverCleanup, { state: ProtectionState.Protected, release: true, replication: { ...rest, drills: drills.slice(0, DRILLS_KEPT) } });
          }
          const drill = recorded ?? (tf ? drills[0] : undefined);
          await alerting.resolve(failoverAlertKey(item.id));
          await alerting.event({ id: eventId, target: item.id, kind: 'testfailover.cleaned-up', severity: Severity.Info, message: `the test failover of ${item.name} is cleaned up${drill ? `: drill from point ${drill.point.id} succeeded, RTO ${drill.rtoSeconds} s` : ''}${ctx.input.notes ? ` (${ctx.input.notes})` : ''}`, details: { job: ctx.jobId, notes: ctx.input.notes ?? null } });
        },
      },
    ],
    async onRestart(ctx: JobContext<CleanupInput, CleanupData>) {
      await retakeItem(store, ctx, ctx.input.itemId, ItemOperation.TestFailoverCleanup);
    },
    async onEnd(ctx: JobContext<CleanupInput, CleanupData>, state, err) {
      const item = await releaseItem(store, ctx, ctx.input.itemId, ItemOperation.TestFailoverCleanup, ProtectionState.TestFailoverComplete);
      if (!item) return;
      await alerting.event({ target: item.id, kind: 'testfailover.cleanup-failed', severity: Severity.Warning, message: `cleaning up the test failover of ${item.name} ${state === JobState.Failed ? `failed: ${err?.message}` : 'was cancelled'}; the drill does not count until its cleanup succeeds (restart the job)`, details: { job: ctx.jobId } });
    },
  });
}
