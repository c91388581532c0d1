import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import type { ContainerClient } from '@azure/storage-blob';
import { BlobPoints } from '../../src/agent/azure/blob-points.js';
import { MAX_PUT_PAGE, PageBlobDisk, type DiskPiece } from '../../src/agent/azure/page-blob-disk.js';
import type { RecoveryPoint } from '../../src/agent/ports/replica-target.js';
import { azureDiskBytes, pageBlobBytes, readVhdFooter } from '../../src/domain/vhd.js';
import { assertRejectsCode, prng } from '../support/unit.js';
import { useAzurite } from '../support/azurite.js';

const MiB = 1024 * 1024;
const az = useAzurite();
let n = 0;

async function container(): Promise<ContainerClient> {
  const c = az().service.getContainerClient(`osr-test-${process.pid}-${n++}`);
  await c.create();
  return c;
}

/** Every Put Page call's length, recorded as the disk makes it. */
function recordPuts(disk: PageBlobDisk): number[] {
  const sizes: number[] = [];
  const upload = disk.blob.uploadPages.bind(disk.blob);
  disk.blob.uploadPages = (body, offset, count, options) => {
    sizes.push(count);
    assert.equal(offset % 512, 0, 'a Put Page starts on a page');
    assert.equal(count % 512, 0, 'a Put Page is whole pages');
    return upload(body, offset, count, options);
  };
  return sizes;
}

/** Random pieces that do not overlap: unaligned writes, zero ranges, some larger than a Put Page. */
function randomPieces(rnd: () => number, size: number, count: number): DiskPiece[] {
  const pieces: DiskPiece[] = [];
  let at = Math.floor(rnd() * 4096);
  for (let i = 0; i < count && at < size; i++) {
    const big = rnd() < 0.05;
    const length = Math.min(size - at, big ? 5 * MiB + Math.floor(rnd() * MiB) : 1 + Math.floor(rnd() * 70_000));
    if (rnd() < 0.25) pieces.push({ offset: at, length, zero: true });
    else pieces.push({ offset: at, data: crypto.randomBytes(length) });
    // adjacent now and then (two pieces in one page), otherwise a gap
    at += length + (rnd() < 0.3 ? 0 : Math.floor(rnd() * 200_000));
  }
  return pieces;
}

function applyTo(model: Buffer, pieces: readonly DiskPiece[]): void {
  for (const p of pieces) {
    if ('zero' in p) model.fill(0, p.offset, p.offset + p.length);
    else p.data.copy(model, p.offset);
  }
}

test('a disk\'s blob is a fixed VHD of the disk rounded to a MiB; opened again it is checked, not remade', async () => {
  const c = await container();
  const size = 20 * MiB + 12_345;
  const d = await PageBlobDisk.open(c, 'sda', size);
  const props = await d.blob.getProperties();
  assert.equal(props.contentLength, pageBlobBytes(size));
  assert.equal(props.blobSequenceNumber, 0);
  const footer = await d.blob.downloadToBuffer(azureDiskBytes(size), 512);
  assert.equal(readVhdFooter(footer).currentSize, 21 * MiB);
  await d.write([{ offset: 0, data: Buffer.alloc(4096, 7) }]);
  const again = await PageBlobDisk.open(c, 'sda', size);
  assert.ok((await again.read(0, 4096)).equals(Buffer.alloc(4096, 7)), 'opened again, the data is there');
  assert.ok((await again.read(azureDiskBytes(size), 512)).equals(footer), 'and the footer is the same');
  // another size, or a damaged footer, is refused
  await assertRejectsCode(PageBlobDisk.open(c, 'sda', size + 2 * MiB), 'AZURE_DISK_INVALID');
  await d.blob.uploadPages(Buffer.alloc(512, 1), azureDiskBytes(size), 512);
  await assertRejectsCode(PageBlobDisk.open(c, 'sda', size), 'AZURE_DISK_INVALID');
  // a blob whose create happened but not its footer's write gets its footer
  await c.getPageBlobClient('disks/sdb.vhd').create(pageBlobBytes(size));
  const sdb = await PageBlobDisk.open(c, 'sdb', size);
  assert.equal(readVhdFooter(await sdb.read(azureDiskBytes(size), 512)).currentSize, 21 * MiB);
});

