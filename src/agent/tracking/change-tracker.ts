/**
 * Change tracking for all disks of one VM. Each disk has one open change log collecting
 * writes and zero or more closed logs waiting to be shipped. `swap()` closes the open logs
 * of every disk and opens new ones in one synchronous step, so no guest write can fall
 * between two disks' logs: the closed set is a crash-consistent point of the whole VM.
 *
 * Files: <vmDir>/logs/<disk>/<seq>.osrlog, and <vmDir>/tracking.json for the facts that
 * decide whether the logs can be trusted after a restart.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { OsrError, isOsrError } from '../../domain/errors.js';
import { ChangeLogWriter, diskKeyOf, LOG_HEADER_BYTES, MAX_RECORD_DATA, scanLogFile, RecordType, type LogScan } from './change-log.js';
import { discard, emptyTrash, fsyncDir, readJson, writeJsonDurable } from '../io/durable-file.js';
import { writeFully } from '../io/io.js';
import { Consistency, type ChangeTracking, type ClosedDeltaFile, type DeltaStream, type PointMeta, type PreparedSwap } from '../ports/change-source.js';
import { normalizeRanges, type DiskRanges, type Range } from '../io/ranges.js';
import { writeZeroRange } from '../io/sparse.js';

export interface TrackingState {
  enabled: boolean;
  /** false while the agent runs; true only after a clean stop synced logs and images */
  cleanShutdown: boolean;
  bootId: string;
  /** the next log sequence number to open */
  nextSeq: number;
  resyncRequired?: { reason: string; at: string } | undefined;
  /** what each closed, not yet shipped set of logs is as a recovery point */
  pointMeta?: Record<string, PointMeta>;
  /** a resynchronization in progress: the log `seq` has tracked every write since it began */
  resync?: { id: string; seq: number; startedMs: number } | undefined;
  /**
   * each disk image's generation at the last clean stop: the file's identity, size and
   * change time. A different generation at the next start means the disk was changed
   * outside replication (written by another tool, replaced, resized).
   */
  images?: ImageGeneration[] | undefined;
  /**
   * the VM's disks changed after each of these deltas (the change closed it): a delta up to
   * one has the disks from before, and ships so before the replica takes the change
   */
  shapeChanges?: number[] | undefined;
  /** disks removed from the VM whose closed logs still wait to be shipped */
  retired?: { id: string; name: string }[] | undefined;
}

export interface ImageGeneration {
  ino: string;
  size: string;
  ctimeNs: string;
}

export function imageGeneration(fd: number): ImageGeneration {
  const st = fs.fstatSync(fd, { bigint: true });
  return { ino: String(st.ino), size: String(st.size), ctimeNs: String(st.ctimeNs) };
}

