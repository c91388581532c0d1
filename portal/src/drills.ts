/**
 * When a drill is due. A plan or a protected item should be proven by a drill (a test
 * failover and its cleanup, both succeeded) at least every DRILL_INTERVAL_DAYS; an item
 * counts as drilled by its own drills and by those of any plan it is in.
 */
import type { ItemDrill, ProtectedItem } from './types';

export const DRILL_INTERVAL_DAYS = 30;
const INTERVAL_MS = DRILL_INTERVAL_DAYS * 86400_000;

export function itemDrills(item: ProtectedItem): ItemDrill[] {
  const d = item.replication.drills;
  return Array.isArray(d) ? d : [];
}

/** the newest succeeded drill's time, or null */
export function lastDrillAt(drills: { cleanedUpAt: string; succeeded: boolean }[]): number | null {
  let t: number | null = null;
  for (const d of drills) if (d.succeeded) t = Math.max(t ?? 0, Date.parse(d.cleanedUpAt));
  return t;
}

export function isDue(last: number | null, now = Date.now()): boolean {
  return last === null || now - last > INTERVAL_MS;
}
