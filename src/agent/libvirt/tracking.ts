/**
 * Change tracking of a libvirt domain (the ChangeTracking port) by QEMU's persistent
 * dirty bitmaps: the changes of delta N are what the bitmap of checkpoint `osr-N` holds.
 *
 * - `start()` begins a full pull-mode backup that creates `osr-N`: its export is the
 *   disks at that instant, which the initial copy reads (the DiskReader of each disk).
 * - `swap()` ends any backup still open, begins an incremental one from `osr-N` that
 *   creates `osr-N+1` (one instant across every disk), reads the dirty extents over NBD and
 *   writes them as delta N in osr's change-log format (synced), ends the backup and
 *   deletes `osr-N`. The sending side ships the logs as it ships a lab VM's.
 * - `swap()` with a stream lays delta N out in the same format for the stream only, and
 *   leaves the backup open: `settle(N, delivered)` then closes the delta (the replica holds
 *   it durably), or reads it again from the open backup into synced logs first.
 * - `beginResync()` drops osr's checkpoints and begins a full backup that creates the
 *   checkpoint of the resync's delta: the resync compares that instant's disks with the
 *   replica, and the swap that ends it ships the writes made meanwhile.
 *
 * State (`<dir>/tracking.json`, written durably): the next sequence number, the closed
 * deltas' point times and consistency, the resync in progress, why a resync is required.
 * Logs: `<dir>/logs/<seq>/<disk>.osrlog`. Anything that does not add up — a checkpoint
 * libvirt lost, a bitmap QEMU's crash broke, a swap cut short — makes the tracking
 * ask for a resynchronization: never a silent full copy, never silent divergence.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { OsrError, toOsrError } from '../../domain/errors.js';
import { blockDigests } from '../io/checksum.js';
import { isZero } from '../io/sparse.js';
import { readJson, writeJsonDurable } from '../io/durable-file.js';
import { NbdClient } from '../nbd/nbd-client.js';
import { ChangeLogWriter, diskKeyOf, scanLogFile } from '../tracking/change-log.js';
import { changedExtents, deleteCheckpoint, dropCheckpoints, listCheckpoints, PullBackup, CHECKPOINT_PREFIX } from './backup.js';
import { withFrozenFilesystems } from './quiesce.js';
import type { Virsh } from './virsh.js';

type Consistency = 'crash-consistent' | 'app-consistent';

/** Where the last swap's time went (ms): the backup begun, the dirty extents read and logged, the logs synced, the backup ended and the old checkpoint deleted. */
export interface SwapTimings {
  seq: number;
  backupMs: number;
  readMs: number;
  logSyncMs: number;
  endMs: number;
}

/** Where a swap hands its logs' bytes as it writes them (the sending side's DeltaStream). */
interface DeltaStream {
  begin(seq: number, meta: { timeMs: number; consistency: Consistency }): void;
  disk(name: string): void;
  data(pos: number, bufs: readonly Buffer[]): void;
  backlog?(): Promise<void> | undefined;
}

/** A delta read and streamed by a swap, not closed yet: its backup stays open until `settle`. */
interface Unsettled {
  seq: number;
  inc: PullBackup;
  timeMs: number;
  consistency: Consistency;
  timings: { backupMs: number; readMs: number };
}

interface State {
  enabled: boolean;
  /** the delta writes go to now: its changes are in checkpoint osr-<activeSeq> */
  activeSeq: number;
  pointMeta: Record<string, { timeMs: number; consistency: Consistency }>;
  resync?: { id: string; seq: number; startedMs: number } | undefined;
  resyncRequired?: { reason: string; at: string } | undefined;
}

export interface LibvirtDisk {
  id: string;
  /** the guest's name of the disk (vda): the backup's export */
  target: string;
  size: number;
  /** the image libvirt opens for it: its modification time says whether QEMU has had it open since */
  file?: string | undefined;
}

