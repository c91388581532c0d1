/**
 * The region's agent bringing in a VM from managed disks for a failback
 * (`POST /v1/vms/:name/import`), with a real agent process and Azurite: the disk's bytes
 * arrive whole (checked against the blob), zeros stay holes, an import asked again answers
 * the same, a kill -9 in the middle of the download is followed by an import that starts
 * over and finishes, and what is not a managed disk's read URL or a fixed VHD of the disk's
 * size is refused with its code before anything is written.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { BlobSASPermissions, generateBlobSASQueryParameters, type PageBlobClient } from '@azure/storage-blob';
import { pageBlobBytes, vhdFooter, VHD_FOOTER_BYTES } from '../../src/domain/vhd.js';
import { ensurePki, restartAgentProcess, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { useAzurite } from '../support/azurite.js';
import { tempDir, waitFor } from '../support/lab.js';

const MiB = 1024 * 1024;
const az = useAzurite();
const dir = tempDir('osr-azure-import-');
let agent: RunningAgent;
/** an OsrError of that code */
const code = (c: string) => (e: unknown) => (e as { code?: string }).code === c;

before(async () => {
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, ['azure-westeurope']);
  agent = await startAgentProcess({ name: 'azure-westeurope', dataDir: path.join(dir, 'agent'), pkiDir, logFile: path.join(dir, 'agent.log') });
});

