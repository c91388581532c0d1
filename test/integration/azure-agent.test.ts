/**
 * A lab VM replicated to Azure storage (Azurite) by its own agent process: the same
 * replication loop as to a replica agent, its session run in process. Every recovery point
 * must equal, byte for byte, the source at its instant, also across kill -9 of the agent
 * in the middle of the initial copy and of a delta.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { ContainerSASPermissions, generateBlobSASQueryParameters } from '@azure/storage-blob';
import { digest } from '../../src/agent/io/checksum.js';
import { readVhdFooter, VHD_FOOTER_BYTES } from '../../src/domain/vhd.js';
import { ensurePki, restartAgentProcess, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { useAzurite } from '../support/azurite.js';
import { createVm, fileDigest, health, tempDir, waitFor, waitForPoint, writePattern } from '../support/lab.js';
import { assertRejectsCode } from '../support/unit.js';

const az = useAzurite();
const dir = tempDir('osr-azure-agent-');
let agent: RunningAgent | undefined;
after(async () => {
  if (agent) await stopAgentProcess(agent, 'SIGKILL');
  if (process.env.OSR_KEEP_TEST_DIR === undefined) fs.rmSync(dir, { recursive: true, force: true });
});

/** The digest fileDigest gives, of bytes in memory. */
function bufferDigest(b: Buffer): string {
  const blocks: string[] = [];
  for (let off = 0; off < b.length; off += 1024 * 1024) blocks.push(digest(b.subarray(off, Math.min(b.length, off + 1024 * 1024))).toString('hex'));
  return digest(Buffer.from(blocks.join(''))).toString('hex');
}

