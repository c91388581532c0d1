/**
 * The first seam of the replication engine: a ChangeSource is a VM whose disks can be read
 * and whose writes are tracked as closed deltas per sequence number. The sending side
 * (replication.ts) reads it and nothing else of the VM.
 *
 * The lab host's VMs implement it with change logs on their own write path (LabVm); a
 * QEMU/libvirt host will implement it with persistent dirty bitmaps (checkpoints) and
 * pull-mode backup, writing each cycle's dirty blocks as a delta in the change-log format
 * (change-log.ts). Its other seam, where the replica lives, is replica-target.ts.
 *
 * The engine branches on capabilities, never on which implementation it holds. This module
 * owns the types of the seam: implementations import them from here.
 */
import type { DiskRanges } from '../io/ranges.js';
import type { WriteGate } from '../io/write-gate.js';

/** How a recovery point was cut: crash-consistent, or with the guest quiesced (app-consistent). */
export const Consistency = { Crash: 'crash-consistent', App: 'app-consistent' } as const;
export type Consistency = (typeof Consistency)[keyof typeof Consistency];

/**
 * How the sending side reads a disk. What it reads is the content the next point is
 * built from: a lab disk's live image (its change log covers what moves while it is
 * read), or a libvirt backup's view of one instant, exported over NBD, that the host keeps
 * open from `tracking.start()` or `beginResync()` to the `swap()` that closes the point.
 */
export interface DiskReader {
  /** bytes [offset, offset + length), into `into` when given */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  /** several ranges in one read: each piece is [disk offset, offset in buf, length] */
  readPieces(buf: Buffer, pieces: readonly (readonly [number, number, number])[]): Promise<Buffer>;
  /** the checksums of the blocks of [offset, offset + length) (io/checksum.ts's digest) */
  blockDigests(offset: number, length: number, blockSize: number): Promise<Buffer>;
  /** the allocated ranges of [from, size): what the initial copy must read (all of it when the reader cannot tell) */
  dataRanges(from: number, size: number): Promise<{ offset: number; length: number }[]>;
}

export interface SourceDisk {
  readonly id: string;
  readonly name: string;
  /** changes in place when the disk is resized under protection */
  readonly size: number;
  readonly reader: DiskReader;
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
  /** every block may differ from the replica (its writes elsewhere were not tracked): reverse replication compares them all */
  divergesEverywhere?(): boolean;
  /**
   * Look at the hypervisor's disks again (a host whose disks change outside osr, libvirt):
   * a disk grown or shrunk changes its `size` in place; a change the host cannot follow (a
   * disk added or removed) is answered as why, and replication waits. Absent: the disks
   * change only through the host itself (the lab).
   */
  refreshDisks?(): Promise<string | undefined>;
  /** refuse writes from now on: a newer epoch was promoted elsewhere */
  fence?(reason: string, epoch: number): void;
  /**
   * the gate every guest write passes, where the host sees each write (the lab): a
   * consistency group's cut holds it while the group's logs are swapped. Absent: the
   * VM cannot be in a consistency group.
   */
  readonly writeGate?: WriteGate;
}

/** A group swap prepared by ChangeTracking.prepareHeldSwap: the log it will close. */
export interface PreparedSwap {
  id: string;
  /** the next log number to open when it was prepared (the swap opens it and closes the one before) */
  nextSeq: number;
}

/** What a closed delta is as a recovery point. */
export interface PointMeta {
  timeMs: number;
  consistency: Consistency;
  /** the consistency group's cut it belongs to */
  cut?: string | undefined;
}

export interface ResyncBegun {
  id: string;
  seq: number;
  resumed: boolean;
}

/**
 * A delta's change-log bytes handed over while a host reads the delta (a libvirt host
 * reads a delta from the hypervisor's export in the swap): the sending side ships them as
 * they come. Calls come in order: `begin`, then for each disk `disk` and its log's bytes,
 * every byte once, in order; `data`'s buffers may be reused once it returns (it copies
 * what it keeps). A host that writes its logs otherwise never calls it.
 *
 * A host with `settle` keeps no log file of a streamed delta: the swap returns with the
 * delta read and streamed but not closed here (its source, the hypervisor's export, stays
 * open), and `settle(seq, delivered)` follows once the replica answered: delivered, the
 * delta is closed with nothing written here; not delivered (the stream or the replica
 * failed), the host reads it again from the still-open source into its log files, synced,
 * and they are shipped as any closed delta.
 */
