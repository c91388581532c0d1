/**
 * One VM's recovery points in its container (docs/design/azure.md): a point is a set of
 * snapshots, one per disk, with the same `osrseq` in their metadata. A delta is written
 * into each disk's live blob on the sequence-number condition, the blob's number is set to
 * the delta's, and then each disk is snapshotted; the point exists once every disk has its
 * snapshot. Each step is safe to run again after a crash: a disk that records the delta
 * is not written again, and a disk that has the snapshot is not snapshotted again.
 */
import type { ContainerClient } from '@azure/storage-blob';
import { OsrError } from '../../domain/errors.js';
import { groupPointSets, pointMetadata, type SnapshotEntry } from '../../domain/azure-layout.js';
import type { RecoveryPoint, RetentionSpec } from '../ports/replica-target.js';
import { nextPointToDrop } from '../ports/retention.js';
import { storageError, type DiskPiece, type PageBlobDisk } from './page-blob-disk.js';

/** A point's snapshot of one disk. */
export interface DiskSnapshot {
  disk: string;
  snapshot: string;
}

/** A recovery point as snapshots: complete when every disk of the VM has one. */
export interface BlobPoint {
  point: RecoveryPoint;
  snapshots: DiskSnapshot[];
}

export class BlobPoints {
  constructor(
    private readonly container: ContainerClient,
    private readonly disks: readonly PageBlobDisk[],
    /** the replica's generation (a new one at each start over): only its snapshots are points */
    private readonly generation: () => string,
  ) {}

  /** Every point osr made in the container, in order; `complete` false for a set a crash left short of a disk. */
  async list(): Promise<(BlobPoint & { complete: boolean; every: DiskSnapshot[] })[]> {
    const entries: SnapshotEntry[] = [];
    try {
      for await (const b of this.container.listBlobsFlat({ includeSnapshots: true, includeMetadata: true, prefix: 'disks/' })) {
        if (b.snapshot) entries.push({ name: b.name, snapshot: b.snapshot, metadata: b.metadata });
      }
    } catch (e) {
      throw storageError(e, 'listing the recovery points');
    }
    // a snapshot of an earlier copy of the replica (before a start over) is no point of this one
    return groupPointSets(entries, this.disks.map((d) => d.name), this.generation());
  }

  /** The complete points, in order. */
  async points(): Promise<BlobPoint[]> {
    return (await this.list()).filter((s) => s.complete).map(({ point, snapshots }) => ({ point, snapshots }));
  }

  /** The latest complete point, if any. */
  async latest(): Promise<BlobPoint | undefined> {
    return (await this.points()).at(-1);
  }

  /**
   * Apply delta `point.seq` and make it a point: each disk's pieces (coalesced: none
   * overlap), as one list or as batches read one after the other (a large delta is not
   * held in memory whole). 'duplicate' when the point exists already. The delta must follow
   * the latest point (or be the first after the initial copy, `first`).
   */
  async apply(point: RecoveryPoint, pieces: ReadonlyMap<string, readonly DiskPiece[] | (() => AsyncIterable<readonly DiskPiece[]>)>, o: { first?: boolean } = {}): Promise<'applied' | 'duplicate'> {
    const all = await this.list();
    const done = all.find((s) => s.point.seq === point.seq);
    if (done?.complete) return 'duplicate';
    const latest = all.filter((s) => s.complete).at(-1);
    if (latest && point.seq <= latest.point.seq) return 'duplicate';
    if (!o.first && latest && point.seq !== latest.point.seq + 1) {
      throw new OsrError('REPLICA_CHAIN_BROKEN', `delta ${point.seq} does not follow the latest recovery point ${latest.point.seq}`, { latest: latest.point.seq, got: point.seq });
    }
    for (const d of this.disks) {
      if (!pieces.has(d.name)) throw new OsrError('INVALID_ARGUMENT', `delta ${point.seq} has nothing for disk ${d.name}`);
    }
    // 1. the live blobs: each disk that does not record the delta yet gets its writes, then the number
    if (!Number.isSafeInteger(point.seq) || point.seq < 1) throw new OsrError('INVALID_ARGUMENT', `delta ${point.seq}: a delta's number is 1 or more`);
    // a disk past this delta means the blobs and the points disagree (another writer, another numbering)
    const checkRecorded = async (d: PageBlobDisk) => {
      const n = await d.sequenceNumber();
      if (n > point.seq) throw new OsrError('REPLICA_CHAIN_BROKEN', `disk ${d.name} records delta ${n}, past delta ${point.seq} whose point is missing`, { disk: d.name, recorded: n, got: point.seq });
      return n === point.seq;
    };
    for (const d of this.disks) {
      if (await checkRecorded(d)) continue;
      const source = pieces.get(d.name)!;
      let refused = false;
      if (typeof source !== 'function') refused = !(await d.write(source, point.seq));
      else for await (const batch of source()) if ((refused = !(await d.write(batch, point.seq)))) break;
      // refused: the blob recorded a number meanwhile, which must be this delta's
      if (refused && !(await checkRecorded(d))) throw new OsrError('REPLICA_CHAIN_BROKEN', `disk ${d.name} refused delta ${point.seq}`);
      await d.setSequenceNumber(point.seq);
    }
    // 2. the snapshots, each disk's once
    const have = new Set(done?.snapshots.map((s) => s.disk) ?? []);
    for (const d of this.disks) if (!have.has(d.name)) await d.snapshot(pointMetadata(point, this.generation()));
    // 3. sets a crash left short (older than this point) are not points: they go
    for (const s of all) if (!s.complete && s.point.seq < point.seq) await this.deleteSet(s);
    return 'applied';
  }

  /** Drop points outside the retention (never the latest, never one in use): the points dropped. */
  async prune(retention: RetentionSpec, nowMs: number, inUse: ReadonlySet<number> = new Set()): Promise<RecoveryPoint[]> {
    const sets = (await this.list()).filter((s) => s.complete);
    const points = sets.map((s) => s.point);
    const dropped: RecoveryPoint[] = [];
    for (;;) {
      const victim = nextPointToDrop(points, retention, nowMs, inUse);
      if (!victim) break;
      await this.deleteSet(sets.find((s) => s.point.seq === victim.seq)!);
      points.splice(points.indexOf(victim), 1);
      dropped.push(victim);
    }
    return dropped;
  }

  private async deleteSet(set: { every: DiskSnapshot[] }): Promise<void> {
    for (const s of set.every) await this.disks.find((d) => d.name === s.disk)!.deleteSnapshot(s.snapshot);
  }
}
