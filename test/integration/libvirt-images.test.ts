/**
 * Disk images for change tracking: only qcow2 v3 files are taken (a raw or v2 disk is
 * refused with what to do), and a committed failover's raw replica image becomes a disk
 * libvirt manages without a byte copied: a qcow2 over it that carries the checkpoints'
 * bitmaps while the guest's writes land in the raw image.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { changedExtents, PullBackup } from '../../src/agent/libvirt/backup.js';
import { checkTrackable, imageInfo, wrapRawImage, wrappedDiskXml } from '../../src/agent/libvirt/images.js';
import { xmlText } from '../../src/agent/libvirt/virsh.js';
import { tinyGuest } from '../../src/lab/tiny-guest.js';
import { tempDir, waitFor } from '../support/lab.js';
import { libvirtSkip, recordsOnImage, removeDomain, virsh } from '../support/libvirt.js';
import { skipWithout } from '../support/unit.js';

const dir = tempDir('osr-libvirt-images-');
const MiB = 1024 * 1024;
const name = `osrt-images-${process.pid}`;
after(async () => {
  if (!libvirtSkip()) await removeDomain(name).catch(() => undefined);
});

function rawExt4(file: string, mib: number): void {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, mib * MiB);
  execFileSync('mkfs.ext4', ['-q', '-F', file]);
}

test('only qcow2 v3 files can be tracked: raw and qcow2 v2 disks are refused with the command that fixes them', { skip: skipWithout(['qemu-img'], 'qemu-utils') }, async () => {
  const raw = path.join(dir, 'plain.raw');
  fs.writeFileSync(raw, '');
  fs.truncateSync(raw, 8 * MiB);
  const v2 = path.join(dir, 'old.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', v2, '8M']);
  const v3 = path.join(dir, 'new.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', v3, '8M']);
  const code = (f: () => void) => {
    try {
      f();
      return undefined;
    } catch (e) {
      return e as { code: string; message: string };
    }
  };
  const r = code(() => checkTrackable('web', { target: 'vda', device: 'disk', file: raw }, undefined));
  assert.equal(r?.code, 'NOT_SUPPORTED');
  const rawInfo = await imageInfo(raw);
  assert.equal(rawInfo.format, 'raw');
  const e1 = code(() => checkTrackable('web', { target: 'vda', device: 'disk', file: raw }, rawInfo));
  assert.equal(e1?.code, 'NOT_SUPPORTED');
  assert.match(e1!.message, /vda of web .* is raw.*qemu-img convert -O qcow2 -o compat=1\.1/);
  const e2 = code(() => checkTrackable('web', { target: 'vdb', device: 'disk', file: v2 }, undefined as never));
  assert.equal(e2?.code, 'NOT_SUPPORTED');
  const v2Info = await imageInfo(v2);
  const e3 = code(() => checkTrackable('web', { target: 'vdb', device: 'disk', file: v2 }, v2Info));
  assert.match(e3!.message, /compat 0\.10.*qemu-img amend -o compat=1\.1/);
  assert.equal(code(() => checkTrackable('web', { target: 'vdc', device: 'disk', file: v3 }, undefined as never))?.code, 'NOT_SUPPORTED');
  checkTrackable('web', { target: 'vdc', device: 'disk', file: v3 }, await imageInfo(v3));
});

test('a raw replica image becomes a tracked disk without a copy: the guest boots from the wrapper, its writes land in the raw image, checkpoints work', { skip: libvirtSkip() }, async () => {
  const raw = path.join(dir, 'replica-vda.img');
  rawExt4(raw, 64);
  const before = fs.statSync(raw);
  const wrapper = path.join(dir, 'replica-vda.qcow2');
  await wrapRawImage(raw, wrapper);
  await wrapRawImage(raw, wrapper);
  const info = await imageInfo(wrapper);
  assert.deepEqual([info.format, info.compat, info.dataFile, info.virtualSize], ['qcow2', '1.1', raw, 64 * MiB]);
  assert.ok(fs.statSync(wrapper).size < 2 * MiB, 'the wrapper holds metadata only');
  assert.equal(fs.statSync(raw).ino, before.ino, 'the raw image is the same file');
  execFileSync('qemu-img', ['compare', '-q', '-f', 'qcow2', '-F', 'raw', wrapper, raw]);

  const guest = await tinyGuest();
  const consoleLog = path.join(dir, 'console.log');
  const xml = `<domain type='qemu'><name>${xmlText(name)}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>${xmlText(guest.kernel)}</kernel><initrd>${xmlText(guest.initrd)}</initrd><cmdline>${xmlText(`${guest.cmdline} osr.interval=0.1`)}</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>${wrappedDiskXml(wrapper, raw, 'vda')}<serial type='file'><source path='${xmlText(consoleLog)}'/><target port='0'/></serial></devices></domain>`;
  await removeDomain(name);
  await virsh.withXml(xml, (f) => ['define', f]);
  await virsh.run(['start', name]);
  const acked = () => {
    const all = [...(fs.existsSync(consoleLog) ? fs.readFileSync(consoleLog, 'latin1') : '').matchAll(/osr-guest: ack (\d+)/g)];
    return all.length > 0 ? Number(all.at(-1)![1]) : -1;
  };
  await waitFor('records', async () => (acked() >= 5 ? true : undefined), 120_000, 200);

  const work = path.join(dir, 'work');
  const full = await PullBackup.begin(virsh, name, { disks: ['vda'], checkpoint: 'osr-0', workDir: work });
  await full.end();
  const n = acked();
  await waitFor('more records', async () => (acked() >= n + 10 ? true : undefined), 60_000, 200);
  const inc = await PullBackup.begin(virsh, name, { disks: ['vda'], checkpoint: 'osr-1', incremental: 'osr-0', workDir: work });
  const { client, context } = await inc.open('vda');
  const changed = await changedExtents(client, context);
  await client.close();
  await inc.end();
  assert.ok(changed.length > 0, 'the guest\'s writes are in the bitmap');
  assert.ok(changed.reduce((s, e) => s + e.length, 0) < 16 * MiB);

  // shut off: the bitmaps are kept in the wrapper, the records in the raw image
  const last = acked();
  await virsh.run(['destroy', name]);
  assert.ok((await imageInfo(wrapper)).bitmaps.includes('osr-1'), 'the checkpoint\'s bitmap is not in the wrapper');
  const records = recordsOnImage(raw);
  assert.deepEqual(records, records.map((_r, i) => i));
  assert.ok(records.length - 1 >= last, `the raw image ends at record ${records.length - 1}, ${last} was acknowledged`);
});
