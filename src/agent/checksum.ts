/**
 * Checksums used end to end: xxh128 (XXH3, 128-bit, seed 0), 16 bytes, computed in native
 * code (xxhash-addon). The digest bytes are XXH128's canonical (big-endian) form.
 */
import xxhash from 'xxhash-addon';

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

export interface Hasher {
  update(b: Uint8Array): void;
  digest(): Buffer;
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
