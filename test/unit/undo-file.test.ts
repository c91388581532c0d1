import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ChangeLogWriter, diskKeyOf, RecordWalker } from '../../src/agent/tracking/change-log.js';
import { closeUndoFile, openUndoFile, UndoWriter, verifyUndoData, writeUndoFile, type UndoFile, type UndoSource } from '../../src/agent/replica/undo-file.js';
import { readFully } from '../../src/agent/io/io.js';
import { digest } from '../../src/agent/io/checksum.js';
import { canAlign } from '../../src/agent/io/direct-io.js';
import { assertThrowsCode, prng, randomBytes, withDir } from '../support/unit.js';

const assertStoreCorrupt = (fn: () => unknown, pattern?: RegExp) => void assertThrowsCode(fn, 'REPLICA_STORE_CORRUPT', pattern);






const KEY = diskKeyOf('disk-1');
// data begins after the header and zeroes up to 4096 bytes (direct I/O alignment)
const HEADER = 4096;
const FOOTER = 48;
const ENTRY = 24;

/** An image with known bytes, and undo sources over it (some past its end: they read as zeroes). */
function setup(dir: string, rnd: () => number) {
  const imagePath = path.join(dir, 'image.img');
  const image = randomBytes(rnd, 1 << 20);
  fs.writeFileSync(imagePath, image);
  const fd = fs.openSync(imagePath, 'r');
  const ranges: { offset: number; length: number }[] = [];
  let pos = 0;
  for (let i = 0; i < 40; i++) {
    pos += Math.floor(rnd() * 20000);
    const length = 1 + Math.floor(rnd() * 9000);
    if (pos + length > image.length) break;
    ranges.push({ offset: pos, length });
    pos += length;
  }
  // one range that reaches beyond the end of the (sparse) image: zeroes past the end
  ranges.push({ offset: image.length - 100, length: 300 });
  const sources: UndoSource[] = ranges.map((r) => ({ ...r, fd, pos: r.offset }));
  const expected = (r: { offset: number; length: number }) => {
    const b = Buffer.alloc(r.length);
    image.copy(b, 0, r.offset, Math.min(image.length, r.offset + r.length));
    return b;
  };
  return { imagePath, image, fd, ranges, sources, expected };
}

function readEntry(u: UndoFile, i: number): Buffer {
  const e = u.entries[i];
  const b = Buffer.alloc(e.length);
  readFully(u.fd, b, e.dataPos);
  return b;
}

test(
  'write and open round trip: entries and their bytes',
  withDir(async (dir) => {
    const rnd = prng(1);
    const s = setup(dir, rnd);
    const file = path.join(dir, 'a.undo');
    const written = await writeUndoFile(file, KEY, s.sources);
    try {
      assert.equal(written.entries.length, s.ranges.length);
      const dataBytes = s.ranges.reduce((n, r) => n + r.length, 0);
      assert.equal(fs.statSync(file).size, HEADER + dataBytes + s.ranges.length * ENTRY + FOOTER);
      const opened = openUndoFile(file);
      try {
        assert.deepEqual(opened.entries, written.entries);
        let dataPos = HEADER;
        opened.entries.forEach((e, i) => {
          assert.equal(e.offset, s.ranges[i].offset);
          assert.equal(e.length, s.ranges[i].length);
          assert.equal(e.dataPos, dataPos, 'data laid out in order after the header');
          dataPos += e.length;
          assert.ok(readEntry(opened, i).equals(s.expected(s.ranges[i])), `bytes of entry ${i}`);
        });
        // the range past the end of the image reads as zeroes beyond it
        const last = readEntry(opened, opened.entries.length - 1);
        assert.ok(last.subarray(100).equals(Buffer.alloc(200)));
        assert.equal(await verifyUndoData(opened), true);
        // header: magic, version, disk key
        const head = fs.readFileSync(file).subarray(0, HEADER);
        assert.equal(head.subarray(0, 8).toString('latin1'), 'OSRUNDO\0');
        assert.equal(head.readUInt16LE(8), 1);
        assert.ok(head.subarray(16, 32).equals(KEY));
      } finally {
        closeUndoFile(opened);
      }
    } finally {
      closeUndoFile(written);
      fs.closeSync(s.fd);
    }
  }),
);

