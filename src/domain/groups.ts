/**
 * Consistency groups: VMs whose recovery points are cut at one instant across all of them,
 * on one host or several (src/agent/sending/group-cuts.ts). A cut's points carry its id;
 * a group point is a cut that every member's replica holds. Pure.
 */

/** One member's recovery points as its replica lists them. */
export interface MemberPoint {
  seq: number;
  timeMs: number;
  cut?: string | undefined;
}

/** A cut every member holds: its id, its instant (the latest of its members' swaps), and each member's point. */
export interface GroupPoint {
  cut: string;
  timeMs: number;
  points: Record<string, number>;
}

/**
 * The cuts held by every member, newest first. A cut some member lacks (its swap failed, its
 * point not yet applied or pruned) is no instant of the group and is left out.
 */
export function groupPoints(members: Readonly<Record<string, readonly MemberPoint[]>>): GroupPoint[] {
  return commonCuts(members, (p) => p.timeMs).map((g) => ({ cut: g.cut, timeMs: g.timeMs, points: Object.fromEntries(Object.entries(g.points).map(([vm, p]) => [vm, p.seq])) }));
}

/** A point as the vault records it (resources.ts RecoveryPoint): its id, its time, its cut. */
export interface RecordedPoint {
  id: string;
  at: string;
  cut?: string | undefined;
}

/**
 * The newest cut every member holds, from the points the vault recorded for each (member →
 * its points): the cut, its instant, and each member's point id. Undefined: no cut is held
 * by all of them yet.
 */
export function latestGroupPoint(members: Readonly<Record<string, readonly RecordedPoint[]>>): { cut: string; at: string; points: Record<string, string> } | undefined {
  const g = commonCuts(members, (p) => Date.parse(p.at))[0];
  return g && { cut: g.cut, at: new Date(g.timeMs).toISOString(), points: Object.fromEntries(Object.entries(g.points).map(([m, p]) => [m, p.id])) };
}

/** The cuts every member holds, newest first: each with its members' points and its instant (the latest of theirs). */
function commonCuts<P extends { cut?: string | undefined }>(members: Readonly<Record<string, readonly P[]>>, timeOf: (p: P) => number): { cut: string; timeMs: number; points: Record<string, P> }[] {
  const names = Object.keys(members);
  if (names.length === 0) return [];
  const byCut = new Map<string, { cut: string; timeMs: number; points: Record<string, P> }>();
  for (const vm of names) {
    for (const p of members[vm]!) {
      if (p.cut === undefined) continue;
      const g = byCut.get(p.cut) ?? { cut: p.cut, timeMs: 0, points: {} };
      g.points[vm] = p;
      g.timeMs = Math.max(g.timeMs, timeOf(p));
      byCut.set(p.cut, g);
    }
  }
  return [...byCut.values()].filter((g) => names.every((vm) => g.points[vm] !== undefined)).sort((a, b) => b.timeMs - a.timeMs);
}

/** A new cut's id: unique per group, and a name the agents take (names.ts). It carries the coordinator's time. */
export function cutId(nowMs: number, random: string): string {
  return `cut-${nowMs.toString(36)}-${random}`;
}

/**
 * The coordinator's time of a cut, from its id: the same on every member's replica, where
 * each point's own time is its host's. Undefined for an id not made by cutId.
 */
export function cutTimeMs(id: string): number | undefined {
  const m = /^cut-([0-9a-z]{1,11})-/.exec(id);
  if (!m) return undefined;
  const t = parseInt(m[1]!, 36);
  return Number.isSafeInteger(t) ? t : undefined;
}
