import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  ChangeLogParser,
  ChangeLogWriter,
  LogStreamVerifier,
  LOG_HEADER_BYTES,
  MAX_RECORD_DATA,
  RECORD_HEADER_BYTES,
  RecordType,
  decodeLogHeader,
  diskKeyOf,
  encodeLogHeader,
  scanLogFile,
  type LogScan,
} from '../../src/agent/tracking/change-log.js';
import { digest as digestOf } from '../../src/agent/io/checksum.js';
import { ReplicaStore } from '../../src/agent/replica/replica-store.js';
import { OsrError } from '../../src/domain/errors.js';
import { assertThrowsCode, prng, randomBytes, withDir } from '../support/unit.js';

const assertCorrupt = (fn: () => unknown, pattern?: RegExp) => assertThrowsCode(fn, 'CHANGE_LOG_CORRUPT', pattern);






type Op = { kind: 'write'; offset: number; data: Buffer } | { kind: 'zero'; offset: number; length: number };

const DISK = 'disk-0001';
const KEY = diskKeyOf(DISK);

/** Write a closed log of `ops`; returns the file and what close() reported. */
function writeLog(file: string, seq: number, ops: Op[], closedMs = 1_700_000_000_123) {
  const w = ChangeLogWriter.create(file, { seq, createdMs: 1_700_000_000_000, diskKey: KEY });
  for (const op of ops) {
    if (op.kind === 'write') w.appendWrite(op.offset, op.data);
    else w.appendZero(op.offset, op.length);
  }
  const info = w.close(closedMs);
  w.syncSync();
  w.closeFile();
  return info;
}

function randomOps(rnd: () => number, n: number): Op[] {
  const ops: Op[] = [];
  for (let i = 0; i < n; i++) {
    const offset = Math.floor(rnd() * 1024) * 512;
    if (rnd() < 0.75) ops.push({ kind: 'write', offset, data: randomBytes(rnd, 1 + Math.floor(rnd() * 9000)) });
    else ops.push({ kind: 'zero', offset, length: 512 * (1 + Math.floor(rnd() * 64)) });
  }
  return ops;
}

/** Compare what a scan found with the ops written, reading data back by position. */
function assertMatches(file: string, records: LogScan['records'], ops: Op[]): void {
  assert.equal(records.length, ops.length);
  const bytes = fs.readFileSync(file);
  records.forEach((r, i) => {
    const op = ops[i];
    assert.equal(r.index, i);
    assert.equal(r.offset, op.offset);
    if (op.kind === 'write') {
      assert.equal(r.type, RecordType.Write);
      assert.equal(r.length, op.data.length);
      assert.deepEqual(bytes.subarray(r.dataPos, r.dataPos + r.length), op.data, `data of record ${i}`);
    } else {
      assert.equal(r.type, RecordType.Zero);
      assert.equal(r.length, op.length);
    }
  });
}

/** Byte positions of every record (header start) in a log file, from a scan. */
function recordStarts(scan: LogScan): number[] {
  return scan.records.map((r) => r.dataPos - RECORD_HEADER_BYTES);
}

test('file header encodes and decodes; damage to it is detected', () => {
  const h = { seq: 42, createdMs: 1_700_000_000_999, diskKey: KEY };
  const b = encodeLogHeader(h);
  assert.equal(b.length, LOG_HEADER_BYTES);
  assert.deepEqual(decodeLogHeader(b, 'x'), h);
  for (const at of [0, 8, 16, 24, 32, 47, 48, 63]) {
    const bad = Buffer.from(b);
    bad[at] ^= 0x01;
    assertCorrupt(() => decodeLogHeader(bad, 'x'));
  }
  assertCorrupt(() => decodeLogHeader(b.subarray(0, 63), 'x'), /bad magic/);
});