export function currentBootId(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

const pad = (n: number) => String(n).padStart(12, '0');

/**
 * Redoes the last write of a recovered log onto the image: the crash may have hit between
 * the two. A write larger than MAX_RECORD_DATA was split into several records, all appended
 * before the image write, so every record of it is redone (redoing a suffix of the log in
 * order is always safe: the records before it are already in the image).
 */
function redoLastRecord(scan: LogScan, logFile: string, imageFd: number): void {
  const recs = scan.records;
  if (recs.length === 0) return;
  let first = recs.length - 1;
  while (first > 0 && recs[first].type === RecordType.Write) {
    const prev = recs[first - 1];
    if (prev.type !== RecordType.Write || prev.length !== MAX_RECORD_DATA || prev.offset + prev.length !== recs[first].offset) break;
    first--;
  }
  const fd = fs.openSync(logFile, 'r');
  try {
    for (const rec of recs.slice(first)) {
      if (rec.type === RecordType.Write) {
        const data = Buffer.allocUnsafe(rec.length);
        for (let done = 0; done < rec.length; ) {
          const n = fs.readSync(fd, data, done, rec.length - done, rec.dataPos + done);
          if (n <= 0) throw new OsrError('CHANGE_LOG_CORRUPT', `${logFile}: record ${rec.index} is shorter than its header says`);
          done += n;
        }
        writeFully(imageFd, data, rec.offset);
      } else if (rec.type === RecordType.Zero) {
        writeZeroRange(imageFd, rec.offset, rec.length);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

export class DiskLogs {
  active: ChangeLogWriter | undefined;
  readonly dir: string;
  constructor(readonly vmDir: string, readonly diskId: string, readonly diskName: string) {
    this.dir = path.join(vmDir, 'logs', diskName);
  }

  fileFor(seq: number): string {
    return path.join(this.dir, `${pad(seq)}.osrlog`);
  }

  listFiles(): { seq: number; file: string }[] {
    if (!fs.existsSync(this.dir)) return [];
    return fs
      .readdirSync(this.dir)
      .filter((f) => f.endsWith('.osrlog'))
      .map((f) => ({ seq: Number(f.slice(0, -'.osrlog'.length)), file: path.join(this.dir, f) }))
      .sort((a, b) => a.seq - b.seq);
  }

  open(seq: number, nowMs: number): void {
    fs.mkdirSync(this.dir, { recursive: true });
    this.active = ChangeLogWriter.create(this.fileFor(seq), { seq, createdMs: nowMs, diskKey: diskKeyOf(this.diskId) });
  }
}

export class VmChangeTracker implements ChangeTracking {
  private state: TrackingState;
  private readonly stateFile: string;
  readonly disks: DiskLogs[];
  /** removed disks whose closed logs wait to be shipped (no open log) */
  private retired: DiskLogs[];

  constructor(
    readonly vmDir: string,
    disks: { id: string; name: string }[],
    private readonly now: () => number,
  ) {
    this.stateFile = path.join(vmDir, 'tracking.json');
    this.disks = disks.map((d) => new DiskLogs(vmDir, d.id, d.name));
    this.state = readJson<TrackingState>(this.stateFile) ?? {
      enabled: false,
      cleanShutdown: true,
      bootId: currentBootId(),
      nextSeq: 1,
    };
    // a removal a crash cut short before the VM's record forgot the disk: it is the VM's still
    this.retired = (this.state.retired ?? []).filter((d) => !disks.some((x) => x.name === d.name)).map((d) => new DiskLogs(vmDir, d.id, d.name));
  }

  /** every disk with logs: the VM's, and removed ones whose closed logs wait */
  private get allLogs(): DiskLogs[] {
    return this.retired.length === 0 ? this.disks : [...this.disks, ...this.retired];
  }

  /** The delta the oldest change of the VM's disks not yet at the replica closed: deltas up to it have the disks from before. */
  firstShapeChange(): number | undefined {
    return this.state.shapeChanges?.[0];
  }

  /** The replica took the disks as they are now (or they are as it has them again): the changes are done with. */
  shapeChangesTaken(): void {
    if (!this.state.shapeChanges) return;
    this.state.shapeChanges = undefined;
    this.save();
  }

  /**
   * Before the VM's disks change: the current delta closes now, so every write made before
   * the change is in a delta that has the disks from before (shapeChangedAfter). Refused
   * while a resync runs: its point must have one set of disks.
   */
  beforeShapeChange(): void {
    if (!this.state.enabled || this.state.resyncRequired) return;
    if (this.state.resync) throw new OsrError('INVALID_STATE', 'a resync of this VM runs; change its disks once it is done');
    const seq = this.swapLogs(Consistency.Crash, undefined);
    this.state.shapeChanges = [...(this.state.shapeChanges ?? []), seq];
    this.save();
  }

  get enabled(): boolean {
    return this.state.enabled;
  }
  private get trashDir(): string {
    return path.join(this.vmDir, 'logs-trash');
  }
  get resyncRequired(): TrackingState['resyncRequired'] {
    return this.state.resyncRequired;
  }
  get resync(): TrackingState['resync'] {
    return this.state.resync;
  }

  /**
   * Begin a resynchronization, or go on with the one in progress while its log is trusted.
   * A new one drops every log (what they hold is superseded by comparing the disks) and
   * opens log `seq`, which from this instant tracks every write: the resync reads blocks
   * while the guest writes, so the point it ends in is its staged blocks followed by this
   * log. Clears "resync required".
   */
  beginResync(opts: { keepActive?: boolean; after?: number } = {}): { id: string; seq: number; resumed: boolean } {
    if (!this.state.enabled) throw new OsrError('INVALID_STATE', 'change tracking is not enabled for this VM');
    const cur = this.state.resync;
    if (cur && !this.state.resyncRequired && cur.seq === this.activeSeq && this.disks.every((d) => d.active)) return { ...cur, resumed: true };
    // keepActive: the open log goes on as the resync's log (its writes are shipped at the
    // end, those of the closed logs are among the ranges the resync sends)
    const keep = opts.keepActive === true && !this.state.resyncRequired && this.disks.every((d) => d.active);
    const seq = keep ? this.activeSeq : Math.max(this.state.nextSeq, (opts.after ?? 0) + 1);
    for (const d of this.disks) {
      if (!keep) {
        d.active?.closeFile();
        d.active = undefined;
      }
      for (const { seq: s, file } of d.listFiles()) if (!keep || s !== seq) fs.rmSync(file);
      if (!keep) d.open(seq, this.now());
    }
    // a removed disk's logs and the disks' changes are superseded too: the resync compares the disks there are
    for (const d of this.retired) fs.rmSync(d.dir, { recursive: true, force: true });
    this.retired = [];
    const resync = { id: crypto.randomUUID(), seq, startedMs: this.now() };
    this.state = { ...this.state, nextSeq: seq + 1, resyncRequired: undefined, pointMeta: {}, resync, shapeChanges: undefined, retired: undefined };
    this.save();
    for (const d of this.disks) fsyncDir(d.dir);
    return { ...resync, resumed: false };
  }

  /** The resync's point reached the replica. */
  endResync(): void {
    if (!this.state.resync) return;
    this.state.resync = undefined;
    this.save();
  }

  get activeSeq(): number {
    return this.state.nextSeq - 1;
  }

  /** bumped by every save: an asynchronous save overtaken by a later one does not put its older state back */
  private saveVersion = 0;
  private asyncSaves: Promise<void> = Promise.resolve();

  private save(): void {
    this.saveVersion++;
    writeJsonDurable(this.stateFile, this.state);
  }

  /**
   * Save the state on the thread pool (saves in turn, each writing the state as it is when
   * it runs). One overtaken by a synchronous save, which wrote newer state, leaves the file
   * to it. `renamed` resolves once the state as it is now is in place, its bytes synced:
   * an agent restarted after a crash reads it, and a power cut leaves the old file or this
   * one whole (after a power cut the logs are not trusted anyway: resync required).
   * `durable` resolves once its directory is synced too.
   */
  private saveAsync(): { renamed: Promise<void>; durable: Promise<void> } {
    let renamed!: () => void;
    const renamedP = new Promise<void>((r) => (renamed = r));
    const run = async () => {
      const v = ++this.saveVersion;
      const tmp = `${this.stateFile}.tmp-${process.pid}-async`;
      const fh = await fs.promises.open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(JSON.stringify(this.state, null, 2) + '\n');
        await fh.datasync();
      } finally {
        await fh.close();
      }
      if (v !== this.saveVersion) {
        // a synchronous save since wrote newer state, durably
        await fs.promises.rm(tmp, { force: true });
        renamed();
        return;
      }
      fs.renameSync(tmp, this.stateFile);
      renamed();
      const dir = await fs.promises.open(path.dirname(this.stateFile), 'r');
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
    };
    const done = this.asyncSaves.then(run, run);
    this.asyncSaves = done.catch(() => undefined);
    // a failed save rejects both
    return { renamed: Promise.race([renamedP, done]), durable: done };
  }

  markResyncRequired(reason: string): void {
    this.state.resyncRequired = { reason, at: new Date(this.now()).toISOString() };
    this.save();
  }

  /**
   * Called at agent start, before any guest I/O. Decides whether the logs can be trusted:
   * after a clean stop, yes; after a crash of the agent on the same boot, the page cache
   * survived, so the logs hold everything the images hold once torn tails are cut and the
   * last record is redone; after a host crash (new boot id) writes may be lost from either
   * file in any order, so the disk is marked resync required.
   */
  recover(imageFds: number[]): { recovered: boolean; tornBytes: number } {
    let tornBytes = 0;
    emptyTrash(this.trashDir);
    // the temporary state files of saves a crash cut short
    for (const f of fs.readdirSync(path.dirname(this.stateFile))) {
      if (f.startsWith(`${path.basename(this.stateFile)}.tmp-`)) fs.rmSync(path.join(path.dirname(this.stateFile), f), { force: true });
    }
    if (!this.state.enabled) return { recovered: false, tornBytes };
    const unclean = !this.state.cleanShutdown;
    if (!unclean && this.state.images && !this.state.resyncRequired) {
      this.disks.forEach((d, i) => {
        const was = this.state.images?.[i];
        const now = imageGeneration(imageFds[i]);
        if (!this.state.resyncRequired && was && (was.ino !== now.ino || was.size !== now.size || was.ctimeNs !== now.ctimeNs)) {
          this.markResyncRequired(`disk ${d.diskName} was changed outside replication while the agent was stopped (its image's generation differs from the clean stop's)`);
        }
      });
    }
    if (unclean && this.state.bootId !== currentBootId() && !this.state.resyncRequired) {
      this.state.resyncRequired = { reason: 'the host restarted without a clean agent stop; change logs may have lost writes', at: new Date(this.now()).toISOString() };
    }
    const activeSeq = this.state.nextSeq - 1;
    // pass 1: verify every log; cut torn tails; redo the newest log's last record
    const open: { disk: DiskLogs; seq: number; writer: ChangeLogWriter }[] = [];
    let swapCutShort = false;
    this.disks.forEach((d, i) => {
      for (const { seq, file } of d.listFiles()) {
        if (seq > activeSeq) {
          // created by a swap that never recorded its sequence number: no write reached it
          fs.rmSync(file);
          continue;
        }
        let scan: LogScan;
        try {
          scan = scanLogFile(file);
        } catch (e) {
          if (isOsrError(e) && e.code === 'CHANGE_LOG_CORRUPT') {
            this.markResyncRequired(`change log ${path.basename(file)} of disk ${d.diskName} failed verification: ${e.message}`);
            continue;
          }
          throw e;
        }
        tornBytes += scan.tornBytes;
        if (scan.close) {
          if (seq === activeSeq) swapCutShort = true;
          continue;
        }
        // only the newest log can have a write that reached the log but not the image
        if (unclean && seq === activeSeq) redoLastRecord(scan, file, imageFds[i]);
        open.push({ disk: d, seq, writer: ChangeLogWriter.reopen(file, scan) });
      }
    });
    // pass 2: a swap cut short by the crash is finished (no guest write ran inside it);
    // older logs left open are sealed; the newest becomes the active log again
    for (const { disk, seq, writer } of open) {
      if (seq === activeSeq && !swapCutShort) {
        disk.active = writer;
      } else {
        writer.close(this.now());
        writer.syncSync();
        writer.closeFile();
      }
    }
    if (swapCutShort) this.state.nextSeq = activeSeq + 2;
    if (!this.state.resyncRequired) {
      for (const d of this.disks) if (!d.active) d.open(this.state.nextSeq - 1, this.now());
    }
    this.state.cleanShutdown = false;
    this.state.bootId = currentBootId();
    this.save();
    return { recovered: unclean, tornBytes };
  }

  /** Start tracking: opens log 1 (or the next) on every disk. The instant this returns is the snapshot point. */
  start(): number {
    if (this.state.enabled) return this.activeSeq;
    const seq = this.state.nextSeq;
    this.state = { ...this.state, enabled: true, cleanShutdown: false, nextSeq: seq + 1, resyncRequired: undefined, resync: undefined };
    for (const d of this.disks) {
      for (const { file } of d.listFiles()) fs.rmSync(file);
      d.open(seq, this.now());
    }
    this.save();
    for (const d of this.disks) fsyncDir(d.dir);
    return seq;
  }

  /** Stop tracking and delete every log (replication removed). */
  stop(): void {
    for (const d of this.allLogs) {
      d.active?.closeFile();
      d.active = undefined;
      fs.rmSync(d.dir, { recursive: true, force: true });
    }
    this.retired = [];
    this.state = { ...this.state, enabled: false, resync: undefined, shapeChanges: undefined, retired: undefined };
    this.save();
  }

  /**
   * Track a disk added to the VM: its log opens now, in the delta writes go to (the closed
   * deltas before it have no log of it; the replica copies the new disk whole).
   */
  addDisk(disk: { id: string; name: string }): void {
    if (this.disks.some((d) => d.diskName === disk.name)) throw new OsrError('ALREADY_EXISTS', `disk ${disk.name} is tracked already`);
    const logs = new DiskLogs(this.vmDir, disk.id, disk.name);
    // a log left by an add a crash cut short
    fs.rmSync(logs.dir, { recursive: true, force: true });
    if (this.state.enabled && !this.state.resyncRequired) {
      logs.open(this.activeSeq, this.now());
      fsyncDir(logs.dir);
    }
    this.disks.push(logs);
    // a clean stop records every disk's generation again
    this.state.images = undefined;
    this.save();
  }

  /**
   * Stop tracking a removed disk (after beforeShapeChange closed its last delta): its open
   * log, empty, goes; its closed logs stay until shipped, as the deltas from before the
   * removal have them.
   */
  removeDisk(name: string): void {
    const i = this.disks.findIndex((d) => d.diskName === name);
    if (i < 0) return;
    const d = this.disks.splice(i, 1)[0]!;
    const open = d.active;
    d.active = undefined;
    if (open) {
      open.closeFile();
      fs.rmSync(open.path, { force: true });
    }
    if (this.state.enabled && d.listFiles().length > 0) this.retired.push(d);
    else fs.rmSync(d.dir, { recursive: true, force: true });
    this.state.retired = this.retired.length > 0 ? this.retired.map((r) => ({ id: r.diskId, name: r.diskName })) : undefined;
    this.state.images = undefined;
    this.save();
  }

  appendWrite(diskIndex: number, offset: number, data: Buffer): void {
    this.disks[diskIndex].active?.appendWrite(offset, data);
  }
  appendZero(diskIndex: number, offset: number, length: number): void {
    this.disks[diskIndex].active?.appendZero(offset, length);
  }

  /**
   * Close every disk's open log and open the next, in one synchronous step (no guest
   * write can run in between). Returns the sequence number of the closed set.
   */
  swap(consistency: Consistency = Consistency.Crash, _stream?: DeltaStream, cut?: string): number {
    const seq = this.swapLogs(consistency, cut);
    this.save();
    return seq;
  }

  /** a group swap prepared (prepareHeldSwap) and not yet made or dropped */
  private prepared: (PreparedSwap & { tmp: string; version: number }) | undefined;

  /**
   * A consistency group's swap, first step, before the guest's writes are held: the state
   * as it will be after the swap (the next log numbered) is written beside the state file
   * and synced. Nothing changes yet. The swap (swapPrepared) then only renames it into
   * place while the writes are held: no fsync inside the pause.
   */
  async prepareHeldSwap(): Promise<PreparedSwap> {
    if (!this.state.enabled) throw new OsrError('INVALID_STATE', 'change tracking is not enabled for this VM');
    if (this.prepared) throw new OsrError('INVALID_STATE', 'a group swap is prepared for this VM already; it is made or dropped first');
    const id = crypto.randomUUID();
    // taken before the await: a released point's facts wait for the swap's save (releaseThrough)
    const p = { id, nextSeq: this.state.nextSeq, tmp: `${this.stateFile}.tmp-cut-${id}`, version: this.saveVersion };
    this.prepared = p;
    try {
      const fh = await fs.promises.open(p.tmp, 'w', 0o600);
      try {
        await fh.writeFile(JSON.stringify({ ...this.state, nextSeq: p.nextSeq + 1 }, null, 2) + '\n');
        await fh.datasync();
      } finally {
        await fh.close();
      }
    } catch (e) {
      this.dropPrepared(p);
      throw e;
    }
    // dropped while it was written
    if (this.prepared !== p) {
      fs.rmSync(p.tmp, { force: true });
      throw new OsrError('INVALID_STATE', 'the group swap was dropped while it was prepared');
    }
    return { id, nextSeq: p.nextSeq };
  }

  /**
   * A consistency group's swap, made while the VM's write gate holds every guest write: the
   * logs are swapped at once, and the prepared state goes into place (renamed: an agent
   * restarted after a crash reads it; a power cut leaves the old file or this one whole,
   * and after a power cut the logs are not trusted anyway). If the state was saved since
   * the preparation (a resync marked), the state as it is now goes into place the same way,
   * unsynced. The full state, with the point's facts, is synced after; `durable` resolves then. The
   * gate may be released as soon as this returns.
   */
  swapPrepared(p: PreparedSwap, consistency: Consistency, cut: string): { seq: number; durable: Promise<void> } {
    const mine = this.prepared?.id === p.id ? this.prepared : undefined;
    if (!mine) throw new OsrError('INVALID_STATE', 'no such group swap is prepared for this VM');
    this.prepared = undefined;
    const seq = this.swapLogs(consistency, cut);
    if (mine.version !== this.saveVersion || mine.nextSeq !== seq + 1) {
      // the state was saved since (a resync marked, ...): the state as it is now goes into
      // place unsynced, as the prepared one would have (an agent restarted after a crash
      // reads it; after a power cut the logs are not trusted), and is synced just after
      fs.rmSync(mine.tmp, { force: true });
      fs.writeFileSync(mine.tmp, JSON.stringify(this.state, null, 2) + '\n', { mode: 0o600 });
    }
    fs.renameSync(mine.tmp, this.stateFile);
    // an asynchronous save still running holds older state: it must not rename over this
    this.saveVersion++;
    const saved = this.saveAsync();
    saved.renamed.catch(() => undefined);
    return { seq, durable: saved.durable };
  }

  /** Drop a prepared group swap that will not be made. */
  dropPrepared(p: PreparedSwap): void {
    if (this.prepared?.id !== p.id) return;
    fs.rmSync(this.prepared.tmp, { force: true });
    this.prepared = undefined;
  }

  /** Close every disk's open log and open the next (the state is saved by the caller). */
  private swapLogs(consistency: Consistency, cut: string | undefined): number {
    if (!this.state.enabled) throw new OsrError('INVALID_STATE', 'change tracking is not enabled for this VM');
    const closedSeq = this.state.nextSeq - 1;
    const nextSeq = closedSeq + 1;
    const nowMs = this.now();
    const old = this.disks.map((d) => d.active);
    // open the new logs first: a crash before the state file records nextSeq leaves them
    // empty and recovery removes them
    for (const d of this.disks) d.open(nextSeq, nowMs);
    for (const w of old) w?.close(nowMs);
    this.state.nextSeq = nextSeq + 1;
    this.state.pointMeta = { ...this.state.pointMeta, [closedSeq]: { timeMs: nowMs, consistency, ...(cut !== undefined ? { cut } : {}) } };
    // the closed logs are synced on the thread pool; shipping waits for it (closedSynced)
    const synced = Promise.all(
      old.map(async (w) => {
        if (!w) return;
        try {
          await w.sync();
        } finally {
          w.closeFile();
        }
      }),
    ).then(() => undefined);
    synced.catch(() => undefined);
    this.closing = Promise.all([this.closing, synced]).then(() => undefined);
    // awaited by the next shipment (closedSynced), which reports a failed sync
    this.closing.catch(() => undefined);
    return closedSeq;
  }

  private closing: Promise<void> = Promise.resolve();

  /** Resolves when every log closed so far is durable. */
  closedSynced(): Promise<void> {
    return this.closing;
  }

  /** Closed logs waiting to be shipped, by sequence number, one entry per disk. */
  closedDeltas(afterSeq: number): Map<number, ClosedDeltaFile[]> {
    const out = new Map<number, ClosedDeltaFile[]>();
    const activeSeq = this.activeSeq;
    for (const d of this.allLogs) {
      for (const { seq, file } of d.listFiles()) {
        if (seq <= afterSeq || seq >= activeSeq) continue;
        const st = fs.statSync(file);
        const list = out.get(seq) ?? [];
        list.push({ seq, disk: d.diskName, file, bytes: st.size, closedMs: Math.floor(st.mtimeMs) });
        out.set(seq, list);
      }
    }
    return out;
  }

  pointMetaOf(seq: number, fallbackMs: number): PointMeta {
    return this.state.pointMeta?.[seq] ?? { timeMs: fallbackMs, consistency: 'crash-consistent' };
  }

  /** Delete closed logs up to and including seq: the replica has applied them. */
  releaseThrough(seq: number): void {
    for (const d of this.allLogs) {
      for (const f of d.listFiles()) if (f.seq <= seq && f.seq < this.activeSeq) discard(f.file, this.trashDir);
    }
    // a removed disk whose last delta is at the replica is done with
    const gone = this.retired.filter((d) => d.listFiles().length === 0);
    if (gone.length > 0) {
      for (const d of gone) fs.rmSync(d.dir, { recursive: true, force: true });
      this.retired = this.retired.filter((d) => !gone.includes(d));
      this.state.retired = this.retired.length > 0 ? this.retired.map((r) => ({ id: r.diskId, name: r.diskName })) : undefined;
      if (!this.prepared) this.save();
    }
    const meta = { ...this.state.pointMeta };
    let changed = false;
    for (const k of Object.keys(meta)) {
      if (Number(k) <= seq) {
        delete meta[k];
        changed = true;
      }
    }
    if (changed) {
      this.state.pointMeta = meta;
      // while a group swap is prepared, the facts of released points may wait for the swap's
      // save: a stale entry names logs that are gone, which recovery ignores
      if (!this.prepared) this.save();
    }
  }

  /**
   * The ranges written per disk in the logs held now: every log, or only the closed ones.
   * Logs go once the replica has their point, so these are the writes it may lack.
   */
  loggedRanges(which: 'all' | 'closed'): DiskRanges {
    const out: DiskRanges = {};
    for (const d of this.allLogs) {
      const list: Range[] = [];
      for (const { seq, file } of d.listFiles()) {
        if (which === 'closed' && seq >= this.activeSeq) continue;
        for (const r of scanLogFile(file).records) if (r.type === RecordType.Write || r.type === RecordType.Zero) list.push([r.offset, r.length]);
      }
      out[d.diskName] = normalizeRanges(list);
    }
    return out;
  }

  pendingBytes(afterSeq: number): number {
    let n = 0;
    for (const bytes of this.pendingBytesByDisk(afterSeq).values()) n += bytes;
    return n;
  }

  /** change-log bytes not yet at the replica, per disk name */
  pendingBytesByDisk(afterSeq: number): Map<string, number> {
    const out = new Map<string, number>();
    for (const d of this.allLogs) {
      let n = 0;
      for (const f of d.listFiles()) if (f.seq > afterSeq && f.seq < this.activeSeq) n += fs.statSync(f.file).size;
      // the open log's header is not pending data
      n += Math.max(0, (d.active?.bytes ?? 0) - LOG_HEADER_BYTES);
      out.set(d.diskName, n);
    }
    return out;
  }

  /** Make the open logs durable (before the images: the log must never hold less than the image). */
  async syncLogs(): Promise<void> {
    await Promise.all(this.disks.map((d) => d.active?.sync()));
  }

  /** Record a clean stop: logs synced, images synced by the caller first. */
  markCleanShutdown(imageFds?: readonly number[]): void {
    for (const d of this.disks) {
      d.active?.syncSync();
      d.active?.closeFile();
      d.active = undefined;
    }
    this.state.cleanShutdown = true;
    this.state.images = imageFds?.map(imageGeneration);
    this.save();
  }
}
