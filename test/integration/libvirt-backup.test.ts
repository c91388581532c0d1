/**
 * Change tracking of a real libvirt domain: pull-mode backups with osr checkpoints, read
 * over NBD with osr's client, applied to plain image files the way a replica applies
 * deltas. A tiny Linux guest writes fsynced records through its own kernel the whole time.
 *
 * - the initial (full) copy and each incremental one equal, byte for byte, what the domain
 *   held at the backup's instant (checked against a full backup taken at the same
 *   instant, the domain paused);
 * - an incremental copy reads only what changed;
 * - a copy taken while the guest writes holds every record up to some number and none
 *   after, at least every record acknowledged before the backup began;
 * - a checkpoint of another tool survives everything osr does;
 * - QEMU killed with kill -9 leaves the checkpoint's bitmap broken: the next incremental
 *   copy says RESYNC_REQUIRED, osr drops its own checkpoints, and a new chain starts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { changedExtents, deleteCheckpoint, dropCheckpoints, listCheckpoints, PullBackup } from '../../src/agent/libvirt/backup.js';
import { parseDomainXml } from '../../src/agent/libvirt/virsh.js';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { RAW_RECORD_BYTES } from '../../src/lab/tiny-guest.js';
import { tempDir, waitFor } from '../support/lab.js';
import { libvirtSkip, recordsOnImage, startTinyDomain, virsh, type TinyDomain } from '../support/libvirt.js';

const skip = libvirtSkip();
const dir = tempDir('osr-libvirt-backup-');
const disks = ['vda', 'vdb'];
let dom: TinyDomain | undefined;

before(async () => {
  if (skip) return;
  dom = await startTinyDomain(`osrt-backup-${process.pid}`, path.join(dir, 'domain'));
});
after(async () => {
  await dom?.destroy();
});

/** Copy what a backup exports into image files (created at the disk's size when new); answers the bytes read per disk. */
async function applyBackup(b: PullBackup, copies: Record<string, string>): Promise<Record<string, number>> {
  const read: Record<string, number> = {};
  for (const disk of disks) {
    const { client, context } = await b.open(disk);
    try {
      if (!fs.existsSync(copies[disk]!)) {
        fs.writeFileSync(copies[disk]!, '');
        fs.truncateSync(copies[disk]!, client.size);
      }
      const fd = fs.openSync(copies[disk]!, 'r+');
      try {
        read[disk] = 0;
        for (const e of await changedExtents(client, context)) {
          for (let off = e.offset; off < e.offset + e.length; off += 4 << 20) {
            const data = await client.read(off, Math.min(4 << 20, e.offset + e.length - off));
            fs.writeSync(fd, data, 0, data.length, off);
            read[disk] += data.length;
          }
        }
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    } finally {
      await client.close();
    }
  }
  return read;
}

/** Every byte of each disk as the domain holds it now (a full backup without a checkpoint), hashed. */
async function domainNow(d: TinyDomain): Promise<Record<string, string>> {
  const work = path.join(dir, 'now');
  await virsh.run(['backup-begin', d.name, await backupXml(work)]);
  try {
    const out: Record<string, string> = {};
    for (const disk of disks) {
      const c = await NbdClient.connect({ socketPath: path.join(work, 'now.sock'), exportName: disk });
      const h = crypto.createHash('sha256');
      for (let off = 0; off < c.size; off += 4 << 20) h.update(await c.read(off, Math.min(4 << 20, c.size - off)));
      await c.close();
      out[disk] = h.digest('hex');
    }
    return out;
  } finally {
    await virsh.run(['domjobabort', d.name]);
  }
}

async function backupXml(work: string): Promise<string> {
  fs.mkdirSync(work, { recursive: true, mode: 0o700 });
  for (const f of fs.readdirSync(work)) fs.rmSync(path.join(work, f), { force: true });
  const file = path.join(work, 'now.xml');
  fs.writeFileSync(
    file,
    `<domainbackup mode='pull'><server transport='unix' socket='${path.join(work, 'now.sock')}'/><disks>${disks.map((k) => `<disk name='${k}' backup='yes' type='file'><scratch file='${path.join(work, `s-${k}.qcow2`)}'/></disk>`).join('')}</disks></domainbackup>`,
  );
  return file;
}

function hashFile(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

test('full, then incremental copies equal the domain at their instant, byte for byte; an incremental copy reads only what changed', { skip }, async () => {
  const d = dom!;
  const info = parseDomainXml(await virsh.run(['dumpxml', d.name]));
  assert.deepEqual(info.disks.map((k) => k.target), disks);
  assert.ok(info.disks.every((k) => k.format === 'qcow2'));
  // another tool's checkpoint, made first: osr leaves it alone
  await virsh.withXml(`<domaincheckpoint><name>virtnbdbackup.0</name><disks><disk name='vda' checkpoint='bitmap'/><disk name='vdb' checkpoint='bitmap'/></disks></domaincheckpoint>`, (f) => ['checkpoint-create', d.name, f]);

  const copies = { vda: path.join(dir, 'copy-vda.img'), vdb: path.join(dir, 'copy-vdb.img') };
  const work = path.join(dir, 'work');
  // the initial copy, the domain paused so that its state now is the backup's instant
  await virsh.run(['suspend', d.name]);
  const full = await PullBackup.begin(virsh, d.name, { disks, checkpoint: 'osr-0', workDir: work });
  await applyBackup(full, copies);
  await full.end();
  await full.end();
  const at0 = await domainNow(d);
  assert.deepEqual({ vda: hashFile(copies.vda), vdb: hashFile(copies.vdb) }, at0, 'the initial copy is not the domain at its instant');
  await virsh.run(['resume', d.name]);

  // the guest writes on; the next cycle reads the dirty extents only
  const before = d.acked();
  await waitFor('more records', async () => (d.acked() >= before + 20 ? true : undefined), 60_000, 200);
  await virsh.run(['suspend', d.name]);
  const inc = await PullBackup.begin(virsh, d.name, { disks, checkpoint: 'osr-1', incremental: 'osr-0', workDir: work });
  const read = await applyBackup(inc, copies);
  await inc.end();
  const at1 = await domainNow(d);
  assert.deepEqual({ vda: hashFile(copies.vda), vdb: hashFile(copies.vdb) }, at1, 'the incremental copy is not the domain at its instant');
  await virsh.run(['resume', d.name]);
  assert.ok(read.vda! > 0 && read.vdb! > 0, `nothing read: ${JSON.stringify(read)}`);
  assert.ok(read.vda! < 16 * 1024 * 1024, `an incremental copy read ${read.vda} bytes of vda (64 MiB): not only what changed`);

  // osr's older checkpoint goes; the other tool's stays
  await deleteCheckpoint(virsh, d.name, 'osr-0');
  await assert.rejects(deleteCheckpoint(virsh, d.name, 'virtnbdbackup.0'), (e: { code?: string }) => e.code === 'INVALID_ARGUMENT');
  assert.deepEqual(await listCheckpoints(virsh, d.name), { ours: ['osr-1'], foreign: ['virtnbdbackup.0'] });
});

test('a copy taken while the guest writes holds every record up to some number and none after', { skip }, async () => {
  const d = dom!;
  const copies = { vda: path.join(dir, 'copy-vda.img'), vdb: path.join(dir, 'copy-vdb.img') };
  const work = path.join(dir, 'work');
  const ackedBefore = d.acked();
  const b = await PullBackup.begin(virsh, d.name, { disks, checkpoint: 'osr-2', incremental: 'osr-1', workDir: work });
  await applyBackup(b, copies);
  await b.end();
  await deleteCheckpoint(virsh, d.name, 'osr-1');

  // recover the file system as a failover would (the journal is replayed), then read the records
  const records = recordsOnImage(copies.vda);
  assert.ok(records.length > 0, 'no records on the copy');
  assert.deepEqual(records, records.map((_r, i) => i), 'records out of order or missing');
  assert.ok(records.at(-1)! >= ackedBefore, `record ${ackedBefore} was acknowledged before the backup began, the copy ends at ${records.at(-1)}`);
  // the raw disk: each record slot up to some number, then nothing
  const raw = fs.readFileSync(copies.vdb);
  let n = 0;
  while (n * RAW_RECORD_BYTES < raw.length && raw.subarray(n * RAW_RECORD_BYTES, n * RAW_RECORD_BYTES + 13).toString('latin1') === `rec ${String(n).padStart(8, '0')} `) n++;
  assert.ok(n - 1 >= ackedBefore, `the raw disk ends at record ${n - 1}, ${ackedBefore} was acknowledged`);
  assert.ok(raw.subarray(n * RAW_RECORD_BYTES, Math.min(raw.length, (n + 64) * RAW_RECORD_BYTES)).every((x) => x === 0), 'a record after a gap');
  assert.deepEqual((await listCheckpoints(virsh, d.name)).ours, ['osr-2']);
});

test('kill -9 of QEMU breaks the checkpoint: the next incremental copy says RESYNC_REQUIRED, and a new chain starts from a copy that equals the domain', { skip }, async () => {
  const d = dom!;
  const work = path.join(dir, 'work');
  const pid = execFileSync('pgrep', ['-f', `guest=${d.name},`]).toString().trim().split('\n')[0]!;
  process.kill(Number(pid), 'SIGKILL');
  await waitFor('the domain to be off', async () => ((await virsh.run(['domstate', d.name])).trim() === 'shut off' ? true : undefined), 30_000, 200);
  await virsh.run(['start', d.name]);
  const acked = d.acked();
  await waitFor('the guest writing again', async () => (d.acked() > acked ? true : undefined), 120_000, 200);

  await assert.rejects(PullBackup.begin(virsh, d.name, { disks, checkpoint: 'osr-3', incremental: 'osr-2', workDir: work }), (e: { code?: string; message: string }) => {
    assert.equal(e.code, 'RESYNC_REQUIRED', e.message);
    assert.match(e.message, /osr-2/);
    return true;
  });
  assert.deepEqual(await dropCheckpoints(virsh, d.name), ['osr-2']);
  const after = await listCheckpoints(virsh, d.name);
  assert.deepEqual(after.ours, []);
  assert.deepEqual(after.foreign, ['virtnbdbackup.0'], 'another tool\'s checkpoint is not osr\'s to drop');

  // the new chain: a full view at one instant (the resync compares it with the replica), then incremental again
  await virsh.run(['suspend', d.name]);
  const copies = { vda: path.join(dir, 'resync-vda.img'), vdb: path.join(dir, 'resync-vdb.img') };
  const b = await PullBackup.begin(virsh, d.name, { disks, checkpoint: 'osr-4', workDir: work });
  await applyBackup(b, copies);
  await b.end();
  assert.deepEqual({ vda: hashFile(copies.vda), vdb: hashFile(copies.vdb) }, await domainNow(d));
  await virsh.run(['resume', d.name]);
  const next = await PullBackup.begin(virsh, d.name, { disks, checkpoint: 'osr-5', incremental: 'osr-4', workDir: work });
  await next.end();
  assert.deepEqual((await listCheckpoints(virsh, d.name)).ours, ['osr-4', 'osr-5']);
});
