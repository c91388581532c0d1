/**
 * A libvirt domain replicated to Azure storage (Azurite) by `osr agent --host libvirt`:
 * the same agent, change source (QEMU dirty bitmaps) and replication session as between
 * two sites, with the Azure container as the replica. The tiny guest writes fsynced
 * records the whole time: a point's snapshot of its disk holds every record acknowledged
 * before its cycle, in order; with the domain paused, a point's snapshots equal its disks
 * byte for byte, and every blob is a fixed VHD of its disk.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ContainerSASPermissions, generateBlobSASQueryParameters, type ContainerClient } from '@azure/storage-blob';
import { pageBlobBytes, readVhdFooter, VHD_FOOTER_BYTES } from '../../src/domain/vhd.js';
import { readReplicaPoints, pointDisks } from '../../src/drivers/azure/replica-points.js';
import { ensurePki, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { startAzurite, type Azurite } from '../support/azurite.js';
import { tempDir, waitFor } from '../support/lab.js';
import { domainDiskHashes, libvirtSkip, recordsOnImage, startTinyDomain, virsh, type TinyDomain } from '../support/libvirt.js';

const skip = libvirtSkip();
const dir = tempDir('osr-libvirt-azure-');
let azurite: Azurite | undefined;
let agent: RunningAgent | undefined;
let dom: TinyDomain | undefined;

before(async () => {
  if (skip) return;
  azurite = await startAzurite();
  dom = await startTinyDomain(`osrt-az-${process.pid}`, path.join(dir, 'domain'));
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, ['primary']);
  agent = await startAgentProcess({ name: 'primary', dataDir: path.join(dir, 'primary'), pkiDir, extraArgs: ['--host', 'libvirt', '--libvirt-domains', `^${dom.name}$`], logFile: path.join(dir, 'primary.log') });
});
after(async () => {
  if (agent) await stopAgentProcess(agent, 'SIGKILL');
  await dom?.destroy();
  await azurite?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The newest complete point in the container after `seq`. */
async function pointAfter(container: ContainerClient, seq: number): Promise<number> {
  return waitFor(
    `a point after ${seq}`,
    async () => {
      const h = await agent!.api.get<{ lastError: { code: string; message: string } | null }>(`/v1/replications/${dom!.name}`);
      if (h.lastError && h.lastError.code !== 'NETWORK_ERROR') throw new Error(`replication failed: ${h.lastError.code} ${h.lastError.message}`);
      const points = await readReplicaPoints(container).catch(() => undefined);
      const newest = points?.points.at(-1)?.point.seq;
      return newest !== undefined && newest > seq ? newest : undefined;
    },
    300_000,
    500,
  );
}

/** Each disk's snapshot of point `seq`, its disk's bytes written to a file, with their hash; every blob checked as a fixed VHD. */
async function snapshotDisks(container: ContainerClient, seq: number): Promise<{ files: Record<string, string>; hashes: Record<string, string> }> {
  const points = await readReplicaPoints(container);
  const files: Record<string, string> = {};
  const hashes: Record<string, string> = {};
  for (const d of pointDisks(container, points, seq)) {
    const bytes = await d.snapshot.downloadToBuffer();
    assert.equal(bytes.length, pageBlobBytes(d.sizeBytes));
    readVhdFooter(bytes.subarray(bytes.length - VHD_FOOTER_BYTES), `the snapshot of ${d.name}`);
    const file = path.join(dir, `point-${seq}-${d.name}.raw`);
    fs.writeFileSync(file, bytes.subarray(0, d.sizeBytes));
    files[d.name] = file;
    hashes[d.name] = crypto.createHash('sha256').update(bytes.subarray(0, d.sizeBytes)).digest('hex');
  }
  return { files, hashes };
}


test('a libvirt domain replicates to Azure storage from its dirty bitmaps: each point\'s snapshots hold a prefix of the guest\'s records; a paused domain\'s point equals its disks', { skip, timeout: 900_000 }, async () => {
  const vm = (await agent!.api.get<{ name: string; id: string }[]>('/v1/vms')).find((v) => v.name === dom!.name)!;
  const containerName = `osr-${vm.id}`;
  const container = azurite!.service.getContainerClient(containerName);
  await container.create();
  const sas = generateBlobSASQueryParameters({ containerName, permissions: ContainerSASPermissions.parse('racwdl'), expiresOn: new Date(Date.now() + 3600_000) }, azurite!.credential).toString();
  await agent!.api.post('/v1/replications', { vm: dom!.name, peer: container.url, azureSas: sas, copyFrequency: '1h', retentionHours: 24, maxPoints: 50 });
  const first = await pointAfter(container, -1);

  // a cycle while the guest writes
  await waitFor('more records', async () => (dom!.acked() >= 20 ? true : undefined), 120_000, 200);
  const ackedBefore = dom!.acked();
  await agent!.api.post(`/v1/replications/${dom!.name}/cycle`);
  const second = await pointAfter(container, first);
  const p2 = await snapshotDisks(container, second);
  const recs = recordsOnImage(p2.files.vda!);
  assert.deepEqual(recs, recs.map((_r, i) => i), 'records out of order or missing in the point');
  assert.ok(recs.at(-1)! >= ackedBefore, `record ${ackedBefore} was acknowledged before the cycle; the point ends at ${recs.at(-1)}`);

  // paused: the next point is the disks, byte for byte
  await virsh.run(['suspend', dom!.name]);
  try {
    await agent!.api.post(`/v1/replications/${dom!.name}/cycle`);
    const third = await pointAfter(container, second);
    const p3 = await snapshotDisks(container, third);
    assert.deepEqual(p3.hashes, await domainDiskHashes(dom!.name, dir), 'the point is not the domain\'s disks');
  } finally {
    await virsh.run(['resume', dom!.name]);
  }
});