test(
  'round trip: writes, zeroes and close record through the writer, scanLogFile and the parser',
  withDir((dir) => {
    const rnd = prng(7);
    const ops = randomOps(rnd, 200);
    const file = path.join(dir, 'a.osrlog');
    const info = writeLog(file, 17, ops);
    const dataBytes = ops.reduce((n, o) => n + (o.kind === 'write' ? o.data.length : 0), 0);
    assert.equal(info.recordCount, ops.length);
    assert.equal(info.dataBytes, dataBytes);
    assert.equal(info.closedMs, 1_700_000_000_123);

    const scan = scanLogFile(file);
    assert.equal(scan.header.seq, 17);
    assert.equal(scan.header.createdMs, 1_700_000_000_000);
    assert.deepEqual(scan.header.diskKey, KEY);
    assert.ok(scan.close);
    assert.equal(scan.close.recordCount, ops.length);
    assert.equal(scan.close.dataBytes, dataBytes);
    assert.equal(scan.close.closedMs, 1_700_000_000_123);
    assert.deepEqual(scan.close.chain, info.chain);
    assert.equal(scan.dataBytes, dataBytes);
    assert.equal(scan.tornBytes, 0);
    assert.equal(scan.validBytes, scan.fileBytes);
    const expectedSize = LOG_HEADER_BYTES + (ops.length + 1) * RECORD_HEADER_BYTES + dataBytes + 40;
    assert.equal(scan.fileBytes, expectedSize);
    assertMatches(file, scan.records, ops);

    // the same bytes fed to the streaming parser in random-size chunks, several times
    const bytes = fs.readFileSync(file);
    for (let round = 0; round < 20; round++) {
      const p = new ChangeLogParser('net');
      let pos = 0;
      while (pos < bytes.length) {
        const r = rnd();
        const n = r < 0.3 ? 1 + Math.floor(rnd() * 8) : r < 0.6 ? 1 + Math.floor(rnd() * 100) : 1 + Math.floor(rnd() * 20000);
        // copies, so the parser cannot lean on the chunks being views of one buffer
        p.push(Buffer.from(bytes.subarray(pos, Math.min(bytes.length, pos + n))));
        pos += n;
      }
      const close = p.finish();
      assert.equal(close.recordCount, ops.length);
      assert.deepEqual(close.chain, info.chain);
      assert.equal(p.validBytes, bytes.length);
      assert.equal(p.partialBytes, 0);
      assertMatches(file, p.records, ops);
    }
    // one byte at a time
    const p1 = new ChangeLogParser('bytewise');
    for (let i = 0; i < bytes.length; i++) p1.push(bytes.subarray(i, i + 1));
    assert.equal(p1.finish().recordCount, ops.length);
  }),
);

test(
  'an empty log (close record only) round trips',
  withDir((dir) => {
    const file = path.join(dir, 'empty.osrlog');
    const info = writeLog(file, 1, []);
    assert.equal(info.recordCount, 0);
    assert.equal(info.dataBytes, 0);
    const scan = scanLogFile(file);
    assert.equal(scan.records.length, 0);
    assert.equal(scan.close?.recordCount, 0);
    assert.equal(scan.fileBytes, LOG_HEADER_BYTES + RECORD_HEADER_BYTES + 40);
    // a parser that saw nothing, and one that saw only the header, refuse to finish
    assertCorrupt(() => new ChangeLogParser('x').finish(), /empty/);
    const p = new ChangeLogParser('x');
    p.push(fs.readFileSync(file).subarray(0, LOG_HEADER_BYTES));
    assertCorrupt(() => p.finish(), /close record/);
  }),
);