test(
  'an empty undo file round trips',
  withDir(async (dir) => {
    const file = path.join(dir, 'empty.undo');
    closeUndoFile(await writeUndoFile(file, KEY, []));
    assert.equal(fs.statSync(file).size, HEADER + FOOTER);
    const u = openUndoFile(file);
    try {
      assert.deepEqual(u.entries, []);
      assert.equal(await verifyUndoData(u), true);
    } finally {
      closeUndoFile(u);
    }
  }),
);

test(
  'a source larger than the copy chunk is copied whole',
  withDir(async (dir) => {
    const rnd = prng(2);
    const imagePath = path.join(dir, 'big.img');
    const image = Buffer.allocUnsafe(9 * 1024 * 1024);
    for (let i = 0; i < image.length; i += 4) image.writeUInt32LE(Math.floor(rnd() * 0x100000000), i);
    fs.writeFileSync(imagePath, image);
    const fd = fs.openSync(imagePath, 'r');
    const file = path.join(dir, 'big.undo');
    const length = 4 * 1024 * 1024 * 2 + 12345;
    closeUndoFile(await writeUndoFile(file, KEY, [{ offset: 1000, length, fd, pos: 1000 }]));
    fs.closeSync(fd);
    const u = openUndoFile(file);
    try {
      assert.equal(u.entries[0].length, length);
      assert.ok(readEntry(u, 0).equals(image.subarray(1000, 1000 + length)));
      assert.equal(await verifyUndoData(u), true);
    } finally {
      closeUndoFile(u);
    }
  }),
);

test(
  'a damaged index, footer, size or magic is detected as REPLICA_STORE_CORRUPT',
  withDir(async (dir) => {
    const rnd = prng(3);
    const s = setup(dir, rnd);
    const file = path.join(dir, 'a.undo');
    closeUndoFile(await writeUndoFile(file, KEY, s.sources));
    fs.closeSync(s.fd);
    const good = fs.readFileSync(file);
    const indexPos = Number(good.readBigUInt64LE(good.length - FOOTER));
    assert.equal(indexPos, good.length - FOOTER - s.ranges.length * ENTRY);
    const bad = path.join(dir, 'bad.undo');
    const check = (bytes: Buffer, pattern?: RegExp) => {
      fs.writeFileSync(bad, bytes);
      assertStoreCorrupt(() => openUndoFile(bad), pattern);
    };
    const flip = (at: number) => {
      const b = Buffer.from(good);
      b[at] ^= 0x01;
      return b;
    };
    // every field of a few index entries
    for (const entry of [0, 7, s.ranges.length - 1]) {
      for (const field of [0, 8, 16, 23]) check(flip(indexPos + entry * ENTRY + field), /checksum mismatch/);
    }
    // footer: indexPos and count break the layout, the data digest and checksum the checksum
    check(flip(good.length - FOOTER), /does not fit|checksum/);
    check(flip(good.length - FOOTER + 8), /does not fit|checksum/);
    check(flip(good.length - FOOTER + 16), /checksum mismatch/);
    check(flip(good.length - FOOTER + 40), /checksum mismatch/);
    check(flip(good.length - 1), /checksum mismatch/);
    // truncated, extended, magic damaged, too short to be one
    check(good.subarray(0, good.length - 1));
    check(Buffer.concat([good, Buffer.alloc(1)]));
    check(good.subarray(0, good.length - ENTRY - FOOTER));
    check(flip(0), /not an undo file/);
    check(good.subarray(0, 64 + FOOTER - 1), /not an undo file/);
    // an entry swapped with another, with the checksum left as is
    const swapped = Buffer.from(good);
    good.copy(swapped, indexPos, indexPos + ENTRY, indexPos + 2 * ENTRY);
    good.copy(swapped, indexPos + ENTRY, indexPos, indexPos + ENTRY);
    check(swapped, /checksum mismatch/);
    // the intact file still opens
    fs.writeFileSync(bad, good);
    closeUndoFile(openUndoFile(bad));
  }),
);

