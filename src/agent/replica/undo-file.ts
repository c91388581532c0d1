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
import { fdatasyncAsync, readFully, readGatherFiles, writeAllAt, WriteBack } from '../io/io.js';

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


/**
 * Write an undo file from sources (ranges must not overlap) and return it open. The copying
 * runs on the thread pool. The file is fsynced before returning unless `sync: false` (the
 * caller then fsyncs it itself).
 */
export async function writeUndoFile(path: string, diskKey: Buffer, sources: UndoSource[], opts: { sync?: boolean } = {}): Promise<UndoFile> {
  const fd = fs.openSync(path, 'w+', 0o600);
  try {
    const header = Buffer.alloc(HEADER_BYTES);
    MAGIC.copy(header, 0);
    header.writeUInt16LE(1, 8);
    diskKey.copy(header, 16, 0, 16);
    await writeAllAt(fd, [header], 0);
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
    const index = Buffer.alloc(entries.length * ENTRY_BYTES + FOOTER_BYTES);
    entries.forEach((e, i) => {
      index.writeBigUInt64LE(BigInt(e.offset), i * ENTRY_BYTES);
      index.writeBigUInt64LE(BigInt(e.length), i * ENTRY_BYTES + 8);
      index.writeBigUInt64LE(BigInt(e.dataPos), i * ENTRY_BYTES + 16);
    });
    const f = entries.length * ENTRY_BYTES;
    index.writeBigUInt64LE(BigInt(pos), f);
    index.writeBigUInt64LE(BigInt(entries.length), f + 8);
    dataDigest.digest().copy(index, f + 16);
    digest(index.subarray(0, f + 32)).copy(index, f + 32);
    await writeAllAt(fd, [index], pos);
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

