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
  const names = Object.keys(members);
  if (names.length === 0) return [];
  const byCut = new Map<string, GroupPoint>();
  for (const vm of names) {
    for (const p of members[vm]!) {
      if (p.cut === undefined) continue;
      const g = byCut.get(p.cut) ?? { cut: p.cut, timeMs: 0, points: {} };
      g.points[vm] = p.seq;
      g.timeMs = Math.max(g.timeMs, p.timeMs);
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
