/**
 * Undo files of the replica store. Applying a delta to a replica image first copies the
 * bytes it is about to overwrite into an undo file; the undo file of point P therefore
 * turns P back into the point before it. Reading an older point is the image overlaid
 * with the undo files of every later point (the oldest of them wins on overlap).
 *
 * Layout: header 64 bytes ("OSRUNDO\0" | version u16 | 6 reserved | diskKey 16 | 32 reserved),
 * then data, then the index (count × [offset u64 | length u64 | dataPos u64]), then a
 * 48-byte footer: indexPos u64 | count u64 | dataDigest 16 | xxh128(index ‖ footer 0..31) 16.
 */
import fs from 'node:fs';
import { OsrError } from '../../domain/errors.js';
import { createDigest, digest } from '../io/checksum.js';
import { fdatasyncAsync, readFully, readGatherFiles, writeAllAt, WriteBack, type IoPiece } from '../io/io.js';

const MAGIC = Buffer.from('OSRUNDO\0', 'latin1');
const HEADER_BYTES = 64;
const FOOTER_BYTES = 48;
const ENTRY_BYTES = 24;
const COPY_CHUNK = 4 * 1024 * 1024;
/** gathered reads of an image run together while an undo file is written (the thread pool has four threads) */
const UNDO_READ_LANES = 3;
/** bytes of undo data gathered per write while writing an undo file */
const BATCH_BYTES = 8 * 1024 * 1024;

export interface UndoEntry {
  offset: number;
  length: number;
  dataPos: number;
}

/** Where the bytes of an undo entry come from while writing a new undo file. */
export interface UndoSource {
  offset: number;
  length: number;
  /** file descriptor and position to copy from */
  fd: number;
  pos: number;
}

export interface UndoFile {
  path: string;
  fd: number;
  entries: UndoEntry[];
}


function encodeHeader(diskKey: Buffer): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(header, 0);
  header.writeUInt16LE(1, 8);
  diskKey.copy(header, 16, 0, 16);
  return header;
}

/** The index and footer of an undo file whose data ends at `indexPos`. */
function encodeIndex(entries: readonly UndoEntry[], indexPos: number, dataDigest: Buffer): Buffer {
  const index = Buffer.alloc(entries.length * ENTRY_BYTES + FOOTER_BYTES);
  entries.forEach((e, i) => {
    index.writeBigUInt64LE(BigInt(e.offset), i * ENTRY_BYTES);
    index.writeBigUInt64LE(BigInt(e.length), i * ENTRY_BYTES + 8);
    index.writeBigUInt64LE(BigInt(e.dataPos), i * ENTRY_BYTES + 16);
  });
  const f = entries.length * ENTRY_BYTES;
  index.writeBigUInt64LE(BigInt(indexPos), f);
  index.writeBigUInt64LE(BigInt(entries.length), f + 8);
  dataDigest.copy(index, f + 16);
  digest(index.subarray(0, f + 32)).copy(index, f + 32);
  return index;
}

/**
 * An undo file written while its delta arrives: ranges are added in the order the delta's
 * records name them, and the bytes they hold now are copied from the image (which nothing
 * writes until the delta is applied) in batches, in order, on the thread pool. Ranges that
 * go backwards or overlap make it give up (`finish` answers undefined): the apply then
 * writes the undo itself. `finish` completes the file as `writeUndoFile` would for the
 * same ranges merged where adjacent (not synced); `abandon` removes it.
 */
export class UndoWriter {
  private readonly fd: number;
  private readonly entries: UndoEntry[] = [];
  private readonly dataDigest = createDigest();
  private readonly writeBack: WriteBack;
  private pos = HEADER_BYTES;
  private end = 0;
  private batch: { at: number; length: number; pieces: IoPiece[] } | undefined;
  private buf: Buffer | undefined;
  private chain: Promise<void> = Promise.resolve();
  private failed: unknown;
  private valid = true;
  private done = false;

  constructor(
    readonly path: string,
    private readonly imageFd: number,
    diskKey: Buffer,
  ) {
    this.fd = fs.openSync(path, 'w+', 0o600);
    this.writeBack = new WriteBack(this.fd);
    this.step(() => writeAllAt(this.fd, [encodeHeader(diskKey)], 0));
  }

