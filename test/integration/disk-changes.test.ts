/**
 * Disks changed under protection, with two real agents: a disk added while the VM runs is
 * copied alone and joins the next points; a disk grown in place has only its new range
 * sent; a shrink and a removal wait for the user's confirmation with a clear reason, and
 * then go through. Older points keep the disks they had, also after the replica agent
 * restarts, and no step sends the unchanged disks again.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { createVm, fileDigest, fillRandom, health, restartAgentProcess, startPair, stopAgentProcess, waitFor, waitForPoint, writePattern, type DiskInfo, type Pair, pointDigests as replicaPointDigests } from '../support/lab.js';
import type { ReplicationHealth } from '../../src/agent/wire/replication-types.js';

let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(async () => {
  await pair?.stop();
});

const MiB = 1024 * 1024;
const VM = 'dc1';

const pointDigests = (seq: number): Promise<string[]> => replicaPointDigests(pair.replica, VM, seq);
const liveDisks = () => pair.primary.api.get<DiskInfo[]>(`/v1/vms/${VM}/disks`);
const liveDigests = async () => (await liveDisks()).map((d) => fileDigest(d.image, d.size).digest);

/** Ask for a cycle and wait for a point after `seq` that has the VM's disks as they are now: answers the health then. */
async function nextPoint(seq: number): Promise<ReplicationHealth> {
  await pair.primary.api.post(`/v1/replications/${VM}/cycle`);
  const shape = (await liveDisks()).map((d) => ({ name: d.name, size: d.size }));
  return waitFor(`a point after ${seq} with disks ${JSON.stringify(shape)}`, async () => {
    const h = await health(pair.primary, VM);
    if (!h.latestPoint || h.latestPoint.seq <= seq || h.diskChange !== null || h.state !== 'Replicating') return undefined;
    const latest = (await points()).at(-1);
    return latest?.seq === h.latestPoint.seq && JSON.stringify(latest.disks) === JSON.stringify(shape) ? h : undefined;
  }, 60_000);
}

/** The points of the VM at the replica, with the disks each holds. */
async function points(): Promise<{ seq: number; disks?: { name: string; size: number }[] }[]> {
  return pair.replica.api.get(`/v1/replicas/${VM}/points`);
}

