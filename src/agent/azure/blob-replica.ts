/**
 * One VM's replica in an Azure storage account (docs/design/azure.md): a container with a
 * page blob per disk, `replica.json` (the disks, the retention, the initial copy's
 * progress), and the recovery points as snapshot sets (blob-points.ts). The storage
 * account holds everything that matters, so the replica outlives the primary site.
 *
 * It is a ReplicaTarget: a replication session (replica/replication-server.ts) drives it
 * as it drives a replica store, over an in-process stream from the sending agent. The
 * received change logs wait in a spool directory on the sending host until applied.
 *
 * A resync writes the blocks it finds different straight into the live blobs (no point is
 * the live blob). So the resync is recorded in `replica.json` before its first write, and
 * until its own point is made no other delta is taken: a point made then would hold half
 * of the resync's writes.
 */
import { MAX_RECORD_BYTES, RECORD_BLOB } from '../../domain/azure-layout.js';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { BlockBlobClient, ContainerClient } from '@azure/storage-blob';
import { isRestError } from '@azure/storage-blob';
import { OsrError } from '../../domain/errors.js';
import { blockDigests } from '../io/checksum.js';
import { ExtentMap } from '../io/extent-map.js';
import { readFully } from '../io/io.js';
import type { DiskRanges } from '../io/ranges.js';
import type { DeltaDiskFile, RecoveryPoint, ReplicaDiskSpec, ReplicaTarget, ResyncState, RetentionSpec } from '../ports/replica-target.js';
import { safeSeq } from '../../domain/names.js';
import { checkResyncBegin } from '../ports/target-rules.js';
import { diskKeyOf, RecordType, scanLogFile } from '../tracking/change-log.js';
import { BlobPoints, type BlobPoint } from './blob-points.js';
import { PageBlobDisk, storageError, type DiskPiece } from './page-blob-disk.js';

/** What `replica.json` records. */
interface ReplicaRecord {
  version: 1;
  vmId: string;
  vmName: string;
  disks: ReplicaDiskSpec[];
  retention: RetentionSpec;
  initial: { done: boolean; copied: Record<string, number>; finishedDisks: string[] };
  /** the replication epoch: a primary with a lower one is refused (another site was promoted) */
  epoch?: number;
  /** a resync whose writes may be in the live blobs: no point but its own is made until it ends */
  resync?: ResyncState | undefined;
  /** the blobs are being made blank for a new initial copy (resetInitial): finished by whoever opens the replica next */
  resetting?: true | undefined;
  /** made anew at each start over: only snapshots of this generation are points */
  generation: string;
  /**
   * set by the recovery site's provider when a failback made the replica stale (the VM ran
   * in Azure and came home): every block may differ from the primary, so the next primary
   * compares all of them (a resync) before any delta; cleared by the resync's point
   */
  divergent?: 'all' | undefined;
}


/** The most one blockHashes call compares, and how much of it is read at a time. */
const MAX_HASHED_BYTES = 256 * 1024 * 1024;
const HASH_READ_BYTES = 8 * 1024 * 1024;

/** A delta's data is read from its log and sent this much at a time per disk. */
const DELTA_BATCH_BYTES = 32 * 1024 * 1024;

export interface AzureReplicaOptions {
  /** where received change logs wait until applied (on the sending host): one directory per replica */
  spoolDir: string;
  now?: () => number;
  /**
   * make the container when it does not exist (with the account's own credentials); an
   * agent's SAS reaches only a container made for it, which must exist
   */
  createContainer?: boolean;
}

export class AzureBlobReplica implements ReplicaTarget {
  private cache: BlobPoint[] = [];
  private applying: number | undefined;
  /** replaced by a newer object of the same replica (a renewed SAS, a new replication): it takes no more calls */
  private retired = false;
  /** a record write failed: what the service holds is not known, so this object takes no more calls */
  broken = false;
  private inflight = 0;
  private readonly idle: (() => void)[] = [];