export interface DeltaStream {
  begin(seq: number, meta: { timeMs: number; consistency: Consistency }): void;
  disk(name: string): void;
  data(pos: number, bufs: readonly Buffer[]): void;
  /** a promise when the wire is far behind (the host then waits before it reads on), undefined otherwise */
  backlog?(): Promise<void> | undefined;
}

export interface ChangeTracking {
  readonly enabled: boolean;
  readonly resyncRequired: { reason: string; at: string } | undefined;
  /** the sequence number writes go to now */
  readonly activeSeq: number;
  /**
   * the active delta's writes are not in a log here until `swap` reads them (a libvirt
   * domain's are in QEMU's dirty bitmap): `pendingBytes` cannot count them, and a planned
   * failover ships that delta whatever it counts
   */
  readonly activeUnlogged?: boolean | undefined;
  /** begin tracking all disks at one instant (the snapshot of an initial replication); a host may need to wait for its hypervisor */
  start(): number | Promise<number>;
  /** stop tracking and drop every log */
  stop(): void;
  /** where the last swap's time went, for a host that reads the delta in the swap (ms) */
  readonly lastSwap?: { seq: number; backupMs: number; readMs: number; logSyncMs: number; endMs: number } | undefined;
  /**
   * close the current delta of every disk at one instant; returns its sequence number (the
   * logs' bytes go to `stream` too, when the host writes them in the swap). `cut`: the
   * consistency group's cut the point belongs to, kept in its facts (pointMetaOf); only a
   * VM with a write gate is swapped with one
   */
  swap(consistency: Consistency, stream?: DeltaStream, cut?: string): number | Promise<number>;
  /**
   * a consistency group's swap in two steps: prepared before the VM's write gate is held
   * (what must be synced is synced then), made while it is held (no fsync in the pause).
   * Absent: the VM cannot be in a consistency group.
   */
  prepareHeldSwap?(): Promise<PreparedSwap>;
  swapPrepared?(p: PreparedSwap, consistency: Consistency, cut: string): { seq: number; durable: Promise<void> };
  dropPrepared?(p: PreparedSwap): void;
  /**
   * After a swap that streamed its delta without a log here (see DeltaStream): the replica
   * holds it durably (`delivered`), or it must be written here and shipped from its files.
   * Does nothing when the swap wrote its logs.
   */
  settle?(seq: number, delivered: boolean): Promise<void>;
  /** resolves when every delta closed so far is durable */
  closedSynced(): Promise<void>;
  /** closed deltas after afterSeq, by sequence number, one file per disk */
  closedDeltas(afterSeq: number): Map<number, ClosedDeltaFile[]>;
  pointMetaOf(seq: number, fallbackMs: number): PointMeta;
  /**
   * the delta the oldest change of the VM's disks not yet at the replica closed: deltas up
   * to it have the disks from before and ship so; then the replica takes the change, and
   * `shapeChangesTaken` forgets it. Absent: the host does not record where its disks
   * changed (the replica takes a change as soon as it is seen; the deltas closed before are
   * resynchronized as ranges).
   */
  firstShapeChange?(): number | undefined;
  shapeChangesTaken?(): void;
  /** the replica holds everything up to seq: forget it */
  releaseThrough(seq: number): void;
  pendingBytes(afterSeq: number): number;
  /** change-log bytes not yet at the replica, per disk name */
  pendingBytesByDisk(afterSeq: number): Map<string, number>;
  markResyncRequired(reason: string): void;
  /** a resynchronization in progress, and the log that tracks writes since it began */
  readonly resync: { id: string; seq: number; startedMs: number } | undefined;
  /**
   * begin a resynchronization (or go on with the one in progress): drops older logs.
   * `after`: its delta's number comes after this one (a replica whose numbering is ahead of
   * this VM's: a stale one after a failback); not with `keepActive`.
   */
  beginResync(opts?: { keepActive?: boolean; after?: number }): ResyncBegun | Promise<ResyncBegun>;
  /** ranges written in the logs held now (all, or the closed ones only) */
  loggedRanges(which: 'all' | 'closed'): DiskRanges;
  /** the resync's point reached the replica */
  endResync(): void;
}
