/**
 * The capacity planner: from each protected VM's disk sizes and its measured churn, what
 * replication needs — bandwidth for each target RPO, how long an initial replication takes
 * over a given link, the replica storage the retention window holds, and when the change
 * logs waiting at the source would force a resynchronization (at 50 % of the disks' size)
 * if they keep growing as they do now. Pure: the caller gives the measurements.
 *
 * The model, stated so its figures can be checked:
 *
 * - A point is taken every copy cycle `c` and shipped before the next, so the RPO is at
 *   most about `c` plus the time to ship one cycle. To hold a target RPO `r`, the cycle is
 *   `c = min(policy frequency, r / 2)` and its bytes must ship in `r − c`: the bandwidth is
 *   the busiest cycle's rate × c / (r − c), and never below the average churn (less than
 *   that and the logs grow without end).
 * - An initial replication copies the disks while the guest writes; the writes are shipped
 *   after, so it finishes when the link has carried the disks plus the churn meanwhile:
 *   disk bytes / (bandwidth − churn).
 * - The replica holds the disks plus the undo data of every point kept: the churn of the
 *   retention window (an upper bound: a block written twice in a cycle is kept once), at
 *   least one cycle's worth.
 * - Churn is change-log bytes per second of guest time, before compression.
 */

/** Where the change logs force a resync: pending logs at this fraction of the disks' size. */
export const RESYNC_LOG_FRACTION = 0.5;

export interface CapacityItemInput {
  id: string;
  name: string;
  diskBytes: number;
  /** average change-log bytes per second over the window measured (null: not measured yet) */
  churnBytesPerSec: number | null;
  /** the busiest delta's rate (null: not measured yet) */
  peakChurnBytesPerSec: number | null;
  /** change-log bytes at the source not yet applied at the replica, now */
  pendingLogBytes: number | null;
  /** how fast the pending logs grow now (negative or zero: they do not) */
  logGrowthBytesPerSec: number | null;
  /** seconds between two copies (a continuous policy's cut) */
  copyFrequencySeconds: number;
  retentionHours: number;
}

export interface CapacityOptions {
  rpoTargetsSeconds: readonly number[];
  /** the link's bandwidth for initial replication, bytes per second */
  bandwidthBytesPerSec: number;
  now: number;
}

export interface ItemCapacity {
  id: string;
  name: string;
  diskBytes: number;
  measured: boolean;
  churnBytesPerSec: number | null;
  peakChurnBytesPerSec: number | null;
  /** bandwidth needed for each target RPO, bytes per second (null: churn not measured yet) */
  bandwidthForRpo: { rpoSeconds: number; bytesPerSec: number | null }[];
  /** initial replication over the given link (null: the link carries less than the churn) */
  initialReplicationSeconds: number | null;
  /** replica storage for the retention window (the disks alone until churn is measured) */
  replicaStorageBytes: number;
  resync: { thresholdBytes: number; pendingLogBytes: number | null; growthBytesPerSec: number | null; inSeconds: number | null; at: string | null };
}

export interface CapacityPlan {
  bandwidthBytesPerSec: number;
  items: ItemCapacity[];
  totals: {
    items: number;
    measured: number;
    diskBytes: number;
    churnBytesPerSec: number;
    bandwidthForRpo: { rpoSeconds: number; bytesPerSec: number }[];
    initialReplicationSeconds: number | null;
    replicaStorageBytes: number;
    /** the soonest forced resync of any item */
    firstResync: { item: string; inSeconds: number; at: string } | null;
  };
}

/** Bandwidth to hold RPO `r` with this churn, or null when not measured. */
export function bandwidthForRpo(rpoSeconds: number, copyFrequencySeconds: number, churn: number | null, peak: number | null): number | null {
  if (churn === null) return null;
  const busiest = Math.max(peak ?? churn, churn);
  const c = Math.min(copyFrequencySeconds, rpoSeconds / 2);
  return Math.ceil(Math.max(churn, (busiest * c) / (rpoSeconds - c)));
}

