/**
 * Undo files of the replica store. Applying a delta to a replica image first copies the
 * bytes it is about to overwrite into an undo file; the undo file of point P therefore
 * turns P back into the point before it. Reading an older point is the image overlaid
 * with the undo files of every later point (the oldest of them wins on overlap).
 *
 * Layout: header 64 bytes ("OSRUNDO\0" | version u16 | 6 reserved | diskKey 16 | 32 reserved),
 * then data, then the index (count × [offset u64 | length u64 | dataPos u64]), then a
 * 48-byte footer: indexPos u64 | count u64 | dataDigest 16 | xxh128(index ‖ footer 0..31) 16.
 * dataDigest covers every byte from the header's end to indexPos. Files written now begin
 * their data at DATA_START (zeroes after the header, covered by the digest like data), so
 * that aligned data goes to the disk with direct I/O; older files begin it right after the
 * header. Readers go by each entry's dataPos and read both alike.
 */
import fs from 'node:fs';
import { OsrError } from '../../domain/errors.js';
import { createDigest, digest } from '../io/checksum.js';
import { alignedBuffer, canAlign, DIRECT_ALIGN, isAligned, openDirect, openDirectRead } from '../io/direct-io.js';
import { fdatasyncAsync, readFully, readGatherFiles, writeAllAt, WriteBack, type FilePiece, type IoPiece } from '../io/io.js';

const MAGIC = Buffer.from('OSRUNDO\0', 'latin1');
const HEADER_BYTES = 64;
const FOOTER_BYTES = 48;
const ENTRY_BYTES = 24;
/** where the data of a new undo file begins (DIRECT_ALIGN): the header, then zeroes */
const DATA_START = DIRECT_ALIGN;
const COPY_CHUNK = 4 * 1024 * 1024;
/** gathered reads of an image run together while an undo file is written (with its write and the log's writes beside them) */
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


/** The header and the zeroes after it, up to DATA_START (the zeroes belong to the data digest). */
function encodeHeader(diskKey: Buffer): Buffer {
  const header = Buffer.alloc(DATA_START);
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
 * The descriptors an undo file's data is copied through: the image (buffered, and direct
 * where the native addon and the file system allow it) and the undo file (likewise).
 * Direct I/O keeps a delta's gigabyte of scattered image reads and undo writes out of the
 * page cache: the reads skip read-ahead, the writes are on the disk when they return (the
 * fdatasync that makes the file durable still follows, as for buffered writes). Only
 * aligned pieces (offset, length and place in the batch buffer) go direct; the rest, and
 * everything where direct I/O is not to be had, is buffered. The bytes are the same.
 */
class CopyFds {
  readonly undoDirect: number | undefined;
  readonly imageDirect: number | undefined;

  constructor(
    readonly undo: number,
    undoPath: string,
    readonly image: number,
    imagePath: string | undefined,
  ) {
    this.undoDirect = canAlign() ? openDirect(undoPath) : undefined;
    try {
      this.imageDirect = canAlign() && imagePath !== undefined ? openDirectRead(imagePath) : undefined;
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** A batch buffer (aligned where direct I/O may use it). */
  buffer(bytes = BATCH_BYTES): Buffer {
    return this.undoDirect !== undefined || this.imageDirect !== undefined ? alignedBuffer(Math.ceil(bytes / DIRECT_ALIGN) * DIRECT_ALIGN) : Buffer.allocUnsafe(bytes);
  }

  /** Image pieces [imagePos, bufOffset, length] of a batch as reads, direct where aligned. */
  reads(pieces: readonly IoPiece[]): FilePiece[] {
    const direct = this.imageDirect;
    return pieces.map(([pos, into, len]) => [direct !== undefined && into % DIRECT_ALIGN === 0 && isAligned(pos, len) ? direct : this.image, pos, into, len] as const);
  }

  /** Write a batch at `at` in the undo file; true when it went direct (nothing left dirty). */
  async write(buf: Buffer, at: number): Promise<boolean> {
    const direct = this.undoDirect !== undefined && isAligned(at, buf.length);
    await writeAllAt(direct ? this.undoDirect! : this.undo, [buf], at);
    return direct;
  }

  close(): void {
    for (const fd of [this.undoDirect, this.imageDirect]) if (fd !== undefined) fs.closeSync(fd);
  }
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
  private readonly io: CopyFds;
  private pos = DATA_START;
  private end = 0;
  private batch: { at: number; length: number; pieces: IoPiece[] } | undefined;
  /** two batch buffers: one is read into while the other is written out */
  private readonly bufs: Buffer[] = [];
  private batches = 0;
  private chain: Promise<void> = Promise.resolve();
  /** the write of the last batch read (the next batch is read meanwhile) */
  private writing: Promise<void> = Promise.resolve();
  private failed: unknown;
  private valid = true;
  private done = false;

  /** `imagePath` (the file of `imageFd`) lets the image be read with direct I/O. */
  constructor(
    readonly path: string,
    imageFd: number,
    diskKey: Buffer,
    imagePath?: string,
  ) {
    this.fd = fs.openSync(path, 'w+', 0o600);
    try {
      this.io = new CopyFds(this.fd, path, imageFd, imagePath);
    } catch (e) {
      fs.closeSync(this.fd);
      throw e;
    }
    this.writeBack = new WriteBack(this.fd);
    const header = encodeHeader(diskKey);
    this.dataDigest.update(header.subarray(HEADER_BYTES));
    this.step(() => writeAllAt(this.fd, [header], 0));
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
    const i = this.batches++ % 2;
    this.step(async () => {
      // batches are read and hashed in order; a batch is read while the one before it is
      // written, into the other buffer (whose last write, two batches back, has ended)
      const buf = (this.bufs[i] ??= this.io.buffer()).subarray(0, b.length);
      await readGatherFiles(buf, this.io.reads(b.pieces), UNDO_READ_LANES);
      this.dataDigest.update(buf);
      await this.writing;
      this.writing = this.io.write(buf, b.at).then(
        (direct) => {
          if (!direct) this.writeBack.wrote(b.length);
        },
        (e: unknown) => {
          this.failed ??= e;
        },
      );
    });
  }

  /** The undo file, complete but not synced; undefined when it gave up (then it is removed). */
  async finish(): Promise<UndoFile | undefined> {
    if (this.done) return undefined;
    this.flush();
    await this.chain;
    await this.writing;
    if (this.done) return undefined;
    this.done = true;
    this.io.close();
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
    await this.writing;
    if (this.done) return;
    this.done = true;
    this.io.close();
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
  let io: CopyFds | undefined;
  try {
    // the sources' reads stay buffered (any files); the undo's aligned batches go direct
    io = new CopyFds(fd, path, -1, undefined);
    const header = encodeHeader(diskKey);
    await writeAllAt(fd, [header], 0);
    let pos = DATA_START;
    const dataDigest = createDigest();
    dataDigest.update(header.subarray(HEADER_BYTES));
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
    const copy = io;
    const bufs = batches.length > 0 ? [copy.buffer(batches[0].length), copy.buffer(batches[0].length)] : [];
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
      writing = copy.write(buf, b.at).then((direct) => {
        if (!direct) writeBack.wrote(b.length);
      });
    }
    await writing;
    await writeBack.settle();
    await writeAllAt(fd, [encodeIndex(entries, pos, dataDigest.digest())], pos);
    if (opts.sync !== false) await fdatasyncAsync(fd);
    return { path, fd, entries };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  } finally {
    io?.close();
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