const READ_CHUNK = 4 * 1024 * 1024;
/** NBD reads a cycle keeps in flight: the dirty extents are many and small */
const READS_IN_FLIGHT = 32;
/** reads up to this size reuse buffers of this size when a delta is kept in no file */
const POOLED_READ = 1024 * 1024;

export class LibvirtTracking {
  private state: State;
  private backup: PullBackup | undefined;
  private readonly clients = new Map<string, { client: NbdClient; context: string }>();
  private activeRanges: Record<string, [number, number][]> | undefined;
  private offlineSwapArmed = false;
  /** the images' stamp after a swap read the domain's last writes with it off (the domain has not run since while it is unchanged) */
  private flushedOff: string | undefined;
  /** where the last swap's time went */
  lastSwap: SwapTimings | undefined;
  /** of the swap running, ms spent syncing logs */
  private syncSpent = 0;
  /** the delta the last swap streamed without writing its logs, until `settle` */
  private unsettled: Unsettled | undefined;

  constructor(
    private readonly virsh: Virsh,
    readonly domain: string,
    /** a disk's size follows a resize (LibvirtVm.refreshDisks) */
    readonly disks: readonly LibvirtDisk[],
    private readonly dir: string,
    private readonly now: () => number,
    /** told why a point asked to be app-consistent was cut crash-consistent */
    private readonly warn?: (o: object, msg: string) => void,
  ) {
    fs.mkdirSync(path.join(dir, 'logs'), { recursive: true, mode: 0o700 });
    this.state = readJson<State>(this.stateFile) ?? { enabled: false, activeSeq: 1, pointMeta: {} };
  }

  private get stateFile(): string {
    return path.join(this.dir, 'tracking.json');
  }

  private save(): void {
    writeJsonDurable(this.stateFile, this.state);
  }

  private checkpoint(seq: number): string {
    return `${CHECKPOINT_PREFIX}${seq}`;
  }

  private get workDir(): string {
    return path.join(this.dir, 'backup');
  }

  get enabled(): boolean {
    return this.state.enabled;
  }
  get resyncRequired(): { reason: string; at: string } | undefined {
    return this.state.resyncRequired;
  }
  /** the active delta's writes are in QEMU's bitmap until a swap reads them; none since a swap made with the domain off, while it stays off */
  get activeUnlogged(): boolean {
    return this.flushedOff === undefined || this.flushedOff !== this.imagesStamp();
  }

  /** The images' modification times: QEMU changes them whenever it opens them to write. */
  private imagesStamp(): string {
    return this.disks.map((d) => (d.file ? String(fs.statSync(d.file, { throwIfNoEntry: false })?.mtimeMs ?? 'gone') : 'unknown')).join(',');
  }
  get activeSeq(): number {
    return this.state.activeSeq;
  }
  get resync(): { id: string; seq: number; startedMs: number } | undefined {
    return this.state.resync;
  }

  /**
   * After a restart: osr's checkpoints must be exactly the active one. Otherwise (a swap
   * cut short, a checkpoint lost with the domain's definition) the changes since the last
   * point are not known: a resync is required.
   */
  async recover(): Promise<void> {
    if (!this.state.enabled) return;
    const { ours } = await listCheckpoints(this.virsh, this.domain);
    const want = this.checkpoint(this.state.activeSeq);
    if (ours.length !== 1 || ours[0] !== want) this.markResyncRequired(`the domain's osr checkpoints are [${ours.join(', ')}], not ${want}: the changes since the last point cannot be known`);
  }

  async start(): Promise<number> {
    await this.endBackup();
    await dropCheckpoints(this.virsh, this.domain);
    this.removeLogs(() => true);
    this.state = { enabled: true, activeSeq: this.state.activeSeq, pointMeta: {} };
    this.backup = await PullBackup.begin(this.virsh, this.domain, { disks: this.disks.map((d) => d.target), checkpoint: this.checkpoint(this.state.activeSeq), workDir: this.workDir });
    this.save();
    return this.state.activeSeq;
  }