  /** The delta changes [offset, offset + length) next. */
  add(offset: number, length: number): void {
    if (!this.valid || this.done || length <= 0) return;
    if (offset < this.end) {
      this.valid = false;
      return;
    }
    const last = this.entries.at(-1);
    if (last && last.offset + last.length === offset) last.length += length;
    else this.entries.push({ offset, length, dataPos: this.pos });
    this.end = offset + length;
    for (let done = 0; done < length; ) {
      if (this.batch && this.batch.length === BATCH_BYTES) this.flush();
      const b = (this.batch ??= { at: this.pos + done, length: 0, pieces: [] });
      const n = Math.min(BATCH_BYTES - b.length, length - done);
      b.pieces.push([offset + done, b.length, n]);
      b.length += n;
      done += n;
    }
    this.pos += length;
  }

  /** Give up: the apply writes the undo itself. */
  invalidate(): void {
    this.valid = false;
  }

  private step(fn: () => Promise<void>): void {
    this.chain = this.chain.then(async () => {
      if (this.failed === undefined && this.valid) await fn();
    }).catch((e: unknown) => {
      this.failed ??= e;
    });
  }

  private flush(): void {
    const b = this.batch;
    this.batch = undefined;
    if (!b) return;
    this.step(async () => {
      const buf = (this.buf ??= Buffer.allocUnsafe(BATCH_BYTES)).subarray(0, b.length);
      await readGatherFiles(buf, b.pieces.map(([pos, into, len]) => [this.imageFd, pos, into, len] as const), UNDO_READ_LANES);
      this.dataDigest.update(buf);
      await writeAllAt(this.fd, [buf], b.at);
      this.writeBack.wrote(b.length);
    });
  }

  /** The undo file, complete but not synced; undefined when it gave up (then it is removed). */
  async finish(): Promise<UndoFile | undefined> {
    if (this.done) return undefined;
    this.flush();
    await this.chain;
    if (this.done) return undefined;
    this.done = true;
    try {
      if (!this.valid || this.failed !== undefined) throw this.failed ?? new Error('gave up');
      await this.writeBack.settle();
      await writeAllAt(this.fd, [encodeIndex(this.entries, this.pos, this.dataDigest.digest())], this.pos);
      return { path: this.path, fd: this.fd, entries: this.entries };
    } catch {
      fs.closeSync(this.fd);
      fs.rmSync(this.path, { force: true });
      return undefined;
    }
  }

  /** Stop and remove the file (nothing once `finish` handed it over). */
  async abandon(): Promise<void> {
    if (this.done) return;
    this.valid = false;
    await this.chain;
    if (this.done) return;
    this.done = true;
    fs.closeSync(this.fd);
    fs.rmSync(this.path, { force: true });
  }
}

/**
 * Write an undo file from sources (ranges must not overlap) and return it open. The copying
 * runs on the thread pool. The file is fsynced before returning unless `sync: false` (the
 * caller then fsyncs it itself).
 */
