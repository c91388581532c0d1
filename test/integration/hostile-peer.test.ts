/**
 * A peer with a valid agent certificate of the same CA (another host's) against a live
 * replica: names it sends never become paths outside the replica's data, a replica
 * belongs to the source that created it or that the vault named, and a replica that cannot
 * be opened does not stop the agent from serving the others.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ensurePki } from '../../src/lab/agent-process.js';
import { createVm, health, restartAgentProcess, startPair, stopAgentProcess, waitFor, waitForPoint, writePattern, type Pair } from '../support/lab.js';
import { RawPeer } from '../support/raw-peer.js';

interface ReplicaView {
  vmId: string;
  vm: string;
  source: string | null;
  epoch: number;
  points: number;
  latestPoint: { seq: number } | null;
}

let pair: Pair;
before(async () => {
  pair = await startPair();
  await ensurePki(pair.pkiDir, ['intruder']);
});
after(async () => {
  await pair?.stop();
});

const disks = [{ id: 'd0', name: 'disk0', size: 1024 * 1024 }];
const retention = { hours: 1, maxPoints: 10 };

async function intruder(): Promise<RawPeer> {
  const p = await RawPeer.connect(pair.replica.replicationPort!, pair.pkiDir, 'intruder');
  const w = await p.hello();
  assert.equal(w?.type, 'welcome');
  return p;
}

function replicas(): Promise<ReplicaView[]> {
  return pair.replica.api.get<ReplicaView[]>('/v1/replicas');
}

test('names from a peer never become paths: VM ids, disk names and point sequences are checked, offsets stay in the disk', async () => {
  const dataDir = pair.replica.options.dataDir;
  const outside = path.join(pair.dir, 'outside');
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(outside, 'victim'), 'keep me');

  const p = await intruder();
  // a VM id that climbs out of the replicas directory
  for (const vmId of ['../../outside/victim', '..', '.hidden', 'a/b', '', 'x'.repeat(200)]) {
    const r = await p.request('open', { vmId, vmName: 'web', disks, retention, epoch: 1 });
    assert.equal(r?.ok, false, `open of ${vmId} was accepted`);
    assert.equal(r?.error?.code, 'PROTOCOL_ERROR');
  }
  // a disk name that does the same, a size that is not one
  for (const bad of [[{ id: 'd0', name: '../../../outside/victim', size: 1024 }], [{ id: 'd0', name: 'disk0', size: -1 }], [{ id: 'd0', name: 'disk0', size: 'big' }], []]) {
    const r = await p.request('open', { vmId: 'fresh-vm', vmName: 'web', disks: bad, retention, epoch: 1 });
    assert.equal(r?.error?.code, 'PROTOCOL_ERROR', JSON.stringify(bad));
  }
  assert.equal(fs.readFileSync(path.join(outside, 'victim'), 'utf8'), 'keep me');
  assert.equal(fs.existsSync(path.join(dataDir, 'replicas', 'fresh-vm')), false, 'a refused open created a replica');

  // a VM of its own: the intruder is its source, and still may not reach outside it
  const opened = await p.request('open', { vmId: 'intruder-vm', vmName: 'intruder-vm', disks, retention, epoch: 1 });
  assert.equal(opened?.ok, true, JSON.stringify(opened));
  const seqAsPath = await p.request('delta-begin', { point: { seq: '../../../outside', timeMs: 1, consistency: 'crash-consistent', deltaBytes: 0 } });
  assert.equal(seqAsPath?.error?.code, 'PROTOCOL_ERROR');
  assert.ok(fs.existsSync(outside), 'a point sequence deleted a directory');
  const hashes = await p.request('resync-hashes', { disk: 'disk0', offset: 'x', length: 4096, blockSize: 4096 });
  assert.equal(hashes?.error?.code, 'PROTOCOL_ERROR');
  const beyond = await p.request('resync-hashes', { disk: 'disk0', offset: 1024 * 1024, length: 4096, blockSize: 4096 });
  assert.equal(beyond?.error?.code, 'PROTOCOL_ERROR');
  const ranges = await p.request('resync-ranges', { ranges: { '../x': [[0, 1]] } });
  assert.equal(ranges?.error?.code, 'PROTOCOL_ERROR');
  const past = await p.request('copy-checkpoint', { disk: 'disk0', offset: 2 * 1024 * 1024, finished: true });
  assert.equal(past?.error?.code, 'PROTOCOL_ERROR');

  // DATA past the end of the disk closes the connection; nothing is written
  await p.send({ type: 'copy-begin', disk: 'disk0' });
  await p.sendData(1024 * 1024 - 512, Buffer.alloc(4096, 0xab));
  await p.closed;
  assert.equal(p.closedWith?.code, 'PROTOCOL_ERROR');
  const image = path.join(dataDir, 'replicas', 'intruder-vm', 'disks', 'disk0.img');
  assert.equal(fs.statSync(image).size, 1024 * 1024);

  // the agent is alive and well
  assert.ok((await replicas()).some((r) => r.vmId === 'intruder-vm'));
});

test('a replica belongs to its source: another agent certificate can neither reset, raise the epoch nor feed it; the vault can hand it over', async () => {
  const { primary } = pair;
  const vmDisks = await createVm(primary, 'app', ['4M']);
  await writePattern(vmDisks[0].nbd.unix, { writes: 50 });
  await primary.api.post('/v1/replications', { vm: 'app', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50 });
  const h1 = await waitForPoint(primary, 'app', null);
  const mine = (await replicas()).find((r) => r.vm === 'app')!;
  assert.equal(mine.source, 'primary');
  const before = { epoch: mine.epoch, points: mine.points, latest: mine.latestPoint?.seq };

  const p = await intruder();
  const spec = { vmId: mine.vmId, vmName: 'app', disks: [{ id: 'x', name: 'disk0', size: 4 * 1024 * 1024 }], retention, epoch: 1_000_000_000, reset: true };
  const reset = await p.request('open', spec);
  assert.equal(reset?.ok, false);
  assert.equal(reset?.error?.code, 'AUTH_FAILED');
  // without an open nothing else is taken
  for (const op of ['resync-begin', 'delta-begin', 'copy-checkpoint', 'status']) {
    const r = await p.request(op, { id: 'r1', seq: 99, blockSize: 4096, disk: 'disk0', offset: 0, point: { seq: 99, timeMs: 1, consistency: 'crash-consistent', deltaBytes: 0 } });
    assert.equal(r?.ok, false, op);
  }
  p.close();
  const after1 = (await replicas()).find((r) => r.vmId === mine.vmId)!;
  assert.deepEqual({ epoch: after1.epoch, points: after1.points, latest: after1.latestPoint?.seq }, before);

  // the real primary goes on replicating
  await writePattern(vmDisks[0].nbd.unix, { writes: 20 });
  await primary.api.post('/v1/replications/app/cycle');
  const h2 = await waitForPoint(primary, 'app', h1.latestPoint!.seq + 1);
  assert.equal(h2.lastError, null);

  // the vault's word decides: handed to another source, the old one is refused
  const handed = await pair.replica.api.call<{ source: string; by: string }>('PUT', `/v1/replicas/${encodeURIComponent(mine.vmId)}/source`, { source: 'intruder' });
  assert.deepEqual([handed.source, handed.by], ['intruder', 'vault']);
  await primary.api.post('/v1/replications/app/cycle');
  const refused = await waitFor('the primary refused', async () => {
    const h = await health(primary, 'app');
    return h.lastError?.code === 'AUTH_FAILED' ? h : undefined;
  });
  assert.match(refused.lastError!.message, /intruder/);
  // and handed back, it replicates again
  await pair.replica.api.call('PUT', `/v1/replicas/${encodeURIComponent(mine.vmId)}/source`, { source: 'primary' });
  await primary.api.post('/v1/replications/app/retry');
  await waitForPoint(primary, 'app', h2.latestPoint!.seq + 1);
  const bad = await pair.replica.api.call('PUT', `/v1/replicas/${encodeURIComponent(mine.vmId)}/source`, { source: '../x' }).catch((e: { code: string }) => e);
  assert.equal((bad as { code: string }).code, 'INVALID_ARGUMENT');
});

test('a new protection: the vault names the source before the first copy; a replica another agent opened first is not handed over', async () => {
  const { primary } = pair;
  const vmDisks = await createVm(primary, 'claimed', ['1M']);
  const vmId = (await primary.api.get<{ id: string; name: string }[]>('/v1/vms')).find((v) => v.name === 'claimed')!.id;
  const claim = (vm: string, source: string) => pair.replica.api.call<{ source: string; by: string }>('PUT', `/v1/replicas/${encodeURIComponent(vm)}/source`, { source, claim: true });

  // named before anyone connects: an intruder that knows the VM's id cannot take it
  const named = await claim(vmId, 'primary');
  assert.deepEqual([named.source, named.by], ['primary', 'vault']);
  assert.equal((await claim(vmId, 'primary')).by, 'vault', 'said twice, it is the same word');
  const p = await intruder();
  const squat = await p.request('open', { vmId, vmName: 'claimed', disks: [{ id: 'd0', name: 'disk0', size: 1024 * 1024 }], retention, epoch: 1 });
  assert.equal(squat?.error?.code, 'AUTH_FAILED');
  await writePattern(vmDisks[0].nbd.unix, { writes: 10 });
  await primary.api.post('/v1/replications', { vm: 'claimed', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50 });
  await waitForPoint(primary, 'claimed', null);
  assert.equal((await replicas()).find((r) => r.vmId === vmId)?.source, 'primary');

  // a replica the intruder opened before protection was enabled: the claim for another source is refused, not handed over with the intruder's data
  const early = 'vm-opened-early';
  const opened = await p.request('open', { vmId: early, vmName: 'early', disks, retention, epoch: 1 });
  assert.equal(opened?.ok, true);
  p.close();
  const refused = await claim(early, 'primary').catch((e: { code: string; message: string }) => e);
  assert.equal((refused as { code: string }).code, 'AUTH_FAILED');
  assert.match((refused as { message: string }).message, /opened by source agent intruder/);
  assert.equal((await replicas()).find((r) => r.vmId === early)?.source, 'intruder');
  // once the operator removed it, the claim holds
  await pair.replica.api.delete(`/v1/replicas/${early}`);
  assert.equal((await claim(early, 'primary')).source, 'primary');
});

test('a replica that cannot be opened is reported and skipped; the agent serves the others', async () => {
  const all = await replicas();
  const victim = all.find((r) => r.vmId === 'intruder-vm')!;
  const other = all.find((r) => r.vm === 'app')!;
  await stopAgentProcess(pair.replica, 'SIGKILL');
  fs.writeFileSync(path.join(pair.replica.options.dataDir, 'replicas', victim.vmId, 'manifest.json'), '{"version": 7}');
  pair.replica = await restartAgentProcess(pair.replica);
  const status = await pair.replica.api.get<{ replicas: ReplicaView[]; unopenedReplicas: { vmId: string; code: string }[] }>('/v1/status');
  assert.deepEqual(status.unopenedReplicas.map((u) => [u.vmId, u.code]), [[victim.vmId, 'REPLICA_STORE_CORRUPT']]);
  assert.ok(status.replicas.some((r) => r.vmId === other.vmId));
  assert.ok(!status.replicas.some((r) => r.vmId === victim.vmId));
});

test('the primary replicates only to the agent it meant: another agent\'s certificate at that address is refused', async () => {
  const { primary } = pair;
  await createVm(primary, 'named', ['1M']);
  await primary.api.post('/v1/replications', { vm: 'named', peer: `127.0.0.1:${pair.replica.replicationPort}`, peerName: 'recovery-host-7', copyFrequency: '1h' });
  const refused = await waitFor('the primary refused the replica', async () => {
    const h = await health(primary, 'named');
    return h.lastError?.code === 'AUTH_FAILED' ? h : undefined;
  });
  assert.match(refused.lastError!.message, /is replica, not the replica host recovery-host-7/);
  assert.equal((await replicas()).some((r) => r.vm === 'named'), false);
  await primary.api.delete('/v1/replications/named');
  await primary.api.post('/v1/replications', { vm: 'named', peer: `127.0.0.1:${pair.replica.replicationPort}`, peerName: 'replica', copyFrequency: '1h' });
  await waitForPoint(primary, 'named', null);
});