/** Seconds to copy `diskBytes` while the guest writes `churn` bytes per second, or null when it never catches up. */
export function initialReplicationSeconds(diskBytes: number, bandwidth: number, churn: number | null): number | null {
  const net = bandwidth - (churn ?? 0);
  return net > 0 ? Math.ceil(diskBytes / net) : null;
}

export function planCapacity(items: readonly CapacityItemInput[], o: CapacityOptions): CapacityPlan {
  const out: ItemCapacity[] = items.map((i) => {
    const measured = i.churnBytesPerSec !== null;
    const churn = i.churnBytesPerSec ?? 0;
    const peak = Math.max(i.peakChurnBytesPerSec ?? churn, churn);
    const window = Math.max(i.retentionHours * 3600, i.copyFrequencySeconds);
    const thresholdBytes = Math.floor(i.diskBytes * RESYNC_LOG_FRACTION);
    const growth = i.logGrowthBytesPerSec;
    const inSeconds = growth !== null && growth > 0 ? Math.max(0, Math.floor((thresholdBytes - (i.pendingLogBytes ?? 0)) / growth)) : null;
    return {
      id: i.id,
      name: i.name,
      diskBytes: i.diskBytes,
      measured,
      churnBytesPerSec: i.churnBytesPerSec,
      peakChurnBytesPerSec: i.peakChurnBytesPerSec,
      bandwidthForRpo: o.rpoTargetsSeconds.map((r) => ({ rpoSeconds: r, bytesPerSec: bandwidthForRpo(r, i.copyFrequencySeconds, i.churnBytesPerSec, i.peakChurnBytesPerSec) })),
      initialReplicationSeconds: initialReplicationSeconds(i.diskBytes, o.bandwidthBytesPerSec, i.churnBytesPerSec),
      replicaStorageBytes: i.diskBytes + Math.ceil(Math.max(churn * window, peak * i.copyFrequencySeconds)),
      resync: { thresholdBytes, pendingLogBytes: i.pendingLogBytes, growthBytesPerSec: growth, inSeconds, at: inSeconds === null ? null : new Date(o.now + inSeconds * 1000).toISOString() },
    };
  });
  const sum = (f: (x: ItemCapacity) => number) => out.reduce((n, x) => n + f(x), 0);
  const churn = sum((x) => x.churnBytesPerSec ?? 0);
  const soonest = out.filter((x) => x.resync.inSeconds !== null).sort((a, b) => a.resync.inSeconds! - b.resync.inSeconds!)[0];
  return {
    bandwidthBytesPerSec: o.bandwidthBytesPerSec,
    items: out,
    totals: {
      items: out.length,
      measured: out.filter((x) => x.measured).length,
      diskBytes: sum((x) => x.diskBytes),
      churnBytesPerSec: churn,
      // each VM's need added up: their busiest cycles may coincide
      bandwidthForRpo: o.rpoTargetsSeconds.map((r, k) => ({ rpoSeconds: r, bytesPerSec: sum((x) => x.bandwidthForRpo[k]!.bytesPerSec ?? 0) })),
      initialReplicationSeconds: initialReplicationSeconds(sum((x) => x.diskBytes), o.bandwidthBytesPerSec, churn),
      replicaStorageBytes: sum((x) => x.replicaStorageBytes),
      firstResync: soonest ? { item: soonest.name, inSeconds: soonest.resync.inSeconds!, at: soonest.resync.at! } : null,
    },
  };
}

/** How fast a series of pending-log samples grows, bytes per second, over at least `minSpanMs`; null with too few samples. */
export function growthRate(samples: readonly { atMs: number; bytes: number }[], minSpanMs = 60_000): number | null {
  if (samples.length < 2) return null;
  // least squares over the window: one noisy sample does not decide it
  const t0 = samples[0]!.atMs;
  const span = samples[samples.length - 1]!.atMs - t0;
  if (span < minSpanMs) return null;
  const n = samples.length;
  const xs = samples.map((s) => (s.atMs - t0) / 1000);
  const ys = samples.map((s) => s.bytes);
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let k = 0; k < n; k++) {
    num += (xs[k]! - mx) * (ys[k]! - my);
    den += (xs[k]! - mx) ** 2;
  }
  return den > 0 ? num / den : null;
}