test(
  'every kind of damage is detected as CHANGE_LOG_CORRUPT',
  withDir((dir) => {
    const rnd = prng(11);
    const ops = randomOps(rnd, 12);
    const file = path.join(dir, 'good.osrlog');
    writeLog(file, 5, ops);
    const good = fs.readFileSync(file);
    const scan = scanLogFile(file);
    const starts = recordStarts(scan);
    const closeStart = good.length - RECORD_HEADER_BYTES - 40;
    const firstWrite = scan.records.find((r) => r.type === RecordType.Write)!;
    const recordEnd = (i: number) => (i + 1 < starts.length ? starts[i + 1] : closeStart);

    const cases: { name: string; bytes: Buffer; pattern?: RegExp }[] = [];
    const flip = (at: number) => {
      const b = Buffer.from(good);
      b[at] ^= 0x40;
      return b;
    };
    cases.push({ name: 'flipped data byte', bytes: flip(firstWrite.dataPos + Math.floor(firstWrite.length / 2)), pattern: /checksum mismatch/ });
    cases.push({ name: 'flipped last data byte', bytes: flip(firstWrite.dataPos + firstWrite.length - 1), pattern: /checksum mismatch/ });
    // record header fields: magic, type, reserved, index, offset, length, checksum
    for (const field of [0, 4, 5, 8, 16, 20, 24, 32, 47]) {
      cases.push({ name: `flipped record header byte ${field}`, bytes: flip(starts[3] + field) });
    }
    for (const at of [0, 8, 10, 12, 16, 24, 32, 47, 48, 63]) cases.push({ name: `flipped file header byte ${at}`, bytes: flip(at) });
    for (const at of [0, 4, 8, 32, RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + 16, RECORD_HEADER_BYTES + 24, RECORD_HEADER_BYTES + 32]) {
      cases.push({ name: `flipped close record byte ${at}`, bytes: flip(closeStart + at) });
    }
    // a dropped record: later indexes no longer follow
    cases.push({ name: 'dropped record', bytes: Buffer.concat([good.subarray(0, starts[4]), good.subarray(recordEnd(4))]), pattern: /record 5 found where 4/ });
    // the last record dropped: the indexes still follow, only the close record can tell
    const last = starts.length - 1;
    cases.push({ name: 'dropped last record', bytes: Buffer.concat([good.subarray(0, starts[last]), good.subarray(closeStart)]), pattern: /close record|found where/ });
    // two records swapped
    cases.push({
      name: 'swapped records',
      bytes: Buffer.concat([good.subarray(0, starts[2]), good.subarray(starts[3], recordEnd(3)), good.subarray(starts[2], starts[3]), good.subarray(recordEnd(3))]),
    });
    // a record repeated
    cases.push({ name: 'repeated record', bytes: Buffer.concat([good.subarray(0, recordEnd(2)), good.subarray(starts[2], recordEnd(2)), good.subarray(recordEnd(2))]) });
    // bytes after the close record
    cases.push({ name: 'bytes after close', bytes: Buffer.concat([good, Buffer.from([0])]), pattern: /after the close record/ });
    cases.push({ name: 'a second close record', bytes: Buffer.concat([good, good.subarray(closeStart)]), pattern: /after the close record/ });
    // something that is not a change log at all
    cases.push({ name: 'wrong file header magic', bytes: Buffer.concat([Buffer.from('NOTALOG\0'), good.subarray(8)]), pattern: /bad magic/ });

    for (const c of cases) {
      const f = path.join(dir, 'bad.osrlog');
      fs.writeFileSync(f, c.bytes);
      assertCorrupt(() => scanLogFile(f), c.pattern);
      // the streaming parser (network path) agrees, whole or in small chunks
      assertCorrupt(() => {
        const p = new ChangeLogParser(c.name);
        p.push(c.bytes);
        p.finish();
      }, c.pattern);
      assertCorrupt(() => {
        const p = new ChangeLogParser(c.name);
        for (let pos = 0; pos < c.bytes.length; pos += 777) p.push(c.bytes.subarray(pos, pos + 777));
        p.finish();
      }, c.pattern);
    }
  }),
);

test(
  'a close record whose count, data bytes or chain disagree with the records is corrupt',
  withDir((dir) => {
    const rnd = prng(12);
    const ops = randomOps(rnd, 6);
    // build logs whose close record lies, with a valid record checksum: only the
    // cross-check against the records can catch them
    const file = path.join(dir, 'a.osrlog');
    writeLog(file, 9, ops);
    const good = fs.readFileSync(file);
    const closeStart = good.length - RECORD_HEADER_BYTES - 40;
    const scan = scanLogFile(file);
    const mutate = (change: (payload: Buffer) => void): Buffer => {
      const b = Buffer.from(good);
      const header = b.subarray(closeStart, closeStart + RECORD_HEADER_BYTES);
      const payload = b.subarray(closeStart + RECORD_HEADER_BYTES);
      change(payload);
      // recompute the record checksum the way the writer does
      const sum = digestOf(header.subarray(0, 32), payload);
      sum.copy(header, 32);
      return b;
    };
    const lies = [
      mutate((p) => p.writeBigUInt64LE(BigInt(ops.length + 1), 16)),
      mutate((p) => p.writeBigUInt64LE(BigInt(ops.length - 1), 16)),
      mutate((p) => p.writeBigUInt64LE(BigInt(scan.dataBytes + 1), 24)),
      mutate((p) => (p[0] ^= 1)),
    ];
    for (const bytes of lies) {
      fs.writeFileSync(file, bytes);
      assertCorrupt(() => scanLogFile(file), /close record does not match/);
    }
    // changing only closedMs (not cross-checked) with a fresh checksum still parses
    fs.writeFileSync(file, mutate((p) => p.writeBigUInt64LE(5n, 32)));
    assert.equal(scanLogFile(file).close?.closedMs, 5);
  }),
);

