/**
 * Checksums used end to end: xxh128 (XXH3, 128-bit, seed 0), 16 bytes, computed in native
 * code (xxhash-addon). The digest bytes are XXH128's canonical (big-endian) form.
 */
import xxhash from 'xxhash-addon';
import { readAt } from './io.js';
import { addon } from './native.js';

export const DIGEST_BYTES = 16;

const SEED = Buffer.alloc(8);
const shared = new xxhash.XXHash128(SEED);

/** xxh128 of the concatenation of parts. */
export function digest(...parts: Uint8Array[]): Buffer {
  if (parts.length === 1) return xxhash.XXHash128.hash(toBuffer(parts[0]!));
  shared.reset();
  for (const p of parts) shared.update(toBuffer(p));
  return shared.digest();
}

/** Buffers at least this long are hashed on the thread pool by digestOff. */
const OFF_THREAD_BYTES = 256 * 1024;

/**
 * xxh128 of the concatenation of parts, as `digest`; one large buffer is hashed on the
 * thread pool, so the main thread goes on receiving or sending meanwhile.
 */
export function digestOff(parts: Buffer[]): Promise<Buffer> | Buffer {
  if (addon && parts.length === 1 && parts[0]!.length >= OFF_THREAD_BYTES) return addon.digestBuffer(parts[0]!);
  return digest(...parts);
}

export interface Hasher {
  update(b: Uint8Array): void;
  digest(): Buffer;
  /** start over, as a new hasher */
  reset(): void;
}

/** A hasher of its own, for digests fed across awaits (e.g. a whole file streamed). */
export function createDigest(): Hasher {
  const h = new xxhash.XXHash128(SEED);
  return {
    update(b: Uint8Array) {
      h.update(toBuffer(b));
    },
    digest() {
      return h.digest();
    },
    reset() {
      h.reset();
    },
  };
}

function toBuffer(b: Uint8Array): Buffer {
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** xxh128 of every `blockSize` block of buf (the last may be shorter), back to back. */
export function blockDigests(buf: Uint8Array, blockSize: number): Buffer {
  const b = toBuffer(buf);
  const count = Math.ceil(b.length / blockSize);
  const out = Buffer.allocUnsafe(count * DIGEST_BYTES);
  for (let i = 0; i < count; i++) {
    xxhash.XXHash128.hash(b.subarray(i * blockSize, Math.min(b.length, (i + 1) * blockSize))).copy(out, i * DIGEST_BYTES);
  }
  return out;
}

/** Pieces a range is hashed in at once: the thread pool's four workers, each reading and hashing its own piece. */
const HASH_PIECES = 4;

/**
 * xxh128 of every `blockSize` block of the file range [offset, offset + length) (the last
 * may be shorter), back to back, as `blockDigests` of the bytes read. The native addon
 * reads and hashes on the thread pool, in pieces at once, without the bytes passing
 * through JS; without it, the range is read and hashed here.
 */
export async function fileBlockDigests(fd: number, offset: number, length: number, blockSize: number): Promise<Buffer> {
  if (!addon) return blockDigests(await readAt(fd, length, offset), blockSize);
  const blocks = Math.ceil(length / blockSize);
  const per = Math.ceil(blocks / HASH_PIECES) * blockSize;
  const pieces: Promise<Buffer>[] = [];
  for (let at = 0; at < length; at += per) pieces.push(addon.hashBlocks(fd, offset + at, Math.min(per, length - at), blockSize));
  const parts = await Promise.all(pieces);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/**
 * The runs of consecutive blocks whose digests differ between `a` and `b` (same length),
 * as [offset, length] in bytes from the start of the range they cover, which is `length`
 * bytes long (its last block may be shorter); no run is longer than `maxRun` bytes.
 */
export function differingRuns(a: Buffer, b: Buffer, blockSize: number, length: number, maxRun: number): [number, number][] {
  // compared as 32-bit words: a digest is four of them
  const wa = words(a);
  const wb = words(b);
  const blocks = a.length / DIGEST_BYTES;
  const same = (i: number) => {
    const w = i * 4;
    return wa[w] === wb[w] && wa[w + 1] === wb[w + 1] && wa[w + 2] === wb[w + 2] && wa[w + 3] === wb[w + 3];
  };
  const runs: [number, number][] = [];
  for (let i = 0; i < blocks; ) {
    if (same(i)) {
      i++;
      continue;
    }
    let end = i + 1;
    while (end < blocks && (end - i) * blockSize < maxRun && !same(end)) end++;
    const offset = i * blockSize;
    runs.push([offset, Math.min(length, end * blockSize) - offset]);
    i = end;
  }
  return runs;
}

function words(b: Buffer): Uint32Array {
  const aligned = b.byteOffset % 4 === 0 ? b : Buffer.from(b);
  return new Uint32Array(aligned.buffer, aligned.byteOffset, aligned.length / 4);
}