test('unaligned writes and zero ranges land byte for byte, in whole-page calls of at most 4 MiB', async () => {
  const c = await container();
  const size = 48 * MiB + 777;
  const d = await PageBlobDisk.open(c, 'sda', size, { inFlight: 6 });
  const puts = recordPuts(d);
  const model = Buffer.alloc(size);
  const rnd = prng(0xa2e);
  for (let round = 0; round < 3; round++) {
    const pieces = randomPieces(rnd, size, 120);
    assert.equal(await d.write(pieces), true);
    applyTo(model, pieces);
    const back = await d.read(0, size);
    assert.ok(back.equals(model), `round ${round}: the blob holds what was written`);
  }
  assert.ok(puts.length > 0 && Math.max(...puts) <= MAX_PUT_PAGE, `every Put Page at most 4 MiB (largest ${Math.max(...puts)})`);
  assert.ok(puts.some((s) => s === MAX_PUT_PAGE), 'a piece larger than 4 MiB went up in 4 MiB calls');
  await assertRejectsCode(d.write([{ offset: size - 10, data: Buffer.alloc(11) }]), 'INVALID_ARGUMENT');
});

test('a delta\'s writes land only while the blob records an older delta; its number recorded, they are refused', async () => {
  const c = await container();
  const size = 8 * MiB;
  const d = await PageBlobDisk.open(c, 'sda', size);
  const rnd = prng(7);
  const delta5 = randomPieces(rnd, size, 30);
  const model = Buffer.alloc(size);
  // delta 5 cut short (a crash after part of it), then sent again whole: the same bytes
  assert.equal(await d.write(delta5.slice(0, 10), 5), true);
  assert.equal(await d.write(delta5, 5), true);
  applyTo(model, delta5);
  await d.setSequenceNumber(5);
  assert.equal(await d.sequenceNumber(), 5);
  // delta 5 delivered again after it was recorded: nothing of it is written
  const stale = [{ offset: 0, data: Buffer.alloc(8192, 0xee) }];
  assert.equal(await d.write(stale, 5), false);
  assert.equal(await d.write(stale, 4), false);
  assert.ok((await d.read(0, size)).equals(model), 'the recorded delta\'s bytes, untouched');
  // the number never goes down
  await d.setSequenceNumber(3);
  assert.equal(await d.sequenceNumber(), 5);
  const delta6 = randomPieces(rnd, size, 30);
  assert.equal(await d.write(delta6, 6), true);
  applyTo(model, delta6);
  assert.ok((await d.read(0, size)).equals(model));
});

test('a snapshot keeps the disk as it was, with its metadata, while the live blob goes on; deleted, it is gone', async () => {
  const c = await container();
  const size = 4 * MiB;
  const d = await PageBlobDisk.open(c, 'sda', size);
  const first = crypto.randomBytes(size);
  await d.write([{ offset: 0, data: first }], 1);
  await d.setSequenceNumber(1);
  const snap = await d.snapshot({ osrseq: '1', osrconsistency: 'crash-consistent' });
  await d.write([{ offset: 100, length: 1000, zero: true }, { offset: 5000, data: Buffer.alloc(3, 9) }], 2);
  assert.ok((await d.read(0, size, snap)).equals(first), 'the snapshot holds point 1');
  const live = await d.read(0, size);
  assert.ok(!live.equals(first) && live.subarray(100, 1100).equals(Buffer.alloc(1000)));
  const listed: { snapshot?: string; metadata?: Record<string, string> }[] = [];
  for await (const b of c.listBlobsFlat({ includeSnapshots: true, includeMetadata: true })) if (b.snapshot) listed.push(b);
  assert.deepEqual(listed.map((b) => [b.snapshot, b.metadata]), [[snap, { osrseq: '1', osrconsistency: 'crash-consistent' }]]);
  await d.deleteSnapshot(snap);
  await d.deleteSnapshot(snap); // twice: a retried prune
  await assertRejectsCode(d.read(0, 512, snap), 'NOT_FOUND');
});