  /**
   * Tracking is on since checkpoint `osr-<seq>`, made by someone else before the guest ran
   * (a promoted VM's, libvirt/promotion.ts): every write since is in its bitmap.
   */
  adopt(seq: number): void {
    this.removeLogs(() => true);
    this.state = { enabled: true, activeSeq: seq, pointMeta: {} };
    this.save();
  }

  stop(): void {
    // the backup job ends before the checkpoints go (libvirt refuses to delete one a job uses)
    void this.endBackup()
      .then(() => dropCheckpoints(this.virsh, this.domain))
      .catch(() => undefined);
    this.removeLogs(() => true);
    this.state = { enabled: false, activeSeq: this.state.activeSeq, pointMeta: {} };
    this.save();
  }

  /**
   * The agent powered the domain off (a planned failover's shutdown): the next swap reads
   * its last writes though it is off — unless one did already and the domain has not run
   * since (`ran` false), when there is nothing more to read.
   */
  armOfflineSwap(ran: boolean): void {
    if (ran) this.flushedOff = undefined;
    if (this.activeUnlogged) this.offlineSwapArmed = true;
  }

  /**
   * Close the active delta. A domain the agent shut off (a planned failover's) is started
   * paused for it — QEMU loads the bitmaps, no guest code runs — and powered off again: its
   * last writes are read as a running one's. A domain someone else shut off waits: its
   * writes stay in its bitmap until it runs again.
   */
  async swap(consistency: Consistency, stream?: DeltaStream): Promise<number> {
    if (!this.state.enabled) throw new OsrError('INVALID_STATE', `change tracking of ${this.domain} is off`);
    if (this.state.resyncRequired) throw new OsrError('RESYNC_REQUIRED', this.state.resyncRequired.reason);
    const state = (await this.virsh.run(['domstate', this.domain])).trim();
    if (state === 'running' || state === 'paused') return this.swapActive(consistency, stream, stream !== undefined);
    if (!this.offlineSwapArmed) throw new OsrError('INVALID_STATE', `${this.domain} is ${state}: its writes since the last point are read once it runs again`, { domain: this.domain, state });
    this.offlineSwapArmed = false;
    await this.virsh.run(['start', this.domain, '--paused']);
    let swapped = false;
    try {
      // the export goes with the domain right after: the logs are written here, as they are read
      const seq = await this.swapActive('crash-consistent', stream, false);
      swapped = true;
      return seq;
    } finally {
      await this.virsh.run(['destroy', this.domain]).catch(() => undefined);
      // what the images look like once QEMU let them go: the same later means it has not run since
      if (swapped) this.flushedOff = this.imagesStamp();
    }
  }