test(
  'a log for another disk parses, but the replica store refuses it',
  withDir(async (dir) => {
    const file = path.join(dir, 'other.osrlog');
    const w = ChangeLogWriter.create(file, { seq: 1, createdMs: 0, diskKey: diskKeyOf('some-other-disk') });
    w.appendWrite(0, Buffer.alloc(4096, 7));
    w.close(1);
    w.closeFile();
    const scan = scanLogFile(file);
    assert.deepEqual(scan.header.diskKey, diskKeyOf('some-other-disk'));
    assert.equal(scan.records.length, 1);

    const root = path.join(dir, 'store');
    const store = await ReplicaStore.open(root, { vmId: 'vm-1', disks: [{ id: DISK, name: 'sda', size: 1 << 20 }] });
    try {
      await store.checkpointInitial('sda', 1 << 20, true);
      await assert.rejects(
        store.applyDelta({ seq: 1, timeMs: 1, consistency: 'crash-consistent', deltaBytes: 4096 }, [{ diskName: 'sda', file }]),
        (e: unknown) => e instanceof OsrError && e.code === 'CHANGE_LOG_CORRUPT' && /another disk/.test(e.message),
      );
      assert.deepEqual(store.points(), []);
      assert.equal(store.latestPoint(), undefined);
      // the right disk key is accepted
      const ok = path.join(dir, 'ok.osrlog');
      const w2 = ChangeLogWriter.create(ok, { seq: 1, createdMs: 0, diskKey: diskKeyOf(DISK) });
      w2.appendWrite(8192, Buffer.alloc(4096, 9));
      w2.close(1);
      w2.closeFile();
      assert.equal(await store.applyDelta({ seq: 1, timeMs: 1, consistency: 'crash-consistent', deltaBytes: 4096 }, [{ diskName: 'sda', file: ok }]), 'applied');
      const o = store.openOverlay(1);
      assert.deepEqual(await o.disk('sda').read(8192 - 10, 4116), Buffer.concat([Buffer.alloc(10), Buffer.alloc(4096, 9), Buffer.alloc(10)]));
    } finally {
      store.close();
    }
  }),
);

test(
  'a torn tail is reported (not thrown) and reopen truncates it; appends then continue',
  withDir((dir) => {
    const rnd = prng(21);
    const ops = randomOps(rnd, 10).map((o) => (o.kind === 'write' ? o : { kind: 'write' as const, offset: o.offset, data: randomBytes(rnd, 3000) }));
    const file = path.join(dir, 'open.osrlog');
    const w = ChangeLogWriter.create(file, { seq: 3, createdMs: 10, diskKey: KEY });
    for (const op of ops) if (op.kind === 'write') w.appendWrite(op.offset, op.data);
    w.syncSync();
    w.closeFile();
    const full = fs.readFileSync(file);
    const scanFull = scanLogFile(file);
    assert.equal(scanFull.close, undefined, 'an open log has no close record');
    assert.equal(scanFull.tornBytes, 0);
    const lastStart = scanFull.records.at(-1)!.dataPos - RECORD_HEADER_BYTES;

    // cut at every interesting place inside the last record: within its header, right
    // after its header, inside its data, one byte short
    for (const cut of [lastStart + 1, lastStart + 20, lastStart + RECORD_HEADER_BYTES, lastStart + RECORD_HEADER_BYTES + 100, full.length - 1]) {
      fs.writeFileSync(file, full.subarray(0, cut));
      const scan = scanLogFile(file);
      assert.equal(scan.records.length, ops.length - 1, `cut at ${cut}`);
      assert.equal(scan.validBytes, lastStart);
      assert.equal(scan.tornBytes, cut - lastStart);
      assert.equal(scan.fileBytes, cut);
      assert.equal(scan.close, undefined);
      assertMatches(file, scan.records, ops.slice(0, -1));
    }

    // reopen the torn log: the tail goes and new records follow the last whole one
    const scan = scanLogFile(file);
    const w2 = ChangeLogWriter.reopen(file, scan);
    assert.equal(fs.statSync(file).size, lastStart, 'torn tail truncated');
    assert.equal(w2.bytes, lastStart);
    assert.equal(w2.recordCount, ops.length - 1);
    const more: Op[] = [
      { kind: 'write', offset: 4096, data: randomBytes(rnd, 5000) },
      { kind: 'zero', offset: 65536, length: 8192 },
      { kind: 'write', offset: 0, data: randomBytes(rnd, 1) },
    ];
    for (const op of more) {
      if (op.kind === 'write') w2.appendWrite(op.offset, op.data);
      else w2.appendZero(op.offset, op.length);
    }
    const info = w2.close(99);
    w2.closeFile();
    const all = [...ops.slice(0, -1), ...more];
    assert.equal(info.recordCount, all.length);
    const after = scanLogFile(file);
    assert.equal(after.tornBytes, 0);
    assert.equal(after.close?.recordCount, all.length);
    assert.deepEqual(after.close?.chain, info.chain);
    assert.equal(after.close?.dataBytes, all.reduce((n, o) => n + (o.kind === 'write' ? o.data.length : 0), 0));
    assertMatches(file, after.records, all);

    // a closed log cannot be reopened for appends, nor appended to after close
    assert.throws(() => ChangeLogWriter.reopen(file, after), (e: unknown) => e instanceof OsrError && e.code === 'INVALID_STATE');
    assert.throws(() => w2.appendZero(0, 512), (e: unknown) => e instanceof OsrError && e.code === 'INVALID_STATE');
  }),
);