test(
  'verifyUndoData detects a flipped data byte that open does not look at',
  withDir(async (dir) => {
    const rnd = prng(4);
    const s = setup(dir, rnd);
    const file = path.join(dir, 'a.undo');
    closeUndoFile(await writeUndoFile(file, KEY, s.sources));
    fs.closeSync(s.fd);
    const good = fs.readFileSync(file);
    const indexPos = Number(good.readBigUInt64LE(good.length - FOOTER));
    for (const at of [HEADER, HEADER + 1 + Math.floor(rnd() * (indexPos - HEADER - 2)), indexPos - 1]) {
      const b = Buffer.from(good);
      b[at] ^= 0x80;
      fs.writeFileSync(file, b);
      const u = openUndoFile(file); // the index is intact
      try {
        assert.equal(await verifyUndoData(u), false, `flipped byte ${at}`);
      } finally {
        closeUndoFile(u);
      }
    }
    fs.writeFileSync(file, good);
    const u = openUndoFile(file);
    try {
      assert.equal(await verifyUndoData(u), true);
    } finally {
      closeUndoFile(u);
    }
  }),
);

test('an undo written as a delta arrives equals the one written at the apply; ranges that go backwards make it give up', withDir(async (dir) => {
  const rnd = prng(21);
  const imagePath = path.join(dir, 'image.img');
  fs.writeFileSync(imagePath, randomBytes(rnd, 24 << 20));
  const fd = fs.openSync(imagePath, 'r');
  try {
    // ranges in order, some adjacent (merged), one crossing a batch boundary
    const ranges: [number, number][] = [[0, 4096], [4096, 8192], [65536, 10 << 20], [(12 << 20) + 7, 3 << 20], [(20 << 20), 512]];
    const sources: UndoSource[] = [{ offset: 0, length: 12288, fd, pos: 0 }, { offset: 65536, length: 10 << 20, fd, pos: 65536 }, { offset: (12 << 20) + 7, length: 3 << 20, fd, pos: (12 << 20) + 7 }, { offset: 20 << 20, length: 512, fd, pos: 20 << 20 }];
    const a = await writeUndoFile(path.join(dir, 'a.undo'), KEY, sources);
    const w = new UndoWriter(path.join(dir, 'b.undo'), fd, KEY);
    for (const [o, l] of ranges) w.add(o, l);
    const b = (await w.finish())!;
    assert.ok(b);
    assert.deepEqual(b.entries, a.entries);
    assert.deepEqual(fs.readFileSync(b.path), fs.readFileSync(a.path));
    assert.equal(await verifyUndoData(openUndoFile(b.path)), true);
    // the image read with direct I/O where it can be (aligned ranges), buffered elsewhere: the same file
    const d = new UndoWriter(path.join(dir, 'd.undo'), fd, KEY, imagePath);
    for (const [o, l] of ranges) d.add(o, l);
    const dd = (await d.finish())!;
    assert.ok(dd);
    assert.deepEqual(fs.readFileSync(dd.path), fs.readFileSync(a.path));
    closeUndoFile(dd);
    closeUndoFile(a);
    closeUndoFile(b);
    const back = new UndoWriter(path.join(dir, 'c.undo'), fd, KEY);
    back.add(8192, 4096);
    back.add(4096, 4096);
    assert.equal(await back.finish(), undefined);
    assert.equal(fs.existsSync(path.join(dir, 'c.undo')), false);
  } finally {
    fs.closeSync(fd);
  }
}));

