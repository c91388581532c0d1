/**
 * The second seam of the replication engine: a ReplicaTarget is where one VM's replica
 * lives. The replica store implements it with images and undo files (replica-store.ts); the
 * Azure target with page blobs and blob snapshots (azure/blob-replica.ts). Calls that a
 * target may need the network for return a promise there; the caller always awaits them. Its other
 * seam, the VM being replicated, is change-source.ts.
 *
 * This module owns the types of the seam (a replica's disks, recovery points, retention,
 * a delta's files, a resynchronization's state): implementations import them from here.
 */
import type { OsrError } from '../../domain/errors.js';
import type { Consistency } from './change-source.js';
import type { DiskRanges } from '../io/ranges.js';

export interface ReplicaDiskSpec {
  id: string;
  name: string;
  size: number;
}

export interface RecoveryPoint {
  seq: number;
  timeMs: number;
  consistency: Consistency;
  /** bytes of guest data the delta carried */
  deltaBytes: number;
  /** the consistency group's cut it belongs to: the members' points of one cut are one instant of the group */
  cut?: string | undefined;
  /**
   * set on the base of a replica made from an old primary's disks (reverse replication):
   * they hold the old primary's state, not a point of the new one. Never opened; dropped
   * once the reverse resync's point is applied.
   */
  unverified?: true | undefined;
  /**
   * the point's disks and their sizes, set once the VM's disks changed under protection
   * (absent: the replica's disks as they are now). A disk added later is not in an older
   * point; a grown or shrunk disk has the size it had then.
   */
  disks?: PointDisk[] | undefined;
}

/** A disk as one recovery point holds it. */
export interface PointDisk {
  name: string;
  size: number;
}

/** How a replica's disks differ from the primary's: what `reshape` does and what it needs confirmed. */
export interface DiskChange {
  added: ReplicaDiskSpec[];
  grown: { name: string; from: number; to: number }[];
  shrunk: { name: string; from: number; to: number }[];
  removed: ReplicaDiskSpec[];
}

export interface RetentionSpec {
  /** keep points this many hours (0 keeps only the latest); at most 24 */
  hours: number;
  /** and at most this many points */
  maxPoints: number;
  /**
   * continuous replication: a crash-consistent point is dropped once the points either
   * side of it are no more than this far apart (ms), so one point is kept per interval
   */
  minSpacingMs?: number | undefined;
}

/** Where a replica may differ from its primary beyond the change logs ('all': unknown). */
export type DivergentRanges = DiskRanges | 'all';

export interface DeltaDiskFile {
  diskName: string;
  file: string;
  /** a resync's staged log, applied before `file` (set by the store) */
  staged?: string | undefined;
  /** the undo of this disk, written while the delta arrived (ReplicaTarget.prepareUndo) */
  undo?: PreparedUndo | undefined;
}

/** An undo being written while its delta arrives: the ranges its records name, in order. */
export interface PreparedUndo {
  add(offset: number, length: number): void;
  invalidate(): void;
  /** the undo file complete (not synced), or undefined when it gave up */
  finish(): Promise<{ path: string; fd: number; entries: { offset: number; length: number; dataPos: number }[] } | undefined>;
  abandon(): Promise<void>;
}

export interface ResyncDiskProgress {
  /** the disk is compared up to here, and everything found below it is staged durably */
  offset: number;
  /** bytes of the staged log that are durable */
  bytes: number;
  finished: boolean;
}

/** Recorded with the replica while a resync runs (resync-stage.ts). */
export interface ResyncState {
  id: string;
  /** the recovery point the resync ends in: the staged logs, then the primary's log `seq` */
  seq: number;
  blockSize: number;
  disks: Record<string, ResyncDiskProgress>;
}

export interface InitialState {
  initialDone: boolean;
  copied: Record<string, number>;
  finishedDisks: string[];
}

