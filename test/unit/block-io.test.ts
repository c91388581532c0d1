import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { blockDigests, differingRuns, DIGEST_BYTES, fileBlockDigests } from '../../src/agent/io/checksum.js';
import { readGather, writeScatter, type IoPiece } from '../../src/agent/io/io.js';
import { addon } from '../../src/agent/io/native.js';
import { prng, randomBytes, withDir } from '../support/unit.js';

test('the native addon is built (npm ci builds it; without it resync and apply take slower paths)', () => {
  assert.ok(addon, 'native/build/Release/osr_sparse.node is missing');
});

test('block checksums of a file range equal those of the bytes read, for every block size, a short last block and past the end of the file', withDir(async (dir) => {
    const rnd = prng(7);
    const bytes = randomBytes(rnd, 3 * 1024 * 1024 + 1234);
    const file = path.join(dir, 'image.img');
    fs.writeFileSync(file, bytes);
    const fd = fs.openSync(file, 'r');
    try {
      for (const blockSize of [512, 4096, 65536, 1 << 20, 4 << 20]) {
        for (const [offset, length] of [
          [0, bytes.length],
          [blockSize, Math.min(bytes.length - blockSize, 5 * blockSize + 17)],
        ] as const) {
          const want = blockDigests(bytes.subarray(offset, offset + length), blockSize);
          assert.deepEqual(await fileBlockDigests(fd, offset, length, blockSize), want, `blocks of ${blockSize} at ${offset}+${length}`);
        }
      }
      // a sparse image's tail past the file's end reads as zeroes
      const past = Buffer.concat([bytes.subarray(3 * 1024 * 1024), Buffer.alloc(4096 * 4 - 1234)]);
      assert.deepEqual(await fileBlockDigests(fd, 3 * 1024 * 1024, 4096 * 4, 4096), blockDigests(past, 4096));
      assert.throws(() => addon!.hashBlocks(fd, -1, 4096, 4096), RangeError);
    } finally {
      fs.closeSync(fd);
    }
}));

test('gathered reads and scattered writes move exactly the planned ranges', withDir(async (dir) => {
    const rnd = prng(11);
    const size = 2 * 1024 * 1024;
    const source = randomBytes(rnd, size);
    const a = path.join(dir, 'a.img');
    const b = path.join(dir, 'b.img');
    fs.writeFileSync(a, source);
    fs.writeFileSync(b, Buffer.alloc(size));
    // scattered ranges of odd lengths, one past the end of the file (reads as zeroes)
    const pieces: IoPiece[] = [];
    let at = 0;
    for (let pos = 100; pos < size - 70_000; pos += 9000 + Math.floor(rnd() * 60_000)) {
      const len = 1 + Math.floor(rnd() * 5000);
      pieces.push([pos, at, len]);
      at += len;
    }
    pieces.push([size - 10, at, 30]);
    at += 30;
    const fa = fs.openSync(a, 'r');
    const fb = fs.openSync(b, 'r+');
    try {
      const buf = await readGather(fa, Buffer.alloc(at, 0xee), pieces);
      for (const [pos, into, len] of pieces) {
        const want = Buffer.alloc(len);
        source.copy(want, 0, pos, Math.min(size, pos + len));
        assert.deepEqual(buf.subarray(into, into + len), want, `range at ${pos}`);
      }
      await writeScatter(fb, buf, pieces.slice(0, -1));
      const expect = Buffer.alloc(size);
      for (const [pos, , len] of pieces.slice(0, -1)) source.copy(expect, pos, pos, pos + len);
      assert.deepEqual(fs.readFileSync(b), expect);
      await assert.rejects(() => readGather(fa, Buffer.alloc(10), [[0, 5, 6]]), RangeError);
    } finally {
      fs.closeSync(fa);
      fs.closeSync(fb);
    }
}));

test('differing runs cover exactly the blocks whose checksums differ, split at the frame limit, the last block short', () => {
  const blockSize = 4096;
  const blocks = 300;
  const length = blocks * blockSize - 100;
  const a = Buffer.alloc(blocks * DIGEST_BYTES, 1);
  const b = Buffer.from(a);
  const differ = new Set([0, 5, 6, 7, 64, 65, 127, 128, ...Array.from({ length: 40 }, (_, i) => 200 + i), 299]);
  for (const i of differ) b[i * DIGEST_BYTES + (i % DIGEST_BYTES)] ^= 0xff;
  // an unaligned view (as a reply's bytes may be) compares the same
  const unaligned = Buffer.concat([Buffer.alloc(1), b]).subarray(1);
  for (const other of [b, unaligned]) {
    const runs = differingRuns(a, other, blockSize, length, 16 * blockSize);
    const covered = new Set<number>();
    for (const [off, len] of runs) {
      assert.equal(off % blockSize, 0);
      assert.ok(len <= 16 * blockSize, `run of ${len} bytes exceeds the limit`);
      for (let x = off; x < off + len; x += blockSize) covered.add(x / blockSize);
    }
    assert.deepEqual([...covered].sort((x, y) => x - y), [...differ].sort((x, y) => x - y));
    assert.deepEqual(runs.slice(0, 2), [
      [0, blockSize],
      [5 * blockSize, 3 * blockSize],
    ]);
    assert.deepEqual(runs.at(-1), [299 * blockSize, blockSize - 100]);
    assert.equal(runs.filter(([off]) => off >= 200 * blockSize && off < 240 * blockSize).length, 3);
  }
  assert.deepEqual(differingRuns(a, Buffer.from(a), blockSize, length, 16 * blockSize), []);
});
