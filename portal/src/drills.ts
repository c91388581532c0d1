/**
 * When a drill is due: the rule is the vault's (src/domain/runs.ts). A plan or a protected
 * item should be proven by a drill at least every DRILL_INTERVAL_DAYS; an item counts as
 * drilled by its own drills, which include those its plans ran.
 */
import { DRILL_INTERVAL_DAYS, isDrillDue, lastDrillAt } from '../../src/domain/runs.js';
import type { ItemDrill, ProtectedItem } from './types';

export { DRILL_INTERVAL_DAYS, lastDrillAt };

export function itemDrills(item: ProtectedItem): ItemDrill[] {
  const d = item.replication.drills;
  return Array.isArray(d) ? d : [];
}

export function isDue(last: number | null, now = Date.now()): boolean {
  return isDrillDue(last, now);
}
