/**
 * Which item operations the portal offers in which protection state. The vault applies
 * the same rules (src/workflows/item-jobs.ts) and refuses with the reason; the portal
 * only avoids offering what would be refused.
 */
import type { ProtectionState } from './types';

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

export function offered(op: ItemOp, state: ProtectionState): boolean {
  return op === 'disable' ? state !== 'DisablingProtection' : FROM[op].includes(state);
}