  /**
   * With `detached` (a stream that settles), the delta is only read and streamed: no log is
   * written here, the backup stays open and the swap is finished by `settle`.
   */
  private async swapActive(consistency: Consistency, stream: DeltaStream | undefined, detached: boolean): Promise<number> {
    await this.endBackup();
    const seq = this.state.activeSeq;
    const timeMs = this.now();
    const t0 = performance.now();
    let inc: PullBackup;
    let cut: Consistency = consistency;
    try {
      const begin = () => PullBackup.begin(this.virsh, this.domain, { disks: this.disks.map((d) => d.target), checkpoint: this.checkpoint(seq + 1), incremental: this.checkpoint(seq), workDir: this.workDir });
      if (consistency === 'app-consistent') {
        // the guest's file systems frozen while the point is cut, through qemu-guest-agent
        const q = await withFrozenFilesystems(this.virsh, this.domain, begin);
        inc = q.result;
        // no guest agent: the point says it is crash-consistent, and the log says why
        if (!q.frozen) {
          cut = 'crash-consistent';
          this.warn?.({ domain: this.domain, seq }, `the point of ${this.domain} asked to be app-consistent is crash-consistent: ${q.reason ?? 'the file systems were not frozen'}`);
        }
      } else inc = await begin();
    } catch (e) {
      const err = toOsrError(e);
      if (err.code === 'RESYNC_REQUIRED') this.markResyncRequired(err.message);
      throw err;
    }
    const t1 = performance.now();
    this.syncSpent = 0;
    if (detached && stream) {
      try {
        stream.begin(seq, { timeMs, consistency: cut });
        for (const disk of this.disks) {
          stream.disk(disk.target);
          await this.writeDelta(inc, disk, seq, undefined, timeMs, stream);
        }
      } catch (e) {
        // nothing of this delta was kept: the new checkpoint goes, and the old one's bitmap holds every change again
        await this.dropNewCheckpoint(inc, seq, e);
        throw e;
      }
      this.state.pointMeta[String(seq)] = { timeMs, consistency: cut };
      this.unsettled = { seq, inc, timeMs, consistency: cut, timings: { backupMs: Math.round(t1 - t0), readMs: Math.round(performance.now() - t1) } };
      return seq;
    }
    try {
      stream?.begin(seq, { timeMs, consistency: cut });
      await this.writeLogs(inc, seq, timeMs, stream);
    } catch (e) {
      await inc.end().catch(() => undefined);
      // the new checkpoint exists and the delta was not written: what changed since osr-N is lost
      this.markResyncRequired(`delta ${seq} of ${this.domain} could not be written: ${toOsrError(e).message}`);
      throw e;
    }
    await this.closeDelta(seq, inc, timeMs, cut, { backupMs: Math.round(t1 - t0), readMs: Math.round(performance.now() - t1 - this.syncSpent) });
    return seq;
  }

