/** Files for copy benchmarks: random content, byte-for-byte comparison. */
import crypto from 'node:crypto';
import fs from 'node:fs';

const CHUNK = 4 * 1024 * 1024;

/** Overwrite a file (that exists, at its size) with random bytes, 4 MiB at a time, and fsync. */
export function fillRandom(file: string, bytes: number): number {
  const t0 = performance.now();
  const fd = fs.openSync(file, fs.existsSync(file) ? 'r+' : 'w');
  try {
    for (let pos = 0; pos < bytes; pos += CHUNK) {
      const buf = crypto.randomBytes(Math.min(CHUNK, bytes - pos));
      let done = 0;
      while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, pos + done);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return (performance.now() - t0) / 1000;
}

/** True when the two files hold the same first `bytes` bytes. */
export function sameBytes(a: string, b: string, bytes: number): boolean {
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  const ba = Buffer.allocUnsafe(CHUNK);
  const bb = Buffer.allocUnsafe(CHUNK);
  try {
    for (let pos = 0; pos < bytes; pos += CHUNK) {
      const n = Math.min(CHUNK, bytes - pos);
      const ra = fs.readSync(fa, ba, 0, n, pos);
      const rb = fs.readSync(fb, bb, 0, n, pos);
      if (ra !== n || rb !== n || !ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
    }
    return true;
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}