test('disks added, grown, shrunk and removed under protection reach the replica without sending the other disks again', async (t) => {
  const disks = await createVm(pair.primary, VM, ['32M']);
  fillRandom(disks[0]!.image, 32 * MiB);
  await pair.primary.api.post('/v1/replications', { vm: VM, peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', maxPoints: 50, resyncWindow: 'never' });
  const first = await waitForPoint(pair.primary, VM, null);
  const p1 = first.latestPoint!.seq;
  const p1Digests = await pointDigests(p1);
  assert.deepEqual(p1Digests, await liveDigests());

  // ---- a disk added while the VM runs: copied alone
  const added = await pair.primary.api.post<{ name: string; size: number }>(`/v1/vms/${VM}/disks`, { size: '16M' });
  assert.equal(added.name, 'disk1');
  const d1 = (await liveDisks()).find((d) => d.name === 'disk1')!;
  await writePattern(d1.nbd.unix, { writes: 40 });
  const shippedBefore = first.bytesShipped;
  const h2 = await nextPoint(p1);
  const p2 = h2.latestPoint!.seq;
  assert.equal(h2.resync?.totalBytes, 16 * MiB, 'the resync covers the new disk only');
  assert.ok(h2.resync!.wireBytesSent < 16 * MiB + 2 * MiB, `sent ${h2.resync!.wireBytesSent} bytes for a 16 MiB disk`);
  assert.ok(h2.bytesShipped - shippedBefore < 8 * MiB, `deltas shipped ${h2.bytesShipped - shippedBefore} bytes`);
  const p2Digests = await pointDigests(p2);
  assert.deepEqual(p2Digests, await liveDigests());
  assert.deepEqual(await pointDigests(p1), p1Digests, 'the point before the add has its one disk, unchanged');

  // ---- a disk grown while the VM runs: only the new range is sent
  const grown = await pair.primary.api.put<{ size: number }>(`/v1/vms/${VM}/disks/disk0`, { size: '48M' });
  assert.equal(grown.size, 48 * MiB);
  const d0 = (await liveDisks()).find((d) => d.name === 'disk0')!;
  const c = await NbdClient.connect(d0.nbd.unix);
  assert.equal(c.size, 48 * MiB, 'a new connection sees the grown disk');
  await c.write(40 * MiB, crypto.randomBytes(MiB));
  await c.flush();
  await c.close();
  const h3 = await nextPoint(p2);
  const p3 = h3.latestPoint!.seq;
  assert.ok(h3.resync!.totalBytes >= 16 * MiB && h3.resync!.totalBytes < 17 * MiB, `resync of ${h3.resync!.totalBytes} bytes: the grown range and the logged writes`);
  assert.ok(h3.resync!.wireBytesSent < 8 * MiB, `sent ${h3.resync!.wireBytesSent} bytes: the 4 MiB pieces holding the written MiB, and zero ranges`);
  t.diagnostic(`added 16 MiB disk: resync ${h2.resync!.totalBytes} bytes, sent ${h2.resync!.wireBytesSent}; grown 32→48 MiB: resync ${h3.resync!.totalBytes} bytes, sent ${h3.resync!.wireBytesSent}`);
  assert.deepEqual(await pointDigests(p3), await liveDigests());
  assert.deepEqual(await pointDigests(p2), p2Digests, 'the point before the grow is unchanged');
  const sizes = (await points()).find((p) => p.seq === p2)?.disks;
  assert.deepEqual(sizes, [{ name: 'disk0', size: 32 * MiB }, { name: 'disk1', size: 16 * MiB }], 'the point before the grow keeps the old size');

  // ---- a shrink waits for confirmation; then goes through
  await pair.primary.api.post(`/v1/vms/${VM}/stop`);
  await pair.primary.api.put(`/v1/vms/${VM}/disks/disk1`, { size: '8M' });
  await pair.primary.api.post(`/v1/replications/${VM}/cycle`);
  const waiting = await waitFor('the shrink to wait for confirmation', async () => {
    const h = await health(pair.primary, VM);
    return h.lastError?.code === 'DISK_CHANGE_UNCONFIRMED' ? h : undefined;
  });
  assert.match(waiting.lastError!.message, /disk1 shrunk from 16777216 to 8388608 bytes/);
  assert.deepEqual(waiting.diskChange, { summary: 'disk1 shrunk from 16777216 to 8388608 bytes', needsConfirmation: true, confirmed: false });
  assert.equal(waiting.health, 'Critical');
  // the delta the shrink closed (the writes from before it) is a point with the disks as they were; none after it
  const before = waiting.latestPoint!.seq;
  assert.ok(before >= p3);
  assert.deepEqual((await points()).at(-1)?.disks, [{ name: 'disk0', size: 48 * MiB }, { name: 'disk1', size: 16 * MiB }]);
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal((await health(pair.primary, VM)).latestPoint!.seq, before, 'no point while the shrink waits');
  const confirmed = await pair.primary.api.post<{ summary: string }>(`/v1/replications/${VM}/confirm-disks`);
  assert.equal(confirmed.summary, 'disk1 shrunk from 16777216 to 8388608 bytes');
  const h4 = await nextPoint(before);
  const p4 = h4.latestPoint!.seq;
  assert.deepEqual(await pointDigests(p4), await liveDigests());
  assert.equal((await pointDigests(p3)).length, 2);
  assert.deepEqual((await points()).find((p) => p.seq === p4)?.disks, [{ name: 'disk0', size: 48 * MiB }, { name: 'disk1', size: 8 * MiB }]);

  // ---- a removal waits for confirmation too (asked before there is one: refused)
  await assert.rejects(pair.primary.api.post(`/v1/replications/${VM}/confirm-disks`), (e: { code?: string }) => e.code === 'INVALID_STATE');
  await pair.primary.api.delete(`/v1/vms/${VM}/disks/disk1`);
  await pair.primary.api.post(`/v1/replications/${VM}/cycle`);
  await waitFor('the removal to wait for confirmation', async () => ((await health(pair.primary, VM)).diskChange?.summary === 'disk1 removed' ? true : undefined));
  await pair.primary.api.post(`/v1/replications/${VM}/confirm-disks`);
  const h5 = await nextPoint(p4);
  const p5 = h5.latestPoint!.seq;
  assert.deepEqual(await pointDigests(p5), await liveDigests());
  assert.equal((await pointDigests(p5)).length, 1);

  // ---- every point keeps its disks, also after the replica agent restarts
  const before5 = { p1: p1Digests, p2: await pointDigests(p2), p3: await pointDigests(p3), p4: await pointDigests(p4), p5: await pointDigests(p5) };
  await stopAgentProcess(pair.replica, 'SIGKILL');
  pair.replica = await restartAgentProcess(pair.replica);
  assert.deepEqual({ p1: await pointDigests(p1), p2: await pointDigests(p2), p3: await pointDigests(p3), p4: await pointDigests(p4), p5: await pointDigests(p5) }, before5);
  // and replication goes on with the new disks
  await pair.primary.api.post(`/v1/vms/${VM}/start`);
  const d0again = (await liveDisks())[0]!;
  await writePattern(d0again.nbd.unix, { writes: 20 });
  const h6 = await nextPoint(p5);
  assert.deepEqual(await pointDigests(h6.latestPoint!.seq), await liveDigests());
});

test('a shrink waits for confirmation across a restart of the primary agent; put back as it was, replication goes on by itself with the replica equal to the disk', async () => {
  const vm = 'dc2';
  const disks = await createVm(pair.primary, vm, ['32M']);
  fillRandom(disks[0]!.image, 32 * MiB);
  await pair.primary.api.post('/v1/replications', { vm, peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', maxPoints: 50, resyncWindow: 'never' });
  const first = await waitForPoint(pair.primary, vm, null);
  await pair.primary.api.post(`/v1/vms/${vm}/stop`);
  await pair.primary.api.put(`/v1/vms/${vm}/disks/disk0`, { size: '16M' });
  await pair.primary.api.post(`/v1/replications/${vm}/cycle`);
  const unconfirmed = async () => ((await health(pair.primary, vm)).lastError?.code === 'DISK_CHANGE_UNCONFIRMED' ? true : undefined);
  await waitFor('the shrink to wait', unconfirmed);
  // the agent restarts: the replica still has the larger disk, and the wait goes on
  await stopAgentProcess(pair.primary, 'SIGKILL');
  pair.primary = await restartAgentProcess(pair.primary);
  await waitFor('the shrink to wait after the restart', unconfirmed);
  assert.equal((await health(pair.primary, vm)).diskChange?.summary, 'disk0 shrunk from 33554432 to 16777216 bytes');
  // put back at its old size: the grown range reads as zeros, and the replica's next point does too
  await pair.primary.api.put(`/v1/vms/${vm}/disks/disk0`, { size: '32M' });
  const goneOn = await waitFor('replication to go on by itself', async () => {
    const x = await health(pair.primary, vm);
    return x.diskChange === null && x.state === 'Replicating' && x.latestPoint!.seq > first.latestPoint!.seq ? x : undefined;
  }, 30_000);
  // the next cycle ships the grow, whose change log zeroes the range at the replica
  await pair.primary.api.post(`/v1/replications/${vm}/cycle`);
  const h = await waitForPoint(pair.primary, vm, goneOn.latestPoint!.seq + 1);
  const live = (await pair.primary.api.get<DiskInfo[]>(`/v1/vms/${vm}/disks`)).map((d) => fileDigest(d.image, d.size).digest);
  assert.deepEqual(await replicaPointDigests(pair.replica, vm, h.latestPoint!.seq), live);
  const tail = Buffer.alloc(16 * MiB);
  const fd = fs.openSync(disks[0]!.image, 'r');
  fs.readSync(fd, tail, 0, tail.length, 16 * MiB);
  fs.closeSync(fd);
  assert.ok(tail.every((b) => b === 0), 'the range cut off and grown back reads as zeros');
});

test('a disk removed and another added before the user confirms: after the confirmation the replica has both changes, its points equal to the disks', async () => {
  const vm = 'dc3';
  const disks = await createVm(pair.primary, vm, ['16M', '16M']);
  for (const d of disks) fillRandom(d.image, 16 * MiB);
  await pair.primary.api.post('/v1/replications', { vm, peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', maxPoints: 50, resyncWindow: 'never' });
  const first = await waitForPoint(pair.primary, vm, null);
  await pair.primary.api.post(`/v1/vms/${vm}/stop`);
  await pair.primary.api.delete(`/v1/vms/${vm}/disks/disk1`);
  const added = await pair.primary.api.post<{ name: string }>(`/v1/vms/${vm}/disks`, { size: '8M' });
  assert.equal(added.name, 'disk2', 'a removed disk\'s name is not given again');
  await pair.primary.api.post(`/v1/replications/${vm}/cycle`);
  const waiting = await waitFor('the change to wait', async () => {
    const h = await health(pair.primary, vm);
    return h.lastError?.code === 'DISK_CHANGE_UNCONFIRMED' ? h : undefined;
  });
  assert.equal(waiting.diskChange?.summary, 'disk2 added (8388608 bytes), disk1 removed');
  await pair.primary.api.post(`/v1/replications/${vm}/confirm-disks`);
  await pair.primary.api.post(`/v1/replications/${vm}/cycle`);
  const shape = JSON.stringify([{ name: 'disk0', size: 16 * MiB }, { name: 'disk2', size: 8 * MiB }]);
  const latest = await waitFor('a point of the new disks', async () => {
    const p = (await pair.replica.api.get<{ seq: number; disks?: unknown }[]>(`/v1/replicas/${vm}/points`)).at(-1);
    const h = await health(pair.primary, vm);
    return p && JSON.stringify(p.disks) === shape && h.state === 'Replicating' && h.latestPoint?.seq === p.seq ? p : undefined;
  });
  const live = (await pair.primary.api.get<DiskInfo[]>(`/v1/vms/${vm}/disks`)).map((d) => fileDigest(d.image, d.size).digest);
  assert.deepEqual(await replicaPointDigests(pair.replica, vm, latest.seq), live);
  assert.equal((await replicaPointDigests(pair.replica, vm, first.latestPoint!.seq)).length, 2, 'the first point keeps both old disks');
});

test('a disk grown while the initial copy runs: the copy starts over, and the first point is of the grown disk', async () => {
  const vm = 'dc4';
  const disks = await createVm(pair.primary, vm, ['96M']);
  fillRandom(disks[0]!.image, 96 * MiB);
  await pair.primary.api.post('/v1/replications', { vm, peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', maxPoints: 50, bandwidth: '16MB/s' });
  await waitFor('the copy under way', async () => ((await health(pair.primary, vm)).initial?.doneBytes ?? 0) > 8 * MiB || undefined, 60_000, 50);
  await pair.primary.api.put(`/v1/vms/${vm}/disks/disk0`, { size: '112M' });
  const h = await waitForPoint(pair.primary, vm, null, 120_000);
  const live = (await pair.primary.api.get<DiskInfo[]>(`/v1/vms/${vm}/disks`)).map((d) => fileDigest(d.image, d.size).digest);
  assert.deepEqual(await replicaPointDigests(pair.replica, vm, h.latestPoint!.seq), live);
  const points = await pair.replica.api.get<{ seq: number; disks?: { name: string; size: number }[] }[]>(`/v1/replicas/${vm}/points`);
  assert.ok(points.every((p) => p.disks === undefined || p.disks[0]!.size === 112 * MiB), `no point of the old size: ${JSON.stringify(points)}`);
});
