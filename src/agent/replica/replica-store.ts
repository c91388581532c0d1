/**
 * The replica store: the replica side of one replicated VM.
 *
 *   <root>/manifest.json            the durable truth: points, initial-copy progress, the
 *                                   delta being applied, a commit in progress
 *   <root>/disks/<disk>.img         each disk at the latest recovery point
 *   <root>/undo/<seq>/<disk>.undo   bytes that turn point <seq> back into the point before it
 *   <root>/incoming/<seq>/<disk>.osrlog   a received delta (closed change logs) until applied
 *   <root>/spare/<disk>.osrlog      the last applied delta's log, overwritten by the next one
 *   <root>/resync/<disk>.osrlog     blocks a resynchronization found different, staged
 *   <root>/overlays/<id>/           copy-on-write overlays opened on a point
 *
 * The latest point is read straight from the images; an older point is the images
 * overlaid with the undo files of every later point. Applying a delta (algorithm in
 * `applyDelta`) writes the undo file and makes it durable before touching an image, so a
 * crash at any moment leaves every listed point intact. Invariants: docs/design/replica-store.md.
 */
import { checkResyncBegin } from '../ports/target-rules.js';
import fs from 'node:fs';
import path from 'node:path';
import { OsrError } from '../../domain/errors.js';
import { safeName, safeSeq } from '../../domain/names.js';
import type { BlockDevice, Extent, WriteOptions } from '../io/block-device.js';
import { crashPoint } from '../io/crash-point.js';
import { ChangeLogWriter, diskKeyOf, RecordType, scanLogFile, type LogRecord, type LogScan } from '../tracking/change-log.js';
import { discard, emptyTrash, fsyncDir, readJson, writeJsonDurable } from '../io/durable-file.js';
import { AlignedPool, alignedBuffer, DIRECT_ALIGN, isAligned, isAlignedMemory, openDirect } from '../io/direct-io.js';
import { ExtentMap } from '../io/extent-map.js';
import { fileBlockDigests } from '../io/checksum.js';
import { fdatasyncAsync, readFully, readGatherFiles, writeAllAt, WriteBack, writeFully, writeScatter, type FilePiece, type IoPiece } from '../io/io.js';
import { Consistency } from '../ports/change-source.js';
import { nextPointToDrop } from '../ports/retention.js';
import type { DeltaDiskFile, DiskChange, DivergentRanges, PointDisk, RecoveryPoint, ReplicaDiskSpec, ReplicaTarget, ResyncState, RetentionSpec } from '../ports/replica-target.js';
import { describeDiskChange, diskChangeEmpty, diskChangeNeedsConfirmation, diskChangeOf } from '../ports/target-rules.js';
import { normalizeRanges, rangesValid, unionDiskRanges, type DiskRanges, type Range } from '../io/ranges.js';
import { punchHole, writeZeroRange } from '../io/sparse.js';
import { ResyncStage } from './resync-stage.js';
import { closeUndoFile, openUndoFile, UndoWriter, writeUndoFile, type UndoFile, type UndoSource } from './undo-file.js';

/** A received log larger than this is not kept for the next delta (reuseLog): the disk space it would hold while idle. */
const MAX_SPARE_LOG_BYTES = 2 * 1024 ** 3;

interface Manifest {
  version: 1;
  vmId: string;
  vmName?: string | undefined;
  disks: ReplicaDiskSpec[];
  initial: { done: boolean; copied: Record<string, number>; finishedDisks: string[] };
  points: RecoveryPoint[];
  /**
   * The delta being applied. `logs`: per disk, the received log as verified; recovery
   * applies a log only if it has that chain (a reused log file that lost writes in a power
   * cut may otherwise hold a valid older log: reuseLog).
   */
  applying?: { point: RecoveryPoint; stage: 'received' | 'undo-written'; logs?: Record<string, ReceivedLog> | undefined } | undefined;
  commit?: { overlayId: string; pointSeq: number } | undefined;
  committed?: boolean;
  retention: RetentionSpec;
  epoch: number;
  /** a resynchronization in progress (resync-stage.ts) */
  resync?: ResyncState | undefined;
  /**
   * where the images may differ from the primary's disks, beyond what its change logs will
   * say: set on a replica made from an old primary's disks ('all' when its change tracking
   * could not say). A resync of these ranges clears it.
   */
  divergent?: DivergentRanges | undefined;
  /** the initial copy came from an offline export whose first delta is `seq` */
  seed?: { seq: number; importedAt: string } | undefined;
  /**
   * the VM's disks changed under protection at least once: every point records its disks
   * (RecoveryPoint.disks) from then on
   */
  reshaped?: true | undefined;
  /** disks the VM no longer has that older points still hold: their images stay until those points go */
  retired?: ReplicaDiskSpec[] | undefined;
}

/** A received log as verified: its record chain (hex) and its length (a reused file goes on with an older log's bytes). */
interface ReceivedLog {
  chain: string;
  bytes: number;
}

/** Records of one disk's delta: a resync's staged log (if any), then the received log. */
interface DeltaRecords {
  staged: LogRecord[];
  received: LogRecord[];
  log: ReceivedLog;
}

/** An undo file as one layer of a point view */
interface Layer {
  fd: number;
}

/** One undo directory per point (except the oldest), opened. */
interface PointUndo {
  seq: number;
  files: Map<string, UndoFile>;
}

const pad = (n: number) => String(n).padStart(12, '0');

/** In a store being adopted: where each image came from (written before any moves). */
const ADOPT_INTENT = 'adopting.json';

/** Bytes of a delta copied into an image per gathered read and scattered write. */
const APPLY_BATCH_BYTES = 8 * 1024 * 1024;

/** Aligned buffers for direct initial-copy writes, shared by every store of the process. */
const directPool = new AlignedPool(4 * 1024 * 1024, 8);

