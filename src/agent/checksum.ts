/**
 * Checksums used end to end: xxh128 (hash-wasm), 16 bytes. One shared hasher serves
 * one-shot digests; it is never held across an await, so calls cannot interleave.
 */
import { createXXHash128, type IHasher } from 'hash-wasm';

export const DIGEST_BYTES = 16;

const shared: IHasher = await createXXHash128();

/** xxh128 of the concatenation of parts. */
export function digest(...parts: Uint8Array[]): Buffer {
  shared.init();
  for (const p of parts) shared.update(p);
  const out = shared.digest('binary');
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
}

/** A hasher of its own, for digests fed across awaits (e.g. a whole file streamed). */
export async function createDigest(): Promise<{ update(b: Uint8Array): void; digest(): Buffer }> {
  const h = await createXXHash128();
  h.init();
  return {
    update(b: Uint8Array) {
      h.update(b);
    },
    digest() {
      const out = h.digest('binary');
      return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
    },
  };
}

const streaming: IHasher = await createXXHash128();

/**
 * A digest fed in a loop that never awaits (synchronous I/O only): shares one hasher, so
 * the caller must finish with digest() before yielding to the event loop.
 */
export function syncDigest(): { update(b: Uint8Array): void; digest(): Buffer } {
  streaming.init();
  return {
    update(b: Uint8Array) {
      streaming.update(b);
    },
    digest() {
      const out = streaming.digest('binary');
      return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
    },
  };
}