  private constructor(
    private readonly container: ContainerClient,
    private readonly recordBlob: BlockBlobClient,
    private record: ReplicaRecord,
    private etag: string | undefined,
    private readonly blobDisks: PageBlobDisk[],
    private readonly spoolDir: string,
    private readonly now: () => number,
  ) {
    this.pointSets = new BlobPoints(container, blobDisks, () => this.record.generation);
  }

  private readonly pointSets: BlobPoints;

  /** Open the replica in `container`, or make it. A container that holds another VM's replica, or other disks, is refused. */
  static async open(container: ContainerClient, spec: { vmId: string; vmName: string; disks: ReplicaDiskSpec[]; retention: RetentionSpec }, o: AzureReplicaOptions): Promise<AzureBlobReplica> {
    const now = o.now ?? Date.now;
    if (o.createContainer === true) {
      try {
        await container.createIfNotExists();
      } catch (e) {
        throw storageError(e, `making container ${container.containerName}`);
      }
    }
    const recordBlob = container.getBlockBlobClient(RECORD_BLOB);
    let record: ReplicaRecord;
    let etag: string | undefined;
    const existing = await readRecord(recordBlob);
    if (existing) {
      record = existing.record;
      etag = existing.etag;
      if (record.vmId !== spec.vmId) throw new OsrError('INVALID_STATE', `container ${container.containerName} holds the replica of ${record.vmId}, not ${spec.vmId}`, { container: container.containerName });
      if (!AzureBlobReplica.sameDisks(record.disks, spec.disks)) throw new OsrError('DISK_CHANGE_UNSUPPORTED', `the replica of ${spec.vmId} in ${container.containerName} has other disks than the VM (a replica in Azure storage cannot change its disks under protection): put the disks back, or disable protection deleting the replica and enable it again`, { container: container.containerName });
    } else {
      record = { version: 1, vmId: spec.vmId, vmName: spec.vmName, disks: spec.disks, retention: spec.retention, initial: { done: false, copied: {}, finishedDisks: [] }, generation: newGeneration() };
    }
    const disks: PageBlobDisk[] = [];
    for (const d of spec.disks) {
      // a blob the record says holds data must be there: made anew it would read as zeros under later deltas
      const holdsData = existing !== undefined && (record.initial.done || (record.initial.copied[d.name] ?? 0) > 0);
      disks.push(await PageBlobDisk.open(container, d.name, d.size, { mustExist: holdsData }));
    }
    const r = new AzureBlobReplica(container, recordBlob, record, etag, disks, o.spoolDir, now);
    if (!existing) await r.update(() => undefined);
    await r.setRetention(spec.retention);
    // a reset cut off part-way: its blobs may still hold the old copy's bytes
    if (r.record.resetting) await r.finishReset();
    r.cache = await r.pointSets.points();
    // a resync whose point was made, cut off before its record was cleared
    const latest = r.latestPoint();
    if (r.record.resync && latest && r.record.resync.seq <= latest.seq) {
      await r.update((x) => {
        x.resync = undefined;
      });
    }
    return r;
  }

  /**
   * Take no more calls, and resolve once the calls under way have ended: a newer object of
   * the same replica then starts from what they left.
   */
  async retire(): Promise<void> {
    this.retired = true;
    if (this.inflight > 0) await new Promise<void>((resolve) => this.idle.push(resolve));
  }

  private assertLive(): void {
    if (this.retired || this.broken) throw new OsrError('NETWORK_ERROR', `this agent's handle on the replica of ${this.vmId} was replaced (a new SAS, a new replication, or a record write that failed); the replication connects again`);
  }

  /** Run a call that changes the replica: refused once retired, waited for by retire(). */
  private async run<T>(op: () => Promise<T>): Promise<T> {
    this.assertLive();
    this.inflight++;
    try {
      return await op();
    } finally {
      if (--this.inflight === 0) for (const w of this.idle.splice(0)) w();
    }
  }