test('the record walker names a log\'s ranges from its bytes in any split, and stops at bytes out of order', withDir(async (dir) => {
  const rnd = prng(22);
  const file = path.join(dir, 'x.osrlog');
  const w = ChangeLogWriter.create(file, { seq: 1, createdMs: 1, diskKey: KEY });
  const want: [number, number][] = [];
  for (let i = 0; i < 50; i++) {
    const offset = i * 200_000;
    if (i % 5 === 2) {
      w.appendZero(offset, 4096);
      want.push([offset, 4096]);
    } else {
      const n = 1 + Math.floor(rnd() * 90_000);
      w.appendWrite(offset, randomBytes(rnd, n));
      want.push([offset, n]);
    }
  }
  w.close(2);
  w.closeFile();
  const bytes = fs.readFileSync(file);
  for (const step of [1, 7, 48, 4096, 65536, bytes.length]) {
    const got: [number, number][] = [];
    const walker = new RecordWalker((o, l) => got.push([o, l]));
    for (let at = 0; at < bytes.length; at += step) {
      const end = Math.min(bytes.length, at + step);
      // a frame of one or two parts
      const mid = at + Math.floor((end - at) / 2);
      walker.push(at, [bytes.subarray(at, mid), bytes.subarray(mid, end)]);
    }
    assert.equal(walker.ok, true);
    assert.deepEqual(got, want);
  }
  const gap = new RecordWalker(() => undefined);
  gap.push(0, [bytes.subarray(0, 100)]);
  gap.push(200, [bytes.subarray(200, 300)]);
  assert.equal(gap.ok, false);
}));

test('an undo file of the older layout (data right after the 64-byte header) opens, reads and verifies', withDir(async (dir) => {
  const rnd = prng(23);
  const data = randomBytes(rnd, 3 * 4096 + 100);
  const entries = [{ offset: 8192, length: 4096, dataPos: 64 }, { offset: 1 << 20, length: 2 * 4096 + 100, dataPos: 64 + 4096 }];
  const head = Buffer.alloc(64);
  head.write('OSRUNDO\0', 0, 'latin1');
  head.writeUInt16LE(1, 8);
  KEY.copy(head, 16);
  const index = Buffer.alloc(entries.length * ENTRY + FOOTER);
  entries.forEach((e, i) => {
    index.writeBigUInt64LE(BigInt(e.offset), i * ENTRY);
    index.writeBigUInt64LE(BigInt(e.length), i * ENTRY + 8);
    index.writeBigUInt64LE(BigInt(e.dataPos), i * ENTRY + 16);
  });
  const f = entries.length * ENTRY;
  index.writeBigUInt64LE(BigInt(64 + data.length), f);
  index.writeBigUInt64LE(BigInt(entries.length), f + 8);
  digest(data).copy(index, f + 16);
  digest(index.subarray(0, f + 32)).copy(index, f + 32);
  const file = path.join(dir, 'old.undo');
  fs.writeFileSync(file, Buffer.concat([head, data, index]));
  const u = openUndoFile(file);
  try {
    assert.deepEqual(u.entries, entries);
    assert.ok(readEntry(u, 0).equals(data.subarray(0, 4096)));
    assert.ok(readEntry(u, 1).equals(data.subarray(4096)));
    assert.equal(await verifyUndoData(u), true);
  } finally {
    closeUndoFile(u);
  }
}));

test('undo files are written with direct I/O where the native addon is built', { skip: !canAlign() && 'the native addon is not built' }, withDir(async (dir) => {
  // a large aligned undo leaves (almost) nothing of its data in the page cache: not
  // observable portably, so this checks the bytes of a file of many aligned batches
  const rnd = prng(24);
  const imagePath = path.join(dir, 'image.img');
  fs.writeFileSync(imagePath, randomBytes(rnd, 40 << 20));
  const fd = fs.openSync(imagePath, 'r');
  try {
    const ranges: [number, number][] = [];
    for (let o = 0; o < 40 << 20; o += 3 * 65536) ranges.push([o, 65536]);
    const sources: UndoSource[] = ranges.map(([offset, length]) => ({ offset, length, fd, pos: offset }));
    const a = await writeUndoFile(path.join(dir, 'a.undo'), KEY, sources);
    const w = new UndoWriter(path.join(dir, 'b.undo'), fd, KEY, imagePath);
    for (const [o, l] of ranges) w.add(o, l);
    const b = (await w.finish())!;
    assert.ok(b);
    assert.deepEqual(fs.readFileSync(b.path), fs.readFileSync(a.path));
    const image = fs.readFileSync(imagePath);
    b.entries.forEach((e, i) => assert.ok(readEntry(b, i).equals(image.subarray(e.offset, e.offset + e.length)), `entry ${i}`));
    assert.equal(await verifyUndoData(b), true);
    closeUndoFile(a);
    closeUndoFile(b);
  } finally {
    fs.closeSync(fd);
  }
}));
