/**
 * Direct I/O (O_DIRECT) for bulk writes that should bypass the page cache: the initial
 * copy at the replica writes each received frame straight to the disk from a small pool
 * of aligned, reused buffers instead of dirtying gigabytes of page cache. Where O_DIRECT
 * or the native addon is not available (tmpfs, other platforms), callers use ordinary
 * buffered writes; the bytes on disk are the same.
 */
import fs from 'node:fs';
import { addon } from './native.js';

/** Offsets, lengths and buffer addresses of direct I/O are multiples of this. */
export const DIRECT_ALIGN = 4096;

/** Open a file for direct writes, or undefined when its file system refuses O_DIRECT. */
export function openDirect(file: string): number | undefined {
  if (!addon || fs.constants.O_DIRECT === undefined) return undefined;
  try {
    return fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EINVAL') return undefined;
    throw e;
  }
}

/** Open a file for direct reads, or undefined where the addon or the file system does not allow it. */
export function openDirectRead(file: string): number | undefined {
  if (!addon || fs.constants.O_DIRECT === undefined) return undefined;
  try {
    return fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EINVAL') return undefined;
    throw e;
  }
}

/** Whether `buf` starts at an address direct I/O takes (false where the addon is not built). */
export function isAlignedMemory(buf: Buffer): boolean {
  return addon !== undefined && addon.alignOffset(buf, DIRECT_ALIGN) === 0;
}

/** Whether aligned buffers (and so direct I/O) can be had here. */
export function canAlign(): boolean {
  return addon !== undefined;
}

export function isAligned(offset: number, length: number): boolean {
  return offset % DIRECT_ALIGN === 0 && length % DIRECT_ALIGN === 0;
}

/** A buffer of `size` bytes whose memory starts on a DIRECT_ALIGN boundary. */
export function alignedBuffer(size: number): Buffer {
  if (!addon) throw new Error('aligned buffers need the native addon');
  const raw = Buffer.allocUnsafeSlow(size + DIRECT_ALIGN);
  const skip = addon.alignOffset(raw, DIRECT_ALIGN);
  return raw.subarray(skip, skip + size);
}

/**
 * A bounded pool of aligned buffers. acquire() waits while all are lent out, which also
 * bounds the direct writes in flight; buffers are allocated on first use and kept.
 */
export class AlignedPool {
  private readonly free: Buffer[] = [];
  private readonly waiters: ((b: Buffer) => void)[] = [];
  private created = 0;

  constructor(
    readonly bufferBytes: number,
    private readonly maxBuffers: number,
  ) {}

  acquire(): Promise<Buffer> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    if (this.created < this.maxBuffers) {
      this.created++;
      return Promise.resolve(alignedBuffer(this.bufferBytes));
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(b: Buffer): void {
    const w = this.waiters.shift();
    if (w) w(b);
    else this.free.push(b);
  }
}
