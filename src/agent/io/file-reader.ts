/**
 * Reading a disk whose bytes are a file on this host (a lab VM's raw image): positioned
 * and gathered reads, block checksums on the thread pool, and allocated ranges from the
 * file's holes. It is the lab's reader of the change-source seam (ports/change-source.ts:
 * DiskReader); a libvirt host reads a backup's export over NBD instead.
 */
import { fileBlockDigests } from './checksum.js';
import { readAt, readGather, type IoPiece } from './io.js';
import { dataRanges } from './sparse.js';

export class FileDiskReader {
  /** `fd()`: the file's descriptor now (it may be reopened between calls) */
  constructor(private readonly fd: () => number) {}

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return readAt(this.fd(), length, offset, into);
  }

  readPieces(buf: Buffer, pieces: readonly IoPiece[]): Promise<Buffer> {
    return readGather(this.fd(), buf, pieces);
  }

  blockDigests(offset: number, length: number, blockSize: number): Promise<Buffer> {
    return fileBlockDigests(this.fd(), offset, length, blockSize);
  }

  async dataRanges(from: number, size: number): Promise<{ offset: number; length: number }[]> {
    return dataRanges(this.fd(), from, size);
  }
}
