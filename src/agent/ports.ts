/**
 * The two seams of the replication engine, kept as small as the engine needs them.
 *
 * - A ChangeSource is a VM whose disks can be read and whose writes are tracked as
 *   closed deltas per sequence number. The lab fabric's VMs implement it with change
 *   logs (LabVm); a QEMU driver will implement it with persistent dirty bitmaps and
 *   fleecing, writing each cycle's dirty blocks as a delta in the change-log format.
 * - A ReplicaTarget is where one VM's replica lives. The replica store implements it with
 *   images and undo files; an Azure page-blob target will implement it with page blobs
 *   and blob snapshots.
 *
 * The engine branches on capabilities, never on which implementation it holds.
 */
import type { Consistency, DeltaDiskFile, RecoveryPoint, ReplicaDiskSpec } from './replica-store.js';
import type { DiskRanges } from './ranges.js';
import type { ResyncState } from './resync-stage.js';

export interface SourceDisk {
  readonly id: string;
  readonly name: string;
  readonly size: number;
  /** a readable descriptor of the disk's current content */
  readonly imageFd: number;
}

export interface ClosedDeltaFile {
  seq: number;
  /** which disk this log belongs to */
  disk: string;
  file: string;
  bytes: number;
  closedMs: number;
}

export interface ChangeSource {
  readonly id: string;
  readonly name: string;
  readonly disks: readonly SourceDisk[];
  readonly capabilities: {
    /** allocated ranges can be listed (unallocated ones are skipped by the initial copy) */
    readonly sparseRanges: boolean;
  };
  readonly tracking: ChangeTracking;
  /**
   * ranges that differ from the last point the replica and this source had in common,
   * beyond the change logs (a promoted replica's rolled-back points); sent by reverse
   * replication, then cleared
   */
  divergence?(): DiskRanges | undefined;
  clearDivergence?(): void;
  /** refuse writes from now on: a newer epoch was promoted elsewhere */
  fence?(reason: string, epoch: number): void;
}

export interface ChangeTracking {
  readonly enabled: boolean;
  readonly resyncRequired: { reason: string; at: string } | undefined;
  /** the sequence number writes go to now */
  readonly activeSeq: number;
  /** begin tracking all disks at one instant (the snapshot of an initial replication) */
  start(): number;
  /** stop tracking and drop every log */
  stop(): void;
  /** close the current delta of every disk at one instant; returns its sequence number */
  swap(consistency: Consistency): number;
  /** resolves when every delta closed so far is durable */
  closedSynced(): Promise<void>;
  /** closed deltas after afterSeq, by sequence number, one file per disk */
  closedDeltas(afterSeq: number): Map<number, ClosedDeltaFile[]>;
  pointMetaOf(seq: number, fallbackMs: number): { timeMs: number; consistency: Consistency };
  /** the replica holds everything up to seq: forget it */
  releaseThrough(seq: number): void;
  pendingBytes(afterSeq: number): number;
  /** change-log bytes not yet at the replica, per disk name */
  pendingBytesByDisk(afterSeq: number): Map<string, number>;
  markResyncRequired(reason: string): void;
  /** a resynchronization in progress, and the log that tracks writes since it began */
  readonly resync: { id: string; seq: number; startedMs: number } | undefined;
  /** begin a resynchronization (or go on with the one in progress): drops older logs */
  beginResync(opts?: { keepActive?: boolean }): { id: string; seq: number; resumed: boolean };
  /** ranges written in the logs held now (all, or the closed ones only) */
  loggedRanges(which: 'all' | 'closed'): DiskRanges;
  /** the resync's point reached the replica */
  endResync(): void;
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
  setEpoch(epoch: number): void;
  resetInitial(): void;
  writeInitial(disk: string, offset: number, data: readonly Buffer[]): Promise<void>;
  zeroInitial(disk: string, offset: number, length: number): void;
  checkpointInitial(disk: string, offset: number, finished: boolean): Promise<void>;
  /** where a delta's files are received before applyDelta */
  incomingDir(seq: number): string;
  /** the point whose delta is being applied now, if one is (its files must not be touched) */
  readonly applyingSeq: number | undefined;
  applyDelta(point: RecoveryPoint, files: DeltaDiskFile[]): Promise<'applied' | 'duplicate'>;
  points(): RecoveryPoint[];
  latestPoint(): RecoveryPoint | undefined;
  /** begin or resume a resynchronization ending in point `seq` */
  beginResync(id: string, seq: number, blockSize: number): ResyncState;
  /** checksums of the blocks of [offset, offset + length) at the latest point */
  blockHashes(disk: string, offset: number, length: number, blockSize: number): Promise<Buffer>;
  stageResync(disk: string, offset: number, parts: readonly Buffer[]): void;
  stageResyncZero(disk: string, offset: number, length: number): void;
  checkpointResync(disk: string, offset: number, finished: boolean): Promise<ResyncState>;
  /** where the replica may differ from the primary beyond its logs (a reversed replica) */
  readonly divergent: DiskRanges | 'all' | undefined;
  addDivergence(ranges: DiskRanges): void;
}