test(
  'reopen of an untorn open log continues the chain',
  withDir((dir) => {
    const file = path.join(dir, 'a.osrlog');
    const w = ChangeLogWriter.create(file, { seq: 1, createdMs: 0, diskKey: KEY });
    w.appendWrite(0, Buffer.alloc(100, 1));
    w.closeFile();
    const w2 = ChangeLogWriter.reopen(file, scanLogFile(file));
    w2.appendWrite(100, Buffer.alloc(100, 2));
    w2.close(5);
    w2.closeFile();
    const scan = scanLogFile(file);
    assert.equal(scan.close?.recordCount, 2);
    assert.deepEqual(
      scan.records.map((r) => [r.index, r.offset, r.length]),
      [
        [0, 0, 100],
        [1, 100, 100],
      ],
    );
  }),
);

test(
  'a torn file header is corrupt, not torn',
  withDir((dir) => {
    const file = path.join(dir, 'a.osrlog');
    fs.writeFileSync(file, encodeLogHeader({ seq: 1, createdMs: 0, diskKey: KEY }).subarray(0, 30));
    assertCorrupt(() => scanLogFile(file), /header/);
    fs.writeFileSync(file, Buffer.alloc(0));
    assertCorrupt(() => scanLogFile(file), /header/);
  }),
);

test(
  'writes larger than MAX_RECORD_DATA are split into records in order',
  withDir((dir) => {
    const file = path.join(dir, 'big.osrlog');
    const size = MAX_RECORD_DATA * 2 + 12345;
    const data = Buffer.allocUnsafe(size);
    for (let i = 0; i + 4 <= size; i += 4) data.writeUInt32LE(i, i);
    data.fill(0xab, size - (size % 4));
    const w = ChangeLogWriter.create(file, { seq: 1, createdMs: 0, diskKey: KEY });
    w.appendWrite(1 << 20, data);
    const info = w.close(1);
    w.closeFile();
    assert.equal(info.recordCount, 3);
    assert.equal(info.dataBytes, size);
    const scan = scanLogFile(file);
    assert.deepEqual(
      scan.records.map((r) => [r.type, r.offset, r.length]),
      [
        [RecordType.Write, 1 << 20, MAX_RECORD_DATA],
        [RecordType.Write, (1 << 20) + MAX_RECORD_DATA, MAX_RECORD_DATA],
        [RecordType.Write, (1 << 20) + 2 * MAX_RECORD_DATA, 12345],
      ],
    );
    const fd = fs.openSync(file, 'r');
    try {
      for (const r of scan.records) {
        const got = Buffer.allocUnsafe(r.length);
        fs.readSync(fd, got, 0, r.length, r.dataPos);
        const from = r.offset - (1 << 20);
        assert.ok(got.equals(data.subarray(from, from + r.length)), `data of record ${r.index}`);
      }
    } finally {
      fs.closeSync(fd);
    }
    // a record header claiming more than the limit is refused before its payload is read
    const bytes = fs.readFileSync(file, { flag: 'r' }).subarray(0, LOG_HEADER_BYTES + RECORD_HEADER_BYTES);
    const bad = Buffer.from(bytes);
    bad.writeBigUInt64LE(BigInt(MAX_RECORD_DATA + 1), LOG_HEADER_BYTES + 24);
    const p = new ChangeLogParser('x');
    assertCorrupt(() => p.push(bad), /exceeds the limit/);
  }),
);

