/** Positional file I/O on the thread pool, finishing short reads and writes. */
import fs from 'node:fs';
import { addon } from './native.js';

/** Read length bytes at pos into buf (or a new buffer); past the end of file reads as zeroes. */
export function readAt(fd: number, length: number, pos: number, buf: Buffer = Buffer.allocUnsafe(length)): Promise<Buffer> {
  const out = buf.length === length ? buf : buf.subarray(0, length);
  return new Promise((resolve, reject) => {
    const step = (done: number) => {
      if (done >= length) return resolve(out);
      fs.read(fd, out, done, length - done, pos + done, (e, n) => {
        if (e) return reject(e);
        if (n === 0) {
          out.fill(0, done);
          return resolve(out);
        }
        step(done + n);
      });
    };
    step(0);
  });
}

/** Write every byte of parts, in order, starting at pos. */
export function writeAllAt(fd: number, parts: readonly Buffer[], pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (bufs: Buffer[], at: number) => {
      if (bufs.length === 0) return resolve();
      fs.writev(fd, bufs, at, (e, n) => {
        if (e) return reject(e);
        // drop what was written; a short write continues with the rest
        let left = n;
        const rest: Buffer[] = [];
        for (const b of bufs) {
          if (left >= b.length) left -= b.length;
          else {
            rest.push(left > 0 ? b.subarray(left) : b);
            left = 0;
          }
        }
        step(rest, at + n);
      });
    };
    step(parts.filter((b) => b.length > 0), pos);
  });
}

/** One range of a gathered read or scattered write: a file position, where in the buffer, how many bytes. */
export type IoPiece = readonly [filePos: number, bufOffset: number, length: number];

/** Parallel reads or writes per gather or scatter where the native addon is not built. */
const IO_PARALLELISM = 8;

function plan(pieces: readonly IoPiece[]): Float64Array {
  const out = new Float64Array(pieces.length * 3);
  pieces.forEach((p, i) => out.set(p, i * 3));
  return out;
}

/**
 * Read many ranges of a file into one buffer (past the end of file reads as zeroes). The
 * native addon does it in one trip to the thread pool; without it, several reads at once.
 */
export async function readGather(fd: number, buf: Buffer, pieces: readonly IoPiece[]): Promise<Buffer> {
  if (addon) await addon.readGather(fd, buf, plan(pieces));
  else await forEachBounded(pieces, IO_PARALLELISM, async ([pos, at, len]) => void (await readAt(fd, len, pos, buf.subarray(at, at + len))));
  return buf;
}

/** A range of some file to gather: its descriptor, then as an IoPiece. */
export type FilePiece = readonly [fd: number, filePos: number, bufOffset: number, length: number];

/**
 * `readGather` over ranges of several files: one gathered read per file, all at once.
 * With `lanes` > 1, each file's ranges are dealt out to that many gathered reads running
 * together (random reads of a disk go faster several at a time than one after another).
 */
export async function readGatherFiles(buf: Buffer, pieces: readonly FilePiece[], lanes = 1): Promise<Buffer> {
  const byFd = new Map<number, IoPiece[]>();
  for (const [fd, pos, at, len] of pieces) {
    const list = byFd.get(fd) ?? [];
    list.push([pos, at, len]);
    byFd.set(fd, list);
  }
  const reads: Promise<Buffer>[] = [];
  for (const [fd, list] of byFd) {
    const n = Math.max(1, Math.min(lanes, list.length));
    for (let lane = 0; lane < n; lane++) reads.push(readGather(fd, buf, n === 1 ? list : list.filter((_, i) => i % n === lane)));
  }
  await Promise.all(reads);
  return buf;
}

/** Write many ranges of one buffer to their places in a file, as `readGather` reads them. */
export async function writeScatter(fd: number, buf: Buffer, pieces: readonly IoPiece[]): Promise<void> {
  if (addon) await addon.writeScatter(fd, buf, plan(pieces));
  else await forEachBounded(pieces, IO_PARALLELISM, ([pos, at, len]) => writeAllAt(fd, [buf.subarray(at, at + len)], pos));
}

/** fdatasync on the thread pool. */
export function fdatasyncAsync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (e) => (e ? reject(e) : resolve())));
}

/** Fill buf from pos, synchronously; past the end of the file reads as zeroes (sparse images). */
export function readFully(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) {
      buf.fill(0, done);
      return;
    }
    done += n;
  }
}

/** Write all of buf at pos, synchronously. */
export function writeFully(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, pos + done);
}

/** Run fn over items with at most `limit` calls in flight; rejects with the first failure after all settle. */
export async function forEachBounded<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { e: unknown } | undefined;
  const lane = async (): Promise<void> => {
    while (next < items.length && !failure) {
      const i = next++;
      try {
        await fn(items[i], i);
      } catch (e) {
        failure ??= { e };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  if (failure) throw failure.e;
}

/**
 * Early write-back of a file being written: every `everyBytes` written, an fdatasync is
 * started on the thread pool and not awaited (one at a time), so the disk writes while the
 * writer goes on and the final sync finds little left. A page cache of gigabytes would
 * otherwise hold a whole delta dirty until that sync. A failed early sync is kept and
 * thrown by `settle()`: a later fdatasync may not report it again.
 */
export class WriteBack {
  private since = 0;
  private running: Promise<void> | undefined;
  private failure: { e: unknown } | undefined;

  constructor(
    private readonly fd: number,
    private readonly everyBytes = 64 * 1024 * 1024,
  ) {}

  wrote(bytes: number): void {
    this.since += bytes;
    if (this.since < this.everyBytes || this.running) return;
    this.since = 0;
    this.running = fdatasyncAsync(this.fd).then(
      () => void (this.running = undefined),
      (e: unknown) => {
        this.running = undefined;
        this.failure ??= { e };
      },
    );
  }

  /** Wait for the sync running, if any; throws the first that failed. */
  async settle(): Promise<void> {
    if (this.running) await this.running;
    if (this.failure) throw this.failure.e;
  }
}