test('a lab VM replicated to Azure storage by its agent: every point equals the source at its instant, across kill -9 mid-copy and mid-delta; the SAS stays a secret', async () => {
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, ['primary']);
  agent = await startAgentProcess({ name: 'primary', dataDir: path.join(dir, 'primary'), pkiDir, logFile: path.join(dir, 'primary.log') });
  const disks = await createVm(agent, 'web1', ['96M', '8M']);
  await writePattern(disks[0]!.nbd.unix, { writes: 600, maxLen: 256 * 1024 });
  await writePattern(disks[1]!.nbd.unix, { writes: 50 });

  const containerName = 'osr-web1';
  // the container is made by whoever holds the account's credentials; the agent gets a SAS to it
  const container = az().service.getContainerClient(containerName);
  await container.create();
  const sas = generateBlobSASQueryParameters({ containerName, permissions: ContainerSASPermissions.parse('racwdl'), expiresOn: new Date(Date.now() + 3600_000) }, az().credential).toString();
  const url = `${az().url}/${containerName}`;
  // bad addresses and tokens are refused before anything starts
  await assertRejectsCode(agent.api.post('/v1/replications', { vm: 'web1', peer: `http://10.0.0.1:10000/devstoreaccount1/${containerName}`, azureSas: sas }), 'INVALID_ARGUMENT');
  await assertRejectsCode(agent.api.post('/v1/replications', { vm: 'web1', peer: `${url}?${sas}`, azureSas: sas }), 'INVALID_ARGUMENT');
  await assertRejectsCode(agent.api.post('/v1/replications', { vm: 'web1', peer: url }), 'INVALID_ARGUMENT');
  await assertRejectsCode(agent.api.post('/v1/replications', { vm: 'web1', peer: url, azureSas: 'not a sas' }), 'INVALID_ARGUMENT');
  await assertRejectsCode(agent.api.post('/v1/replications', { vm: 'web1', peer: url, azureSas: sas, initialReplication: 'offline', exportDir: dir }), 'INVALID_ARGUMENT');
  await assertRejectsCode(agent.api.post('/v1/replications', { vm: 'web1', peer: url, azureSas: sas, compression: true }), 'INVALID_ARGUMENT');

  const spec = await agent.api.post<Record<string, unknown>>('/v1/replications', { vm: 'web1', peer: url, azureSas: sas, copyFrequency: '1h', maxPoints: 50, bandwidth: '40MB/s' });
  const sig = new URLSearchParams(sas).get('sig')!;
  assert.ok(!JSON.stringify(spec).includes(sig), 'the spec answered carries no SAS');
  const accessFile = path.join(dir, 'primary', 'azure-access', `${String(spec.id)}.json`);
  assert.equal(fs.statSync(accessFile).mode & 0o077, 0, 'the SAS is kept in an owner-only file');

  // kill -9 in the middle of the initial copy: the agent starts again and the copy resumes
  await waitFor('part of the initial copy', async () => {
    const h = await health(agent!, 'web1');
    return h.initial !== null && h.initial.doneBytes > 8 * 1024 * 1024 && h.initial.doneBytes < h.initial.totalBytes;
  }, 60_000, 20);
  await stopAgentProcess(agent, 'SIGKILL');
  agent = await restartAgentProcess(agent);
  const first = await waitForPoint(agent, 'web1', null, 120_000);
  const expected = new Map<number, string[]>([[first.latestPoint!.seq, disks.map((d) => fileDigest(d.image, d.size).digest)]]);

  for (let round = 0; round < 4; round++) {
    await writePattern(disks[0]!.nbd.unix, { writes: round === 2 ? 800 : 150, maxLen: 256 * 1024, zeroEvery: 7, seed: round + 10 });
    await writePattern(disks[1]!.nbd.unix, { writes: 30, zeroEvery: 5, seed: round + 20 });
    // nothing writes between here and the swap: the point is the disks now
    const now = disks.map((d) => fileDigest(d.image, d.size).digest);
    const before = (await health(agent, 'web1')).latestPoint!.seq;
    await agent.api.post('/v1/replications/web1/cycle');
    if (round === 2) {
      // kill -9 while the delta goes up: the same delta is sent again after the restart
      await new Promise((r) => setTimeout(r, 150));
      await stopAgentProcess(agent, 'SIGKILL');
      agent = await restartAgentProcess(agent);
    }
    const h = await waitForPoint(agent, 'web1', before + 1, 120_000);
    expected.set(h.latestPoint!.seq, now);
  }

  // each point, a snapshot per disk, equals the source at its instant; each blob is a fixed VHD
  const snapshots = new Map<number, Map<string, string>>();
  for await (const b of container.listBlobsFlat({ includeSnapshots: true, includeMetadata: true, prefix: 'disks/' })) {
    if (!b.snapshot) continue;
    const seq = Number(b.metadata?.osrseq);
    if (!snapshots.has(seq)) snapshots.set(seq, new Map());
    snapshots.get(seq)!.set(b.name, b.snapshot);
  }
  // (the agent restarted after the kill may cut a point of its own while the test writes: its bytes are not known here)
  for (const seq of expected.keys()) assert.ok(snapshots.has(seq), `point ${seq} has its snapshots`);
  for (const [seq, set] of snapshots) assert.equal(set.size, disks.length, `point ${seq} has a snapshot of every disk`);
  for (const [seq, want] of expected) {
    for (const [i, d] of disks.entries()) {
      const blob = container.getPageBlobClient(`disks/${d.name}.vhd`).withSnapshot(snapshots.get(seq)!.get(`disks/${d.name}.vhd`)!);
      const bytes = await blob.downloadToBuffer();
      assert.equal(bufferDigest(bytes.subarray(0, d.size)), want[i], `point ${seq}, disk ${d.name}: the source at its instant`);
      assert.equal(readVhdFooter(bytes.subarray(bytes.length - VHD_FOOTER_BYTES), d.name).currentSize, Math.ceil(d.size / (1024 * 1024)) * 1024 * 1024);
    }
  }
  const h = await health(agent, 'web1');
  assert.equal(h.state, 'Replicating');
  assert.equal(h.lastError, null);
  const log = fs.readFileSync(path.join(dir, 'primary.log'), 'utf8');
  assert.ok(!log.includes(sig), 'no log line carries the SAS');

  // a renewed SAS is taken; disabling the replication forgets it
  const renewed = generateBlobSASQueryParameters({ containerName, permissions: ContainerSASPermissions.parse('racwdl'), expiresOn: new Date(Date.now() + 7200_000) }, az().credential).toString();
  await agent.api.put(`/v1/replications/${String(spec.id)}/azure-sas`, { sas: renewed });
  assert.equal(JSON.parse(fs.readFileSync(accessFile, 'utf8')).sas, renewed);
  // a SAS the account refuses: the replication says so, and takes a renewed one without a restart
  const latest = (await health(agent, 'web1')).latestPoint!.seq;
  const forged = renewed.replace(/sig=[^&]+/, `sig=${encodeURIComponent(Buffer.alloc(32, 7).toString('base64'))}`);
  await agent.api.put(`/v1/replications/${String(spec.id)}/azure-sas`, { sas: forged });
  await stopAgentProcess(agent, 'SIGTERM');
  agent = await restartAgentProcess(agent);
  await writePattern(disks[1]!.nbd.unix, { writes: 20, seed: 99 });
  await agent.api.post('/v1/replications/web1/cycle');
  await waitFor('the refused SAS reported', async () => ((await health(agent!, 'web1')).lastError?.code === 'AUTH_FAILED' ? true : undefined), 60_000, 100);
  await agent.api.put(`/v1/replications/${String(spec.id)}/azure-sas`, { sas: renewed });
  await agent.api.post('/v1/replications/web1/retry');
  await waitForPoint(agent, 'web1', latest + 1, 120_000);
  const log2 = fs.readFileSync(path.join(dir, 'primary.log'), 'utf8');
  for (const s of [renewed, forged]) assert.ok(!log2.includes(new URLSearchParams(s).get('sig')!), 'no log line carries a SAS');
  await agent.api.delete(`/v1/replications/${String(spec.id)}`);
  assert.equal(fs.existsSync(accessFile), false);
});
