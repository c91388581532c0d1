/**
 * How jobs change the protected item they hold, by the transition table
 * (src/domain/item-transitions.ts). Every change is one guarded write (store/items.ts,
 * transition): it takes effect only while the job is the item's active job, still holds
 * its own lease, and finds the item in a state the job holds it in. A job that lost its
 * lease or its item changes nothing and stops (LEASE_LOST, ITEM_NOT_HELD).
 *
 * Tasks that record history on the item (a failover, a changed point, a commit, a
 * reprotect, a drill) first look whether an earlier run of the same task recorded it,
 * and their events are written once: the event's id is kept in the job's data before the
 * item changes.
 */
import { OsrError, toOsrError } from '../domain/errors.js';
import { ITEM_TRANSITIONS, restartsFrom, type ItemOperation } from '../domain/item-transitions.js';
import type { ProtectedItem, ProtectionState } from '../domain/resources.js';
import type { JobContext } from '../jobs/engine.js';
import type { VaultStore } from '../store/index.js';
import type { ItemChange } from '../store/items.js';
import { JobState } from '../store/jobs.js';
import { timeId } from '../store/rows.js';

type Ctx = Pick<JobContext<unknown>, 'jobId' | 'owner' | 'data' | 'clock' | 'save'>;

/**
 * Change the item the job holds: its facts, its state within the states `op` holds it in,
 * or its final state with `release` (the table's `to`). `from` narrows the states the
 * item is expected in (default: every state `op` holds it in).
 */
export function changeItem(store: VaultStore, ctx: Ctx, itemId: string, op: ItemOperation, c: ItemChange, from?: readonly ProtectionState[]): Promise<ProtectedItem> {
  const t = ITEM_TRANSITIONS[op];
  if (c.state !== undefined && !(c.release ? c.state === t.to : t.held.includes(c.state))) {
    throw new OsrError('INTERNAL', `${op} may not set protected item ${itemId} ${c.state}${c.release ? ' when it ends' : ' while it runs'} (src/domain/item-transitions.ts)`);
  }
  return store.items.transition(itemId, ctx, from ?? t.held, c);
}

/**
 * A failed or cancelled job gives the item back in `back` (one of the table's), unless it
 * no longer holds it: then nothing changes and undefined is answered.
 */
export async function releaseItem(store: VaultStore, ctx: Ctx, itemId: string, op: ItemOperation, back: ProtectionState, c: Omit<ItemChange, 'state' | 'release'> = {}): Promise<ProtectedItem | undefined> {
  const t = ITEM_TRANSITIONS[op];
  if (!t.back.includes(back)) throw new OsrError('INTERNAL', `a failed ${op} may not leave protected item ${itemId} ${back} (src/domain/item-transitions.ts)`);
  try {
    return await store.items.transition(itemId, ctx, t.held, { ...c, state: back, release: true });
  } catch (e) {
    const code = toOsrError(e).code;
    if (code === 'ITEM_NOT_HELD' || code === 'LEASE_LOST' || code === 'NOT_FOUND') return undefined;
    throw e;
  }
}

/**
 * A restarted job takes its item back, in the state it holds it in: refused while another
 * job holds the item, or when the item is in a state the job's failure did not leave it
 * in (another operation ran on it since).
 */
export async function retakeItem(store: VaultStore, ctx: Pick<JobContext<unknown>, 'jobId'>, itemId: string, op: ItemOperation): Promise<void> {
  const t = ITEM_TRANSITIONS[op];
  const item = await store.items.find(itemId);
  if (!item) throw new OsrError('INVALID_STATE', `protected item ${itemId} no longer exists (its protection was disabled); enable protection again instead`);
  if (item.activeJobId && item.activeJobId !== ctx.jobId) {
    const other = await store.jobs.get(item.activeJobId).catch(() => undefined);
    if (other && ([JobState.Queued, JobState.Running, JobState.WaitingForInput] as string[]).includes(other.state)) {
      throw new OsrError('INVALID_STATE', `protected item ${item.name} has job ${other.id} (${other.kind}) ${other.state}; wait for it or cancel it first`, { jobId: other.id });
    }
  }
  const from = restartsFrom(op);
  if (item.activeJobId !== ctx.jobId && !from.includes(item.state)) {
    throw new OsrError('INVALID_STATE', `protected item ${item.name} is ${item.state}; a restarted ${op} takes it back only from ${from.join(' or ')}`, { state: item.state });
  }
  const state = t.held.includes(item.state) ? item.state : t.during;
  if (!(await store.items.takeActiveJob(itemId, { jobId: ctx.jobId, expected: item.activeJobId, from: item.state, state }))) {
    throw new OsrError('INVALID_STATE', `protected item ${item.name} started another job meanwhile; try again`);
  }
}

/**
 * The id of an event a task writes after changing the item, kept in the job's data before
 * the change: a task run again after a crash writes the same event, so it is there once.
 */
export async function eventIdFor(ctx: Ctx, name: string): Promise<string> {
  const ids = (ctx.data.eventIds ?? {}) as Record<string, string>;
  if (ids[name]) return ids[name];
  const id = timeId(ctx.clock.now());
  ctx.data.eventIds = { ...ids, [name]: id };
  await ctx.save();
  return id;
}

