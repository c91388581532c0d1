/**
 * Which item operations the portal offers in which protection state. The vault applies
 * the same rules (src/workflows/item-jobs.ts) and refuses with the reason; the portal
 * only avoids offering what would be refused.
 */
import type { ProtectedItem, ProtectionState } from './types';

export type ItemOp = 'test-failover' | 'test-failover-cleanup' | 'planned-failover' | 'unplanned-failover' | 'change-recovery-point' | 'commit' | 'reprotect' | 'resync' | 'disable';

const FROM: Record<ItemOp, readonly ProtectionState[]> = {
  'test-failover': ['Protected'],
  'test-failover-cleanup': ['TestFailoverComplete'],
  'planned-failover': ['Protected'],
  'unplanned-failover': ['Protected'],
  'change-recovery-point': ['FailedOver'],
  commit: ['FailedOver'],
  reprotect: ['Committed'],
  resync: ['Protected', 'ResyncRequired'],
  // disabling protection is refused only while another job holds the item
  disable: [],
};

/** the failovers that need a crash-consistent point at the recovery site (the item's readiness) */
const NEEDS_READINESS: readonly ItemOp[] = ['test-failover', 'planned-failover', 'unplanned-failover'];

/**
 * Whether the vault would start `op` on the item now: no other job holds it, it is in a
 * state the operation starts from, and a failover has a point to start from. Disabling
 * protection starts from any state once no job holds the item (also after a failed disable).
 */
export function offered(op: ItemOp, item: Pick<ProtectedItem, 'state' | 'activeJobId' | 'readiness'>): boolean {
  if (item.activeJobId) return false;
  if (op === 'disable') return true;
  return FROM[op].includes(item.state) && (!NEEDS_READINESS.includes(op) || item.readiness.ready);
}

/** Why `op` is not offered, for the button's title. */
export function notOffered(op: ItemOp, item: Pick<ProtectedItem, 'state' | 'activeJobId' | 'readiness'>): string | undefined {
  if (offered(op, item)) return undefined;
  if (item.activeJobId) return `job ${item.activeJobId} runs on this item`;
  if (op !== 'disable' && !FROM[op].includes(item.state)) return `starts from ${FROM[op].join(' or ')}`;
  return item.readiness.reason ?? 'not ready for failover';
}

/** Whether a plan's run of `op` would be accepted: the failovers need every VM ready, the others one VM that can take part. */
export function offeredForPlan(op: ItemOp, members: Pick<ProtectedItem, 'state' | 'activeJobId' | 'readiness'>[], missing: number): boolean {
  if (missing > 0 || members.length === 0) return false;
  return NEEDS_READINESS.includes(op) ? members.every((i) => offered(op, i)) : members.some((i) => offered(op, i));
}