export async function writeUndoFile(path: string, diskKey: Buffer, sources: UndoSource[], opts: { sync?: boolean } = {}): Promise<UndoFile> {
  const fd = fs.openSync(path, 'w+', 0o600);
  try {
    await writeAllAt(fd, [encodeHeader(diskKey)], 0);
    let pos = HEADER_BYTES;
    const dataDigest = createDigest();
    const entries: UndoEntry[] = [];
    // The data region is the sources back to back, so it is filled in batches: the pieces of
    // a batch (many small random reads of an image) are gathered into one buffer,
    // which is hashed in order and written with one call while the next batch is read.
    const batches: { at: number; length: number; pieces: { fd: number; pos: number; length: number; into: number }[] }[] = [];
    let batch: (typeof batches)[number] | undefined;
    for (const s of sources) {
      entries.push({ offset: s.offset, length: s.length, dataPos: pos });
      for (let done = 0; done < s.length; ) {
        if (!batch || batch.length === BATCH_BYTES) {
          batch = { at: pos + done, length: 0, pieces: [] };
          batches.push(batch);
        }
        const n = Math.min(BATCH_BYTES - batch.length, s.length - done);
        batch.pieces.push({ fd: s.fd, pos: s.pos + done, length: n, into: batch.length });
        batch.length += n;
        done += n;
      }
      pos += s.length;
    }
    const bufs = batches.length > 0 ? [Buffer.allocUnsafe(batches[0].length), Buffer.allocUnsafe(batches[0].length)] : [];
    // the disk writes the undo while the next batches are read (the sync at the end is short)
    const writeBack = new WriteBack(fd);
    let writing: Promise<void> = Promise.resolve();
    for (let i = 0; i < batches.length; i++) {
      const b = batches[i];
      const buf = bufs[i % 2].subarray(0, b.length);
      // the pieces are scattered over an image: read several at a time
      await readGatherFiles(buf, b.pieces.map((p) => [p.fd, p.pos, p.into, p.length] as const), UNDO_READ_LANES);
      dataDigest.update(buf);
      await writing;
      writing = writeAllAt(fd, [buf], b.at).then(() => writeBack.wrote(b.length));
    }
    await writing;
    await writeBack.settle();
    await writeAllAt(fd, [encodeIndex(entries, pos, dataDigest.digest())], pos);
    if (opts.sync !== false) await fdatasyncAsync(fd);
    return { path, fd, entries };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Open an undo file and verify its index (the data is verified by `verifyUndoData`). */
export function openUndoFile(path: string): UndoFile {
  const fd = fs.openSync(path, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const head = Buffer.alloc(HEADER_BYTES);
    readFully(fd, head, 0);
    if (size < HEADER_BYTES + FOOTER_BYTES || !head.subarray(0, 8).equals(MAGIC)) {
      throw new OsrError('REPLICA_STORE_CORRUPT', `${path}: not an undo file`);
    }
    const footer = Buffer.alloc(FOOTER_BYTES);
    readFully(fd, footer, size - FOOTER_BYTES);
    const indexPos = Number(footer.readBigUInt64LE(0));
    const count = Number(footer.readBigUInt64LE(8));
    if (indexPos + count * ENTRY_BYTES + FOOTER_BYTES !== size) {
      throw new OsrError('REPLICA_STORE_CORRUPT', `${path}: undo index does not fit the file`);
    }
    const index = Buffer.alloc(count * ENTRY_BYTES + FOOTER_BYTES);
    readFully(fd, index, indexPos);
    const f = count * ENTRY_BYTES;
    if (!digest(index.subarray(0, f + 32)).equals(index.subarray(f + 32, f + 48))) {
      throw new OsrError('REPLICA_STORE_CORRUPT', `${path}: undo index checksum mismatch`);
    }
    const entries: UndoEntry[] = [];
    for (let i = 0; i < count; i++) {
      entries.push({
        offset: Number(index.readBigUInt64LE(i * ENTRY_BYTES)),
        length: Number(index.readBigUInt64LE(i * ENTRY_BYTES + 8)),
        dataPos: Number(index.readBigUInt64LE(i * ENTRY_BYTES + 16)),
      });
    }
    return { path, fd, entries };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Re-read the data region and compare with the digest in the footer. */
export async function verifyUndoData(u: UndoFile): Promise<boolean> {
  const size = fs.fstatSync(u.fd).size;
  const footer = Buffer.alloc(FOOTER_BYTES);
  readFully(u.fd, footer, size - FOOTER_BYTES);
  const indexPos = Number(footer.readBigUInt64LE(0));
  const h = createDigest();
  const buf = Buffer.allocUnsafe(COPY_CHUNK);
  for (let pos = HEADER_BYTES; pos < indexPos; pos += COPY_CHUNK) {
    const part = buf.subarray(0, Math.min(COPY_CHUNK, indexPos - pos));
    readFully(u.fd, part, pos);
    h.update(part);
  }
  return h.digest().equals(footer.subarray(16, 32));
}

export function closeUndoFile(u: UndoFile): void {
  fs.closeSync(u.fd);
}