  /**
   * Change the record: on a copy, written on the ETag condition, taken in memory only once
   * written. A write whose outcome is not known (an error after it may have landed) leaves
   * this object broken: a new one reads what the service holds.
   */
  private async update(change: (r: ReplicaRecord) => void): Promise<void> {
    // (a call under way when the handle was retired finishes its writes: only new calls are refused)
    if (this.broken) this.assertLive();
    const next = structuredClone(this.record);
    change(next);
    await this.save(next);
    this.record = next;
  }

  static sameDisks(a: readonly ReplicaDiskSpec[], b: readonly ReplicaDiskSpec[]): boolean {
    return a.length === b.length && a.every((d, i) => d.id === b[i]!.id && d.name === b[i]!.name && d.size === b[i]!.size);
  }

  async setRetention(retention: RetentionSpec): Promise<void> {
    if (retention.hours === this.record.retention.hours && retention.maxPoints === this.record.retention.maxPoints) return;
    await this.run(() =>
      this.update((r) => {
        r.retention = retention;
      }),
    );
  }

  get vmId(): string {
    return this.record.vmId;
  }
  get vmName(): string {
    return this.record.vmName;
  }
  get epoch(): number {
    return this.record.epoch ?? 1;
  }
  /** the resync under way, if one is recorded */
  get resync(): ResyncState | undefined {
    return this.record.resync;
  }
  get disks(): readonly ReplicaDiskSpec[] {
    return this.record.disks;
  }
  get initialDone(): boolean {
    return this.record.initial.done;
  }
  initialProgress(): Record<string, number> {
    return { ...this.record.initial.copied };
  }
  finishedInitialDisks(): string[] {
    return [...this.record.initial.finishedDisks];
  }
  points(): RecoveryPoint[] {
    return this.cache.map((s) => s.point);
  }
  latestPoint(): RecoveryPoint | undefined {
    return this.cache.at(-1)?.point;
  }
  async setEpoch(epoch: number): Promise<void> {
    if (epoch < this.epoch) {
      throw new OsrError('EPOCH_STALE', `replication epoch ${epoch} is older than the replica's ${this.epoch}: another site was promoted`, { epoch, current: this.epoch });
    }
    if (epoch !== this.record.epoch) {
      await this.run(() =>
        this.update((r) => {
          r.epoch = epoch;
        }),
      );
    }
  }

  /**
   * Start over from a full copy: every disk's blob and snapshots deleted and made blank
   * (the copy sends no zeros, so the old bytes must go), every point with them. The record
   * says so first: a crash part-way leaves a replica whose copy is not done, not old data
   * under a finished one.
   */
  async resetInitial(): Promise<void> {
    await this.run(async () => {
      if (this.applying !== undefined) throw new OsrError('INVALID_STATE', `delta ${this.applying} of ${this.vmName} is being applied; start over when it is done`);
      await this.update((r) => {
        r.initial = { done: false, copied: {}, finishedDisks: [] };
        r.resync = undefined;
        r.resetting = true;
        // a full copy makes the replica equal to the primary: a failback's stale mark goes with the old copy
        r.divergent = undefined;
        // no snapshot of the old copy can be a point of the new one, whatever is left of it
        r.generation = newGeneration();
      });
      await this.finishReset();
    });
  }

  private async finishReset(): Promise<void> {
    this.cache = [];
    for (const d of this.blobDisks) await d.recreate();
    fs.rmSync(this.spoolDir, { recursive: true, force: true });
    await this.update((r) => {
      r.resetting = undefined;
    });
  }

  /** 'all' after a failback made the replica stale (the provider marks it); otherwise nothing diverges beyond the logs. */
  get divergent(): 'all' | undefined {
    return this.record.divergent === 'all' ? 'all' : undefined;
  }
  addDivergence(ranges: DiskRanges): void {
    void ranges;
  }

