/**
 * One replicated disk as a page blob (docs/design/azure.md): the disk's bytes, zeros to a
 * whole MiB, and a fixed-VHD footer, so that the blob, or a copy of one of its snapshots,
 * imports as an Azure managed disk. Writes go up as Put Page calls of whole 512-byte pages,
 * at most 4 MiB each (a piece that does not start or end on a page is merged with the
 * page's current bytes first); zero ranges are cleared. A delta's writes carry the
 * condition "the blob's sequence number is below this delta's", so none lands after the
 * delta was recorded as applied.
 */
import { diskBlobName } from '../../domain/azure-layout.js';
import { isRestError, type ContainerClient, type PageBlobClient, type PageBlobRequestConditions } from '@azure/storage-blob';
import { OsrError } from '../../domain/errors.js';
import { safeName } from '../../domain/names.js';
import { azureDiskBytes, pageBlobBytes, readVhdFooter, vhdFooter, VHD_FOOTER_BYTES } from '../../domain/vhd.js';

export const PAGE = 512;
/** the most a Put Page call may carry */
export const MAX_PUT_PAGE = 4 * 1024 * 1024;

/** A piece of a disk to write: bytes, or zeros. */
export type DiskPiece = { offset: number; data: Buffer } | { offset: number; length: number; zero: true };

export interface PageBlobDiskOptions {
  /** Put Page calls in flight at once (default 32: a delta of scattered small writes is one call per run of pages, and the calls wait on the service, not on this host) */
  inFlight?: number;
  /** the replica records data in this blob: a missing blob is damage, not a blob to make */
  mustExist?: boolean;
}

/** An Azure storage failure as an osr error, with the HTTP status and the service's code. */
export function storageError(e: unknown, what: string): OsrError {
  if (e instanceof OsrError) return e;
  if (isRestError(e)) {
    const details = { status: e.statusCode ?? null, azureCode: e.code ?? null };
    if (e.statusCode === 401 || e.statusCode === 403) return new OsrError('AUTH_FAILED', `the storage account refused ${what}: ${e.code ?? e.statusCode}`, details, { cause: e });
    if (e.statusCode === 404) return new OsrError('NOT_FOUND', `${what}: the storage account has no such ${e.code === 'ContainerNotFound' ? 'container' : 'blob'} (${e.code ?? 404})`, details, { cause: e });
    return new OsrError('AZURE_STORAGE_ERROR', `${what} failed: ${e.code ?? e.message}${e.statusCode ? ` (HTTP ${e.statusCode})` : ''}`, details, { cause: e });
  }
  return new OsrError('AZURE_STORAGE_ERROR', `${what} failed: ${(e as Error)?.message ?? String(e)}`, undefined, { cause: e });
}

function isSequenceConditionNotMet(e: unknown): boolean {
  return isRestError(e) && e.statusCode === 412 && e.code === 'SequenceNumberConditionNotMet';
}

/** A write run: whole pages [start, end) and the pieces that land in it (the rest is read from the blob). */
interface Run {
  start: number;
  end: number;
  pieces: { offset: number; data: Buffer }[];
}

export class PageBlobDisk {
  /** the page ranges runs are writing now: a run waits for those it overlaps (a page one merges, another may be writing) */
  private readonly active = new Set<{ start: number; end: number; done: Promise<void> }>();

  private constructor(
    readonly blob: PageBlobClient,
    readonly name: string,
    readonly size: number,
    private readonly inFlight: number,
  ) {}

  /** Hold pages [start, end) for one run: concurrent write() calls never merge and write the same page at once. */
  private async hold(start: number, end: number): Promise<() => void> {
    for (;;) {
      const busy = [...this.active].find((a) => a.start < end && start < a.end);
      if (!busy) break;
      await busy.done;
    }
    let release!: () => void;
    const entry = { start, end, done: new Promise<void>((r) => (release = r)) };
    this.active.add(entry);
    return () => {
      this.active.delete(entry);
      release();
    };
  }