/** Two disks in a fresh container, their points, and a model of each disk at every point. */
async function vmReplica(sizes: number[]) {
  const c = await container();
  const disks = await Promise.all(sizes.map((s, i) => PageBlobDisk.open(c, `d${i}`, s)));
  const points = new BlobPoints(c, disks, () => 'g1');
  const models = new Map<number, Buffer[]>();
  const current = sizes.map((s) => Buffer.alloc(s));
  return { c, disks, points, models, current };
}

function pointOf(seq: number, timeMs = 1_700_000_000_000 + seq * 60_000, consistency: 'crash-consistent' | 'app-consistent' = 'crash-consistent'): RecoveryPoint {
  return { seq, timeMs, consistency, deltaBytes: 0 };
}

async function assertPoints(r: Awaited<ReturnType<typeof vmReplica>>, what: string): Promise<void> {
  for (const set of await r.points.points()) {
    const model = r.models.get(set.point.seq);
    assert.ok(model, `${what}: point ${set.point.seq} has a model`);
    for (const [i, d] of r.disks.entries()) {
      const snap = set.snapshots.find((s) => s.disk === d.name)!;
      assert.ok((await d.read(0, d.size, snap.snapshot)).equals(model[i]!), `${what}: point ${set.point.seq}, disk ${d.name}`);
    }
  }
}

test('each delta becomes a point across every disk, equal byte for byte to the disks at that delta; retention drops whole points', async () => {
  const r = await vmReplica([6 * MiB + 100, 3 * MiB]);
  const rnd = prng(0xb10b);
  for (let seq = 1; seq <= 6; seq++) {
    const pieces = new Map(r.disks.map((d) => [d.name, randomPieces(rnd, d.size, 15)]));
    assert.equal(await r.points.apply(pointOf(seq, undefined, seq % 3 === 0 ? 'app-consistent' : 'crash-consistent'), pieces, { first: seq === 1 }), 'applied');
    r.disks.forEach((d, i) => applyTo(r.current[i]!, pieces.get(d.name)!));
    r.models.set(seq, r.current.map((b) => Buffer.from(b)));
    assert.equal(await r.points.apply(pointOf(seq), pieces), 'duplicate', 'the same delta again changes nothing');
  }
  assert.deepEqual((await r.points.points()).map((p) => [p.point.seq, p.point.consistency]), [
    [1, 'crash-consistent'], [2, 'crash-consistent'], [3, 'app-consistent'], [4, 'crash-consistent'], [5, 'crash-consistent'], [6, 'app-consistent'],
  ]);
  await assertPoints(r, 'six deltas');
  await assertRejectsCode(r.points.apply(pointOf(9), new Map(r.disks.map((d) => [d.name, []]))), 'REPLICA_CHAIN_BROKEN');
  // at most 3 points: crash-consistent points go first (the oldest point, the farthest from
  // any before it, stays; of equal gaps the earliest goes), the latest stays
  const dropped = await r.points.prune({ hours: 24, maxPoints: 3 }, 1_700_000_000_000 + 7 * 60_000);
  assert.deepEqual(dropped.map((p) => p.seq), [2, 4, 5]);
  assert.deepEqual((await r.points.points()).map((p) => p.point.seq), [1, 3, 6]);
  // out of the window: all but the latest
  assert.deepEqual((await r.points.prune({ hours: 1, maxPoints: 3 }, 1_700_000_000_000 + 3 * 3600_000)).map((p) => p.seq), [1, 3]);
  assert.deepEqual((await r.points.points()).map((p) => p.point.seq), [6]);
  await assertPoints(r, 'after pruning');
  let snapshots = 0;
  for await (const b of r.c.listBlobsFlat({ includeSnapshots: true })) if (b.snapshot) snapshots++;
  assert.equal(snapshots, 1 * 2, 'a dropped point leaves no snapshot behind');
});

