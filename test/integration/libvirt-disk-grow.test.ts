/**
 * A libvirt domain's disk grown under protection (virsh blockresize) while its guest
 * writes: the agent sees the new size at its next cycle, the replica grows the disk in
 * place, and only the new range is resynchronized (with what the open delta wrote); the
 * older points keep the old size, and a point of the paused domain equals its disks.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import type { ReplicationHealth } from '../../src/agent/wire/replication-types.js';
import { startPair, tempDir, waitFor, type Pair } from '../support/lab.js';
import { domainDiskHashes, libvirtSkip, startTinyDomain, virsh, type TinyDomain } from '../support/libvirt.js';

const skip = libvirtSkip();
const dir = tempDir('osr-libvirt-grow-');
const MiB = 1024 * 1024;
let pair: Pair | undefined;
let dom: TinyDomain | undefined;

before(async () => {
  if (skip) return;
  dom = await startTinyDomain(`osrt-grow-${process.pid}`, path.join(dir, 'domain'));
  pair = await startPair(path.join(dir, 'agents'), { primaryArgs: ['--host', 'libvirt', '--libvirt-domains', `^${dom.name}$`] });
});
after(async () => {
  await pair?.stop();
  await dom?.destroy();
});

const health = (): Promise<ReplicationHealth> => pair!.primary.api.get<ReplicationHealth>(`/v1/replications/${dom!.name}`);
const points = (): Promise<{ seq: number; disks?: { name: string; size: number }[] }[]> => pair!.replica.api.get(`/v1/replicas/${dom!.name}/points`);

/** Ask for a cycle and wait for a point after `seq` (of the disks `shape`, when given). */
async function pointAfter(seq: number | null, shape?: { name: string; size: number }[]): Promise<number> {
  if (seq !== null) await pair!.primary.api.post(`/v1/replications/${dom!.name}/cycle`);
  const p = await waitFor(`a point after ${seq}`, async () => {
    const h = await health();
    if (h.lastError && h.lastError.code !== 'NETWORK_ERROR') throw new Error(`replication failed: ${h.lastError.code} ${h.lastError.message}`);
    const latest = (await points()).at(-1);
    if (!latest || (seq !== null && latest.seq <= seq)) return undefined;
    return !shape || JSON.stringify(latest.disks) === JSON.stringify(shape) ? latest : undefined;
  }, 240_000, 250);
  return p.seq;
}

async function pointHashes(seq: number): Promise<Record<string, string>> {
  const o = await pair!.replica.api.post<{ id: string; disks: { name: string; nbd: { unix: string } }[] }>(`/v1/replicas/${dom!.name}/overlays`, { point: seq });
  try {
    const out: Record<string, string> = {};
    for (const d of o.disks) {
      const c = await NbdClient.connect(d.nbd.unix);
      const h = crypto.createHash('sha256');
      for (let off = 0; off < c.size; off += 4 * MiB) h.update(await c.read(off, Math.min(4 * MiB, c.size - off)));
      await c.close();
      out[d.name] = h.digest('hex');
    }
    return out;
  } finally {
    await pair!.replica.api.delete(`/v1/replicas/${dom!.name}/overlays/${o.id}`);
  }
}

test('a libvirt disk grown under protection: the replica grows it and only the new range is sent', { skip }, async () => {
  await pair!.primary.api.post('/v1/replications', { vm: dom!.name, peer: `127.0.0.1:${pair!.replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50 });
  const first = await pointAfter(null);
  const sizes = Object.fromEntries((await pair!.primary.api.get<{ name: string; size: number }[]>(`/v1/vms/${dom!.name}/disks`)).map((d) => [d.name, d.size]));
  const vdb = sizes.vdb!;
  await virsh.run(['blockresize', dom!.name, 'vdb', `${(vdb + 16 * MiB) / 1024}KiB`]);
  const grown = await pointAfter(first, [{ name: 'vda', size: sizes.vda! }, { name: 'vdb', size: vdb + 16 * MiB }]);
  const h = await health();
  assert.ok(h.resync && h.resync.totalBytes >= 16 * MiB && h.resync.totalBytes < 16 * MiB + 8 * MiB, `the resync covered ${h.resync?.totalBytes} bytes: the grown 16 MiB and what the open delta wrote, not the disks`);
  assert.ok(h.resync!.wireBytesSent < 12 * MiB, `sent ${h.resync!.wireBytesSent} bytes`);
  assert.deepEqual((await points()).find((p) => p.seq === first)?.disks, [{ name: 'vda', size: sizes.vda! }, { name: 'vdb', size: vdb }], 'the older point keeps the old size');
  // paused: the next point is the disks as they are, the grown one included
  await virsh.run(['suspend', dom!.name]);
  try {
    const last = await pointAfter(grown);
    assert.deepEqual(await pointHashes(last), await domainDiskHashes(dom!.name, dir));
  } finally {
    await virsh.run(['resume', dom!.name]);
  }
});
