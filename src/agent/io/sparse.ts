/**
 * Sparse-file helpers over a raw image: find allocated ranges (SEEK_DATA/SEEK_HOLE) and
 * deallocate ranges (fallocate PUNCH_HOLE). They come from the small native addon in
 * native/ (native.ts); where it is not built, every range counts as allocated and deallocation
 * writes zeroes, which is slower but gives the same bytes.
 */
import fs from 'node:fs';
import { addon } from './native.js';

export const hasSparseSupport = addon !== undefined;

export interface DataRange {
  readonly offset: number;
  readonly length: number;
}

/** The allocated ranges of an open file within [start, end). */
export function dataRanges(fd: number, start: number, end: number): DataRange[] {
  if (!addon) return end > start ? [{ offset: start, length: end - start }] : [];
  const out: DataRange[] = [];
  let pos = start;
  while (pos < end) {
    const data = addon.seekData(fd, pos);
    if (data < 0 || data >= end) break;
    let hole = addon.seekHole(fd, data);
    if (hole < 0 || hole > end) hole = end;
    out.push({ offset: data, length: hole - data });
    pos = hole;
  }
  return out;
}

const ZERO_CHUNK = Buffer.alloc(1 << 20);

/** Deallocate [offset, offset+length) so it reads as zeroes. */
export function punchHole(fd: number, offset: number, length: number): void {
  if (length <= 0) return;
  if (addon) {
    try {
      addon.punchHole(fd, offset, length);
      return;
    } catch {
      // fall through: a file system without hole punching still gets zeroes
    }
  }
  writeZeroRange(fd, offset, length);
}

export function writeZeroRange(fd: number, offset: number, length: number): void {
  let done = 0;
  while (done < length) {
    const n = Math.min(ZERO_CHUNK.length, length - done);
    fs.writeSync(fd, ZERO_CHUNK, 0, n, offset + done);
    done += n;
  }
}

/** True when every byte of buf is zero. */
export function isZero(buf: Buffer): boolean {
  let i = 0;
  const n = buf.length;
  // compare 1 MiB windows against a zero buffer: Buffer.compare is native and fast
  while (i < n) {
    const len = Math.min(ZERO_CHUNK.length, n - i);
    if (buf.compare(ZERO_CHUNK, 0, len, i, i + len) !== 0) return false;
    i += len;
  }
  return true;
}