after(async () => {
  if (agent) await stopAgentProcess(agent);
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A managed disk as its read SAS shows it: the disk's bytes, zeros to a whole MiB, the VHD footer; answers the blob and its read URL. */
async function managedDisk(name: string, bytes: Buffer, size = bytes.length): Promise<{ blob: PageBlobClient; url: string }> {
  const container = az().service.getContainerClient('disks');
  await container.createIfNotExists();
  const blob = container.getPageBlobClient(name);
  await blob.create(pageBlobBytes(size));
  for (let at = 0; at < bytes.length; at += 4 * MiB) {
    const piece = bytes.subarray(at, Math.min(bytes.length, at + 4 * MiB));
    if (piece.some((b) => b !== 0)) await blob.uploadPages(piece, at, piece.length);
  }
  await blob.uploadPages(vhdFooter(size), pageBlobBytes(size) - VHD_FOOTER_BYTES, VHD_FOOTER_BYTES);
  const sas = generateBlobSASQueryParameters({ containerName: 'disks', blobName: name, permissions: BlobSASPermissions.parse('r'), expiresOn: new Date(Date.now() + 3600_000) }, az().credential).toString();
  return { blob, url: `${blob.url}?${sas}` };
}

async function importDone(vm: string): Promise<{ state: string; bytes: number; totalBytes: number; error?: { code: string } }> {
  return waitFor(`the import of ${vm}`, async () => {
    const p = await agent.api.get<{ state: string; bytes: number; totalBytes: number; error?: { code: string } }>(`/v1/vms/${vm}/import`);
    return p.state === 'importing' ? undefined : p;
  }, 120_000, 50);
}

test('a managed disk comes in whole through its read URL, zeros as holes; asked again, the same VM', async () => {
  const size = 24 * MiB;
  const bytes = Buffer.alloc(size);
  crypto.randomFillSync(bytes, 0, 3 * MiB);
  crypto.randomFillSync(bytes, 17 * MiB, 512 * 1024);
  const { url } = await managedDisk('web-disk0.vhd', bytes);
  const body = { id: 'vm-web', epoch: 3, disks: [{ id: 'disk-web-0', name: 'disk0', size, url }] };
  const first = await agent.api.post<{ state: string; totalBytes: number }>('/v1/vms/web/import', body);
  assert.equal(first.totalBytes, size);
  assert.equal((await importDone('web')).state, 'done');
  const vm = (await agent.api.get<{ name: string; id: string; running: boolean; origin: { epoch: number; unknownChanges?: boolean } }[]>('/v1/vms')).find((v) => v.name === 'web')!;
  assert.equal(vm.id, 'vm-web');
  assert.equal(vm.running, false);
  assert.equal(vm.origin.epoch, 3);
  assert.equal(vm.origin.unknownChanges, true, 'its changes in Azure are unknown: its replication compares every block');
  const [disk] = await agent.api.get<{ name: string; image: string }[]>('/v1/vms/web/disks');
  assert.ok(fs.readFileSync(disk!.image).equals(bytes), 'the image holds the disk\'s bytes');
  assert.ok(fs.statSync(disk!.image).blocks * 512 < 8 * MiB, 'ranges of zeros are holes');
  assert.equal(fs.statSync(disk!.image).mode & 0o077, 0, 'the image is the owner\'s only');
  // asked again: the same VM, done
  assert.equal((await agent.api.post<{ state: string }>('/v1/vms/web/import', body)).state, 'done');
  // another id under that name is refused
  await assert.rejects(agent.api.post('/v1/vms/web/import', { ...body, id: 'vm-other' }), code('ALREADY_EXISTS'));
  await agent.api.delete('/v1/vms/web/import');
  assert.equal((await agent.api.get<{ name: string }[]>('/v1/vms')).some((v) => v.name === 'web'), false);
  assert.equal(fs.existsSync(path.dirname(disk!.image)), false, 'its images are gone');
});

test('an agent killed in the middle of an import starts it over when asked again, and finishes', async () => {
  const size = 256 * MiB;
  const bytes = crypto.randomBytes(size);
  const { url } = await managedDisk('db-disk0.vhd', bytes);
  const body = { id: 'vm-db', epoch: 2, disks: [{ id: 'disk-db-0', name: 'disk0', size, url }] };
  await agent.api.post('/v1/vms/db/import', body);
  await waitFor('part of the disk read', async () => ((await agent.api.get<{ bytes: number }>('/v1/vms/db/import')).bytes > 0 ? true : undefined), 60_000, 10);
  const during = await agent.api.get<{ state: string; bytes: number }>('/v1/vms/db/import');
  await stopAgentProcess(agent, 'SIGKILL');
  assert.equal(during.state, 'importing', 'killed while it read');
  agent = await restartAgentProcess(agent);
  assert.equal((await agent.api.get<{ name: string }[]>('/v1/vms')).some((v) => v.name === 'db'), false, 'no VM of a disk read in part');
  await agent.api.post('/v1/vms/db/import', body);
  assert.equal((await importDone('db')).state, 'done');
  const [disk] = await agent.api.get<{ name: string; image: string }[]>('/v1/vms/db/disks');
  assert.ok(fs.readFileSync(disk!.image).equals(bytes), 'the image holds the disk\'s bytes');
  assert.deepEqual(fs.readdirSync(path.dirname(disk!.image)), ['disk0.img'], 'no part file left');
  await agent.api.delete('/v1/vms/db/import');
});

test('what is not a managed disk\'s read URL, or not a fixed VHD of the disk\'s size, is refused with its code', async () => {
  const size = 4 * MiB;
  const { url, blob } = await managedDisk('bad-disk0.vhd', crypto.randomBytes(size));
  const disk = (u: string, s = size) => ({ id: 'vm-bad', epoch: 2, disks: [{ id: 'disk-bad-0', name: 'disk0', size: s, url: u }] });
  const sas = new URL(url).search;
  for (const [u, why] of [
    [`http://169.254.169.254/metadata${sas}`, 'plain http to another host'],
    [`https://internal.example.com/x.vhd${sas}`, 'not a blob endpoint'],
    [`https://x.blob.attacker.example/x.vhd${sas}`, 'a blob endpoint of no Azure cloud'],
    [`https://acct.blob.core.windows.net:8443/c/x.vhd${sas}`, 'not the https port'],
    [url.split('?')[0]!, 'no SAS'],
    [`https://user:pw@acct.blob.core.windows.net/c/x.vhd${sas}`, 'credentials in the URL'],
  ] as const) {
    await assert.rejects(agent.api.post('/v1/vms/bad/import', disk(u)), code('INVALID_ARGUMENT'), why);
  }
  await assert.rejects(agent.api.post('/v1/vms/..%2Fx/import', disk(url)), code('INVALID_ARGUMENT'));
  await assert.rejects(agent.api.post('/v1/vms/bad/import', { ...disk(url), id: '../etc' }), code('INVALID_ARGUMENT'));
  // a disk size the blob does not hold: refused once read, no VM made
  await agent.api.post('/v1/vms/bad/import', disk(url, 8 * MiB));
  const p = await importDone('bad');
  assert.equal(p.state, 'failed');
  assert.equal(p.error?.code, 'AZURE_DISK_INVALID');
  // a blob without the footer
  await blob.uploadPages(Buffer.alloc(512), pageBlobBytes(size) - VHD_FOOTER_BYTES, VHD_FOOTER_BYTES);
  await agent.api.post('/v1/vms/bad/import', disk(url));
  const q = await importDone('bad');
  assert.equal(q.state, 'failed');
  assert.equal(q.error?.code, 'AZURE_DISK_INVALID');
  assert.equal((await agent.api.get<{ name: string }[]>('/v1/vms')).some((v) => v.name === 'bad'), false);
});
