/**
 * Resynchronization of one protected item on request, as a job.
 *
 * Resynchronize: the primary site's provider asks its host to resynchronize now, whatever
 * the resync window (every block is compared with the replica and only those that differ
 * are sent, the writes made meanwhile shipped after them in one crash-consistent point);
 * its progress reports, bytes compared of the disks' total, become the item's and the
 * task's progress → the item is Protected again once the resync's point is at the replica.
 *
 * The item is Resynchronizing meanwhile. A job that fails or is cancelled gives the item
 * back the state it started from; the host goes on with a resync it began, and a restart
 * follows it instead of starting another (the provider converges on the resync asked for).
 */
import { Commands, type ResyncResult } from '../domain/commands.js';
import { OsrError } from '../domain/errors.js';
import { ITEM_TRANSITIONS, ItemOperation } from '../domain/item-transitions.js';
import { ProtectionState, Severity } from '../domain/resources.js';
import type { JobContext, JobData, JobEngine } from '../jobs/engine.js';
import { JobState } from '../store/jobs.js';
import { changeItem, eventIdFor, releaseItem, retakeItem } from './item-state.js';
import type { WorkflowDeps } from './protection.js';

export const ResyncJobs = { Resync: 'resync', ConfirmDisks: 'confirm-disks' } as const;

/** The states a resync on request starts from. */
export const RESYNC_FROM: readonly ProtectionState[] = ITEM_TRANSITIONS[ItemOperation.Resync].from;

export interface ResyncInput {
  itemId: string;
  /** the item's state when the job was started, given back if it fails or is cancelled */
  from: ProtectionState;
}

/** What a resync keeps between its tasks: the provider's answer. */
interface ResyncData extends JobData {
  result?: ResyncResult | null;
}

export interface ConfirmDisksInput {
  itemId: string;
}

export function registerResyncJobs(engine: JobEngine, deps: WorkflowDeps): void {
  const { store, alerting, clock } = deps;

  /**
   * The VM's disks shrank or one was removed, and its replication waits for the user: the
   * primary site's host is told to go on. The item's state does not change (it stays
   * Protected, its health Critical until the replica has the change). Run twice, the second
   * answer is INVALID_STATE (nothing waits any more): the first one did it.
   */
  engine.register<ConfirmDisksInput, JobData>({
    kind: ResyncJobs.ConfirmDisks,
    tasks: [
      {
        name: 'Confirm disk change',
        async run(ctx) {
          const eventId = await eventIdFor(ctx, 'item.disks-confirmed');
          const item = await store.items.get(ctx.input.itemId);
          const source = item.replication.sourceFabricId;
          if (!source || item.activeJobId !== null) throw new OsrError('INVALID_STATE', `${item.name} is ${item.state}${item.activeJobId ? ` with job ${item.activeJobId} running` : ''}; a disk change is confirmed while it replicates`);
          const r = await ctx.command(source, Commands.ConfirmDisks, { item: item.id, vmId: item.replication.primaryVmId ?? item.id });
          ctx.data.output = { summary: r.summary };
          await alerting.event({
            id: eventId,
            target: item.id,
            kind: 'item.disks-confirmed',
            severity: Severity.Info,
            message: `the disk change of ${item.name} was confirmed (${r.summary}): its next points have the disks as they are now; older points keep theirs`,
            details: { job: ctx.jobId, summary: r.summary },
          });
        },
      },
    ],
  });

  engine.register<ResyncInput, ResyncData>({
    kind: ResyncJobs.Resync,
    tasks: [
      {
        name: 'Resynchronize',
        async run(ctx) {
          const item = await store.items.get(ctx.input.itemId);
          const r = item.replication;
          if (!r.sourceFabricId || !r.replica?.replicaVmId) throw new OsrError('INVALID_STATE', `${item.name} has no replica to resynchronize with yet; wait for its protection to finish`);
          await changeItem(store, ctx, item.id, ItemOperation.Resync, { progress: 0 });
          const result = await ctx.command(
            r.sourceFabricId,
            Commands.Resync,
            { item: item.id, vmId: r.primaryVmId ?? item.id, requestedAt: new Date(clock.now()).toISOString() },
            {
              onProgress: async (p) => {
                const fraction = Number(p.fraction ?? 0);
                await changeItem(store, ctx, item.id, ItemOperation.Resync, { progress: fraction });
                await ctx.progress(fraction, p);
              },
            },
          );
          ctx.data.result = result ?? null;
          // the provider's last report may arrive with its answer, unread: the task ends on the answer's bytes
          const s = result?.resync;
          if (s) await ctx.progress(1, { fraction: 1, bytesDone: s.bytesTotal, bytesTotal: s.bytesTotal, differingBytes: s.differingBytes, currentDisk: null });
        },
      },
      {
        name: 'Finalize resync',
        async run(ctx) {
          const eventId = await eventIdFor(ctx, 'resync.completed');
          const item = await store.items.get(ctx.input.itemId);
          const result = ctx.data.result;
          // the resync's point reaches the item with the recovery site's next report of its points
          // run again after the item was released, it changes nothing
          if (!(item.activeJobId === null && item.state === ProtectionState.Protected)) await changeItem(store, ctx, item.id, ItemOperation.Resync, { state: ProtectionState.Protected, progress: null, release: true });
          const s = result?.resync;
          ctx.data.output = { resync: s ?? null, recoveryPoint: result?.recoveryPoint ?? null };
          await alerting.event({
            id: eventId,
            target: item.id,
            kind: 'resync.completed',
            severity: Severity.Info,
            message: `${item.name} is resynchronized${s ? `: ${s.bytesTotal} bytes compared, ${s.differingBytes} differed and were sent` : ''}`,
            details: { job: ctx.jobId, ...(s ? { bytesTotal: s.bytesTotal, differingBytes: s.differingBytes, startedAt: s.startedAt, completedAt: s.completedAt } : {}) },
          });
        },
      },
    ],
    async onRestart(ctx: JobContext<ResyncInput, ResyncData>) {
      await retakeItem(store, ctx, ctx.input.itemId, ItemOperation.Resync);
    },
    async onEnd(ctx: JobContext<ResyncInput, ResyncData>, state, err) {
      const item = await releaseItem(store, ctx, ctx.input.itemId, ItemOperation.Resync, ctx.input.from, { progress: null });
      if (!item) return;
      const failed = state === JobState.Failed;
      await alerting.event({
        target: item.id,
        kind: 'resync.failed',
        severity: failed ? Severity.Critical : Severity.Warning,
        message: `the resync of ${item.name} ${failed ? `failed: ${err?.message}` : 'was cancelled; a resync the host began goes on'}; the item is ${ctx.input.from} (restart the job to try again)`,
        details: { job: ctx.jobId },
      });
    },
  });
}