  /** Every disk's dirty extents read from the backup's export into delta `seq`'s log files, synced. */
  private async writeLogs(inc: PullBackup, seq: number, timeMs: number, stream?: DeltaStream): Promise<void> {
    const dir = path.join(this.dir, 'logs', String(seq));
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const disk of this.disks) {
      stream?.disk(disk.target);
      await this.writeDelta(inc, disk, seq, path.join(dir, `${disk.target}.osrlog`), timeMs, stream);
    }
  }

  /** The delta's logs are durable (or the replica holds it): end the backup, move to the next delta, drop the old checkpoint. */
  private async closeDelta(seq: number, inc: PullBackup, timeMs: number, cut: Consistency, timings: { backupMs: number; readMs: number }): Promise<void> {
    const t2 = performance.now();
    await inc.end();
    this.state.pointMeta[String(seq)] = { timeMs, consistency: cut };
    this.state.activeSeq = seq + 1;
    this.save();
    await this.virsh.run(['checkpoint-delete', this.domain, this.checkpoint(seq)]).catch(() => undefined);
    this.lastSwap = { seq, ...timings, logSyncMs: Math.round(this.syncSpent), endMs: Math.round(performance.now() - t2) };
  }

  /**
   * A delta given up before anything of it was kept: its backup ends and the checkpoint it
   * made goes (libvirt merges that bitmap into the old checkpoint's, which then holds every
   * change since the last point again). If that fails, the changes cannot be known.
   */
  private async dropNewCheckpoint(inc: PullBackup, seq: number, why: unknown): Promise<void> {
    delete this.state.pointMeta[String(seq)];
    try {
      await inc.end();
      await deleteCheckpoint(this.virsh, this.domain, this.checkpoint(seq + 1));
    } catch (e) {
      await inc.end().catch(() => undefined);
      this.markResyncRequired(`delta ${seq} of ${this.domain} could not be read (${toOsrError(why).message}) and its checkpoint could not be dropped: ${toOsrError(e).message}`);
    }
  }

  /**
   * Finish the swap of a streamed delta (see DeltaStream): delivered, it is closed with no
   * log written here; otherwise it is read again from the backup, still open, into synced
   * log files, then closed, and goes from its files. A read that fails then loses the
   * delta: a resync is required, as when a swap's read fails.
   */
  async settle(seq: number, delivered: boolean): Promise<void> {
    const u = this.unsettled;
    if (!u || u.seq !== seq) return;
    this.unsettled = undefined;
    this.syncSpent = 0;
    if (!delivered) {
      const t = performance.now();
      try {
        await this.writeLogs(u.inc, seq, u.timeMs);
      } catch (e) {
        await u.inc.end().catch(() => undefined);
        this.markResyncRequired(`delta ${seq} of ${this.domain} could not be written: ${toOsrError(e).message}`);
        throw e;
      }
      u.timings.readMs += Math.round(performance.now() - t - this.syncSpent);
    }
    await this.closeDelta(seq, u.inc, u.timeMs, u.consistency, u.timings);
  }

  /**
   * One disk's dirty extents, read from the incremental backup's export, as a closed and
   * synced change log. Reads stay in flight while the log is written: its records are
   * laid out in order as the reads come back and written in batches on the thread pool
   * (ChangeLogWriter's queued appends), and the log is synced once every record is written.
   */
  private async writeDelta(b: PullBackup, disk: LibvirtDisk, seq: number, file: string | undefined, closedMs: number, stream?: DeltaStream): Promise<void> {
    const { client, context } = await b.open(disk.target);
    const header = { seq, createdMs: closedMs, diskKey: diskKeyOf(disk.id) };
    // no file: the log's bytes go only to the stream
    const w = file === undefined ? ChangeLogWriter.detached(header) : ChangeLogWriter.create(file, header);
    if (stream) w.tee((at, bufs) => stream.data(at, bufs));
    try {
      const pieces: { offset: number; length: number }[] = [];
      for (const e of await changedExtents(client, context)) {
        for (let off = e.offset; off < e.offset + e.length; off += READ_CHUNK) pieces.push({ offset: off, length: Math.min(READ_CHUNK, e.offset + e.length - off) });
      }
      // reads in flight together (the export answers them in parallel), appended in order
      const inFlight: { read: Promise<Buffer>; into: Buffer | undefined }[] = [];
      // with no file, a read's bytes are done with once its record is laid out and handed
      // to the stream (which copies them): its buffer serves a later read
      const free: Buffer[] = [];
      const pooled = file === undefined;
      let next = 0;
      const refill = () => {
        while (inFlight.length < READS_IN_FLIGHT && next < pieces.length) {
          const p = pieces[next++]!;
          const into = pooled && p.length <= POOLED_READ ? (free.pop() ?? Buffer.allocUnsafe(POOLED_READ)) : undefined;
          const read = client.read(p.offset, p.length, into);
          read.catch(() => undefined);
          inFlight.push({ read, into });
        }
      };
      refill();
      for (const p of pieces) {
        const { read, into } = inFlight.shift()!;
        const data = await read;
        refill();
        if (isZero(data)) w.queueZero(p.offset, p.length);
        else await w.queueWrite(p.offset, data);
        if (into) free.push(into);
        // a wire far behind holds the read up (nothing else bounds a delta kept in no file)
        const behind = stream?.backlog?.();
        if (behind) await behind;
      }
      const s = performance.now();
      await w.drain();
      w.close(closedMs);
      await w.sync();
      this.syncSpent += performance.now() - s;
    } finally {
      w.tee(undefined);
      // no write of the log may be left running on a descriptor about to be closed
      await w.drain().catch(() => undefined);
      w.closeFile();
      await client.close();
    }
  }

  closedSynced(): Promise<void> {
    return Promise.resolve();
  }

  closedDeltas(afterSeq: number): Map<number, { seq: number; disk: string; file: string; bytes: number; closedMs: number }[]> {
    const out = new Map<number, { seq: number; disk: string; file: string; bytes: number; closedMs: number }[]>();
    for (const seq of this.logSeqs()) {
      if (seq <= afterSeq || seq >= this.state.activeSeq) continue;
      const list = this.disks.map((d) => {
        const file = path.join(this.dir, 'logs', String(seq), `${d.target}.osrlog`);
        const st = fs.statSync(file);
        return { seq, disk: d.target, file, bytes: st.size, closedMs: this.state.pointMeta[String(seq)]?.timeMs ?? Math.floor(st.mtimeMs) };
      });
      out.set(seq, list);
    }
    return out;
  }

  pointMetaOf(seq: number, fallbackMs: number): { timeMs: number; consistency: Consistency } {
    return this.state.pointMeta[String(seq)] ?? { timeMs: Math.floor(fallbackMs), consistency: 'crash-consistent' };
  }

  releaseThrough(seq: number): void {
    this.removeLogs((s) => s <= seq);
    for (const k of Object.keys(this.state.pointMeta)) if (Number(k) <= seq) delete this.state.pointMeta[k];
    this.save();
  }

  pendingBytes(afterSeq: number): number {
    let n = 0;
    for (const list of this.closedDeltas(afterSeq).values()) for (const l of list) n += l.bytes;
    return n;
  }

  pendingBytesByDisk(afterSeq: number): Map<string, number> {
    const out = new Map<string, number>();
    for (const list of this.closedDeltas(afterSeq).values()) for (const l of list) out.set(l.disk, (out.get(l.disk) ?? 0) + l.bytes);
    return out;
  }

  markResyncRequired(reason: string): void {
    this.state.resyncRequired = { reason, at: new Date(this.now()).toISOString() };
    this.save();
  }

  /**
   * Begin (or go on with) a resynchronization: osr's checkpoints go, and a full backup
   * makes the checkpoint of the resync's delta; the resync reads that instant's disks.
   * With keepActive (known ranges only), the active checkpoint stays and the backup makes
   * no new one: the writes since the last point go out with the resync's point.
   */
  async beginResync(opts: { keepActive?: boolean; after?: number } = {}): Promise<{ id: string; seq: number; resumed: boolean }> {
    await this.endBackup();
    const resumed = this.state.resync !== undefined;
    let seq = this.state.activeSeq;
    const disks = this.disks.map((d) => d.target);
    if (opts.keepActive && !this.state.resyncRequired) {
      this.backup = await PullBackup.begin(this.virsh, this.domain, { disks, workDir: this.workDir });
    } else {
      // a replica numbered ahead of this domain (a stale one after a failback): the resync's delta comes after its points
      if (opts.after !== undefined && opts.after >= seq) this.state.activeSeq = seq = opts.after + 1;
      await dropCheckpoints(this.virsh, this.domain);
      this.removeLogs(() => true);
      this.backup = await PullBackup.begin(this.virsh, this.domain, { disks, checkpoint: this.checkpoint(seq), workDir: this.workDir });
      this.state.resyncRequired = undefined;
      this.state.enabled = true;
    }
    this.state.resync ??= { id: crypto.randomUUID(), seq, startedMs: this.now() };
    this.state.resync.seq = seq;
    this.save();
    return { id: this.state.resync.id, seq, resumed };
  }

  endResync(): void {
    this.state.resync = undefined;
    this.save();
  }

  /**
   * The active delta's ranges, read from its bitmap while the domain is off (a demote):
   * `loggedRanges('all')` includes them from then on.
   */
  noteActiveRanges(ranges: Record<string, [number, number][]>): void {
    this.activeRanges = ranges;
  }

  /** The name of the checkpoint whose bitmap holds the active delta's writes. */
  get activeCheckpoint(): string {
    return this.checkpoint(this.state.activeSeq);
  }

  /** Ranges written in the closed deltas held now; with 'all', also the active delta's when a demote read them (they are otherwise in QEMU's bitmap, not here). */
  loggedRanges(which: 'all' | 'closed'): Record<string, [number, number][]> {
    const out: Record<string, [number, number][]> = {};
    if (which === 'all' && this.activeRanges) for (const [disk, list] of Object.entries(this.activeRanges)) out[disk] = [...list];
    for (const seq of this.logSeqs()) {
      if (seq >= this.state.activeSeq) continue;
      for (const d of this.disks) {
        const scan = scanLogFile(path.join(this.dir, 'logs', String(seq), `${d.target}.osrlog`));
        const list = (out[d.target] ??= []);
        for (const r of scan.records) if (r.type !== 3 && r.length > 0) list.push([r.offset, r.offset + r.length]);
      }
    }
    return out;
  }

  /** The reader of one disk: the open backup's export (the initial copy's or the resync's instant). */
  async read(target: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const { client } = await this.exportOf(target);
    // QEMU's export answers at most 32 MiB a request: larger reads go in pieces, together
    const out = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    const pieces: Promise<void>[] = [];
    for (let at = 0; at < length; at += READ_CHUNK) {
      const n = Math.min(READ_CHUNK, length - at);
      pieces.push(client.read(offset + at, n).then((data) => void data.copy(out, at)));
      if (pieces.length >= READS_IN_FLIGHT) await Promise.all(pieces.splice(0));
    }
    await Promise.all(pieces);
    return out;
  }

  async digests(target: string, offset: number, length: number, blockSize: number): Promise<Buffer> {
    return blockDigests(await this.read(target, offset, length), blockSize);
  }

  async allocated(target: string, from: number, size: number): Promise<{ offset: number; length: number }[]> {
    const { client, context } = await this.exportOf(target);
    if (context !== 'base:allocation') return [{ offset: from, length: size - from }];
    return (await changedExtents(client, context)).filter((e) => e.offset + e.length > from).map((e) => (e.offset < from ? { offset: from, length: e.offset + e.length - from } : e));
  }

  private async exportOf(target: string): Promise<{ client: NbdClient; context: string }> {
    if (!this.backup) {
      // a copy or resync resumed after a restart: the instant it began is gone with its
      // backup job, so it reads the disks as they are now; the checkpoint of the delta it
      // ends in is intact, and that delta carries every block written since, over the copy
      if (!this.state.enabled) throw new OsrError('INVALID_STATE', `change tracking of ${this.domain} is off: nothing may be read for a point`);
      this.backup = await PullBackup.begin(this.virsh, this.domain, { disks: this.disks.map((d) => d.target), workDir: this.workDir });
    }
    let c = this.clients.get(target);
    if (!c) {
      c = await this.backup.open(target).catch(async (e: unknown) => {
        // a full backup exports base:allocation; one without a checkpoint may not: read everything
        if (toOsrError(e).code !== 'RESYNC_REQUIRED') throw e;
        const client = await NbdClient.connect({ socketPath: this.backup!.socketPath, exportName: target });
        return { client, context: 'none' };
      });
      this.clients.set(target, c);
    }
    return c;
  }

  private async endBackup(): Promise<void> {
    const u = this.unsettled;
    this.unsettled = undefined;
    if (u) {
      // a streamed delta never settled: the replica may hold it or not, so what changed since cannot be known
      await u.inc.end().catch(() => undefined);
      this.markResyncRequired(`delta ${u.seq} of ${this.domain} was streamed and never settled`);
    }
    for (const c of this.clients.values()) await c.client.close().catch(() => undefined);
    this.clients.clear();
    const b = this.backup;
    this.backup = undefined;
    await b?.end();
  }

  private logSeqs(): number[] {
    const dir = path.join(this.dir, 'logs');
    return fs
      .readdirSync(dir)
      .filter((f) => /^\d+$/.test(f))
      .map(Number)
      .sort((a, b) => a - b);
  }

  private removeLogs(which: (seq: number) => boolean): void {
    for (const seq of this.logSeqs()) if (which(seq)) fs.rmSync(path.join(this.dir, 'logs', String(seq)), { recursive: true, force: true });
  }
}
