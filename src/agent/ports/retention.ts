/**
 * Which recovery point retention drops next, the same for every ReplicaTarget: points
 * older than the window first (and an old primary's unverified base as soon as a real
 * point exists), then a continuous replication's crash-consistent cuts whose neighbours
 * are no more than the spacing apart (so a point is kept at least every interval), then, while there are more than the count allows, crash-consistent
 * points before app-consistent ones, the one closest to its predecessor first. The latest
 * point is never dropped, and neither is a point in use (an overlay, a failover's copy).
 */
import { Consistency } from './change-source.js';
import type { RecoveryPoint, RetentionSpec } from './replica-target.js';

export function nextPointToDrop(points: readonly RecoveryPoint[], retention: RetentionSpec, nowMs: number, inUse: ReadonlySet<number> = new Set()): RecoveryPoint | undefined {
  const { hours, maxPoints } = retention;
  const cutoff = nowMs - hours * 3600_000;
  const candidates = points.slice(0, -1).filter((p) => !inUse.has(p.seq));
  if (candidates.length === 0) return undefined;
  const expired = candidates.find((p) => p.unverified || p.timeMs < cutoff);
  if (expired) return expired;
  const spacing = retention.minSpacingMs ?? 0;
  if (spacing > 0) {
    const folded = candidates.find((p) => {
      if (p.consistency !== Consistency.Crash) return false;
      const i = points.indexOf(p);
      return i > 0 && points[i + 1]!.timeMs - points[i - 1]!.timeMs <= spacing;
    });
    if (folded) return folded;
  }
  if (points.length <= Math.max(1, maxPoints)) return undefined;
  const gap = (p: RecoveryPoint) => {
    const i = points.indexOf(p);
    return i === 0 ? Number.MAX_SAFE_INTEGER : p.timeMs - points[i - 1]!.timeMs;
  };
  const pool = candidates.some((p) => p.consistency === Consistency.Crash) ? candidates.filter((p) => p.consistency === Consistency.Crash) : candidates;
  return pool.reduce((a, b) => (gap(b) < gap(a) ? b : a));
}