  /** The blob of disk `name` in `container`, made (with its footer) if it does not exist, checked if it does. */
  static async open(container: ContainerClient, name: string, size: number, o: PageBlobDiskOptions = {}): Promise<PageBlobDisk> {
    safeName(name, 'disk name');
    const blob = container.getPageBlobClient(diskBlobName(name));
    const disk = new PageBlobDisk(blob, name, size, Math.max(1, o.inFlight ?? 32));
    const length = pageBlobBytes(size);
    try {
      const props = await blob.getProperties().catch((e: unknown) => {
        if (isRestError(e) && e.statusCode === 404) return undefined;
        throw e;
      });
      if (!props) {
        if (o.mustExist) throw new OsrError('REPLICA_STORE_CORRUPT', `the blob of disk ${name} is gone from ${container.containerName} while the replica records data in it: resynchronize the replica`, { blob: blob.name });
        await disk.make();
      } else if (props.contentLength !== length) {
        throw new OsrError('AZURE_DISK_INVALID', `the blob of disk ${name} is ${props.contentLength} bytes; a disk of ${size} bytes takes ${length}`, { blob: blob.name, length: props.contentLength ?? null, expected: length });
      }
      const footer = await blob.downloadToBuffer(length - VHD_FOOTER_BYTES, VHD_FOOTER_BYTES);
      // a blob made by a create whose footer write did not happen reads as zeros there
      if (footer.every((b) => b === 0)) await blob.uploadPages(vhdFooter(size), length - VHD_FOOTER_BYTES, VHD_FOOTER_BYTES);
      else if (readVhdFooter(footer, `the footer of ${blob.name}`).currentSize !== azureDiskBytes(size)) {
        throw new OsrError('AZURE_DISK_INVALID', `the footer of ${blob.name} is for another disk size than ${size} bytes`, { blob: blob.name });
      }
    } catch (e) {
      throw storageError(e, `opening the blob of disk ${name}`);
    }
    return disk;
  }

  /** Make the blob, only where there is none (Put Blob would replace one another opener just made). */
  private async make(): Promise<void> {
    const length = pageBlobBytes(this.size);
    await this.blob.create(length, { blobSequenceNumber: 0, conditions: { ifNoneMatch: '*' } }).catch((e: unknown) => {
      if (!(isRestError(e) && (e.statusCode === 409 || e.statusCode === 412))) throw e;
    });
    const made = await this.blob.getProperties();
    if (made.contentLength !== length) throw new OsrError('AZURE_DISK_INVALID', `the blob of disk ${this.name} is ${made.contentLength} bytes; a disk of ${this.size} bytes takes ${length}`, { blob: this.blob.name });
  }

  /**
   * Start the disk over: the blob and every snapshot of it deleted, a blank one (zeros, its
   * footer, sequence number 0) made. For a replica whose initial copy starts again.
   */
  async recreate(): Promise<void> {
    try {
      await this.blob.deleteIfExists({ deleteSnapshots: 'include' });
      await this.make();
      await this.blob.uploadPages(vhdFooter(this.size), pageBlobBytes(this.size) - VHD_FOOTER_BYTES, VHD_FOOTER_BYTES);
    } catch (e) {
      throw storageError(e, `starting the blob of disk ${this.name} over`);
    }
  }

  /** The number of the last delta applied to the live blob (0: none). */
  async sequenceNumber(): Promise<number> {
    try {
      return (await this.blob.getProperties()).blobSequenceNumber ?? 0;
    } catch (e) {
      throw storageError(e, `reading the sequence number of disk ${this.name}`);
    }
  }

  /** Record delta `seq` as applied (the number never goes down). */
  async setSequenceNumber(seq: number): Promise<void> {
    try {
      await this.blob.updateSequenceNumber('max', seq);
    } catch (e) {
      throw storageError(e, `recording delta ${seq} on disk ${this.name}`);
    }
  }

  /**
   * Write pieces (that do not overlap) to the live blob. With `seq`, every call is made on
   * condition that the blob's sequence number is below it: false when the blob already
   * records `seq` (nothing more is written), true when every piece was written.
   */
  async write(pieces: readonly DiskPiece[], seq?: number): Promise<boolean> {
    const conditions: PageBlobRequestConditions | undefined = seq === undefined ? undefined : { ifSequenceNumberLessThan: seq };
    const data: { offset: number; data: Buffer }[] = [];
    const clears: { offset: number; length: number }[] = [];
    for (const p of pieces) {
      const length = 'zero' in p ? p.length : p.data.length;
      if (!Number.isSafeInteger(p.offset) || p.offset < 0 || length < 0 || p.offset + length > this.size) {
        throw new OsrError('INVALID_ARGUMENT', `a write at ${p.offset} of ${length} bytes lies outside disk ${this.name} (${this.size} bytes)`);
      }
      if (length === 0) continue;
      if (!('zero' in p)) {
        data.push({ offset: p.offset, data: p.data });
        continue;
      }
      // a zero range: its whole pages cleared, its partial pages written as zeros
      const first = Math.ceil(p.offset / PAGE) * PAGE;
      const last = Math.floor((p.offset + length) / PAGE) * PAGE;
      if (first >= last) {
        data.push({ offset: p.offset, data: Buffer.alloc(length) });
        continue;
      }
      if (first > p.offset) data.push({ offset: p.offset, data: Buffer.alloc(first - p.offset) });
      clears.push({ offset: first, length: last - first });
      if (p.offset + length > last) data.push({ offset: last, data: Buffer.alloc(p.offset + length - last) });
    }
    const jobs: (() => Promise<void>)[] = [];
    for (const run of runsOf(data)) {
      jobs.push(async () => {
        const release = await this.hold(run.start, run.end);
        try {
          const buf = await this.fill(run);
          for (let at = 0; at < buf.length; at += MAX_PUT_PAGE) {
            const n = Math.min(MAX_PUT_PAGE, buf.length - at);
            await this.blob.uploadPages(buf.subarray(at, at + n), run.start + at, n, { conditions });
          }
        } finally {
          release();
        }
      });
    }
    for (const c of clears) {
      jobs.push(async () => {
        const release = await this.hold(c.offset, c.offset + c.length);
        try {
          await this.blob.clearPages(c.offset, c.length, { conditions });
        } finally {
          release();
        }
      });
    }
    try {
      await pool(jobs, this.inFlight);
      return true;
    } catch (e) {
      if (seq !== undefined && isSequenceConditionNotMet(e)) return false;
      throw storageError(e, `writing disk ${this.name}`);
    }
  }