  /** A checkpoint's offset: within the disk. */
  private checkpointOffset(disk: string, offset: number): void {
    const d = this.disk(disk);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > d.size) throw new OsrError('INVALID_ARGUMENT', `checkpoint ${offset} lies outside disk ${disk}`);
  }

  private disk(name: string): PageBlobDisk {
    const d = this.blobDisks.find((x) => x.name === name);
    if (!d) throw new OsrError('NOT_FOUND', `the replica of ${this.vmId} has no disk ${name}`);
    return d;
  }

  // ---- the initial copy --------------------------------------------------------------

  async writeInitial(disk: string, offset: number, data: readonly Buffer[]): Promise<void> {
    await this.run(async () => {
      this.assertCopying();
      await this.disk(disk).write([{ offset, data: data.length === 1 ? data[0]! : Buffer.concat(data) }]);
    });
  }

  async zeroInitial(disk: string, offset: number, length: number): Promise<void> {
    await this.run(async () => {
      this.assertCopying();
      await this.disk(disk).write([{ offset, length, zero: true }]);
    });
  }

  /** Everything below `offset` of `disk` is in its blob (each write returned): recorded. */
  async checkpointInitial(disk: string, offset: number, finished: boolean): Promise<void> {
    await this.run(async () => {
      this.assertCopying();
      this.checkpointOffset(disk, offset);
      await this.update((r) => {
        const i = r.initial;
        i.copied[disk] = Math.max(i.copied[disk] ?? 0, offset);
        if (finished && !i.finishedDisks.includes(disk)) i.finishedDisks.push(disk);
      });
    });
  }

  private assertCopying(): void {
    if (this.record.initial.done) throw new OsrError('INVALID_STATE', `the initial copy of ${this.vmId} is done; changes come as deltas`);
    if (this.record.resetting) throw new OsrError('INVALID_STATE', `the replica of ${this.vmId} is being started over; open it again`);
  }

  // ---- deltas --------------------------------------------------------------------------

  /** where delta `seq`'s change logs are received */
  incomingDir(seq: number): string {
    return path.join(this.spoolDir, 'incoming', String(safeSeq(seq)).padStart(12, '0'));
  }

  get applyingSeq(): number | undefined {
    return this.applying;
  }

  /**
   * Apply one delta (a closed change log per disk) as recovery point `point.seq`: verified
   * whole first (checksums, chain, close record, disk key, ranges), then written to the
   * live blobs and snapshotted (blob-points.ts). Safe to call again with the same delta.
   * `resync`: the delta a resynchronization ends in (its number may skip).
   */
  async applyDelta(point: RecoveryPoint, files: readonly DeltaDiskFile[]): Promise<'applied' | 'duplicate'> {
    return this.run(async () => {
      if (this.applying !== undefined) throw new OsrError('INVALID_STATE', `delta ${this.applying} of ${this.vmName} is being applied`);
      this.applying = point.seq;
      try {
        const outcome = await this.applyNow(point, files);
        // the logs are in the blobs (or were there already): the spool keeps nothing
        fs.rmSync(this.incomingDir(point.seq), { recursive: true, force: true });
        return outcome;
      } finally {
        this.applying = undefined;
      }
    });
  }

  private async applyNow(point: RecoveryPoint, files: readonly DeltaDiskFile[]): Promise<'applied' | 'duplicate'> {
    const latest = this.latestPoint();
    if (latest && point.seq <= latest.seq) return 'duplicate';
    if (this.record.resync && latest && this.record.resync.seq <= latest.seq) {
      // its point was made, its record not cleared (cut off between the two)
      await this.update((r) => {
        r.resync = undefined;
      });
    }
    const resync = this.record.resync;
    if (resync && resync.seq !== point.seq) {
      throw new OsrError('INVALID_STATE', `a resync of ${this.vmName} ending in point ${resync.seq} has written into its blobs: delta ${point.seq} is taken only after it (resynchronize)`, { resync: resync.seq, got: point.seq });
    }
    if (resync && !this.record.disks.every((d) => resync.disks[d.name]?.finished === true)) {
      throw new OsrError('INVALID_STATE', `the resync of ${this.vmName} has not compared every disk yet`);
    }
    if (this.record.divergent && !resync) {
      throw new OsrError('INVALID_STATE', `the replica of ${this.vmName} is stale since a failback; it takes a resync before any delta`);
    }
    if (latest && point.seq !== latest.seq + 1 && !resync) {
      throw new OsrError('REPLICA_CHAIN_BROKEN', `delta ${point.seq} does not follow the latest recovery point ${latest.seq} of ${this.vmName}`, { latest: latest.seq, got: point.seq });
    }
    const i = this.record.initial;
    if (!i.done && i.finishedDisks.length < this.record.disks.length) throw new OsrError('INVALID_STATE', `initial replication of ${this.vmId} has not copied every disk yet`);
    const maps = new Map<string, { file: string; map: ExtentMap<'data' | 'zero'> }>();
    for (const spec of this.record.disks) {
      const f = files.find((x) => x.diskName === spec.name);
      if (!f) throw new OsrError('INVALID_ARGUMENT', `delta ${point.seq} has no change log for disk ${spec.name}`);
      const scan = scanLogFile(f.file);
      if (!scan.close || scan.tornBytes > 0) throw new OsrError('CHANGE_LOG_CORRUPT', `${f.file}: delta ${point.seq} of disk ${spec.name} is incomplete`);
      if (scan.header.seq !== point.seq) throw new OsrError('REPLICA_CHAIN_BROKEN', `${f.file}: change log ${scan.header.seq} arrived as delta ${point.seq}`);
      if (!scan.header.diskKey.equals(diskKeyOf(spec.id))) throw new OsrError('CHANGE_LOG_CORRUPT', `${f.file}: change log belongs to another disk than ${spec.name}`);
      const map = new ExtentMap<'data' | 'zero'>();
      for (const r of scan.records) {
        if (r.offset + r.length > spec.size) throw new OsrError('CHANGE_LOG_CORRUPT', `${f.file}: record ${r.index} lies outside disk ${spec.name}`);
        if (r.type === RecordType.Write) map.set(r.offset, r.offset + r.length, 'data', r.dataPos);
        else if (r.type === RecordType.Zero) map.set(r.offset, r.offset + r.length, 'zero', 0);
      }
      maps.set(spec.name, { file: f.file, map });
    }
    const sources = new Map([...maps].map(([disk, m]) => [disk, () => piecesOf(m.file, m.map)] as const));
    // a resync's point may skip the numbers of the logs it replaced
    const outcome = await this.pointSets.apply(point, sources, { first: latest === undefined || resync !== undefined });
    if (!i.done || resync) {
      await this.update((r) => {
        r.initial.done = true;
        r.resync = undefined;
        // the resync compared every block: the replica equals the primary at this point
        r.divergent = undefined;
      });
    }
    await this.pointSets.prune(this.record.retention, this.now());
    this.cache = await this.pointSets.points();
    return outcome;
  }

  // ---- resynchronization -----------------------------------------------------------------

  /**
   * Begin or resume a resync ending in point `seq`, recorded before anything is written. A
   * new resync replacing an unfinished one starts its comparison from the beginning: the
   * blobs hold some of the old one's writes, which the comparison finds or keeps.
   */
  async beginResync(id: string, seq: number, blockSize: number): Promise<ResyncState> {
    return this.run(async () => {
      if (this.applying !== undefined) throw new OsrError('INVALID_STATE', `delta ${this.applying} of ${this.vmName} is being applied; begin the resync when it is done`);
      const latest = this.latestPoint();
      checkResyncBegin(this.vmId, latest, this.record.initial.done, seq, blockSize);
      const cur = this.record.resync;
      if (cur && cur.id === id && cur.seq === seq && cur.blockSize === blockSize) return cur;
      const state: ResyncState = { id, seq, blockSize, disks: {} };
      for (const d of this.record.disks) state.disks[d.name] = { offset: 0, bytes: 0, finished: false };
      // recorded before the first write it makes
      await this.update((r) => {
        r.resync = state;
      });
      return this.record.resync!;
    });
  }

  private requireResync(): ResyncState {
    const r = this.record.resync;
    if (!r) throw new OsrError('PROTOCOL_ERROR', `no resync of ${this.vmId} is under way`);
    return r;
  }

  async stageResync(disk: string, offset: number, parts: readonly Buffer[]): Promise<void> {
    await this.run(async () => {
      const r = this.requireResync();
      await this.resyncWrite(disk, r.seq, [{ offset, data: parts.length === 1 ? parts[0]! : Buffer.concat(parts) }]);
    });
  }

  async stageResyncZero(disk: string, offset: number, length: number): Promise<void> {
    await this.run(async () => {
      const r = this.requireResync();
      await this.resyncWrite(disk, r.seq, [{ offset, length, zero: true }]);
    });
  }

  /** Everything below `offset` of `disk` is compared and its differences written (each write returned): recorded. */
  async checkpointResync(disk: string, offset: number, finished: boolean): Promise<ResyncState> {
    return this.run(async () => {
      this.requireResync();
      this.checkpointOffset(disk, offset);
      await this.update((r) => {
        const p = r.resync!.disks[disk]!;
        p.offset = Math.max(p.offset, offset);
        p.finished ||= finished;
      });
      return this.record.resync!;
    });
  }

  /**
   * Checksums of the blocks of [offset, offset + length) of the live blob, as the replica
   * store gives them (blockDigests): what a resync compares with the source. The live blob
   * is what the next delta builds on; no point is read or changed by this.
   */
  async blockHashes(disk: string, offset: number, length: number, blockSize: number): Promise<Buffer> {
    const d = this.disk(disk);
    if (!Number.isSafeInteger(blockSize) || blockSize < 512 || offset < 0 || length <= 0 || length > MAX_HASHED_BYTES || offset + length > d.size || offset % blockSize !== 0) {
      throw new OsrError('INVALID_ARGUMENT', `block range ${offset}+${length} does not fit disk ${disk} of ${d.size} bytes in ${blockSize}-byte blocks`);
    }
    // read in pieces of whole blocks, several at once
    const per = Math.max(blockSize, Math.floor(HASH_READ_BYTES / blockSize) * blockSize);
    const reads: Promise<Buffer>[] = [];
    for (let at = 0; at < length; at += per) reads.push(d.read(offset + at, Math.min(per, length - at)).then((b) => blockDigests(b, blockSize)));
    return Buffer.concat(await Promise.all(reads));
  }

  /**
   * A block a resync found different, written straight into the live blob: no point is the
   * live blob, so nothing needs staging; the resync's own delta then makes its point. The
   * writes carry the resync point's number, so none lands once that point is recorded.
   */
  private async resyncWrite(disk: string, resyncSeq: number, pieces: readonly DiskPiece[]): Promise<void> {
    const latest = this.latestPoint();
    if (latest && resyncSeq <= latest.seq) throw new OsrError('REPLICA_CHAIN_BROKEN', `resync point ${resyncSeq} is not after the latest point ${latest.seq} of ${this.vmId}`);
    if (!(await this.disk(disk).write(pieces, resyncSeq))) throw new OsrError('INVALID_STATE', `disk ${disk} of ${this.vmId} already records point ${resyncSeq}: the resync's writes come too late`);
  }

  // ---- replica.json ----------------------------------------------------------------------

  /**
   * Write the record on condition that nobody else wrote it since it was read (another agent
   * writing the same replica). A refused condition after the SDK sent the write again is
   * this write's own first try that landed: the record is read back, and taken if it is ours.
   */
  private async save(next: ReplicaRecord): Promise<void> {
    const body = JSON.stringify(next, null, 2);
    try {
      const r = await this.recordBlob.upload(body, Buffer.byteLength(body), {
        conditions: this.etag === undefined ? { ifNoneMatch: '*' } : { ifMatch: this.etag },
        blobHTTPHeaders: { blobContentType: 'application/json' },
      });
      this.etag = r.etag;
    } catch (e) {
      if (isRestError(e) && (e.statusCode === 412 || e.statusCode === 409)) {
        const now = await readRecord(this.recordBlob).catch(() => undefined);
        if (now && JSON.stringify(now.record, null, 2) === body) {
          this.etag = now.etag;
          return;
        }
        this.broken = true;
        throw new OsrError('INVALID_STATE', `the replica of ${this.vmId} in ${this.container.containerName} was changed by someone else since this agent read it`, { container: this.container.containerName }, { cause: e });
      }
      this.broken = true;
      throw storageError(e, `recording the replica of ${this.vmId}`);
    }
  }
}

