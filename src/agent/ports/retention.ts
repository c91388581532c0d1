/**
 * Which recovery point retention drops next, the same for every ReplicaTarget: points
 * older than the window first (and an old primary's unverified base as soon as a real
 * point exists), then a continuous replication's crash-consistent cuts whose neighbours
 * are no more than the spacing apart (so a point is kept at least every interval), then,
 * while there are more than the count allows, crash-consistent points before app-consistent
 * ones, the one closest to its predecessor first. A consistency group's points (a cut's)
 * age by the cut's time, are never folded, and are thinned oldest first, after the others:
 * every member's replica then keeps the same cuts. The latest point is never dropped, and
 * neither is a point in use (an overlay, a failover's copy).
 */
import { cutTimeMs } from '../../domain/groups.js';
import { Consistency } from './change-source.js';
import type { RecoveryPoint, RetentionSpec } from './replica-target.js';

export function nextPointToDrop(points: readonly RecoveryPoint[], retention: RetentionSpec, nowMs: number, inUse: ReadonlySet<number> = new Set()): RecoveryPoint | undefined {
  const { hours, maxPoints } = retention;
  const cutoff = nowMs - hours * 3600_000;
  const candidates = points.slice(0, -1).filter((p) => !inUse.has(p.seq));
  if (candidates.length === 0) return undefined;
  // a consistency group's point ages by its cut's time, the same on every member's replica
  const expired = candidates.find((p) => p.unverified || (p.cut !== undefined ? (cutTimeMs(p.cut) ?? p.timeMs) : p.timeMs) < cutoff);
  if (expired) return expired;
  const spacing = retention.minSpacingMs ?? 0;
  if (spacing > 0) {
    const folded = candidates.find((p) => {
      if (p.consistency !== Consistency.Crash || p.cut !== undefined) return false;
      const i = points.indexOf(p);
      return i > 0 && points[i + 1]!.timeMs - points[i - 1]!.timeMs <= spacing;
    });
    if (folded) return folded;
  }
  if (points.length <= Math.max(1, maxPoints)) return undefined;
  // a group's points are thinned oldest first: every member holding the same cuts drops the
  // same one, so the group points survive on all of them (a gap-based choice would differ
  // by the hosts' few milliseconds)
  const own = candidates.filter((p) => p.cut === undefined);
  if (own.length === 0) return candidates[0];
  const gap = (p: RecoveryPoint) => {
    const i = points.indexOf(p);
    return i === 0 ? Number.MAX_SAFE_INTEGER : p.timeMs - points[i - 1]!.timeMs;
  };
  const pool = own.some((p) => p.consistency === Consistency.Crash) ? own.filter((p) => p.consistency === Consistency.Crash) : own;
  return pool.reduce((a, b) => (gap(b) < gap(a) ? b : a));
}