async function fsyncFile(file: string): Promise<void> {
  const fd = fs.openSync(file, 'r');
  try {
    await fdatasyncAsync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** What an extent of a coalesced delta holds: data of the received log, of the staged log, or zeros. */
type DeltaValue = 'data' | 'staged' | 'zero';

/** The extents of a delta below a disk's end (a disk shrunk while its log was open wrote past its new end). */
function clipTo(m: ExtentMap<DeltaValue>, size: number): ExtentMap<DeltaValue> {
  const entries = m.entries();
  if (entries.length === 0 || entries.at(-1)!.end <= size) return m;
  const out = new ExtentMap<DeltaValue>();
  for (const e of entries) if (e.start < size) out.set(e.start, Math.min(e.end, size), e.value, e.base);
  return out;
}

/** Coalesce a delta's records: for every byte the last record wins. */
function coalesce(records: DeltaRecords): ExtentMap<DeltaValue> {
  const m = new ExtentMap<DeltaValue>();
  const add = (list: LogRecord[], data: 'data' | 'staged') => {
    for (const r of list) {
      if (r.type === RecordType.Write) m.set(r.offset, r.offset + r.length, data, r.dataPos);
      else if (r.type === RecordType.Zero) m.set(r.offset, r.offset + r.length, 'zero', 0);
    }
  };
  add(records.staged, 'staged');
  add(records.received, 'data');
  return m;
}


/** A delta's file as received: with the scan of its log when it was verified as it arrived (LogStreamVerifier), which the apply then need not read back. */
export type ReceivedDeltaFile = DeltaDiskFile & { verified?: LogScan | undefined };

export class ReplicaStore implements ReplicaTarget {
  private manifest: Manifest;
  private readonly images = new Map<string, number>();
  private readonly directFds = new Map<string, number | undefined>();
  /** received log files that reuseLog handed out: applied only as verified while they arrived */
  private readonly reusedLogs = new Set<string>();
  private readonly undos: PointUndo[] = [];
  /** counts the writes into the images (initial copy, applies, roll-backs): an undo read ahead is good only while it stays the same */
  private imageWrites = 0;
  private readonly preparedAt = new WeakMap<object, number>();
  /** where the last delta's apply spent its time (ms): verifying the logs, the undo written and synced, the images written, synced, the point recorded and pruning */
  applySteps: { verifyMs: number; undoMs: number; imageMs: number; syncMs: number; finishMs: number } | undefined;
  private readonly views = new Set<PointView>();
  private readonly overlays = new Map<string, Overlay>();
  private busy = false;
  /** the staged logs of a resync in progress, open once the primary has begun or resumed it */
  private stage: ResyncStage | undefined;
  /** the point a prune is merging away (its undo is rewritten on the thread pool) */
  private dropping: number | undefined;
  /** What recovery at open did that an operator should hear about (logged by the agent). */
  readonly recoveryNotes: string[] = [];

  private constructor(
    readonly root: string,
    manifest: Manifest,
    private readonly now: () => number,
  ) {
    this.manifest = manifest;
  }

  // ---- lifecycle -------------------------------------------------------------------

  /** Create a store for a VM, or open the existing one and finish any interrupted step. */
  static async open(root: string, spec: { vmId: string; vmName?: string; disks: ReplicaDiskSpec[]; retention?: RetentionSpec }, now: () => number = Date.now): Promise<ReplicaStore> {
    fs.mkdirSync(path.join(root, 'disks'), { recursive: true });
    const file = path.join(root, 'manifest.json');
    let manifest = readJson<Manifest>(file);
    if (!manifest) {
      manifest = {
        version: 1,
        vmId: spec.vmId,
        vmName: spec.vmName,
        disks: spec.disks,
        initial: { done: false, copied: {}, finishedDisks: [] },
        points: [],
        retention: spec.retention ?? { hours: 24, maxPoints: 24 },
        epoch: 0,
      };
      for (const d of spec.disks) {
        const img = path.join(root, 'disks', `${safeName(d.name, 'disk name')}.img`);
        const fd = fs.openSync(img, 'w', 0o600);
        fs.ftruncateSync(fd, d.size);
        fs.fsyncSync(fd);
        fs.closeSync(fd);
      }
      fsyncDir(path.join(root, 'disks'));
      writeJsonDurable(file, manifest);
    } else if (manifest.version !== 1) {
      throw new OsrError('REPLICA_STORE_CORRUPT', `${file}: manifest version ${String(manifest.version)} is not supported`);
    } else if (manifest.vmId !== spec.vmId) {
      throw new OsrError('INVALID_STATE', `${root} holds the replica of ${manifest.vmId}, not ${spec.vmId}`);
    }
    if (spec.retention) manifest.retention = spec.retention;
    const store = new ReplicaStore(root, manifest, now);
    await store.load();
    return store;
  }

  /**
   * Make a replica of existing disk images: an old primary's disks when replication is
   * reversed. The images are moved in (same file system) and become the store's base, an
   * unverified point 0 that is never opened: `divergent` says where they may differ from
   * the new primary, and the first resync makes them equal. The store is durable before
   * the images move, and the images are moved before the store names them done.
   */
  static async adopt(
    root: string,
    spec: { vmId: string; vmName: string; disks: ReplicaDiskSpec[]; retention?: RetentionSpec; epoch: number },
    images: Record<string, string>,
    divergent: DivergentRanges,
    now: () => number = Date.now,
  ): Promise<ReplicaStore> {
    // built beside its final place (the images may live in an older store at `root`, that of
    // the replica this VM was promoted from), then renamed over it
    const tmp = `${root}.adopting`;
    ReplicaStore.recoverAdoption(root);
    fs.mkdirSync(path.join(tmp, 'disks'), { recursive: true });
    for (const d of spec.disks) {
      const from = images[d.name];
      if (!from) throw new OsrError('INVALID_ARGUMENT', `no image given for disk ${d.name}`);
      if (fs.statSync(from).size !== d.size) throw new OsrError('INVALID_STATE', `image ${path.basename(from)} is not ${d.size} bytes`);
    }
    // where each image comes from is durable before any moves: a crash before the manifest
    // (written once all have moved) puts them back (recoverAdoption)
    writeJsonDurable(path.join(tmp, ADOPT_INTENT), { images: Object.fromEntries(spec.disks.map((d) => [d.name, images[d.name]!])) });
    fsyncDir(path.dirname(root));
    try {
      for (const d of spec.disks) fs.renameSync(images[d.name]!, path.join(tmp, 'disks', `${d.name}.img`));
      fsyncDir(path.join(tmp, 'disks'));
      for (const from of new Set(Object.values(images).map((f) => path.dirname(f)))) if (fs.existsSync(from)) fsyncDir(from);
    } catch (e) {
      ReplicaStore.recoverAdoption(root);
      throw e;
    }
    crashPoint('demote:images-moved');
    const manifest: Manifest = {
      version: 1,
      vmId: spec.vmId,
      vmName: spec.vmName,
      disks: spec.disks,
      initial: { done: true, copied: {}, finishedDisks: spec.disks.map((d) => d.name) },
      points: [{ seq: 0, timeMs: now(), consistency: Consistency.Crash, deltaBytes: 0, unverified: true }],
      retention: spec.retention ?? { hours: 24, maxPoints: 24 },
      epoch: spec.epoch,
      divergent,
    };
    writeJsonDurable(path.join(tmp, 'manifest.json'), manifest);
    ReplicaStore.recoverAdoption(root);
    const store = new ReplicaStore(root, manifest, now);
    await store.load();
    return store;
  }

  /**
   * Finish or undo an adoption cut short (by a crash, or an error). With its manifest
   * written, every image had moved: the new store replaces whatever was at `root`.
   * Without it, the images that had moved go back where they came from and nothing
   * changed. Returns what it did, or null when no adoption was under way.
   */
  static recoverAdoption(root: string): 'finished' | 'undone' | null {
    const tmp = `${root}.adopting`;
    if (!fs.existsSync(tmp)) return null;
    if (fs.existsSync(path.join(tmp, 'manifest.json'))) {
      fs.rmSync(root, { recursive: true, force: true });
      fs.renameSync(tmp, root);
      fs.rmSync(path.join(root, ADOPT_INTENT), { force: true });
      fsyncDir(path.dirname(root));
      return 'finished';
    }
    const intent = readJson<{ images: Record<string, string> }>(path.join(tmp, ADOPT_INTENT));
    for (const [disk, from] of Object.entries(intent?.images ?? {})) {
      const moved = path.join(tmp, 'disks', `${disk}.img`);
      if (!fs.existsSync(moved)) continue;
      if (fs.existsSync(from)) {
        throw new OsrError('REPLICA_STORE_CORRUPT', `an adoption cut short left image ${moved} while ${from} exists too; keep the one the VM should have, remove the other and ${tmp}, then restart the agent`);
      }
      fs.renameSync(moved, from);
      fsyncDir(path.dirname(from));
    }
    fs.rmSync(tmp, { recursive: true, force: true });
    fsyncDir(path.dirname(root));
    return 'undone';
  }

  private async load(): Promise<void> {
    for (const d of this.allDisks()) {
      this.images.set(d.name, fs.openSync(this.imagePath(d.name), 'r+'));
    }
    this.recoverMerge();
    for (const p of this.manifest.points.slice(1)) this.undos.push(this.loadUndo(p.seq));
    // overlays first: finishing an interrupted apply prunes, and must see the points in use
    // (and the overlays' views must get the new undo layer before the images change)
    for (const id of this.listOverlayIds()) this.overlays.set(id, Overlay.reopen(this, id));
    await this.recoverApplying();
    await this.recoverCommit();
    // a removed disk whose last point went in a prune a crash cut short
    if (!this.manifest.applying) this.dropUnusedImages();
    this.removeStrays();
    emptyTrash(this.trashDir);
  }

  /**
   * A crash inside `dropPoint` between moving the next point's undo aside
   * (`<next>.old-<dropped>`) and saving the manifest: while the manifest still lists the
   * dropped point, the old undo is the truth, so it is put back. Once the manifest no longer
   * lists it, the merged undo is in place and the leftovers are strays.
   */
  private recoverMerge(): void {
    const undoDir = path.join(this.root, 'undo');
    if (!fs.existsSync(undoDir)) return;
    let changed = false;
    for (const f of fs.readdirSync(undoDir)) {
      const m = /^(\d+)\.old-(\d+)$/.exec(f);
      if (!m || !this.hasPoint(Number(m[2]))) continue;
      const finalDir = path.join(undoDir, m[1]);
      fs.rmSync(finalDir, { recursive: true, force: true });
      fs.renameSync(path.join(undoDir, f), finalDir);
      changed = true;
    }
    if (changed) fsyncDir(undoDir);
  }

  /**
   * The undo of point `seq`: one file per disk of that point, and, once a dropped point's
   * undo was merged into it, of disks the point no longer has (removed at `seq`).
   */
  private loadUndo(seq: number): PointUndo {
    const files = new Map<string, UndoFile>();
    const own = new Set(this.pointDisks(seq).map((d) => d.name));
    for (const d of this.allDisks()) {
      const file = this.undoPath(seq, d.name);
      if (own.has(d.name) || fs.existsSync(file)) files.set(d.name, openUndoFile(file));
    }
    return { seq, files };
  }

  /** Every disk an image is kept for: the VM's disks now, and removed ones older points hold. */
  private allDisks(): ReplicaDiskSpec[] {
    return [...this.manifest.disks, ...(this.manifest.retired ?? [])];
  }

  /** The disks of point `seq` with the sizes they had then (the disks now, for a point from before any change, or one not recorded yet). */
  pointDisks(seq: number): ReplicaDiskSpec[] {
    const p = this.manifest.points.find((x) => x.seq === seq);
    if (!p?.disks) return this.manifest.disks.map((d) => ({ ...d }));
    const all = this.allDisks();
    return p.disks.map((pd) => {
      const d = all.find((x) => x.name === pd.name);
      if (!d) throw new OsrError('REPLICA_STORE_CORRUPT', `point ${seq} of ${this.vmId} names disk ${pd.name}, whose image the replica no longer has`);
      return { id: d.id, name: pd.name, size: pd.size };
    });
  }

  private shape(): PointDisk[] {
    return this.manifest.disks.map((d) => ({ name: d.name, size: d.size }));
  }

  /**
   * Take the primary's disks as they are now. Older points keep their disks: an image is
   * never shrunk or deleted while a point holds more of it. An added disk gets a new
   * (sparse) image and a grown one grows in place; both are divergent until the primary
   * resynchronizes them (only those ranges: the other disks are not sent again). A shrink
   * or a removal needs `confirmed` (DISK_CHANGE_UNCONFIRMED). Before the initial copy
   * ends there is no point to keep: the copy simply goes on with the new disks. Durable
   * on return; running it again with the same disks changes nothing.
   */
  async reshape(wanted: ReplicaDiskSpec[], confirmed: boolean): Promise<DiskChange> {
    const change = diskChangeOf(this.vmName, this.manifest.disks, wanted);
    if (diskChangeEmpty(change)) return change;
    // a delta of the connection before may still be applied or pruned
    await this.whenIdle(60_000);
    this.assertWritable();
    if (this.manifest.applying || this.manifest.commit) throw new OsrError('INVALID_STATE', `the replica of ${this.vmName} is applying a delta; its disks change once it is done`);
    const initial = !this.manifest.initial.done;
    if (!initial && diskChangeNeedsConfirmation(change) && !confirmed) {
      throw new OsrError('DISK_CHANGE_UNCONFIRMED', `the disks of ${this.vmName} changed (${describeDiskChange(change)}); the next points would lose data the older ones hold, so the change waits for confirmation`, { change, disks: this.manifest.disks });
    }
    const retired = this.manifest.retired ?? [];
    for (const a of change.added) {
      if (retired.some((r) => r.name === a.name)) throw new OsrError('DISK_CHANGE_UNSUPPORTED', `disk ${a.name} of ${this.vmName} was removed and older points still hold it; add the new disk under another name`);
      safeName(a.name, 'disk name');
    }
    // images first (a crash before the manifest leaves a stray image, deleted at open)
    const disksDir = path.join(this.root, 'disks');
    for (const a of change.added) {
      const fd = fs.openSync(this.imagePath(a.name), 'w+', 0o600);
      fs.ftruncateSync(fd, a.size);
      fs.fsyncSync(fd);
      this.images.set(a.name, fd);
    }
    for (const g of change.grown) {
      const fd = this.imageFd(g.name);
      if (fs.fstatSync(fd).size < g.to) {
        fs.ftruncateSync(fd, g.to);
        fs.fsyncSync(fd);
      }
    }
    fsyncDir(disksDir);
    this.closeDirect();
    const m = this.manifest;
    if (initial) {
      // no point holds the old disks: the copy goes on with the new ones
      for (const a of change.added) m.initial.copied[a.name] = 0;
      for (const g of change.grown) m.initial.finishedDisks = m.initial.finishedDisks.filter((n) => n !== g.name);
      for (const x of change.shrunk) m.initial.copied[x.name] = Math.min(m.initial.copied[x.name] ?? 0, x.to);
      for (const r of change.removed) {
        delete m.initial.copied[r.name];
        m.initial.finishedDisks = m.initial.finishedDisks.filter((n) => n !== r.name);
      }
    } else {
      // the points so far keep the disks they have
      const before = this.shape();
      for (const p of m.points) p.disks ??= before.map((d) => ({ ...d }));
      m.reshaped = true;
      const ranges: DiskRanges = {};
      for (const a of change.added) ranges[a.name] = [[0, a.size]];
      for (const g of change.grown) ranges[g.name] = [[g.from, g.to - g.from]];
      if (m.resync) {
        // a resync of the old disks cannot be finished with the new: every block is compared again
        m.resync = undefined;
        m.divergent = 'all';
      } else if (Object.keys(ranges).length > 0 && m.divergent !== 'all') {
        m.divergent = unionDiskRanges(m.divergent ?? {}, ranges);
      }
      m.retired = [...retired, ...change.removed];
    }
    m.disks = wanted.map((d) => ({ ...d }));
    this.save();
    if (!m.resync) this.dropStage();
    if (initial) for (const r of change.removed) this.deleteImage(r.name);
    else this.dropUnusedImages();
    return change;
  }

  /** Delete the images of removed disks no point holds any more. */
  private dropUnusedImages(): void {
    const retired = this.manifest.retired;
    if (!retired || retired.length === 0) return;
    const held = new Set(this.manifest.points.flatMap((p) => (p.disks ?? this.shape()).map((d) => d.name)));
    const keep = retired.filter((r) => held.has(r.name));
    if (keep.length === retired.length) return;
    this.manifest.retired = keep.length > 0 ? keep : undefined;
    this.save();
    for (const r of retired) {
      if (held.has(r.name)) continue;
      this.deleteImage(r.name);
      // the undo of later points kept its bytes for the points that are gone
      for (const u of this.undos) {
        const f = u.files.get(r.name);
        if (!f) continue;
        closeUndoFile(f);
        u.files.delete(r.name);
        fs.rmSync(f.path, { force: true });
      }
    }
  }

  private deleteImage(name: string): void {
    const fd = this.images.get(name);
    if (fd !== undefined) fs.closeSync(fd);
    this.images.delete(name);
    fs.rmSync(this.imagePath(name), { force: true });
    fsyncDir(path.join(this.root, 'disks'));
  }

  /** Delete files no manifest entry refers to (left by a crash between two steps). */
  private removeStrays(): void {
    const spare = this.spareDir;
    if (fs.existsSync(spare)) {
      const keep = new Set(this.manifest.disks.map((d) => `${d.name}.osrlog`));
      for (const f of fs.readdirSync(spare)) if (!keep.has(f)) fs.rmSync(path.join(spare, f), { recursive: true, force: true });
    }
    // an image no disk names: an added disk's, made by a reshape a crash cut short, or a removed disk's whose points went
    const disksDir = path.join(this.root, 'disks');
    const images = new Set(this.allDisks().map((d) => `${d.name}.img`));
    for (const f of fs.readdirSync(disksDir)) if (f.endsWith('.img') && !images.has(f)) fs.rmSync(path.join(disksDir, f), { force: true });
    const keepUndo = new Set(this.undos.map((u) => pad(u.seq)));
    if (this.manifest.applying?.stage === 'undo-written') keepUndo.add(pad(this.manifest.applying.point.seq));
    const undoDir = path.join(this.root, 'undo');
    if (fs.existsSync(undoDir)) {
      for (const f of fs.readdirSync(undoDir)) if (!keepUndo.has(f)) fs.rmSync(path.join(undoDir, f), { recursive: true, force: true });
    }
    const incoming = path.join(this.root, 'incoming');
    if (fs.existsSync(incoming)) {
      const keep = this.manifest.applying ? pad(this.manifest.applying.point.seq) : '';
      for (const f of fs.readdirSync(incoming)) if (f !== keep) fs.rmSync(path.join(incoming, f), { recursive: true, force: true });
    }
  }

  close(): void {
    for (const o of this.overlays.values()) o.closeFiles();
    this.overlays.clear();
    for (const u of this.undos) for (const f of u.files.values()) closeUndoFile(f);
    this.undos.length = 0;
    for (const fd of this.images.values()) fs.closeSync(fd);
    this.images.clear();
    this.closeDirect();
    this.stage?.close();
    this.stage = undefined;
  }

  // ---- paths and facts ---------------------------------------------------------------

  imagePath(disk: string): string {
    return path.join(this.root, 'disks', `${safeName(disk, 'disk name')}.img`);
  }
  undoPath(seq: number, disk: string): string {
    return path.join(this.root, 'undo', pad(safeSeq(seq)), `${safeName(disk, 'disk name')}.undo`);
  }
  incomingDir(seq: number): string {
    return path.join(this.root, 'incoming', pad(safeSeq(seq)));
  }
  /** The recovery point whose delta is being applied now, if one is. */
  get applyingSeq(): number | undefined {
    return this.manifest.applying?.point.seq;
  }
  get trashDir(): string {
    return path.join(this.root, 'trash');
  }
  /** every received delta's file lies under this (reuseLog and keepLogs move files only there) */
  private get incomingPrefix(): string {
    return `${path.join(this.root, 'incoming')}${path.sep}`;
  }
  private get spareDir(): string {
    return path.join(this.root, 'spare');
  }
  private sparePath(disk: string): string {
    return path.join(this.spareDir, `${safeName(disk, 'disk name')}.osrlog`);
  }

  /**
   * The next delta of `disk` is received into the last one's log file, overwritten in place
   * (ReplicaTarget.reuseLog): the kernel keeps that file's pages, where a new file of the
   * same size takes fresh ones, which costs most of a delta's receiving CPU on some
   * machines. The file is not truncated: the delta is applied only as verified while it
   * arrived (which ends at its close record), and recovery reads it only up to the length
   * and with the chain `applying.logs` recorded, so no older byte is read as the new log's.
   */
  reuseLog(disk: string, file: string): boolean {
    const spare = this.sparePath(disk);
    if (!file.startsWith(this.incomingPrefix)) return false;
    try {
      fs.renameSync(spare, file);
      this.reusedLogs.add(file);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        // a new file there this time: it may be scanned like any other
        this.reusedLogs.delete(file);
        return false;
      }
      throw e;
    }
  }

  /** Keep the received logs of an applied delta for the next one (reuseLog), when they are not too large to keep. */
  private keepLogs(files: DeltaDiskFile[]): void {
    for (const f of files) {
      if (!f.file.startsWith(this.incomingPrefix) || !this.manifest.disks.some((d) => d.name === f.diskName)) continue;
      try {
        if (fs.statSync(f.file).size > MAX_SPARE_LOG_BYTES) continue;
        fs.mkdirSync(this.spareDir, { recursive: true, mode: 0o700 });
        fs.renameSync(f.file, this.sparePath(f.diskName));
      } catch {
        // only an optimisation: the next delta gets a new file
      }
    }
  }
  overlayDir(id: string): string {
    return path.join(this.root, 'overlays', safeName(id, 'overlay id', 'INVALID_ARGUMENT'));
  }

  get vmId(): string {
    return this.manifest.vmId;
  }
  get vmName(): string {
    return this.manifest.vmName ?? this.manifest.vmId;
  }
  get disks(): readonly ReplicaDiskSpec[] {
    return this.manifest.disks;
  }
  get epoch(): number {
    return this.manifest.epoch;
  }
  get retention(): RetentionSpec {
    return this.manifest.retention;
  }
  get initialDone(): boolean {
    return this.manifest.initial.done;
  }
  /** the offline export the initial copy was imported from, if any */
  get seed(): { seq: number; importedAt: string } | undefined {
    return this.manifest.seed;
  }

  setSeed(seq: number): void {
    this.manifest.seed = { seq, importedAt: new Date(this.now()).toISOString() };
    this.save();
  }

  /** where the images may differ from the primary beyond its change logs (see adopt) */
  get divergent(): DivergentRanges | undefined {
    return this.manifest.divergent;
  }

  /**
   * Add ranges the primary knows to differ (its writes since the sites diverged, or deltas
   * whose disks the replica no longer has after a disk change); durable on return. A delta
   * is refused until a resync of them ends.
   */
  addDivergence(ranges: DiskRanges): void {
    const cur = this.manifest.divergent ?? {};
    if (cur === 'all') return;
    for (const [disk, list] of Object.entries(ranges)) {
      if (!rangesValid(list, this.diskSpec(disk).size)) throw new OsrError('INVALID_ARGUMENT', `ranges of disk ${disk} do not fit the disk`);
    }
    this.manifest.divergent = unionDiskRanges(cur, ranges);
    this.save();
  }

  /** Ranges written by the deltas of every point after `seq` (what going back to `seq` undoes). */
  rangesChangedAfter(seq: number): DiskRanges {
    const out: DiskRanges = {};
    for (const d of this.manifest.disks) {
      const list: Range[] = [];
      for (const u of this.undoLayersAfter(seq)) for (const e of u.files.get(d.name)?.entries ?? []) list.push([e.offset, e.length]);
      out[d.name] = normalizeRanges(list);
    }
    return out;
  }

  get isCommitted(): boolean {
    return this.manifest.committed === true;
  }
  /** bytes of each disk durably copied by the initial replication */
  initialProgress(): Record<string, number> {
    return { ...this.manifest.initial.copied };
  }
  finishedInitialDisks(): string[] {
    return [...this.manifest.initial.finishedDisks];
  }
  points(): RecoveryPoint[] {
    return this.manifest.points.map((p) => ({ ...p }));
  }
  latestPoint(): RecoveryPoint | undefined {
    return this.manifest.points.at(-1);
  }
  imageFd(disk: string): number {
    const fd = this.images.get(disk);
    if (fd === undefined) throw new OsrError('NOT_FOUND', `replica of ${this.vmId} has no disk ${disk}`);
    return fd;
  }
  diskSpec(disk: string): ReplicaDiskSpec {
    const d = this.manifest.disks.find((x) => x.name === disk);
    if (!d) throw new OsrError('NOT_FOUND', `replica of ${this.vmId} has no disk ${disk}`);
    return d;
  }

  private save(): void {
    writeJsonDurable(path.join(this.root, 'manifest.json'), this.manifest);
  }

  setEpoch(epoch: number): void {
    if (epoch < this.manifest.epoch) {
      throw new OsrError('EPOCH_STALE', `replication epoch ${epoch} is older than the replica's ${this.manifest.epoch}: another site was promoted`, { epoch, current: this.manifest.epoch });
    }
    if (epoch !== this.manifest.epoch) {
      this.manifest.epoch = epoch;
      this.save();
    }
  }

  setRetention(r: RetentionSpec): void {
    this.manifest.retention = r;
    this.save();
  }

  /**
   * Resolve once no apply or commit runs (at once when none does). A promotion waits here
   * for a delta in flight, so the point it chooses is the newest there will be.
   */
  async whenIdle(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.busy) {
      if (Date.now() > deadline) throw new OsrError('INVALID_STATE', `the replica of ${this.vmId} is still busy with an apply or commit after ${timeoutMs} ms; try again`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private assertWritable(): void {
    if (this.manifest.committed) throw new OsrError('INVALID_STATE', `the replica of ${this.vmId} was committed; replication to it has ended`);
    if (this.busy) throw new OsrError('INVALID_STATE', `the replica of ${this.vmId} is busy with another apply or commit`);
  }

  // ---- initial replication -------------------------------------------------------------

  /**
   * Start the initial replication over (a new protection of the VM): forget copy progress
   * and points. The images are overwritten by the copy, holes included.
   */
  resetInitial(): void {
    this.imageWrites++;
    this.assertWritable();
    if (this.overlays.size > 0) throw new OsrError('OVERLAY_IN_USE', `close the overlays on ${this.vmId} before replication starts over`);
    const undos = this.undos.splice(0);
    this.manifest.initial = { done: false, copied: {}, finishedDisks: [] };
    this.manifest.points = [];
    this.manifest.seed = undefined;
    this.manifest.applying = undefined;
    this.save();
    for (const u of undos) this.deleteUndo(u);
    this.dropStage();
    // no point holds a removed disk any more
    this.dropUnusedImages();
  }

  /**
   * Write copied bytes of the initial replication (not yet durable: see checkpointInitial).
   * Aligned frames go to the disk with direct I/O, through a pooled aligned buffer: a copy
   * of gigabytes then neither fills the page cache nor pays for faulting in fresh cache
   * pages, which on virtual machines costs more CPU than the copy itself; a frame that
   * already lies at an aligned address (the sealed channel's) is not copied. The rest (an
   * unaligned tail, a file system without O_DIRECT) is written through the page cache.
   */
  async writeInitial(disk: string, offset: number, data: readonly Buffer[]): Promise<void> {
    this.imageWrites++;
    if (this.manifest.initial.done) throw new OsrError('INVALID_STATE', `initial replication of ${this.vmId} is already complete`);
    const length = data.reduce((n, b) => n + b.length, 0);
    const direct = length <= directPool.bufferBytes && isAligned(offset, length) ? this.directFd(disk) : undefined;
    if (direct === undefined) return writeAllAt(this.imageFd(disk), data, offset);
    // a body the sealed channel received at an aligned address goes as it is
    if (data.length === 1 && isAlignedMemory(data[0]!)) return writeAllAt(direct, data, offset);
    const buf = await directPool.acquire();
    try {
      let at = 0;
      for (const b of data) at += b.copy(buf, at);
      await writeAllAt(direct, [buf.subarray(0, length)], offset);
    } finally {
      directPool.release(buf);
    }
  }

  /** The image opened for direct writes (the initial copy's and an apply's aligned writes), or undefined where unsupported. */
  private directFd(disk: string): number | undefined {
    if (this.directFds.has(disk)) return this.directFds.get(disk);
    const fd = openDirect(this.imagePath(disk));
    this.directFds.set(disk, fd);
    return fd;
  }

  private closeDirect(): void {
    for (const fd of this.directFds.values()) if (fd !== undefined) fs.closeSync(fd);
    this.directFds.clear();
  }

  zeroInitial(disk: string, offset: number, length: number): void {
    this.imageWrites++;
    punchHole(this.imageFd(disk), offset, length);
  }

  /** Make everything up to `offset` of the disk durable and remember it for a resume. */
  async checkpointInitial(disk: string, offset: number, finished: boolean): Promise<void> {
    await fdatasyncAsync(this.imageFd(disk));
    this.manifest.initial.copied[disk] = offset;
    if (finished && !this.manifest.initial.finishedDisks.includes(disk)) this.manifest.initial.finishedDisks.push(disk);
    this.save();
  }

  // ---- resynchronization ---------------------------------------------------------------

  private get resyncDir(): string {
    return path.join(this.root, 'resync');
  }

  stagedFile(disk: string): string {
    return path.join(this.resyncDir, `${safeName(disk, 'disk name')}.osrlog`);
  }

  /** The resync in progress, if any (what it has compared and staged so far). */
  get resync(): ResyncState | undefined {
    return this.manifest.resync;
  }

  /**
   * Begin a resync that ends in point `seq`, or resume the one with this id. Needs a
   * recovery point to start from: without one the primary makes an initial copy.
   */
  beginResync(id: string, seq: number, blockSize: number): ResyncState {
    this.assertWritable();
    const latest = this.latestPoint();
    checkResyncBegin(this.vmId, latest, this.manifest.initial.done, seq, blockSize);
    const cur = this.manifest.resync;
    if (cur && cur.id === id && cur.seq === seq && cur.blockSize === blockSize) {
      if (!this.stage) this.stage = ResyncStage.resume(this.resyncDir, cur);
      return cur;
    }
    this.dropStage();
    const state: ResyncState = { id, seq, blockSize, disks: {} };
    this.stage = ResyncStage.create(this.resyncDir, state, this.manifest.disks, this.now());
    this.manifest.resync = state;
    this.save();
    return state;
  }

  private requireStage(): ResyncStage {
    if (!this.stage) throw new OsrError('PROTOCOL_ERROR', `no resync of ${this.vmId} is open on this connection`);
    return this.stage;
  }

  /** Checksums of the image's blocks in [offset, offset + length), as they are at the latest point. */
  async blockHashes(disk: string, offset: number, length: number, blockSize: number): Promise<Buffer> {
    const spec = this.diskSpec(disk);
    if (offset < 0 || length <= 0 || length > 256 * 1024 * 1024 || offset + length > spec.size || offset % blockSize !== 0) {
      throw new OsrError('INVALID_ARGUMENT', `block range ${offset}+${length} does not fit disk ${disk} of ${spec.size} bytes in ${blockSize}-byte blocks`);
    }
    if (this.manifest.applying) throw new OsrError('INVALID_STATE', `a delta is being applied to ${this.vmId}; compare again when it is done`);
    return fileBlockDigests(this.imageFd(disk), offset, length, blockSize);
  }

  stageResync(disk: string, offset: number, parts: readonly Buffer[]): void {
    this.requireStage().stageWrite(disk, offset, parts);
  }

  stageResyncZero(disk: string, offset: number, length: number): void {
    this.requireStage().stageZero(disk, offset, length);
  }

  async checkpointResync(disk: string, offset: number, finished: boolean): Promise<ResyncState> {
    const stage = this.requireStage();
    await stage.checkpoint(disk, offset, finished, this.now());
    this.save();
    return stage.state;
  }

  /** Forget a resync: its staged logs go, the images and points were never touched. */
  private dropStage(): void {
    this.stage?.close();
    this.stage = undefined;
    if (this.manifest.resync) {
      this.manifest.resync = undefined;
      this.save();
    }
    fs.rmSync(this.resyncDir, { recursive: true, force: true });
  }

  // ---- deltas --------------------------------------------------------------------------

  /**
   * Begin the undo of delta `seq` of `disk` while the delta arrives (applyDelta's step 4
   * done ahead): its records' ranges are copied from the image as they are named, so the
   * apply only syncs it. Only for the delta after the latest point, outside a resync:
   * nothing writes the images until that delta is applied, and applyDelta uses the file
   * only if it covers exactly the ranges the delta changes (otherwise it writes its own).
   * The file sits with the received logs until then; a crash leaves it there, unused.
   */
  prepareUndo(seq: number, disk: string): UndoWriter | undefined {
    const latest = this.latestPoint();
    if (!latest || seq !== latest.seq + 1 || this.manifest.applying || this.manifest.resync || this.manifest.divergent || this.manifest.committed || !this.manifest.initial.done) return undefined;
    const w = new UndoWriter(path.join(this.incomingDir(seq), `${safeName(disk, 'disk name')}.undo`), this.imageFd(disk), diskKeyOf(this.diskSpec(disk).id), this.imagePath(disk));
    this.preparedAt.set(w, this.imageWrites);
    return w;
  }

  /**
   * Apply one received delta (the closed change logs of every disk for one cycle) as a new
   * recovery point. Idempotent for a point already applied.
   *  1. Check the chain: seq follows the latest point (or is the first after the copy).
   *  2. Verify every log (checksums, record chain, close record) and fsync the files.
   *  3. Record `applying: received` in the manifest.
   *  4. If an earlier point exists: copy the bytes about to be overwritten into undo files,
   *     fsync them, record `applying: undo-written`, and add the undo layer to open views.
   *  5. Write the coalesced delta into the images and fsync them.
   *  6. Append the point, clear `applying`, delete the incoming files, prune.
   * A crash before 4 completes redoes from 4 (the images are untouched); after, redoes 5.
   */
  async applyDelta(point: RecoveryPoint, files: ReceivedDeltaFile[]): Promise<'applied' | 'duplicate'> {
    const latest = this.latestPoint();
    // every seq up to the latest was applied (a pruned one too) or skipped by a resync
    if (latest && point.seq <= latest.seq) {
      for (const f of files) this.reusedLogs.delete(f.file);
      return 'duplicate';
    }
    this.assertWritable();
    // a resync ends in the point of the log the primary kept while it ran: the logs between
    // the latest point and it were not trusted and were dropped, so the chain skips them
    const resync = this.manifest.resync?.seq === point.seq ? this.manifest.resync : undefined;
    if (resync && !Object.values(resync.disks).every((d) => d.finished)) {
      throw new OsrError('INVALID_STATE', `the resync of ${this.vmId} has not compared every disk yet`);
    }
    if (!this.manifest.initial.done && this.manifest.initial.finishedDisks.length < this.manifest.disks.length) {
      throw new OsrError('INVALID_STATE', `initial replication of ${this.vmId} has not copied every disk yet`);
    }
    if (this.manifest.divergent && !resync) {
      throw new OsrError('INVALID_STATE', `the replica of ${this.vmId} was made from an old primary's disks; it takes a resync before any delta`);
    }
    if (latest && point.seq !== latest.seq + 1 && !resync) {
      throw new OsrError('REPLICA_CHAIN_BROKEN', `delta ${point.seq} does not follow the latest recovery point ${latest.seq} of ${this.vmId}`, { latest: latest.seq, got: point.seq });
    }
    const names = new Set(files.map((f) => f.diskName));
    for (const d of this.manifest.disks) {
      if (!names.has(d.name)) throw new OsrError('INVALID_ARGUMENT', `delta ${point.seq} has no change log for disk ${d.name}`);
    }
    if (resync) files = files.map((f) => ({ ...f, staged: this.stagedFile(f.diskName) }));
    this.busy = true;
    try {
      const v0 = performance.now();
      const records = this.verifyDeltaFiles(point.seq, files);
      this.applySteps = { verifyMs: Math.round(performance.now() - v0), undoMs: 0, imageMs: 0, syncMs: 0, finishMs: 0 };
      if (this.manifest.reshaped) point = { ...point, disks: this.shape() };
      this.manifest.applying = { point, stage: 'received', logs: Object.fromEntries([...records].map(([disk, r]) => [disk, r.log])) };
      if (this.manifest.points.length === 0) {
        // the first delta has no undo (there is no earlier point to go back to), so it is
        // durable before any image changes: recovery redoes it from these files
        await Promise.all(files.map((f) => fsyncFile(f.file)));
        fsyncDir(path.dirname(files[0].file));
        this.save();
      }
      // Later deltas are not synced: the undo written next is the durable step. A crash
      // before it leaves the images untouched; a crash after it redoes the delta from the
      // received files if they survived intact (an agent crash: they are in the page cache),
      // and otherwise rolls the images back (recoverApplying). Either way the primary has
      // not been answered and sends the delta again. A received delta is thus usually
      // applied and deleted before it is ever written to the disk.
      try {
        await this.finishApply(files, records);
      } catch (e) {
        await this.abandonApply();
        throw e;
      }
      return 'applied';
    } finally {
      this.busy = false;
    }
  }

  /** After a failed apply (e.g. disk full): put the images back to the latest point. */
  private async abandonApply(): Promise<void> {
    const applying = this.manifest.applying;
    if (!applying) return;
    if (applying.stage === 'undo-written') {
      const i = this.undos.findIndex((u) => u.seq === applying.point.seq);
      if (i >= 0) {
        for (const f of this.undos[i].files.values()) closeUndoFile(f);
        this.undos.splice(i, 1);
      }
      await this.rollBackFromUndo(applying.point.seq);
      this.rebuildViews();
    }
    this.manifest.applying = undefined;
    this.save();
  }

  private verifyDeltaFiles(seq: number, files: ReceivedDeltaFile[], logs?: Record<string, ReceivedLog>): Map<string, DeltaRecords> {
    const out = new Map<string, DeltaRecords>();
    const verify = (file: string, disk: ReplicaDiskSpec, verified?: LogScan, length?: number): { records: LogRecord[]; log: ReceivedLog } => {
      // verified while it arrived (the file holds those bytes, and after them an older
      // log's where it was reused); otherwise scanned, up to the length recorded if one was
      const ok = verified && fs.statSync(file).size >= verified.fileBytes ? verified : undefined;
      if (!ok && length === undefined && this.reusedLogs.has(file)) throw new OsrError('CHANGE_LOG_CORRUPT', `${file}: delta ${seq} of disk ${disk.name} did not verify as it arrived`);
      const scan = ok ?? scanLogFile(file, length);
      if (!scan.close || scan.tornBytes > 0) throw new OsrError('CHANGE_LOG_CORRUPT', `${file}: delta ${seq} of disk ${disk.name} is incomplete`);
      if (scan.header.seq !== seq) throw new OsrError('REPLICA_CHAIN_BROKEN', `${file}: change log ${scan.header.seq} arrived as delta ${seq}`);
      if (!scan.header.diskKey.equals(diskKeyOf(disk.id))) throw new OsrError('CHANGE_LOG_CORRUPT', `${file}: change log belongs to another disk than ${disk.name}`);
      // a disk shrunk under protection: its log may hold writes past the new end (dropped
      // at apply), but none past the image, which is never smaller than the disk once was
      const bound = Math.max(disk.size, fs.fstatSync(this.imageFd(disk.name)).size);
      for (const r of scan.records) {
        if (r.offset + r.length > bound) throw new OsrError('CHANGE_LOG_CORRUPT', `${file}: record ${r.index} lies outside disk ${disk.name}`);
      }
      return { records: scan.records, log: { chain: scan.close.chain.toString('hex'), bytes: scan.validBytes } };
    };
    for (const f of files) {
      const disk = this.diskSpec(f.diskName);
      const received = verify(f.file, disk, f.verified, logs?.[f.diskName]?.bytes);
      out.set(f.diskName, { staged: f.staged ? verify(f.staged, disk).records : [], received: received.records, log: received.log });
    }
    return out;
  }

  private async finishApply(files: DeltaDiskFile[], records: Map<string, DeltaRecords>): Promise<void> {
    const applying = this.manifest.applying;
    if (!applying) return;
    const seq = applying.point.seq;
    const maps = new Map<string, ExtentMap<DeltaValue>>();
    for (const [disk, recs] of records) maps.set(disk, clipTo(coalesce(recs), this.diskSpec(disk).size));
    let undo: PointUndo | undefined;
    const steps = this.applySteps;
    let t = performance.now();
    const step = (k: 'undoMs' | 'imageMs' | 'syncMs' | 'finishMs') => {
      const now = performance.now();
      if (steps) steps[k] = Math.round(now - t);
      t = now;
    };
    if (applying.stage === 'received' && this.manifest.points.length > 0) {
      fs.mkdirSync(path.dirname(this.undoPath(seq, 'x')), { recursive: true });
      const undoFiles = new Map<string, UndoFile>();
      for (const d of this.manifest.disks) {
        const imageFd = this.imageFd(d.name);
        const sources = mergeAdjacent((maps.get(d.name)?.entries() ?? []).map((e) => ({ offset: e.start, length: e.end - e.start, fd: imageFd, pos: e.start })));
        // written while the delta arrived, when it holds exactly these ranges
        const ahead = files.find((f) => f.diskName === d.name)?.undo;
        const prepared = await ahead?.finish();
        if (prepared && this.preparedAt.get(ahead!) === this.imageWrites && sameRanges(prepared.entries, sources)) {
          fs.renameSync(prepared.path, this.undoPath(seq, d.name));
          undoFiles.set(d.name, { ...prepared, path: this.undoPath(seq, d.name) });
          continue;
        }
        if (prepared) {
          closeUndoFile(prepared);
          fs.rmSync(prepared.path, { force: true });
        }
        undoFiles.set(d.name, await writeUndoFile(this.undoPath(seq, d.name), diskKeyOf(d.id), sources, { sync: false }));
      }
      // the undo files are durable before the manifest says so (synced on the thread pool)
      await Promise.all([...undoFiles.values()].map((u) => fdatasyncAsync(u.fd)));
      fsyncDir(path.dirname(this.undoPath(seq, 'x')));
      applying.stage = 'undo-written';
      this.save();
      undo = { seq, files: undoFiles };
    } else if (applying.stage === 'undo-written') {
      undo = this.loadUndo(seq);
    }
    if (undo) {
      this.undos.push(undo);
      // views of older points must see the bytes about to be overwritten through the new undo
      for (const v of this.views) v.addUndoLayer(undo);
    }
    step('undoMs');
    for (const f of files) {
      const map = maps.get(f.diskName);
      if (!map) continue;
      await this.writeDeltaIntoImage(f.diskName, f.file, f.staged, map);
    }
    step('imageMs');
    await Promise.all(this.manifest.disks.map((d) => fdatasyncAsync(this.imageFd(d.name))));
    step('syncMs');
    this.manifest.points.push(applying.point);
    this.manifest.applying = undefined;
    this.manifest.initial.done = true;
    const resynced = this.manifest.resync?.seq === seq;
    if (resynced) {
      this.manifest.resync = undefined;
      // a replica made from an old primary's disks is now equal to the new primary
      this.manifest.divergent = undefined;
    }
    this.save();
    this.closeDirect();
    this.keepLogs(files);
    discard(this.incomingDir(seq), this.trashDir);
    for (const f of this.reusedLogs) if (f.startsWith(`${this.incomingDir(seq)}${path.sep}`)) this.reusedLogs.delete(f);
    if (resynced) this.dropStage();
    await this.prune();
    step('finishMs');
  }

  /**
   * Write a delta's coalesced extents into the image. The extents are scattered over the
   * disk (and their bytes over the received log), so they are copied a batch at a time:
   * one gathered read from each log, one scattered write into the image.
   */
  private async writeDeltaIntoImage(disk: string, logFile: string, stagedFile: string | undefined, map: ExtentMap<DeltaValue>): Promise<void> {
    this.imageWrites++;
    const imageFd = this.imageFd(disk);
    const logFd = fs.openSync(logFile, 'r');
    const stagedFd = stagedFile ? fs.openSync(stagedFile, 'r') : -1;
    try {
      const batches: { bytes: number; reads: FilePiece[]; writes: IoPiece[] }[] = [];
      let batch: (typeof batches)[number] | undefined;
      for (const e of map.entries()) {
        const length = e.end - e.start;
        if (e.value === 'zero') {
          writeZeroRange(imageFd, e.start, length);
          continue;
        }
        const fd = e.value === 'staged' ? stagedFd : logFd;
        for (let done = 0; done < length; ) {
          if (!batch || batch.bytes === APPLY_BATCH_BYTES) {
            batch = { bytes: 0, reads: [], writes: [] };
            batches.push(batch);
          }
          const n = Math.min(APPLY_BATCH_BYTES - batch.bytes, length - done);
          batch.reads.push([fd, e.base + done, batch.bytes, n]);
          batch.writes.push([e.start + done, batch.bytes, n]);
          batch.bytes += n;
          done += n;
        }
      }
      // aligned pieces go to the image with direct I/O (no page cache to fill and write
      // back), from aligned buffers; the sync after the writes makes both kinds durable
      const direct = this.directFd(disk);
      const bufs = batches.length > 0 ? [0, 1].map(() => (direct !== undefined ? alignedBuffer(Math.ceil(batches[0]!.bytes / DIRECT_ALIGN) * DIRECT_ALIGN) : Buffer.allocUnsafe(batches[0]!.bytes))) : [];
      // the next batch is read while this one is written; the undo is durable already, so
      // the image's write-back may start at once (the sync after this has little left)
      const writeBack = new WriteBack(imageFd);
      let writing: Promise<void> = Promise.resolve();
      for (let i = 0; i < batches.length; i++) {
        const b = batches[i]!;
        const buf = bufs[i % 2]!.subarray(0, b.bytes);
        await readGatherFiles(buf, b.reads);
        await writing;
        writing = writeScatterDirect(imageFd, direct, buf, b.writes).then((buffered) => writeBack.wrote(buffered));
      }
      await writing;
      await writeBack.settle();
    } finally {
      fs.closeSync(logFd);
      if (stagedFd >= 0) fs.closeSync(stagedFd);
    }
  }

  private async recoverApplying(): Promise<void> {
    const applying = this.manifest.applying;
    if (!applying) return;
    const dir = this.incomingDir(applying.point.seq);
    const resync = this.manifest.resync?.seq === applying.point.seq;
    const files = this.manifest.disks.map((d) => ({ diskName: d.name, file: path.join(dir, `${d.name}.osrlog`), staged: resync ? this.stagedFile(d.name) : undefined }));
    let records: Map<string, DeltaRecords>;
    try {
      const logs = applying.logs;
      records = this.verifyDeltaFiles(applying.point.seq, files, logs);
      for (const [disk, r] of records) {
        if (logs && logs[disk]?.chain !== r.log.chain) throw new OsrError('CHANGE_LOG_CORRUPT', `the received log of disk ${disk} is not the one delta ${applying.point.seq} was verified with`);
      }
    } catch (e) {
      if (applying.stage === 'undo-written') {
        // the received files were not synced (applyDelta) and did not survive the crash:
        // roll the images back to the latest point; the primary sends the delta again
        await this.rollBackFromUndo(applying.point.seq);
        this.manifest.applying = undefined;
        this.save();
        this.recoveryNotes.push(`delta ${applying.point.seq} of ${this.vmId} was lost with the crash that interrupted its apply; the images were rolled back to point ${this.latestPoint()?.seq ?? 'none'} and the delta will be received again`);
        return;
      }
      // the first delta was fsynced before `applying` was recorded, so this means damage at rest
      this.manifest.applying = undefined;
      this.save();
      throw new OsrError('REPLICA_STORE_CORRUPT', `delta ${applying.point.seq} of ${this.vmId} was damaged at rest and was discarded; the sender will ship it again`, undefined, { cause: e });
    }
    await this.finishApply(files, records);
  }

  private async rollBackFromUndo(seq: number): Promise<void> {
    this.imageWrites++;
    const u = this.loadUndo(seq);
    for (const [disk, file] of u.files) {
      const imageFd = this.imageFd(disk);
      for (const e of file.entries) {
        const data = Buffer.allocUnsafe(e.length);
        readFully(file.fd, data, e.dataPos);
        writeFully(imageFd, data, e.offset);
      }
      fs.fdatasyncSync(imageFd);
      closeUndoFile(file);
    }
    fs.rmSync(path.dirname(this.undoPath(seq, 'x')), { recursive: true, force: true });
  }

  // ---- retention -----------------------------------------------------------------------

  /**
   * Drop points outside the retention window, then thin out to the count limit
   * (crash-consistent points go before app-consistent ones, the closest pair first). The
   * latest point is never dropped, and neither is a point an overlay is open on.
   */
  async prune(): Promise<RecoveryPoint[]> {
    const dropped: RecoveryPoint[] = [];
    const points = this.manifest.points;
    const inUse = new Set([...this.overlays.values()].map((o) => o.pointSeq));
    for (;;) {
      const victim = nextPointToDrop(points, this.manifest.retention, this.now(), inUse);
      if (!victim) break;
      this.dropping = victim.seq;
      try {
        await this.dropPoint(victim);
      } finally {
        this.dropping = undefined;
      }
      dropped.push(victim);
    }
    if (dropped.length > 0) this.dropUnusedImages();
    return dropped;
  }

  /**
   * Drop one point that is not the latest. The oldest point just loses the undo of the
   * point after it; a middle point's undo is merged into the next point's undo (its own
   * bytes win on overlap, being older).
   */
  private async dropPoint(p: RecoveryPoint): Promise<void> {
    const points = this.manifest.points;
    const i = points.indexOf(p);
    const next = points[i + 1];
    const nextUndoIdx = this.undos.findIndex((u) => u.seq === next.seq);
    const nextUndo = this.undos[nextUndoIdx];
    if (i === 0) {
      points.splice(0, 1);
      this.undos.splice(nextUndoIdx, 1);
      this.save();
      this.rebuildViews();
      this.deleteUndo(nextUndo);
      return;
    }
    const ownIdx = this.undos.findIndex((u) => u.seq === p.seq);
    const own = this.undos[ownIdx];
    // write the merged undo under a new name, switch the manifest, then delete the old ones
    const mergedSeq = next.seq;
    const tmpDir = path.join(this.root, 'undo', `${pad(mergedSeq)}.merge-${pad(p.seq)}`);
    fs.rmSync(tmpDir, { recursive: true, force: true });
    fs.mkdirSync(tmpDir, { recursive: true });
    const merged = new Map<string, UndoFile>();
    // every disk either undo covers: a disk added at `next` has no undo at `p`, one removed at `next` none there
    for (const d of this.allDisks()) {
      const m = new ExtentMap<number>();
      const ownFile = own.files.get(d.name);
      const nextFile = nextUndo.files.get(d.name);
      if (!ownFile && !nextFile) continue;
      for (const e of ownFile?.entries ?? []) m.set(e.offset, e.offset + e.length, ownFile!.fd, e.dataPos);
      for (const e of nextFile?.entries ?? []) m.fillGaps(e.offset, e.offset + e.length, nextFile!.fd, e.dataPos);
      const sources = m.entries().map((e) => ({ offset: e.start, length: e.end - e.start, fd: e.value, pos: e.base }));
      merged.set(d.name, await writeUndoFile(path.join(tmpDir, `${d.name}.undo`), diskKeyOf(d.id), sources));
    }
    fsyncDir(tmpDir);
    // the merge directory replaces the next point's undo directory (moved aside first); a
    // crash before the manifest below is saved is undone at open by recoverMerge
    const finalDir = path.dirname(this.undoPath(mergedSeq, 'x'));
    // the name says which point is being dropped: recovery (recoverMerge) needs to know
    const oldDir = `${finalDir}.old-${pad(p.seq)}`;
    fs.renameSync(finalDir, oldDir);
    fs.renameSync(tmpDir, finalDir);
    fsyncDir(path.join(this.root, 'undo'));
    for (const [name, f] of merged) f.path = path.join(finalDir, `${name}.undo`);
    points.splice(i, 1);
    this.undos.splice(nextUndoIdx, 1, { seq: mergedSeq, files: merged });
    this.undos.splice(ownIdx, 1);
    this.save();
    this.rebuildViews();
    for (const f of nextUndo.files.values()) closeUndoFile(f);
    fs.rmSync(oldDir, { recursive: true, force: true });
    this.deleteUndo(own);
  }

  private deleteUndo(u: PointUndo): void {
    for (const f of u.files.values()) closeUndoFile(f);
    fs.rmSync(path.dirname(this.undoPath(u.seq, 'x')), { recursive: true, force: true });
  }

  // ---- views, overlays, commit -------------------------------------------------------------

  /** Undo layers for reading point `seq` of one disk, oldest first (oldest wins). */
  undoLayersAfter(seq: number): PointUndo[] {
    return this.undos.filter((u) => u.seq > seq).sort((a, b) => a.seq - b.seq);
  }

  registerView(v: PointView): void {
    this.views.add(v);
  }
  unregisterView(v: PointView): void {
    this.views.delete(v);
  }
  private rebuildViews(): void {
    for (const v of this.views) v.rebuild();
  }

  hasPoint(seq: number): boolean {
    return this.manifest.points.some((p) => p.seq === seq);
  }

  /** Open a copy-on-write overlay on a recovery point. Costs the size of the undo indexes, not of the disks. */
  openOverlay(pointSeq?: number): Overlay {
    const seq = pointSeq ?? this.latestPoint()?.seq;
    if (seq === undefined || !this.hasPoint(seq) || seq === this.dropping) {
      throw new OsrError('POINT_NOT_FOUND', `recovery point ${String(pointSeq ?? 'latest')} of ${this.vmId} does not exist${seq === this.dropping ? ' (it is being pruned)' : ''}`, {
        points: this.manifest.points.map((p) => p.seq).filter((x) => x !== this.dropping),
      });
    }
    if (this.manifest.committed) throw new OsrError('INVALID_STATE', `the replica of ${this.vmId} was committed; open its disks directly`);
    if (this.manifest.points.find((p) => p.seq === seq)?.unverified) {
      throw new OsrError('POINT_NOT_FOUND', `the replica of ${this.vmId} holds no recovery point yet: its disks are the old primary's until reverse replication has resynchronized them`);
    }
    const id = `ov-${pad(seq)}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
    const o = Overlay.create(this, id, seq, this.now());
    this.overlays.set(id, o);
    return o;
  }

  getOverlay(id: string): Overlay {
    const o = this.overlays.get(id);
    if (!o) throw new OsrError('NOT_FOUND', `overlay ${id} of ${this.vmId} does not exist`);
    return o;
  }

  listOverlays(): Overlay[] {
    return [...this.overlays.values()];
  }

  private listOverlayIds(): string[] {
    const dir = path.join(this.root, 'overlays');
    return fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => fs.existsSync(path.join(dir, f, 'overlay.json'))) : [];
  }

  /** Discard an overlay and its writes; the recovery point is unchanged. */
  discardOverlay(id: string): void {
    const o = this.getOverlay(id);
    o.closeFiles();
    this.overlays.delete(id);
    fs.rmSync(this.overlayDir(id), { recursive: true, force: true });
  }

  /**
   * Commit an overlay: its point plus its writes become the disks, the other points go.
   *  1. Record `commit` in the manifest.
   *  2. For every disk, write the point's bytes from the undo layers and then the
   *     overlay's writes into the image; fsync.
   *  3. Keep one point (the committed state), delete undo files and overlays.
   * Step 2 only copies bytes from files that step 3 deletes, so it is redone after a crash.
   */
  async commitOverlay(id: string): Promise<RecoveryPoint> {
    const o = this.getOverlay(id);
    this.assertWritable();
    if (this.manifest.applying) throw new OsrError('INVALID_STATE', `a delta is being applied to ${this.vmId}; try again when it is done`);
    this.manifest.commit = { overlayId: id, pointSeq: o.pointSeq };
    this.save();
    return this.finishCommit(o);
  }

  /**
   * The host folded point `seq` and its VM's writes into the images itself (a libvirt
   * host's committed layer, ports/host.ts HostPromotions): the images are that point now.
   * The other points, their undo and any overlay go, as after `commitOverlay`. Idempotent.
   */
  async commitHosted(seq: number): Promise<RecoveryPoint> {
    if (this.isCommitted) return this.manifest.points[0]!;
    if (!this.hasPoint(seq)) throw new OsrError('POINT_NOT_FOUND', `recovery point ${seq} of ${this.vmName} does not exist`);
    this.assertWritable();
    return this.finishCommit(undefined, seq);
  }

  private async finishCommit(o: Overlay | undefined, pointSeq = o?.pointSeq): Promise<RecoveryPoint> {
    this.busy = true;
    try {
      for (const disk of o?.disks ?? []) await disk.writeThroughToImage();
      // the committed images are the point's disks at the point's sizes: a disk grown or
      // added later is cut back or goes (the commit, recorded, is finished after a crash)
      const shape = this.pointDisks(pointSeq!);
      for (const d of shape) if (fs.fstatSync(this.imageFd(d.name)).size > d.size) fs.ftruncateSync(this.imageFd(d.name), d.size);
      await Promise.all(shape.map((d) => fdatasyncAsync(this.imageFd(d.name))));
      const gone = this.allDisks().filter((d) => !shape.some((x) => x.name === d.name));
      const base = this.manifest.points.find((p) => p.seq === pointSeq)!;
      const committed: RecoveryPoint = { ...base, timeMs: this.now(), deltaBytes: 0 };
      for (const other of this.overlays.values()) other.closeFiles();
      this.overlays.clear();
      const undos = this.undos.splice(0);
      this.manifest.points = [committed];
      this.manifest.commit = undefined;
      this.manifest.committed = true;
      this.manifest.resync = undefined;
      this.manifest.disks = shape;
      this.manifest.retired = undefined;
      this.save();
      for (const d of gone) this.deleteImage(d.name);
      this.dropStage();
      for (const u of undos) this.deleteUndo(u);
      fs.rmSync(path.join(this.root, 'overlays'), { recursive: true, force: true });
      this.views.clear();
      return committed;
    } finally {
      this.busy = false;
    }
  }

  private async recoverCommit(): Promise<void> {
    const c = this.manifest.commit;
    if (!c) return;
    let o = this.overlays.get(c.overlayId);
    if (!o) {
      o = Overlay.reopen(this, c.overlayId);
      this.overlays.set(c.overlayId, o);
    }
    await this.finishCommit(o);
  }
}

/** Whether an undo file's entries are exactly these ranges, in order. */
function sameRanges(entries: readonly { offset: number; length: number }[], sources: readonly UndoSource[]): boolean {
  return entries.length === sources.length && entries.every((e, i) => e.offset === sources[i]!.offset && e.length === sources[i]!.length);
}

function mergeAdjacent(sources: UndoSource[]): UndoSource[] {
  const out: UndoSource[] = [];
  for (const s of sources) {
    const last = out.at(-1);
    if (last && last.fd === s.fd && last.offset + last.length === s.offset && last.pos + last.length === s.pos) last.length += s.length;
    else out.push({ ...s });
  }
  return out;
}

/**
 * A recovery point of one disk as a read-only address space: the image overlaid with the
 * undo layers of every later point. It follows new deltas (a new undo layer is added
 * before the image changes) and prunes (rebuilt from the surviving layers).
 */
export class PointView {
  private map = new ExtentMap<Layer>();

  constructor(
    private readonly store: ReplicaStore,
    readonly disk: string,
    readonly pointSeq: number,
  ) {
    this.rebuild();
    store.registerView(this);
  }

  rebuild(): void {
    const m = new ExtentMap<Layer>();
    for (const u of this.store.undoLayersAfter(this.pointSeq)) {
      // a later point without this disk (removed) left it as it was
      const f = u.files.get(this.disk);
      if (!f) continue;
      for (const e of f.entries) m.fillGaps(e.offset, e.offset + e.length, { fd: f.fd }, e.dataPos);
    }
    this.map = m;
  }

  addUndoLayer(u: PointUndo): void {
    if (u.seq <= this.pointSeq) return;
    const f = u.files.get(this.disk);
    if (!f) return;
    for (const e of f.entries) this.map.fillGaps(e.offset, e.offset + e.length, { fd: f.fd }, e.dataPos);
  }

  read(offset: number, length: number): Buffer {
    const out = Buffer.allocUnsafe(length);
    const imageFd = this.store.imageFd(this.disk);
    for (const piece of this.map.resolve(offset, offset + length)) {
      const dst = out.subarray(piece.start - offset, piece.end - offset);
      readFully(piece.value ? piece.value.fd : imageFd, dst, piece.offset);
    }
    return out;
  }

  /** The ranges that differ from the image, with where their bytes are. */
  layerEntries(): readonly { start: number; end: number; value: Layer; base: number }[] {
    return this.map.entries();
  }

  close(): void {
    this.store.unregisterView(this);
  }
}

interface OverlayMeta {
  id: string;
  pointSeq: number;
  createdMs: number;
}

/** A copy-on-write overlay on a recovery point: writes go to per-disk logs, never to the point. */
export class Overlay {
  readonly disks: OverlayDisk[];
  private constructor(
    readonly store: ReplicaStore,
    readonly meta: OverlayMeta,
    disks: OverlayDisk[],
  ) {
    this.disks = disks;
  }
  get id(): string {
    return this.meta.id;
  }
  get pointSeq(): number {
    return this.meta.pointSeq;
  }

  static create(store: ReplicaStore, id: string, pointSeq: number, nowMs: number): Overlay {
    const dir = store.overlayDir(id);
    fs.mkdirSync(dir, { recursive: true });
    const meta: OverlayMeta = { id, pointSeq, createdMs: nowMs };
    const disks = store.pointDisks(pointSeq).map((d) => {
      const w = ChangeLogWriter.create(path.join(dir, `${d.name}.osrlog`), { seq: pointSeq, createdMs: nowMs, diskKey: diskKeyOf(d.id) });
      return new OverlayDisk(store, d, new PointView(store, d.name, pointSeq), w, new ExtentMap());
    });
    writeJsonDurable(path.join(dir, 'overlay.json'), meta);
    return new Overlay(store, meta, disks);
  }

  static reopen(store: ReplicaStore, id: string): Overlay {
    const dir = store.overlayDir(id);
    const meta = readJson<OverlayMeta>(path.join(dir, 'overlay.json'));
    if (!meta) throw new OsrError('NOT_FOUND', `overlay ${id} has no metadata`);
    const disks = store.pointDisks(meta.pointSeq).map((d) => {
      const file = path.join(dir, `${d.name}.osrlog`);
      const scan = scanLogFile(file);
      const w = ChangeLogWriter.reopen(file, scan);
      const map = new ExtentMap<'data' | 'zero'>();
      for (const r of scan.records) {
        if (r.type === RecordType.Write) map.set(r.offset, r.offset + r.length, 'data', r.dataPos);
        else if (r.type === RecordType.Zero) map.set(r.offset, r.offset + r.length, 'zero', 0);
      }
      return new OverlayDisk(store, d, new PointView(store, d.name, meta.pointSeq), w, map);
    });
    return new Overlay(store, meta, disks);
  }

  disk(name: string): OverlayDisk {
    const d = this.disks.find((x) => x.name === name);
    if (!d) throw new OsrError('NOT_FOUND', `overlay ${this.id} has no disk ${name}`);
    return d;
  }

  /** Every range written through the overlay, per disk. */
  writtenRanges(): DiskRanges {
    const out: DiskRanges = {};
    for (const d of this.disks) out[d.name] = d.writtenRanges();
    return out;
  }

  closeFiles(): void {
    for (const d of this.disks) d.closeFiles();
  }
}

export class OverlayDisk implements BlockDevice {
  readonly readOnly = false;
  private readonly logFd: number;

  constructor(
    private readonly store: ReplicaStore,
    private readonly spec: ReplicaDiskSpec,
    private readonly view: PointView,
    private readonly log: ChangeLogWriter,
    private readonly writes: ExtentMap<'data' | 'zero'>,
  ) {
    this.logFd = fs.openSync(log.path, 'r');
  }

  get name(): string {
    return this.spec.name;
  }
  get size(): number {
    return this.spec.size;
  }

  private check(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.spec.size) {
      throw new OsrError('INVALID_ARGUMENT', `range ${offset}+${length} is outside disk ${this.spec.name} (${this.spec.size} bytes)`);
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    return this.readSync(offset, length);
  }

  readSync(offset: number, length: number): Buffer {
    const out = Buffer.allocUnsafe(length);
    for (const piece of this.writes.resolve(offset, offset + length)) {
      const dst = out.subarray(piece.start - offset, piece.end - offset);
      if (piece.value === 'data') readFully(this.logFd, dst, piece.offset);
      else if (piece.value === 'zero') dst.fill(0);
      else this.view.read(piece.start, piece.end - piece.start).copy(dst);
    }
    return out;
  }

  async write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    this.check(offset, data.length);
    const pos = this.log.bytes + 48; // payload follows the 48-byte record header
    this.log.appendWrite(offset, data);
    if (data.length <= 32 * 1024 * 1024) this.writes.set(offset, offset + data.length, 'data', pos);
    else this.reindexLargeWrite(offset, data.length, pos);
    if (opts.fua) await this.log.sync();
  }

  private reindexLargeWrite(offset: number, length: number, firstPos: number): void {
    // appendWrite split the data into 32 MiB records, each behind its own header
    const chunk = 32 * 1024 * 1024;
    let pos = firstPos;
    for (let done = 0; done < length; done += chunk) {
      const n = Math.min(chunk, length - done);
      this.writes.set(offset + done, offset + done + n, 'data', pos);
      pos += n + 48;
    }
  }

  async writeZeroes(offset: number, length: number, opts: WriteOptions): Promise<void> {
    this.check(offset, length);
    this.log.appendZero(offset, length);
    this.writes.set(offset, offset + length, 'zero', 0);
    if (opts.fua) await this.log.sync();
  }

  trim(offset: number, length: number, opts: WriteOptions): Promise<void> {
    return this.writeZeroes(offset, length, opts);
  }

  async flush(): Promise<void> {
    await this.log.sync();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    return [{ offset, length, hole: false, zero: false }];
  }

  writtenRanges(): Range[] {
    return normalizeRanges(this.writes.entries().map((e): Range => [e.start, e.end - e.start]));
  }

  /** Commit step: copy the point's differing bytes, then the overlay's writes, into the image. */
  async writeThroughToImage(): Promise<void> {
    const imageFd = this.store.imageFd(this.spec.name);
    for (const e of this.view.layerEntries()) {
      const data = Buffer.allocUnsafe(e.end - e.start);
      readFully(e.value.fd, data, e.base);
      writeFully(imageFd, data, e.start);
    }
    for (const e of this.writes.entries()) {
      if (e.value === 'zero') {
        writeZeroRange(imageFd, e.start, e.end - e.start);
      } else {
        const data = Buffer.allocUnsafe(e.end - e.start);
        readFully(this.logFd, data, e.base);
        writeFully(imageFd, data, e.start);
      }
    }
  }

  closeFiles(): void {
    this.view.close();
    this.log.closeFile();
    fs.closeSync(this.logFd);
  }
}

/**
 * writeScatter with the aligned pieces (file position, length and place in `buf`) through
 * `directFd` when there is one, the others through `fd`; both kinds end before it settles.
 * Answers the bytes written through the page cache.
 */
async function writeScatterDirect(fd: number, directFd: number | undefined, buf: Buffer, pieces: readonly IoPiece[]): Promise<number> {
  const direct: IoPiece[] = [];
  const buffered: IoPiece[] = [];
  for (const p of pieces) (directFd !== undefined && p[1] % DIRECT_ALIGN === 0 && isAligned(p[0], p[2]) ? direct : buffered).push(p);
  const done = await Promise.allSettled([direct.length > 0 ? writeScatter(directFd!, buf, direct) : undefined, buffered.length > 0 ? writeScatter(fd, buf, buffered) : undefined]);
  for (const r of done) if (r.status === 'rejected') throw r.reason;
  return buffered.reduce((n, p) => n + p[2], 0);
}