test('queued appends write the same log as synchronous ones, and the tee sees every byte of it in order', withDir(async (dir) => {
    const rnd = prng(7);
    const ops: Op[] = [];
    let at = 0;
    for (let i = 0; i < 600; i++) {
      if (i % 7 === 3) ops.push({ kind: 'zero', offset: at, length: 65536 });
      else ops.push({ kind: 'write', offset: at, data: randomBytes(rnd, 1 + ((i * 7919) % 70_000)) });
      at += 131072;
    }
    const a = path.join(dir, 'sync.osrlog');
    writeLog(a, 9, ops);
    const b = path.join(dir, 'queued.osrlog');
    const w = ChangeLogWriter.create(b, { seq: 9, createdMs: 1_700_000_000_000, diskKey: KEY });
    const teed: { at: number; bytes: Buffer }[] = [];
    w.tee((pos, bufs) => teed.push({ at: pos, bytes: Buffer.concat(bufs) }));
    for (const op of ops) {
      if (op.kind === 'write') await w.queueWrite(op.offset, op.data);
      else w.queueZero(op.offset, op.length);
    }
    await w.drain();
    w.close(1_700_000_000_123);
    await w.sync();
    w.closeFile();
    const file = fs.readFileSync(b);
    assert.deepEqual(file, fs.readFileSync(a));
    let pos = 0;
    for (const t of teed) {
      assert.equal(t.at, pos);
      pos += t.bytes.length;
    }
    assert.deepEqual(Buffer.concat(teed.map((t) => t.bytes)), file);
    assert.equal(scanLogFile(b).close?.recordCount, ops.length);
}));

test('a log with queued records not yet written cannot be closed', withDir(async (dir) => {
    const rnd = prng(8);
    const w = ChangeLogWriter.create(path.join(dir, 'x.osrlog'), { seq: 1, createdMs: 1, diskKey: KEY });
    await w.queueWrite(0, randomBytes(rnd, 4096));
    assert.throws(() => w.close(2), /queued records/);
    await w.drain();
    w.close(2);
    w.closeFile();
}));

test(
  'a log verified as it arrives gives the scan of its file; damage, gaps or a missing close give none',
  withDir((dir) => {
    const file = path.join(dir, 'a.osrlog');
    const w = ChangeLogWriter.create(file, { seq: 4, createdMs: 1, diskKey: KEY });
    const rnd = prng(11);
    for (let i = 0; i < 40; i++) {
      if (i % 5 === 3) w.appendZero(i * 100_000, 4096);
      else w.appendWrite(i * 100_000, Buffer.alloc(1 + Math.floor(rnd() * 90_000), i));
    }
    w.close(9);
    w.closeFile();
    const bytes = fs.readFileSync(file);
    const scan = scanLogFile(file);
    const feed = (b: Buffer, step: number) => {
      const v = new LogStreamVerifier(file);
      for (let at = 0; at < b.length; at += step) {
        const end = Math.min(b.length, at + step);
        const mid = at + Math.floor((end - at) / 3);
        v.push(at, [b.subarray(at, mid), b.subarray(mid, end)]);
      }
      return v;
    };
    for (const step of [1, 7, 48, 64, 4096, 65536, bytes.length]) {
      const got = feed(bytes, step).result();
      assert.ok(got, `step ${step}`);
      assert.deepEqual(got.records, scan.records);
      assert.deepEqual(got.close, scan.close);
      assert.deepEqual(got.header, scan.header);
      assert.equal(got.fileBytes, bytes.length);
      assert.equal(got.dataBytes, scan.dataBytes);
    }
    // one flipped bit anywhere: no result
    for (const pos of [3, 70, 64 + 48 + 10, bytes.length - 20]) {
      const bad = Buffer.from(bytes);
      bad[pos]! ^= 1;
      assert.equal(feed(bad, 4096).result(), undefined, `flip at ${pos}`);
    }
    // cut short, or bytes after the close
    assert.equal(feed(bytes.subarray(0, bytes.length - 1), 4096).result(), undefined);
    assert.equal(feed(Buffer.concat([bytes, Buffer.alloc(1)]), 4096).result(), undefined);
    // a gap
    const v = new LogStreamVerifier(file);
    v.push(0, [bytes.subarray(0, 100)]);
    v.push(200, [bytes.subarray(200)]);
    assert.equal(v.ok, false);
    assert.equal(v.result(), undefined);
  }),
);