test('a delta cut off at any step — part of a disk written, one disk recorded, one snapshot made — is finished by sending it again', async () => {
  const r = await vmReplica([4 * MiB, 2 * MiB + 512]);
  const rnd = prng(0xc0ffee);
  const deltaOf = () => new Map(r.disks.map((d) => [d.name, randomPieces(rnd, d.size, 25)]));
  const record = (seq: number, pieces: Map<string, DiskPiece[]>) => {
    r.disks.forEach((d, i) => applyTo(r.current[i]!, pieces.get(d.name)!));
    r.models.set(seq, r.current.map((b) => Buffer.from(b)));
  };
  const first = deltaOf();
  await r.points.apply(pointOf(1), first, { first: true });
  record(1, first);

  // 1. the second disk's writes fail part-way (the storage account goes away)
  const d2 = deltaOf();
  const upload = r.disks[1]!.blob.uploadPages.bind(r.disks[1]!.blob);
  let calls = 0;
  r.disks[1]!.blob.uploadPages = (...a) => (++calls > 3 ? Promise.reject(new Error('connection reset')) : upload(...a));
  await assertRejectsCode(r.points.apply(pointOf(2), d2), 'AZURE_STORAGE_ERROR');
  r.disks[1]!.blob.uploadPages = upload;
  assert.equal(await r.disks[0]!.sequenceNumber(), 2, 'the first disk recorded the delta');
  assert.equal(await r.disks[1]!.sequenceNumber(), 1, 'the second did not');
  assert.deepEqual((await r.points.points()).map((p) => p.point.seq), [1], 'no point 2 yet');
  assert.equal(await r.points.apply(pointOf(2), d2), 'applied');
  record(2, d2);
  await assertPoints(r, 'after a cut-off write');

  // 2. every disk recorded, one snapshot made, then the crash: only the missing snapshot is made
  const d3 = deltaOf();
  for (const d of r.disks) {
    await d.write(d3.get(d.name)!, 3);
    await d.setSequenceNumber(3);
  }
  await r.disks[0]!.snapshot({ osrseq: '3', osrtime: String(pointOf(3).timeMs), osrconsistency: 'crash-consistent', osrdeltabytes: '0', osrgen: 'g1' });
  assert.deepEqual((await r.points.list()).map((s) => [s.point.seq, s.complete]), [[1, true], [2, true], [3, false]]);
  // a stale copy of the delta arriving now writes nothing (every disk records it)
  assert.equal(await r.disks[0]!.write([{ offset: 0, data: Buffer.alloc(512, 0xaa) }], 3), false);
  assert.equal(await r.points.apply(pointOf(3), d3), 'applied');
  record(3, d3);
  assert.deepEqual((await r.points.list()).map((s) => [s.point.seq, s.complete, s.every.length]), [[1, true, 2], [2, true, 2], [3, true, 2]]);
  await assertPoints(r, 'after a crash between snapshots');
});

test('writes from separate calls at once, neighbours sharing pages, each land whole (no page merged over another\'s write)', async () => {
  const c = await container();
  const size = 2 * MiB;
  const d = await PageBlobDisk.open(c, 'sda', size, { inFlight: 8 });
  const model = Buffer.alloc(size);
  // 300-byte pieces back to back: every page is shared by two or three pieces, each its own call
  const pieces: DiskPiece[] = [];
  for (let at = 100; at + 300 <= 200_000; at += 300) pieces.push({ offset: at, data: crypto.randomBytes(300) });
  await Promise.all(pieces.map((p) => d.write([p])));
  applyTo(model, pieces);
  assert.ok((await d.read(0, 200_000)).equals(model.subarray(0, 200_000)), 'every piece is there');
});
