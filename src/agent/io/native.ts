/**
 * The project's small native addon (native/): file primitives Node's fs lacks, and block
 * checksums of a file range computed off the main thread. Where it
 * is not built, callers fall back to slower paths that give the same bytes.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  seekData(fd: number, offset: number): number;
  seekHole(fd: number, offset: number): number;
  punchHole(fd: number, offset: number, length: number): void;
  alignOffset(buf: Buffer, align: number): number;
  /** xxh128 (canonical) of each blockSize block of the file range, back to back, read and hashed on the thread pool. */
  hashBlocks(fd: number, offset: number, length: number, blockSize: number): Promise<Buffer>;
  /** Read (write) the triples [filePos, bufOffset, length] of plan into (from) buf, in one trip to the thread pool. */
  readGather(fd: number, buf: Buffer, plan: Float64Array): Promise<void>;
  writeScatter(fd: number, buf: Buffer, plan: Float64Array): Promise<void>;
  /** xxh128 (canonical) of the whole buffer, hashed on the thread pool. */
  digestBuffer(buf: Buffer): Promise<Buffer>;
  /** A duplicate of the descriptor (close-on-exec). */
  dupFd(fd: number): number;
  /** AES-256-GCM on the thread pool: seal src into dst (src's length plus the 16-byte tag; in place or apart). */
  sealRecord(key: Buffer, nonce: Buffer, aad: Buffer, src: Buffer, dst: Buffer): Promise<void>;
  /** Check the tag that ends `sealed` and decrypt the rest in place: false (and zeroes) when it does not match. */
  openRecord(key: Buffer, nonce: Buffer, aad: Buffer, sealed: Buffer): Promise<boolean>;
}

function loadAddon(): NativeAddon | undefined {
  const require = createRequire(import.meta.url);
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = path.join(dir, 'native', 'build', 'Release', 'osr_sparse.node');
    if (fs.existsSync(candidate)) return require(candidate) as NativeAddon;
    dir = path.dirname(dir);
  }
  return undefined;
}

export const addon = loadAddon();