  /** A run's whole pages: the current bytes of the pages its pieces cover only in part, then the pieces over them. */
  private async fill(run: Run): Promise<Buffer> {
    const buf = Buffer.alloc(run.end - run.start);
    const covered: [number, number][] = run.pieces.map((p) => [p.offset, p.offset + p.data.length]);
    const partial = new Set<number>();
    for (const [s, e] of covered) {
      if (s % PAGE !== 0) partial.add(Math.floor(s / PAGE) * PAGE);
      if (e % PAGE !== 0) partial.add(Math.floor(e / PAGE) * PAGE);
    }
    for (const page of partial) {
      // a page two pieces share is read once; whether the pieces cover all of it is not worked out
      const current = await this.blob.downloadToBuffer(page, PAGE);
      current.copy(buf, page - run.start);
    }
    for (const p of run.pieces) p.data.copy(buf, p.offset - run.start);
    return buf;
  }

  /** Read [offset, offset + length) of the live blob, or of one of its snapshots. */
  async read(offset: number, length: number, snapshot?: string): Promise<Buffer> {
    const b = snapshot ? this.blob.withSnapshot(snapshot) : this.blob;
    try {
      return length === 0 ? Buffer.alloc(0) : await b.downloadToBuffer(offset, length);
    } catch (e) {
      throw storageError(e, `reading disk ${this.name}`);
    }
  }

  /** Snapshot the live blob with `metadata`: its id (the snapshot's time stamp). */
  async snapshot(metadata: Record<string, string>): Promise<string> {
    try {
      const r = await this.blob.createSnapshot({ metadata });
      if (!r.snapshot) throw new OsrError('AZURE_STORAGE_ERROR', `the snapshot of disk ${this.name} came back without its id`);
      return r.snapshot;
    } catch (e) {
      throw storageError(e, `snapshotting disk ${this.name}`);
    }
  }

  async deleteSnapshot(snapshot: string): Promise<void> {
    try {
      await this.blob.withSnapshot(snapshot).deleteIfExists();
    } catch (e) {
      throw storageError(e, `deleting snapshot ${snapshot} of disk ${this.name}`);
    }
  }
}

/** Pieces sorted into runs of whole pages; pieces that share a page are in the same run. */
function runsOf(pieces: { offset: number; data: Buffer }[]): Run[] {
  const sorted = [...pieces].sort((a, b) => a.offset - b.offset);
  const runs: Run[] = [];
  for (const p of sorted) {
    const start = Math.floor(p.offset / PAGE) * PAGE;
    const end = Math.ceil((p.offset + p.data.length) / PAGE) * PAGE;
    const last = runs.at(-1);
    // a run stays under 4 MiB unless one piece is larger (it is then cut into calls)
    if (last && start < last.end) {
      last.end = Math.max(last.end, end);
      last.pieces.push(p);
    } else {
      runs.push({ start, end, pieces: [p] });
    }
  }
  return runs;
}

/** Run the jobs, `width` at a time; the first failure ends it (the others finish first). */
async function pool(jobs: (() => Promise<void>)[], width: number): Promise<void> {
  let next = 0;
  let failure: { e: unknown } | undefined;
  const worker = async () => {
    while (!failure && next < jobs.length) {
      const job = jobs[next++]!;
      try {
        await job();
      } catch (e) {
        failure ??= { e };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, jobs.length) }, worker));
  if (failure) throw failure.e;
}
