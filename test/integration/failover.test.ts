/**
 * Failover primitives with two real agents: prepare (final delta, zero pending), promote
 * (a point becomes a writable VM, older primaries fenced), demote and reverse replication
 * that sends only what differs from the last common point, failback, kill -9 of either
 * agent in the middle of a reverse resync, and a failover whose point changes before its
 * commit.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { assertInStep, digestsOf, disksOf, replicate } from '../support/failover.js';
import { createVm, fillRandom, health, nbdDigest, pointDigests, restartAgentProcess, startPair, stopAgentProcess, waitFor, waitForPoint, writePattern, type Pair } from '../support/lab.js';

let pair: Pair;
before(async () => {
  pair = await startPair(undefined, { primaryListens: true });
});
after(async () => {
  await pair?.stop();
});

const MiB = 1024 * 1024;

test('planned failover loses nothing, reverse replication sends only what the new primary wrote, and failback does the same', async () => {
  const disks = await createVm(pair.primary, 'pf1', ['32M', '8M']);
  fillRandom(disks[0].image, 32 * MiB);
  await replicate(pair.primary, pair.replica, 'pf1');
  await writePattern(disks[0].nbd.unix, { writes: 100 });
  await writePattern(disks[1].nbd.unix, { writes: 30 });
  // prepare: the VM stops, its final delta is applied, nothing is pending
  const prepared = await pair.primary.api.post<{ pendingLogBytes: number; point: { seq: number } }>('/v1/replications/pf1/prepare-failover', {});
  assert.equal(prepared.pendingLogBytes, 0);
  const source = digestsOf(disks);
  const promoted = await pair.replica.api.post<{ vm: string; epoch: number; point: { seq: number }; rolledBackBytes: number }>('/v1/replicas/pf1/promote', {});
  assert.equal(promoted.point.seq, prepared.point.seq);
  assert.equal(promoted.epoch, 2);
  assert.equal(promoted.rolledBackBytes, 0);
  const atReplica = await disksOf(pair.replica, 'pf1');
  assert.deepEqual(digestsOf(atReplica), source, 'the promoted VM holds exactly the last state of the source');
  // reverse: the old primary's disks become the replica; the new primary writes meanwhile
  const demoted = await pair.primary.api.post<{ divergentBytes: number }>('/v1/vms/pf1/demote', { epoch: promoted.epoch });
  assert.equal(demoted.divergentBytes, 0, 'everything was shipped');
  const written = await writePattern(atReplica[0].nbd.unix, { writes: 60, maxLen: 16384 });
  const rev = await replicate(pair.replica, pair.primary, 'pf1');
  assert.match(rev.resync!.reason, /reverse replication/);
  // the writes since promotion are all in the change log kept open through the resync
  assert.ok(rev.resync!.wireBytesSent > written && rev.resync!.wireBytesSent <= written * 1.2 + 64 * 1024, `reverse sent ${rev.resync!.wireBytesSent} bytes for ${written} written`);
  await assertInStep(pair.replica, pair.primary, 'pf1');
  // failback: the same steps the other way
  await writePattern(atReplica[1].nbd.unix, { writes: 20 });
  await pair.replica.api.post('/v1/replications/pf1/prepare-failover', {});
  const back = await pair.primary.api.post<{ epoch: number }>('/v1/replicas/pf1/promote', {});
  assert.equal(back.epoch, 3);
  assert.deepEqual(digestsOf(await disksOf(pair.primary, 'pf1')), digestsOf(atReplica));
  await pair.replica.api.post('/v1/vms/pf1/demote', { epoch: back.epoch });
  const again = await disksOf(pair.primary, 'pf1');
  const written2 = await writePattern(again[0].nbd.unix, { writes: 40, maxLen: 16384 });
  const rev2 = await replicate(pair.primary, pair.replica, 'pf1');
  assert.ok(rev2.resync!.wireBytesSent > written2 && rev2.resync!.wireBytesSent <= written2 * 1.2 + 64 * 1024, `failback reverse sent ${rev2.resync!.wireBytesSent} bytes for ${written2} written`);
  await assertInStep(pair.primary, pair.replica, 'pf1');
});

test('unplanned failover to an older point: the stale primary is fenced, its unshipped writes are discarded, and reverse replication converges', async () => {
  const disks = await createVm(pair.primary, 'uf1', ['16M']);
  fillRandom(disks[0].image, 16 * MiB);
  const h1 = await replicate(pair.primary, pair.replica, 'uf1');
  const chosen = h1.latestPoint!.seq;
  const chosenDigests = await pointDigests(pair.replica, 'uf1', chosen);
  for (let i = 0; i < 2; i++) {
    await writePattern(disks[0].nbd.unix, { writes: 30 });
    await pair.primary.api.post('/v1/replications/uf1/cycle');
    await waitForPoint(pair.primary, 'uf1', chosen + i + 1);
  }
  // writes the replica never receives
  const unshipped = await writePattern(disks[0].nbd.unix, { writes: 30, maxLen: 16384 });
  // the primary site is unreachable; the replica site fails over to the older point
  const promoted = await pair.replica.api.post<{ epoch: number; point: { seq: number }; rolledBackBytes: number }>('/v1/replicas/uf1/promote', { point: chosen });
  assert.ok(promoted.rolledBackBytes > 0, 'two later points rolled back');
  const atReplica = await disksOf(pair.replica, 'uf1');
  assert.deepEqual(digestsOf(atReplica), chosenDigests);
  // the old primary comes back and tries to replicate: refused, and it stops taking writes
  await pair.primary.api.post('/v1/replications/uf1/cycle');
  const fenced = await waitFor('the stale primary fenced', async () => {
    const h = await health(pair.primary, 'uf1');
    return h.state === 'Fenced' ? h : undefined;
  });
  assert.equal(fenced.lastError!.code, 'EPOCH_STALE');
  assert.equal(fenced.health, 'Critical');
  const c = await NbdClient.connect(disks[0].nbd.unix);
  await assert.rejects(c.write(0, Buffer.alloc(4096, 1)), 'a fenced VM refuses writes');
  await c.close().catch(() => undefined);
  await assert.rejects(pair.primary.api.post('/v1/replications', { vm: 'uf1', peer: `127.0.0.1:${pair.replica.replicationPort}` }), (e: { code?: string }) => e.code === 'ALREADY_EXISTS' || e.code === 'EPOCH_STALE');
  const newWrites = await writePattern(atReplica[0].nbd.unix, { writes: 20, maxLen: 16384 });
  const demoted = await pair.primary.api.post<{ epoch: number; divergentBytes: number }>('/v1/vms/uf1/demote', {});
  assert.equal(demoted.epoch, promoted.epoch, 'the epoch learnt from the refusal');
  assert.ok(demoted.divergentBytes >= unshipped * 0.5, `divergent ${demoted.divergentBytes} of ${unshipped} unshipped`);
  const rev = await replicate(pair.replica, pair.primary, 'uf1');
  // at most: the old primary's unshipped writes, the rolled-back points, the new writes
  assert.ok(rev.resync!.differingBytes <= (demoted.divergentBytes + promoted.rolledBackBytes + newWrites) * 1.2 + 64 * 1024, `reverse sent ${rev.resync!.differingBytes}`);
  await assertInStep(pair.replica, pair.primary, 'uf1');
});

for (const [victim, role] of [
  ['replica', 'new primary'],
  ['primary', 'old primary'],
] as const) {
  test(`kill -9 of the ${role} in the middle of a reverse resync: it resumes and converges`, async () => {
    const vm = `kr-${victim}`;
    const disks = await createVm(pair.primary, vm, ['64M']);
    fillRandom(disks[0].image, 64 * MiB);
    await replicate(pair.primary, pair.replica, vm);
    // the old primary writes ~25 MB it never ships; the replica site fails over regardless
    await writePattern(disks[0].nbd.unix, { writes: 400, maxLen: 131072 });
    const promoted = await pair.replica.api.post<{ epoch: number }>(`/v1/replicas/${vm}/promote`, {});
    const demoted = await pair.primary.api.post<{ divergentBytes: number }>(`/v1/vms/${vm}/demote`, { epoch: promoted.epoch });
    assert.ok(demoted.divergentBytes > 8 * MiB);
    const atReplica = await disksOf(pair.replica, vm);
    await writePattern(atReplica[0].nbd.unix, { writes: 50 });
    // a slow link, so the kill lands while the ranges are on the wire
    await pair.replica.api.post('/v1/replications', { vm, peer: `127.0.0.1:${pair.primary.replicationPort}`, copyFrequency: '1h', bandwidth: '4MB/s' });
    await waitFor('the reverse resync under way', async () => ((await health(pair.replica, vm)).resync?.doneBytes ?? 0) > 2 * MiB || undefined, 60_000, 20);
    await stopAgentProcess(pair[victim], 'SIGKILL');
    pair[victim] = await restartAgentProcess(pair[victim]);
    const done = await waitFor('the reverse resync to complete', async () => {
      const h = await health(pair.replica, vm);
      return h.resync?.completedAt && h.state === 'Replicating' ? h : undefined;
    }, 120_000);
    assert.match(done.resync!.reason, /reverse replication/);
    await assertInStep(pair.replica, pair.primary, vm);
  });
}

test('a failover before its commit: the VM runs from an overlay, a changed point discards its writes, a restart keeps them, the commit keeps its clients, and reverse replication sends what it wrote', async () => {
  const vm = 'cp1';
  const disks = await createVm(pair.primary, vm, ['16M', '4M']);
  fillRandom(disks[0].image, 16 * MiB);
  const h1 = await replicate(pair.primary, pair.replica, vm);
  const older = h1.latestPoint!.seq;
  const olderDigests = await pointDigests(pair.replica, vm, older);
  await writePattern(disks[0].nbd.unix, { writes: 40 });
  await writePattern(disks[1].nbd.unix, { writes: 10 });
  const prepared = await pair.primary.api.post<{ point: { seq: number } }>(`/v1/replications/${vm}/prepare-failover`, {});
  assert.ok(prepared.point.seq > older);
  const source = digestsOf(disks);

  const promoted = await pair.replica.api.post<{ epoch: number; point: { seq: number }; pending: boolean }>(`/v1/replicas/${vm}/promote`, { commit: false });
  assert.equal(promoted.pending, true);
  assert.equal(promoted.point.seq, prepared.point.seq);
  const listed = (await pair.replica.api.get<{ name: string; running: boolean; origin?: { pending?: boolean; epoch: number } }[]>('/v1/vms')).find((v) => v.name === vm);
  assert.equal(listed?.running, true);
  assert.equal(listed?.origin?.pending, true);
  const uris = async () => (await disksOf(pair.replica, vm)).map((d) => (d as unknown as { nbd: { unix: string } }).nbd.unix);
  const served = async () => Promise.all((await uris()).map(async (u) => (await nbdDigest(u)).digest));
  assert.deepEqual(await served(), source, 'the VM runs from the last state of the source');
  // an overlay of its own would take the VM's place: refused until the commit
  await assert.rejects(pair.replica.api.post(`/v1/replicas/${vm}/overlays`, { point: older }), (e: { code?: string }) => e.code === 'INVALID_STATE');

  // writes, then another point: the VM starts again from it without them
  await writePattern((await uris())[0]!, { writes: 30 });
  const changed = await pair.replica.api.post<{ point: { seq: number }; pending: boolean; epoch: number }>(`/v1/vms/${vm}/recovery-point`, { point: older });
  assert.equal(changed.point.seq, older);
  assert.equal(changed.epoch, promoted.epoch, 'the epoch stays');
  assert.deepEqual(await served(), olderDigests, 'the VM runs from the older point, its writes discarded');

  // acknowledged writes survive a kill -9 of the agent before the commit
  const kept = crypto.randomBytes(64 * 1024);
  const c0 = await NbdClient.connect((await uris())[0]!);
  await c0.write(3 * MiB, kept);
  await c0.flush();
  await c0.close().catch(() => undefined);
  await stopAgentProcess(pair.replica, 'SIGKILL');
  pair.replica = await restartAgentProcess(pair.replica);
  const c1 = await NbdClient.connect((await uris())[0]!);
  assert.ok((await c1.read(3 * MiB, kept.length)).equals(kept), 'the write made before the restart is there');

  // the commit with a client writing all along: it never disconnects, and every acknowledged write is kept
  const acked = new Map<number, Buffer>();
  let stop = false;
  let n = 0;
  const writer = (async () => {
    while (!stop) {
      const off = 8 * MiB + (n++ % 512) * 8192;
      const block = crypto.randomBytes(4096);
      await c1.write(off, block);
      acked.set(off, block);
      if (n % 8 === 0) await new Promise((r) => setTimeout(r, 2));
    }
  })();
  await new Promise((r) => setTimeout(r, 200));
  const committed = await pair.replica.api.post<{ pending: boolean; point: { seq: number } }>(`/v1/vms/${vm}/commit`);
  assert.equal(committed.pending, false);
  assert.equal(committed.point.seq, older);
  const before = acked.size;
  await waitFor('writes after the commit', () => acked.size > before + 20 || undefined, 10_000, 10);
  stop = true;
  await writer;
  await c1.flush();
  await c1.close();
  const images = await disksOf(pair.replica, vm);
  assert.ok(images.every((d) => typeof d.image === 'string'), 'the VM runs from its own images');
  const fd = fs.openSync(images[0]!.image, 'r');
  try {
    for (const [off, block] of acked) {
      const b = Buffer.alloc(4096);
      fs.readSync(fd, b, 0, 4096, off);
      assert.ok(b.equals(block), `the write at ${off} is on the committed disk`);
    }
    const b = Buffer.alloc(kept.length);
    fs.readSync(fd, b, 0, kept.length, 3 * MiB);
    assert.ok(b.equals(kept));
  } finally {
    fs.closeSync(fd);
  }
  // committing again answers the same; the other points are gone with the replica
  assert.equal((await pair.replica.api.post<{ point: { seq: number } }>(`/v1/vms/${vm}/commit`)).point.seq, older);
  assert.ok(!(await pair.replica.api.get<{ vm: string }[]>('/v1/replicas')).some((r) => r.vm === vm));

  // reverse: what the VM wrote before the commit was not in its change logs, yet it is sent
  await pair.primary.api.post(`/v1/vms/${vm}/demote`, { epoch: promoted.epoch });
  await replicate(pair.replica, pair.primary, vm);
  await assertInStep(pair.replica, pair.primary, vm);
});
