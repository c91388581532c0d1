/**
 * Starting a job on a protected item, shared by the API's item routes and recovery plan runs.
 * An item runs one job at a time: the job is refused while another is active on the item, or
 * when the item is not in a state the job starts from; otherwise the item takes the job's id
 * and the state it is in meanwhile, and the job is submitted.
 */
import { randomUUID } from 'node:crypto';
import { OsrError } from '../domain/errors.js';
import { ITEM_TRANSITIONS, ItemOperation, type ItemTransition } from '../domain/item-transitions.js';
import type { ProtectedItem, ProtectionState } from '../domain/resources.js';
import type { JobEngine } from '../jobs/engine.js';
import { JobState } from '../store/jobs.js';
import type { JobRow } from '../store/schema.js';
import type { VaultStore } from '../store/index.js';
import { FailoverJobs } from './failover.js';
import { JobKinds } from './protection.js';
import { ResyncJobs } from './resync.js';
import { TestFailoverJobs } from './test-failover.js';

const ACTIVE: readonly string[] = [JobState.Queued, JobState.Running, JobState.WaitingForInput];

export interface ItemJobRequest {
  itemId: string;
  /** the item's state while the job runs */
  state: ProtectionState;
  kind: string;
  input: (item: ProtectedItem) => unknown;
  actor: string | null;
  /** the states the job starts from (default: any) */
  from?: readonly ProtectionState[];
  /** refuse an item that is not ready for failover */
  needsReadiness?: boolean;
  /**
   * the job's id, chosen by the caller so that a second call (a plan run taken over after a
   * vault restart) finds the job the first one started instead of starting another
   */
  id?: string;
}

/** A job by id, or undefined when there is none (other store errors are thrown). */
export async function findJob(store: VaultStore, id: string): Promise<JobRow | undefined> {
  try {
    return await store.jobs.get(id);
  } catch (e) {
    if (e instanceof OsrError && e.code === 'NOT_FOUND') return undefined;
    throw e;
  }
}

export async function startItemJob(engine: JobEngine, store: VaultStore, r: ItemJobRequest): Promise<JobRow> {
  // an earlier call with this id started the job: it is answered again, whatever became of it
  const earlier = r.id ? await findJob(store, r.id) : undefined;
  if (earlier) return earlier;
  const item = await store.items.get(r.itemId);
  if (r.id && item.activeJobId === r.id) {
    // taken by an earlier call with this id whose submission was cut short
    return engine.submit(r.kind, { id: r.id, target: item.id, input: r.input(item), createdBy: r.actor });
  }
  if (item.activeJobId) {
    const running = await store.jobs.get(item.activeJobId).catch(() => undefined);
    if (running && ACTIVE.includes(running.state)) {
      throw new OsrError('INVALID_STATE', `protected item ${item.name} has job ${running.id} (${running.kind}) ${running.state}; cancel it or wait for it`, { jobId: running.id });
    }
  }
  if (r.from && !r.from.includes(item.state)) throw new OsrError('INVALID_STATE', `protected item ${item.name} is ${item.state}; ${r.kind} starts from ${r.from.join(' or ')}`, { state: item.state });
  if (r.needsReadiness && !item.readiness.ready) throw new OsrError('INVALID_STATE', `protected item ${item.name} is not ready for failover: ${item.readiness.reason}`, { state: item.state, readiness: item.readiness });
  const jobId = r.id ?? randomUUID();
  if (!(await store.items.takeActiveJob(item.id, { jobId, expected: item.activeJobId, from: item.state, state: r.state }))) {
    throw new OsrError('INVALID_STATE', `protected item ${item.name} started another job meanwhile; look at its jobs and try again`);
  }
  try {
    return await engine.submit(r.kind, { id: jobId, target: item.id, input: r.input(item), createdBy: r.actor });
  } catch (e) {
    // the item is given back as it was (a vault killed right here leaves it taken: a call with the same id submits the job)
    await store.items.takeActiveJob(item.id, { jobId: item.activeJobId, expected: jobId, from: r.state, state: item.state }).catch(() => undefined);
    throw e;
  }
}

export { ItemOperation } from '../domain/item-transitions.js';

export interface ItemOperationDef extends ItemTransition {
  kind: string;
}

/** Each operation's job kind, with its row of the transition table (src/domain/item-transitions.ts). */
export const ITEM_OPERATIONS: Record<ItemOperation, ItemOperationDef> = {
  [ItemOperation.EnableProtection]: { kind: JobKinds.EnableProtection, ...ITEM_TRANSITIONS[ItemOperation.EnableProtection] },
  [ItemOperation.DisableProtection]: { kind: JobKinds.DisableProtection, ...ITEM_TRANSITIONS[ItemOperation.DisableProtection] },
  [ItemOperation.TestFailover]: { kind: TestFailoverJobs.TestFailover, ...ITEM_TRANSITIONS[ItemOperation.TestFailover] },
  [ItemOperation.TestFailoverCleanup]: { kind: TestFailoverJobs.Cleanup, ...ITEM_TRANSITIONS[ItemOperation.TestFailoverCleanup] },
  [ItemOperation.PlannedFailover]: { kind: FailoverJobs.PlannedFailover, ...ITEM_TRANSITIONS[ItemOperation.PlannedFailover] },
  [ItemOperation.UnplannedFailover]: { kind: FailoverJobs.UnplannedFailover, ...ITEM_TRANSITIONS[ItemOperation.UnplannedFailover] },
  [ItemOperation.ChangeRecoveryPoint]: { kind: FailoverJobs.ChangeRecoveryPoint, ...ITEM_TRANSITIONS[ItemOperation.ChangeRecoveryPoint] },
  [ItemOperation.Commit]: { kind: FailoverJobs.Commit, ...ITEM_TRANSITIONS[ItemOperation.Commit] },
  [ItemOperation.Reprotect]: { kind: FailoverJobs.Reprotect, ...ITEM_TRANSITIONS[ItemOperation.Reprotect] },
  [ItemOperation.Resync]: { kind: ResyncJobs.Resync, ...ITEM_TRANSITIONS[ItemOperation.Resync] },
};

/** Start an operation on one item with ITEM_OPERATIONS' rules. */
export function startItemOperation(engine: JobEngine, store: VaultStore, op: ItemOperation, o: { itemId: string; input: (item: ProtectedItem) => unknown; actor: string | null; id?: string }): Promise<JobRow> {
  const d = ITEM_OPERATIONS[op];
  return startItemJob(engine, store, { ...o, kind: d.kind, state: d.during, ...(d.from.length > 0 ? { from: d.from } : {}), needsReadiness: d.needsReadiness });
}
