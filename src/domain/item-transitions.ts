/**
 * The one table of a protected item's state changes: for each operation, the states it
 * starts from, the state the item is in while the operation's job holds it, the state a
 * successful job leaves it in, and the states a failed or cancelled one gives it back.
 * The API refuses an operation the table does not allow (src/workflows/item-jobs.ts), the
 * jobs write no other change (src/workflows), and the portal offers an operation only
 * where the table allows it.
 *
 * Invariants (docs/design/vault.md, "Item state"):
 * 1. An item's state changes only by a job that holds it (`activeJobId`), checked in the
 *    same statement as the write, with the state it expects the item to be in.
 * 2. A job that no longer holds the item — its lease taken over by another vault
 *    process, or another job made the item's active job — changes nothing.
 * 3. The only change without a job is the provider's report of a Protected item needing
 *    a resync (Protected ↔ ResyncRequired), and only while no job holds the item.
 */
import { ProtectionState as PS, type FailoverReadiness, type ProtectionState } from './resources.js';

/** The operations on one protected item; a recovery plan runs all but resync and protection on its items. */
export const ItemOperation = {
  EnableProtection: 'enable-protection',
  DisableProtection: 'disable-protection',
  TestFailover: 'test-failover',
  TestFailoverCleanup: 'test-failover-cleanup',
  PlannedFailover: 'planned-failover',
  UnplannedFailover: 'unplanned-failover',
  ChangeRecoveryPoint: 'change-recovery-point',
  Commit: 'commit',
  Reprotect: 'reprotect',
  Resync: 'resync',
} as const;
export type ItemOperation = (typeof ItemOperation)[keyof typeof ItemOperation];

export interface ItemTransition {
  /** the states the operation starts from; empty: any state, once no job holds the item */
  from: readonly ProtectionState[];
  /** the item's state while the operation's job holds it */
  during: ProtectionState;
  /** every state the item may be in while the job holds it (`during` first) */
  held: readonly ProtectionState[];
  /** the state the job leaves it in when it succeeds (null: the item is removed) */
  to: ProtectionState | null;
  /** the states a failed or cancelled job leaves it in */
  back: readonly ProtectionState[];
  /** a failover: the item must be ready (a crash-consistent point at the recovery site) */
  needsReadiness: boolean;
}

export const ITEM_TRANSITIONS: Readonly<Record<ItemOperation, ItemTransition>> = {
  // the item is created EnablingProtection with its job (a restart takes it from ProtectionFailed); InitialReplication while the first copy runs
  [ItemOperation.EnableProtection]: { from: [PS.ProtectionFailed], during: PS.EnablingProtection, held: [PS.EnablingProtection, PS.InitialReplication], to: PS.Protected, back: [PS.ProtectionFailed], needsReadiness: false },
  // a failed disable leaves the item as it was meanwhile (DisablingProtection), to be disabled again
  [ItemOperation.DisableProtection]: { from: [], during: PS.DisablingProtection, held: [PS.DisablingProtection], to: null, back: [PS.DisablingProtection], needsReadiness: false },
  // a test VM that was started stays until it is cleaned up
  [ItemOperation.TestFailover]: { from: [PS.Protected], during: PS.TestFailoverInProgress, held: [PS.TestFailoverInProgress], to: PS.TestFailoverComplete, back: [PS.Protected, PS.TestFailoverComplete], needsReadiness: true },
  [ItemOperation.TestFailoverCleanup]: { from: [PS.TestFailoverComplete], during: PS.CleaningUpTestFailover, held: [PS.CleaningUpTestFailover], to: PS.Protected, back: [PS.TestFailoverComplete], needsReadiness: false },
  // past its promotion a failed failover stays FailoverInProgress until its job is restarted
  [ItemOperation.PlannedFailover]: { from: [PS.Protected], during: PS.FailoverInProgress, held: [PS.FailoverInProgress], to: PS.FailedOver, back: [PS.Protected, PS.FailoverInProgress], needsReadiness: true },
  [ItemOperation.UnplannedFailover]: { from: [PS.Protected], during: PS.FailoverInProgress, held: [PS.FailoverInProgress], to: PS.FailedOver, back: [PS.Protected, PS.FailoverInProgress], needsReadiness: true },
  [ItemOperation.ChangeRecoveryPoint]: { from: [PS.FailedOver], during: PS.FailedOver, held: [PS.FailedOver], to: PS.FailedOver, back: [PS.FailedOver], needsReadiness: false },
  [ItemOperation.Commit]: { from: [PS.FailedOver], during: PS.FailedOver, held: [PS.FailedOver], to: PS.Committed, back: [PS.FailedOver], needsReadiness: false },
  [ItemOperation.Reprotect]: { from: [PS.Committed], during: PS.Reprotecting, held: [PS.Reprotecting], to: PS.Protected, back: [PS.Committed], needsReadiness: false },
  // a failed or cancelled resync gives the item back the state it started from
  [ItemOperation.Resync]: { from: [PS.Protected, PS.ResyncRequired], during: PS.Resynchronizing, held: [PS.Resynchronizing], to: PS.Protected, back: [PS.Protected, PS.ResyncRequired], needsReadiness: false },
};

/** The change the provider's reports make without a job: only while no job holds the item. */
export const IDLE_TRANSITIONS: readonly (readonly [ProtectionState, ProtectionState])[] = [
  [PS.Protected, PS.ResyncRequired],
  [PS.ResyncRequired, PS.Protected],
];

/** Whether `op` starts from `state` (the job holding the item aside). */
export function startsFrom(op: ItemOperation, state: ProtectionState): boolean {
  const t = ITEM_TRANSITIONS[op];
  return t.from.length === 0 || t.from.includes(state);
}

/**
 * The states a restarted job of `op` may take the item back from: those its failure left
 * the item in, and the one it holds it in. Anything else means another operation ran on
 * the item since, and the restart is refused.
 */
export function restartsFrom(op: ItemOperation): readonly ProtectionState[] {
  const t = ITEM_TRANSITIONS[op];
  return [...new Set([...t.held, ...t.back])];
}

/** Why the vault would refuse to start `op` on the item now, or null when it would take it. */
export function whyNotStart(op: ItemOperation, item: { state: ProtectionState; activeJobId: string | null; readiness: FailoverReadiness }): string | null {
  if (item.activeJobId) return `job ${item.activeJobId} holds the item`;
  const t = ITEM_TRANSITIONS[op];
  if (!startsFrom(op, item.state)) return `${op} starts from ${t.from.join(' or ')}; the item is ${item.state}`;
  if (t.needsReadiness && !item.readiness.ready) return item.readiness.reason ?? 'not ready for failover';
  return null;
}
