/**
 * Which item operations the portal offers. The vault's transition table
 * (src/domain/item-transitions.ts) says which states each operation starts from and which
 * need the item ready for failover; the vault applies the same table and refuses with the
 * reason, and the portal only avoids offering what would be refused.
 */
import { ITEM_TRANSITIONS, whyNotStart, type ItemOperation } from '../../src/domain/item-transitions.js';
import type { ProtectedItem } from './types';

export type ItemOp = Exclude<ItemOperation, 'enable-protection' | 'disable-protection'> | 'disable';

const operation = (op: ItemOp): ItemOperation => (op === 'disable' ? 'disable-protection' : op);

type Offerable = Pick<ProtectedItem, 'state' | 'activeJobId' | 'readiness'>;

/**
 * Whether the vault would start `op` on the item now: no other job holds it, it is in a
 * state the operation starts from, and a failover has a point to start from. Disabling
 * protection starts from any state once no job holds the item (also after a failed disable).
 */
export function offered(op: ItemOp, item: Offerable): boolean {
  return whyNotStart(operation(op), item) === null;
}

/** Why `op` is not offered, for the button's title. */
export function notOffered(op: ItemOp, item: Offerable): string | undefined {
  if (item.activeJobId) return `job ${item.activeJobId} runs on this item`;
  const t = ITEM_TRANSITIONS[operation(op)];
  if (t.from.length > 0 && !t.from.includes(item.state)) return `starts from ${t.from.join(' or ')}`;
  return whyNotStart(operation(op), item) ?? undefined;
}

/** Whether a plan's run of `op` would be accepted: the failovers need every VM ready, the others one VM that can take part. */
export function offeredForPlan(op: ItemOp, members: Offerable[], missing: number): boolean {
  if (missing > 0 || members.length === 0) return false;
  return ITEM_TRANSITIONS[operation(op)].needsReadiness ? members.every((i) => offered(op, i)) : members.some((i) => offered(op, i));
}
