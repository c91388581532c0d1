/**
 * Planned failover, commit and reprotect of one protected item, as jobs. Failback is the
 * same three the other way: a planned failover of the reprotected item, its commit, and a
 * reprotect that brings replication back to the first direction.
 *
 * Planned failover: prerequisites → shut the VM down and ship its final delta (the primary
 * answers the point that is its last state) → fail over (the recovery site promotes that
 * point: nothing written is lost; older primaries are refused from then on) → fence the
 * old primary (it stays off until reprotected) → the item is FailedOver.
 *
 * Change recovery point (FailedOver only): the VM starts again at the recovery site from
 * another of the points it kept; what it wrote since the failover is discarded.
 *
 * Commit: the failover is final (the recovery site keeps the VM's point and writes and drops
 * the other points); the item is Committed.
 *
 * Reprotect: the old primary's disks become the replica (demote) → replication starts from
 * the new primary, sending only what differs → the item is Protected in the other
 * direction, its source and target swapped.
 *
 * Every command is keyed in the job's data (jobs/engine.ts), and every provider step
 * converges, so a job run again after a vault restart repeats nothing.
 */
import { Commands } from '../domain/commands.js';
import { OsrError } from '../domain/errors.js';
import type { PolicySettings } from '../domain/policy.js';
import { ItemOperation } from '../domain/item-transitions.js';
import { chooseRecoveryPoint, PointChoice } from '../domain/recovery-point.js';
import { isAzureEndpoint, type RecoveryPointInfo, type ReplicaVm } from '../domain/replicas.js';
import { Direction, Health, ProtectionState, Severity, type FailoverRecord, type ItemReplication, type ProtectedItem } from '../domain/resources.js';
import type { JobContext, JobData, JobEngine } from '../jobs/engine.js';
import { JobState } from '../store/jobs.js';
import { AlertKind } from './alerting.js';
import { changeItem, eventIdFor, releaseItem, retakeItem } from './item-state.js';
import { checkReplicaContainer, containerGrant, replicationGrant } from './grants.js';
import { whyGroupStops } from './fabric-capabilities.js';
import type { WorkflowDeps } from './protection.js';
import { failoverAlertKey } from './test-failover.js';

export const FailoverJobs = { PlannedFailover: 'planned-failover', UnplannedFailover: 'unplanned-failover', ChangeRecoveryPoint: 'change-recovery-point', Commit: 'commit-failover', Reprotect: 'reprotect' } as const;

/** How many finished failovers an item keeps in its record (all of them are in the events). */
const FAILOVERS_KEPT = 20;

export interface ItemJobInput {
  itemId: string;
}

export interface ChangePointInput extends ItemJobInput {
  /** latest, latest-app-consistent, or a point id, among the points the item kept */
  recoveryPoint: string;
}

export interface UnplannedInput extends ItemJobInput {
  /** latest (the newest the recovery site holds), latest-processed (the newest the vault has heard of), latest-app-consistent, or a point id */
  recoveryPoint: string;
  /** try to shut the source down and ship its last writes first; carry on if it cannot be reached */
  shutdownSource: boolean;
  /** how long to wait for the source site before carrying on without it */
  sourceTimeoutSeconds: number;
}

/** What a failover, planned or unplanned, keeps between its tasks. */
interface FailoverData extends JobData {
  /** the site the VM runs at, and the one it goes to */
  from?: string;
  to?: string;
  oldPrimary?: string;
  replicaVmId?: string;
  direction?: Direction;
  startedAt?: number;
  /** planned: the point that is the primary's last state */
  point?: RecoveryPointInfo;
  /** unplanned: the point chosen (null: the newest the recovery site holds when it promotes) */
  pointId?: string | null;
  sourceShutDown?: boolean;
  /** what the recovery site answered the promotion (its points apart) */
  promoted?: { vmId: string; epoch: number; point: RecoveryPointInfo };
  /** the points the VM may change to until the commit */
  points?: RecoveryPointInfo[];
  failedOverAt?: number;
  fenced?: boolean;
}

/** What changing the recovery point keeps between its tasks. */
interface ChangePointData extends JobData {
  from?: RecoveryPointInfo;
  to?: RecoveryPointInfo;
}