function newGeneration(): string {
  return crypto.randomBytes(8).toString('hex');
}

/** A record read back is checked before it is trusted: the storage account is not. */
function isRecord(r: unknown): r is ReplicaRecord {
  const x = r as ReplicaRecord;
  return (
    typeof x === 'object' &&
    x !== null &&
    x.version === 1 &&
    typeof x.vmId === 'string' &&
    typeof x.vmName === 'string' &&
    typeof x.generation === 'string' &&
    Array.isArray(x.disks) &&
    x.disks.every((d) => typeof d?.id === 'string' && typeof d.name === 'string' && Number.isSafeInteger(d.size)) &&
    typeof x.retention === 'object' &&
    typeof x.initial === 'object' &&
    x.initial !== null &&
    typeof x.initial.done === 'boolean' &&
    Array.isArray(x.initial.finishedDisks) &&
    typeof x.initial.copied === 'object'
  );
}

async function readRecord(blob: BlockBlobClient): Promise<{ record: ReplicaRecord; etag: string | undefined } | undefined> {
  try {
    const r = await blob.download();
    if ((r.contentLength ?? 0) > MAX_RECORD_BYTES) throw new OsrError('REPLICA_STORE_CORRUPT', `${blob.name} is ${r.contentLength} bytes; an osr replica record is far smaller`);
    const chunks: Buffer[] = [];
    let bytes = 0;
    for await (const c of r.readableStreamBody!) {
      bytes += (c as Buffer).length;
      if (bytes > MAX_RECORD_BYTES) throw new OsrError('REPLICA_STORE_CORRUPT', `${blob.name} is larger than an osr replica record`);
      chunks.push(c as Buffer);
    }
    const record: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    if (!isRecord(record)) throw new OsrError('REPLICA_STORE_CORRUPT', `${blob.name} is not an osr replica record`);
    return { record, etag: r.etag };
  } catch (e) {
    if (isRestError(e) && e.statusCode === 404) return undefined;
    if (e instanceof SyntaxError) throw new OsrError('REPLICA_STORE_CORRUPT', `${blob.name} is not valid JSON`, undefined, { cause: e });
    throw storageError(e, `reading ${blob.name}`);
  }
}

/** A coalesced delta's extents as pieces, their data read from the log, about DELTA_BATCH_BYTES at a time. */
async function* piecesOf(file: string, map: ExtentMap<'data' | 'zero'>): AsyncIterable<DiskPiece[]> {
  const fd = fs.openSync(file, 'r');
  try {
    let batch: DiskPiece[] = [];
    let bytes = 0;
    for (const e of map.entries()) {
      if (e.value === 'zero') batch.push({ offset: e.start, length: e.end - e.start, zero: true });
      else {
        const data = Buffer.allocUnsafe(e.end - e.start);
        readFully(fd, data, e.base);
        batch.push({ offset: e.start, data });
        bytes += data.length;
      }
      if (bytes >= DELTA_BATCH_BYTES) {
        yield batch;
        batch = [];
        bytes = 0;
      }
    }
    if (batch.length > 0) yield batch;
  } finally {
    fs.closeSync(fd);
  }
}
