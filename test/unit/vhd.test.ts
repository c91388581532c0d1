import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { azureDiskBytes, pageBlobBytes, readVhdFooter, vhdFooter, vhdGeometry, VHD_FOOTER_BYTES } from '../../src/domain/vhd.js';
import { assertThrowsCode, withDir } from '../support/unit.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

test('an Azure disk is the source disk rounded up to a whole MiB, and its page blob one footer longer', () => {
  assert.equal(azureDiskBytes(1), MiB);
  assert.equal(azureDiskBytes(MiB), MiB);
  assert.equal(azureDiskBytes(3 * MiB + 5), 4 * MiB);
  assert.equal(pageBlobBytes(3 * MiB + 5), 4 * MiB + 512);
  assert.equal(pageBlobBytes(3 * MiB + 5) % 512, 0, 'a page blob is whole 512-byte pages');
  assertThrowsCode(() => azureDiskBytes(0), 'INVALID_ARGUMENT');
  assertThrowsCode(() => azureDiskBytes(1.5), 'INVALID_ARGUMENT');
  assertThrowsCode(() => azureDiskBytes(33 * 1024 ** 4), 'NOT_SUPPORTED');
});

test('the geometry follows the VHD specification\'s algorithm at each of its branches', () => {
  // 1 GiB: past 17 and 31 sectors per track, 63 with 16 heads (as qemu-img and Hyper-V write it)
  assert.deepEqual(vhdGeometry(1024 * MiB), { cylinders: 2080, heads: 16, sectorsPerTrack: 63 });
  // 4 MiB: 17 sectors per track, the minimum of 4 heads
  assert.deepEqual(vhdGeometry(4 * MiB), { cylinders: 120, heads: 4, sectorsPerTrack: 17 });
  // 127 GiB and more: 255 sectors per track, capped at 65535 cylinders
  assert.deepEqual(vhdGeometry(2 * 1024 ** 4), { cylinders: 65535, heads: 16, sectorsPerTrack: 255 });
});

test('a footer reads back, and a damaged one is refused with AZURE_DISK_INVALID', () => {
  const id = crypto.randomBytes(16);
  const f = vhdFooter(10 * MiB + 1, { uniqueId: id, createdMs: Date.UTC(2026, 11, 6) });
  assert.equal(f.length, VHD_FOOTER_BYTES);
  assert.equal(f.toString('latin1', 0, 8), 'conectix');
  assert.equal(f.readUInt32BE(24), Math.floor((Date.UTC(2026, 11, 6) - Date.UTC(2000, 0, 1)) / 1000), 'seconds since 2000');
  assert.deepEqual(readVhdFooter(f), { currentSize: 11 * MiB, diskType: 2, uniqueId: id });
  // the cookie, the checksum itself, the size and a reserved byte (all covered by the checksum)
  for (const [at, why] of [[3, /conectix/], [64, /checksum/], [50, /checksum/], [300, /checksum/]] as const) {
    const bad = Buffer.from(f);
    bad[at]! ^= 0x40;
    assertThrowsCode(() => readVhdFooter(bad), 'AZURE_DISK_INVALID', why);
  }
  const dynamic = Buffer.from(f);
  dynamic.writeUInt32BE(3, 60);
  dynamic.writeUInt32BE(0, 64);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum = (sum + dynamic[i]!) >>> 0;
  dynamic.writeUInt32BE(~sum >>> 0, 64);
  assert.throws(() => readVhdFooter(dynamic), /disk type 3/);
  assertThrowsCode(() => readVhdFooter(f.subarray(0, 511)), 'AZURE_DISK_INVALID');
});

test(
  'qemu-img reads a blob of the disk and its footer as a fixed VHD holding the disk\'s bytes',
  withDir(async (dir) => {
    const size = 3 * MiB + 4096 + 5;
    const disk = crypto.randomBytes(size);
    const blob = path.join(dir, 'disk.vhd');
    fs.writeFileSync(blob, Buffer.concat([disk, Buffer.alloc(azureDiskBytes(size) - size), vhdFooter(size)]));
    assert.equal(fs.statSync(blob).size, pageBlobBytes(size));
    // the current size, as qemu uses for disks Hyper-V and Azure made
    const opts = `driver=vpc,force_size_calc=current_size,file.driver=file,file.filename=${blob}`;
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', '--image-opts', opts])).stdout) as { format: string; 'virtual-size': number; 'format-specific'?: { data?: { 'vhd-type'?: string } } };
    assert.equal(info.format, 'vpc');
    assert.equal(info['virtual-size'], azureDiskBytes(size));
    const raw = path.join(dir, 'disk.raw');
    await run('qemu-img', ['convert', '--image-opts', opts, '-O', 'raw', raw]);
    const back = fs.readFileSync(raw);
    assert.ok(back.subarray(0, size).equals(disk), 'the disk\'s bytes');
    assert.ok(back.subarray(size).equals(Buffer.alloc(azureDiskBytes(size) - size)), 'zeros to the whole MiB');
  }),
);
