import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import type { ContainerClient } from '@azure/storage-blob';
import { MAX_PUT_PAGE, PageBlobDisk, type DiskPiece } from '../../src/agent/azure/page-blob-disk.js';
import { azureDiskBytes, pageBlobBytes, readVhdFooter } from '../../src/agent/azure/vhd.js';
import { assertRejectsCode, prng } from '../support/unit.js';
import { startAzurite, type Azurite } from '../support/azurite.js';

const MiB = 1024 * 1024;
let az: Azurite;
let n = 0;

before(async () => {
  az = await startAzurite();
});
after(async () => {
  await az?.stop();
});

async function container(): Promise<ContainerClient> {
  const c = az.service.getContainerClient(`osr-test-${process.pid}-${n++}`);
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