export interface ReplicaTarget {
  readonly vmId: string;
  readonly vmName: string;
  readonly disks: readonly ReplicaDiskSpec[];
  readonly initialDone: boolean;
  initialProgress(): Record<string, number>;
  finishedInitialDisks(): string[];
  /** refuse an epoch below the replica's (EPOCH_STALE), record a higher one */
  setEpoch(epoch: number): void | Promise<void>;
  /** forget the initial copy and every point: replication starts over from a full copy */
  resetInitial(): void | Promise<void>;
  writeInitial(disk: string, offset: number, data: readonly Buffer[]): Promise<void>;
  zeroInitial(disk: string, offset: number, length: number): void | Promise<void>;
  checkpointInitial(disk: string, offset: number, finished: boolean): Promise<void>;
  /** where a delta's files are received before applyDelta */
  incomingDir(seq: number): string;
  /** the point whose delta is being applied now, if one is (its files must not be touched) */
  readonly applyingSeq: number | undefined;
  applyDelta(point: RecoveryPoint, files: DeltaDiskFile[]): Promise<'applied' | 'duplicate'>;
  /** begin the undo of delta `seq` for `disk` while it arrives, when the store can (it follows the latest point) */
  prepareUndo?(seq: number, disk: string): PreparedUndo | undefined;
  /**
   * Move this disk's last applied log, kept for reuse, to `file` (a path in incomingDir), when
   * the store keeps one: the caller then overwrites it in place from its first byte, and the
   * delta is applied only as verified while it arrived (an older log's bytes may follow the
   * new one). True when a file was moved there.
   */
  reuseLog?(disk: string, file: string): boolean;
  /** where the last apply spent its time (ms), when the store keeps it */
  readonly applySteps?: { verifyMs: number; undoMs: number; imageMs: number; syncMs: number; finishMs: number } | undefined;
  points(): RecoveryPoint[];
  latestPoint(): RecoveryPoint | undefined;
  /** begin or resume a resynchronization ending in point `seq` */
  beginResync(id: string, seq: number, blockSize: number): ResyncState | Promise<ResyncState>;
  /** checksums of the blocks of [offset, offset + length) at the latest point */
  blockHashes(disk: string, offset: number, length: number, blockSize: number): Promise<Buffer>;
  /**
   * A block the resync found different. Calls for one disk come in order; a target may
   * finish them later (the caller waits for all before stageResyncZero or checkpointResync).
   */
  stageResync(disk: string, offset: number, parts: readonly Buffer[]): void | Promise<void>;
  stageResyncZero(disk: string, offset: number, length: number): void | Promise<void>;
  checkpointResync(disk: string, offset: number, finished: boolean): Promise<ResyncState>;
  /** where the replica may differ from the primary beyond its logs (a reversed replica) */
  readonly divergent: DivergentRanges | undefined;
  addDivergence(ranges: DiskRanges): void | Promise<void>;
  /**
   * Take the primary's disks as they are now (disks added, grown, shrunk or removed under
   * protection): the next points have them, older points keep theirs. Added disks and
   * grown ranges become divergent (the primary resynchronizes just those); a shrink or a
   * removal needs `confirmed`. Absent: the target cannot change its disks (the primary
   * is told so, and replication waits).
   */
  reshape?(disks: ReplicaDiskSpec[], confirmed: boolean): Promise<DiskChange>;
  /** the offline export the initial copy was imported from, where the target takes one */
  readonly seed?: { seq: number } | undefined;
}

/** What a primary asks a replica to be opened with. */
export interface ReplicaOpenRequest {
  vmId: string;
  vmName: string;
  disks: ReplicaDiskSpec[];
  retention: RetentionSpec;
  epoch: number;
  /** the user confirmed that the replica may drop or shrink disks for its next points */
  confirmedShrink?: boolean | undefined;
}

/** The agent replicating a VM, as its certificate names it. */
export interface SourceAgent {
  name: string;
  fabricId?: string | undefined;
}

/** A connection that holds a VM's replica: closed when a newer one claims it. */
export interface ReplicaHolder {
  destroy(e: OsrError): void;
}

/**
 * Opens the targets a replication session drives: the agent's replica stores, or the
 * Azure replicas its own VMs replicate to. One connection holds a VM's replica at a time.
 */
export interface ReplicaOpener {
  open(req: ReplicaOpenRequest, source: SourceAgent): Promise<ReplicaTarget>;
  /** this connection replicates the VM now: an older one of the same VM is closed */
  claim(vmId: string, holder: ReplicaHolder): void;
  release(vmId: string, holder: ReplicaHolder): void;
}