/** What a reprotect keeps between its tasks. */
interface ReprotectData extends JobData {
  failover?: FailoverRecord;
  /** the old primary, demoted: the replica */
  replica?: ReplicaVm;
  policy?: PolicySettings;
  firstPoint?: RecoveryPointInfo | null;
  /** why the item leaves its replication group at this reprotect (null: it stays in it) */
  leavesGroup?: string | null;
  /** the vault's grant for the reverse replication, signed once (a task run again sends the same) */
  grant?: string | null;
  /** the grant naming the replica's Azure container as the target (a failback's reprotect to Azure) */
  azureGrant?: string | null;
}

export function registerFailoverJobs(engine: JobEngine, deps: WorkflowDeps): void {
  const { store, alerting, clock } = deps;

  /** The job ended Failed or Cancelled: the item is given back in `back`, if the job still holds it. */
  async function failed<I extends ItemJobInput>(ctx: JobContext<I>, op: ItemOperation, what: string, state: JobState, err: OsrError | undefined, back: ProtectionState): Promise<void> {
    const item = await releaseItem(store, ctx, ctx.input.itemId, op, back);
    if (!item) return;
    const isFailed = state === JobState.Failed;
    await alerting.event({ target: item.id, kind: `${ctx.kind}.failed`, severity: isFailed ? Severity.Critical : Severity.Warning, message: `${what} of ${item.name} ${isFailed ? `failed: ${err?.message}` : 'was cancelled'}; the item is ${back}`, details: { job: ctx.jobId } });
    if (isFailed) await alerting.raise({ key: failoverAlertKey(item.id), kind: AlertKind.FailoverFailed, severity: Severity.Critical, target: item.id, message: `${what} of ${item.name} failed: ${err?.message}` });
  }

  /**
   * A failover that ended Failed or Cancelled: before the promotion the VM is where it was
   * (Protected; a planned one shut it down: start it again); after it, the VM runs at the
   * other site and the item stays FailoverInProgress until the job is restarted.
   */
  const failoverEnded =
    (op: ItemOperation, what: string) =>
    <I extends ItemJobInput>(ctx: JobContext<I>, state: JobState, err?: OsrError): Promise<void> =>
      failed(ctx, op, what, state, err, ctx.data.promoted !== undefined ? ProtectionState.FailoverInProgress : ProtectionState.Protected);

  /** A restarted job takes its item back (item-state.ts). */
  const retake =
    (op: ItemOperation) =>
    <I extends ItemJobInput>(ctx: JobContext<I>): Promise<void> =>
      retakeItem(store, ctx, ctx.input.itemId, op);

  /**
   * The item is FailedOver: the record of the failover; its points stay until the commit
   * (another may be chosen). Run again after the record was made, it changes nothing.
   */
  async function finalizeFailover(ctx: JobContext<ItemJobInput, FailoverData>, kind: FailoverRecord['kind']): Promise<void> {
    const op = kind === 'planned' ? ItemOperation.PlannedFailover : ItemOperation.UnplannedFailover;
    const eventId = await eventIdFor(ctx, 'failover.completed');
    const item = await store.items.get(ctx.input.itemId);
    const d = ctx.data;
    const p = d.promoted!;
    const oldVm = await store.fabrics.findObject(d.oldPrimary!);
    const oldHost = oldVm?.properties.host;
    const replicationId = oldVm?.properties.replicationId;
    const record: FailoverRecord = {
      kind,
      jobId: ctx.jobId,
      direction: d.direction!,
      fromFabricId: d.from!,
      toFabricId: d.to!,
      oldPrimaryVmId: d.oldPrimary!,
      newPrimaryVmId: p.vmId,
      ...(typeof oldHost === 'string' ? { oldPrimaryHostId: oldHost } : {}),
      ...(typeof replicationId === 'string' ? { replicationId } : {}),
      point: p.point,
      epoch: p.epoch,
      startedAt: new Date(d.startedAt!).toISOString(),
      failedOverAt: new Date(d.failedOverAt!).toISOString(),
      rtoSeconds: (d.failedOverAt! - d.startedAt!) / 1000,
      ...(kind === 'unplanned' ? { sourceShutDown: d.sourceShutDown === true, fencePending: d.fenced !== true } : {}),
    };
    // the points the VM may change to until the commit, as the recovery site holds them
    const points = d.points;
    const recorded = item.activeJobId !== ctx.jobId && item.replication.failover?.jobId === ctx.jobId;
    if (!recorded) {
      await changeItem(store, ctx, item.id, op, {
        state: ProtectionState.FailedOver,
        release: true,
        health: Health.NotApplicable,
        healthReasons: [],
        rpoSeconds: null,
        lastPointAt: null,
        replication: { ...item.replication, failover: record },
        ...(points ? { points: points.map((x) => ({ id: x.id, at: Date.parse(x.at), consistency: x.consistency, ...(x.cut !== undefined ? { cut: x.cut } : {}) })) } : {}),
      });
    }
    await alerting.resolve(failoverAlertKey(item.id));
    const how = kind === 'planned' ? 'with nothing lost' : record.sourceShutDown ? 'after the source was shut down and synchronized' : 'without the source (what it wrote after the point is not here)';
    await alerting.event({
      id: eventId,
      target: item.id,
      kind: 'failover.completed',
      severity: kind === 'planned' ? Severity.Info : Severity.Warning,
      message: `${kind} failover of ${item.name}: it runs at ${record.toFabricId} from point ${record.point.id} (${record.point.at}) ${how}, RTO ${record.rtoSeconds} s; ${record.fencePending ? 'the old primary is fenced when its site is back' : 'the old primary is fenced'}; change the recovery point or commit, then reprotect`,
      details: { job: ctx.jobId, epoch: record.epoch, point: record.point, rtoSeconds: record.rtoSeconds },
    });
  }

  /** The first task of both failovers: where the VM runs and where it goes. */
  async function failoverPrerequisites(ctx: JobContext<ItemJobInput, FailoverData>): Promise<ProtectedItem> {
    const item = await store.items.get(ctx.input.itemId);
    const r = item.replication;
    if (!r.sourceFabricId || !r.targetFabricId || !r.replica?.replicaVmId) throw new OsrError('INVALID_STATE', `${item.name} has no replica to fail over to`);
    if (r.failover) throw new OsrError('INVALID_STATE', `${item.name} has a failover that is not reprotected yet`);
    ctx.data.from = r.sourceFabricId;
    ctx.data.to = r.targetFabricId;
    ctx.data.oldPrimary = r.primaryVmId ?? item.id;
    ctx.data.replicaVmId = r.replica.replicaVmId;
    ctx.data.direction = r.direction === Direction.RecoveryToPrimary ? Direction.RecoveryToPrimary : Direction.PrimaryToRecovery;
    ctx.data.startedAt = clock.now();
    return item;
  }

  /** Promote at the recovery site: the point (null: the newest there) runs as the VM. */
  async function promote(ctx: JobContext<ItemJobInput, FailoverData>, pointId: string | null): Promise<void> {
    const r = await ctx.command(ctx.data.to!, Commands.Promote, { item: ctx.input.itemId, replicaVmId: ctx.data.replicaVmId!, point: pointId }, { timeoutMs: 15 * 60_000 });
    const { points, ...promoted } = r;
    ctx.data.promoted = promoted;
    if (points) ctx.data.points = points;
    ctx.data.failedOverAt = clock.now();
  }

  engine.register<ItemJobInput, FailoverData>({
    kind: FailoverJobs.PlannedFailover,
    cancellable: false,
    notCancellableBecause: 'stopping a failover half way could leave the VM running at neither site; let it finish (a failed one is restarted from its failed step), then fail over again to go back',
    tasks: [
      {
        name: 'Prerequisites check',
        async run(ctx) {
          await failoverPrerequisites(ctx);
        },
      },
      {
        name: 'Shut down and ship the final delta',
        async run(ctx) {
          const r = await ctx.command(ctx.data.from!, Commands.PrepareFailover, { item: ctx.input.itemId, vmId: ctx.data.oldPrimary! }, { timeoutMs: 15 * 60_000 });
          ctx.data.point = r.point;
        },
      },
      {
        name: 'Fail over',
        async run(ctx) {
          await promote(ctx, ctx.data.point!.id);
        },
      },
      {
        name: 'Fence the old primary',
        async run(ctx) {
          const p = ctx.data.promoted!;
          await ctx.command(ctx.data.from!, Commands.Fence, { item: ctx.input.itemId, vmId: ctx.data.oldPrimary!, epoch: p.epoch }, { timeoutMs: 10 * 60_000 });
        },
      },
      { name: 'Finalize failover', run: (ctx) => finalizeFailover(ctx, 'planned') },
    ],
    onRestart: retake(ItemOperation.PlannedFailover),
    onEnd: failoverEnded(ItemOperation.PlannedFailover, 'planned failover'),
  });

  /**
   * Unplanned failover: the primary site may be gone. Optionally try to shut the source down
   * and ship its last writes first, carrying on without it when it does not answer in time;
   * promote the chosen point; fence the old primary if it answers (a fence it does not take
   * now waits in its queue, and its agent is refused by the recovery site anyway).
   */
  engine.register<UnplannedInput, FailoverData>({
    kind: FailoverJobs.UnplannedFailover,
    cancellable: false,
    notCancellableBecause: 'stopping a failover half way could leave the VM running at neither site; let it finish (a failed one is restarted from its failed step), then fail over again to go back',
    tasks: [
      {
        name: 'Prerequisites check',
        async run(ctx) {
          const item = await failoverPrerequisites(ctx);
          const choice = ctx.input.recoveryPoint;
          // latest: the newest point the recovery site holds when it promotes; the others are chosen now
          ctx.data.pointId = choice === 'latest' ? null : chooseRecoveryPoint(await store.items.points(item.id), choice === 'latest-processed' ? PointChoice.Latest : choice, item.name).id;
        },
      },
      {
        name: 'Shut down the source',
        async run(ctx) {
          if (!ctx.input.shutdownSource) return;
          const from = ctx.data.from!;
          const fabric = await store.fabrics.get(from);
          if (fabric.heartbeatLost) {
            await alerting.event({ target: ctx.input.itemId, kind: 'failover.source-unreachable', severity: Severity.Warning, message: `the source site ${from} is silent (no heartbeat): failing over without shutting it down`, details: { job: ctx.jobId } });
            return;
          }
          try {
            const r = await ctx.command(from, Commands.PrepareFailover, { item: ctx.input.itemId, vmId: ctx.data.oldPrimary! }, { timeoutMs: ctx.input.sourceTimeoutSeconds * 1000 });
            ctx.data.sourceShutDown = true;
            if (ctx.input.recoveryPoint === 'latest') ctx.data.pointId = r.point.id;
          } catch (e) {
            await alerting.event({ target: ctx.input.itemId, kind: 'failover.source-unreachable', severity: Severity.Warning, message: `shutting down the source at ${from} did not succeed (${(e as Error).message}); failing over without it`, details: { job: ctx.jobId } });
          }
        },
      },
      {
        name: 'Fail over',
        async run(ctx) {
          await promote(ctx, ctx.data.pointId ?? null);
        },
      },
      {
        name: 'Fence the old primary',
        async run(ctx) {
          const p = ctx.data.promoted!;
          try {
            await ctx.command(ctx.data.from!, Commands.Fence, { item: ctx.input.itemId, vmId: ctx.data.oldPrimary!, epoch: p.epoch }, { timeoutMs: ctx.input.sourceTimeoutSeconds * 1000 });
            ctx.data.fenced = true;
          } catch (e) {
            await alerting.event({ target: ctx.input.itemId, kind: 'failover.fence-pending', severity: Severity.Warning, message: `the old primary at ${String(ctx.data.from)} could not be fenced now (${(e as Error).message}); it is when its site is back, and its agent is refused by the recovery site meanwhile`, details: { job: ctx.jobId } });
          }
        },
      },
      { name: 'Finalize failover', run: (ctx) => finalizeFailover(ctx, 'unplanned') },
    ],
    onRestart: retake(ItemOperation.UnplannedFailover),
    onEnd: failoverEnded(ItemOperation.UnplannedFailover, 'unplanned failover'),
  });

  /**
   * Change recovery point: the failed-over VM starts again from another point the recovery
   * site kept. Its writes since the failover are discarded, which is why it is a choice
   * before the commit and not after.
   */
  engine.register<ChangePointInput, ChangePointData>({
    kind: FailoverJobs.ChangeRecoveryPoint,
    cancellable: false,
    notCancellableBecause: 'the recovery site may already run the VM from the new point; let it finish (a failed one is restarted from its failed step), then change the point again',
    tasks: [
      {
        name: 'Change recovery point',
        async run(ctx) {
          const item = await store.items.get(ctx.input.itemId);
          const f = item.replication.failover;
          if (!f || f.committedAt) throw new OsrError('INVALID_STATE', `${item.name} has no failover waiting for its commit; the recovery point changes only between failover and commit`);
          const chosen = chooseRecoveryPoint(await store.items.points(item.id), ctx.input.recoveryPoint, item.name);
          const r = await ctx.command(f.toFabricId, Commands.ChangePoint, { item: item.id, vmId: f.newPrimaryVmId, point: chosen.id }, { timeoutMs: 15 * 60_000 });
          ctx.data.from = f.point;
          ctx.data.to = r.point;
        },
      },
      {
        name: 'Record the point',
        async run(ctx) {
          const eventId = await eventIdFor(ctx, 'failover.point-changed');
          const item = await store.items.get(ctx.input.itemId);
          const f = item.replication.failover!;
          const from = ctx.data.from!;
          const to = ctx.data.to!;
          // run again after the change was recorded: it is there once
          if (!(f.pointChanges ?? []).some((c) => c.jobId === ctx.jobId)) {
            const change = { from, to, at: new Date(clock.now()).toISOString(), jobId: ctx.jobId };
            await changeItem(store, ctx, item.id, ItemOperation.ChangeRecoveryPoint, { state: ProtectionState.FailedOver, release: true, replication: { ...item.replication, failover: { ...f, point: to, pointChanges: [...(f.pointChanges ?? []), change] } } });
          }
          await alerting.event({
            id: eventId,
            target: item.id,
            kind: 'failover.point-changed',
            severity: Severity.Warning,
            message: `${item.name} runs at ${f.toFabricId} from point ${to.id} (${to.at}) instead of ${from.id} (${from.at}); what it wrote since the failover was discarded; commit, then reprotect`,
            details: { job: ctx.jobId, from, to },
          });
        },
      },
    ],
    onRestart: retake(ItemOperation.ChangeRecoveryPoint),
    async onEnd(ctx, state, err) {
      await failed(ctx, ItemOperation.ChangeRecoveryPoint, 'changing the recovery point', state, err, ProtectionState.FailedOver);
    },
  });

  engine.register<ItemJobInput>({
    kind: FailoverJobs.Commit,
    cancellable: false,
    notCancellableBecause: 'the recovery site may be dropping the other points already; let it finish (a failed one is restarted from its failed step)',
    tasks: [
      {
        name: 'Commit at the recovery site',
        async run(ctx) {
          const item = await store.items.get(ctx.input.itemId);
          const f = item.replication.failover;
          if (!f) throw new OsrError('INVALID_STATE', `${item.name} has no failover to commit`);
          if (f.committedAt) return;
          await ctx.command(f.toFabricId, Commands.CommitFailover, { item: item.id, vmId: f.newPrimaryVmId }, { timeoutMs: 30 * 60_000 });
        },
      },
      {
        name: 'Commit',
        async run(ctx) {
          const eventId = await eventIdFor(ctx, 'failover.committed');
          const item = await store.items.get(ctx.input.itemId);
          const r = item.replication;
          if (!r.failover) throw new OsrError('INVALID_STATE', `${item.name} has no failover to commit`);
          // the other points are gone at the recovery site: reprotect makes a new replica and its points
          if (r.failover.commitJobId !== ctx.jobId) {
            await changeItem(store, ctx, item.id, ItemOperation.Commit, { state: ProtectionState.Committed, release: true, points: [], replication: { ...item.replication, failover: { ...r.failover, committedAt: new Date(clock.now()).toISOString(), commitJobId: ctx.jobId } } });
          }
          await alerting.event({ id: eventId, target: item.id, kind: 'failover.committed', severity: Severity.Info, message: `the failover of ${item.name} is committed; reprotect it to replicate back to ${r.failover.fromFabricId}`, details: { job: ctx.jobId } });
        },
      },
    ],
    onRestart: retake(ItemOperation.Commit),
    async onEnd(ctx, state, err) {
      await failed(ctx, ItemOperation.Commit, 'commit', state, err, ProtectionState.FailedOver);
    },
  });

  /**
   * The VM keeps its replication id across failovers: the old primary's, or the promoted
   * copy's as the failover recorded them; a record from before they were kept: the inventory now.
   */
  const replicationIdOf = async (f: FailoverRecord): Promise<string | undefined> => {
    if (f.replicationId !== undefined) return f.replicationId;
    for (const id of [f.oldPrimaryVmId, f.newPrimaryVmId]) {
      const r = (await store.fabrics.findObject(id))?.properties.replicationId;
      if (typeof r === 'string') return r;
    }
    return undefined;
  };

  engine.register<ItemJobInput, ReprotectData>({
    kind: FailoverJobs.Reprotect,
    cancellable: false,
    notCancellableBecause: 'the old primary\'s disks are being turned into the replica; let it finish (a failed one is restarted from its failed step)',
    tasks: [
      {
        name: 'Demote the old primary',
        async run(ctx) {
          const item = await store.items.get(ctx.input.itemId);
          const f = item.replication.failover;
          if (!f?.committedAt) throw new OsrError('INVALID_STATE', `${item.name} has no committed failover to reprotect`);
          ctx.data.failover = f;
          // the vault's word on who may replicate into the demoted disks: the promoted copy's host
          const hostId = item.replication.replica?.hostId;
          const host = hostId !== undefined ? await store.fabrics.findObject(hostId) : undefined;
          if (ctx.data.grant === undefined) {
            const oldVm = await store.fabrics.findObject(f.oldPrimaryVmId);
            const replicationId = await replicationIdOf(f);
            const oldHost = f.oldPrimaryHostId ?? (typeof oldVm?.properties.host === 'string' ? oldVm.properties.host : undefined);
            ctx.data.grant = (await replicationGrant(store, deps.grants, { item: item.id, replicationId, source: { fabricId: f.toFabricId, hostId }, target: { fabricId: f.fromFabricId, hostId: oldHost } })) ?? null;
            await ctx.save();
          }
          const body = { item: item.id, vmId: f.oldPrimaryVmId, epoch: f.epoch, ...(host ? { source: host.name } : {}), ...(ctx.data.grant !== null ? { grant: ctx.data.grant } : {}) };
          // an Azure container's SAS goes to the new primary's site only: never into the job's data
          const { access: _access, ...replica } = await ctx.command(f.fromFabricId, Commands.Demote, body, { timeoutMs: 15 * 60_000 });
          ctx.data.replica = replica;
        },
      },
      {
        name: 'Start reverse replication',
        async run(ctx) {
          const item = await store.items.get(ctx.input.itemId);
          const f = ctx.data.failover!;
          const policy = await store.config.policy(item.replication.policyId!);
          // reverse replication starts now, whatever the policy says of a first copy: only what differs is sent
          const settings: PolicySettings = { ...policy.settings, initialReplication: { method: 'now' } };
          ctx.data.policy = settings;
          let grant = typeof ctx.data.grant === 'string' ? { grant: ctx.data.grant } : {};
          let target: ReplicaVm = ctx.data.replica!;
          if (isAzureEndpoint(target.agent)) {
            // back to Azure (a failback's reprotect): the demote, run again, hands the container's SAS anew; the container must be the VM's, in the fabric's storage account
            const body = { item: item.id, vmId: f.oldPrimaryVmId, epoch: f.epoch };
            const answer = await ctx.command(f.fromFabricId, Commands.Demote, body, { timeoutMs: 15 * 60_000 });
            if (!isAzureEndpoint(answer.agent) || answer.access === undefined) throw new OsrError('INVALID_STATE', `the recovery fabric answered no access to the container of ${item.name}`);
            const replicationId = await replicationIdOf(f);
            const accounts = (await store.fabrics.objects('storage-location', { fabricId: f.fromFabricId })).map((l) => l.properties.path);
            checkReplicaContainer(answer.agent.containerUrl, replicationId, accounts, item.name);
            const newPrimary = await store.fabrics.findObject(f.newPrimaryVmId);
            const hostId = typeof newPrimary?.properties.host === 'string' ? newPrimary.properties.host : item.replication.replica?.hostId;
            ctx.data.azureGrant ??= (await containerGrant(store, deps.grants, { item: item.id, replicationId, source: { fabricId: f.toFabricId, hostId }, targetFabricId: f.fromFabricId, containerUrl: answer.agent.containerUrl })) ?? null;
            await ctx.save();
            grant = ctx.data.azureGrant !== null ? { grant: ctx.data.azureGrant } : {};
            target = answer;
          }
          // the item's replication group goes on in the new direction, where both sites take part
          // in groups and no other member replicates between another pair of sites
          const g = item.replication.group;
          if (g !== undefined && ctx.data.leavesGroup === undefined) {
            ctx.data.leavesGroup = (await whyGroupStops(store, g, item.id, settings, f.toFabricId, f.fromFabricId)) ?? null;
            await ctx.save();
            if (ctx.data.leavesGroup !== null) {
              await alerting.event({ target: item.id, kind: 'item.left-group', severity: Severity.Warning, message: `${item.name} leaves replication group ${g} as it replicates from ${f.toFabricId} to ${f.fromFabricId}: ${ctx.data.leavesGroup}; its points are its own from now on`, details: { job: ctx.jobId, group: g } });
            }
          }
          const group = g !== undefined && ctx.data.leavesGroup === null ? { group: g } : {};
          try {
            await ctx.command(f.toFabricId, Commands.EnableReplication, { item: item.id, vmId: f.newPrimaryVmId, policy: settings, target: { fabricId: f.fromFabricId, ...target }, ...grant, ...group }, { timeoutMs: 10 * 60_000 });
          } finally {
            // the container's SAS reached the new primary's site, or the task fails: either way the vault keeps no copy of it
            if (target.access !== undefined) await store.commands.forgetAccess(ctx.jobId);
          }
        },
      },
      {
        name: 'Reverse replication',
        async run(ctx) {
          const f = ctx.data.failover!;
          // an Azure container's SAS reached the new primary's site: the vault keeps no copy of it
          await store.commands.forgetAccess(ctx.jobId);
          await changeItem(store, ctx, ctx.input.itemId, ItemOperation.Reprotect, { progress: 0 });
          const result = await ctx.command(f.toFabricId, Commands.InitialReplication, { item: ctx.input.itemId, vmId: f.newPrimaryVmId, method: { method: 'now' } }, {
            onProgress: async (p) => {
              const fraction = Number(p.fraction ?? 0);
              await changeItem(store, ctx, ctx.input.itemId, ItemOperation.Reprotect, { progress: fraction });
              await ctx.progress(fraction, p);
            },
          });
          ctx.data.firstPoint = result?.recoveryPoint ?? null;
        },
      },
      {
        name: 'Finalize reprotect',
        async run(ctx) {
          const eventId = await eventIdFor(ctx, 'failover.reprotected');
          const item = await store.items.get(ctx.input.itemId);
          const r = item.replication;
          const f = ctx.data.failover!;
          const replica = ctx.data.replica!;
          const done: FailoverRecord = { ...f, reprotectedAt: new Date(clock.now()).toISOString(), reprotectJobId: ctx.jobId };
          const next: ItemReplication = {
            ...r,
            sourceFabricId: f.toFabricId,
            targetFabricId: f.fromFabricId,
            primaryVmId: f.newPrimaryVmId,
            replica: { replicaVmId: replica.replicaVmId, hostId: replica.hostId, agent: replica.agent },
            direction: f.direction === Direction.PrimaryToRecovery ? Direction.RecoveryToPrimary : Direction.PrimaryToRecovery,
            failovers: [done, ...(r.failovers ?? [])].slice(0, FAILOVERS_KEPT),
          };
          delete next.failover;
          if (ctx.data.leavesGroup) delete next.group;
          const first = ctx.data.firstPoint;
          // run again after the failover joined the item's failovers: it is there once
          if (!(r.failovers ?? []).some((x) => x.reprotectJobId === ctx.jobId)) {
            await changeItem(store, ctx, item.id, ItemOperation.Reprotect, {
              state: ProtectionState.Protected,
              release: true,
              health: Health.Healthy,
              healthReasons: [],
              progress: null,
              ...(first ? { lastPointAt: Date.parse(first.at), points: [{ id: first.id, at: Date.parse(first.at), consistency: first.consistency }] } : {}),
              replication: next,
            });
          }
          await alerting.event({ id: eventId, target: item.id, kind: 'failover.reprotected', severity: Severity.Info, message: `${item.name} is protected again, from ${f.toFabricId} to ${f.fromFabricId} (${next.direction})`, details: { job: ctx.jobId } });
        },
      },
    ],
    onRestart: retake(ItemOperation.Reprotect),
    async onEnd(ctx, state, err) {
      await failed(ctx, ItemOperation.Reprotect, 'reprotect', state, err, ProtectionState.Committed);
    },
  });
}
