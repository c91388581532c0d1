/**
 * Resynchronization with two real agents: disks that diverged from the replica are
 * compared block by block, only differing blocks travel, the guest keeps writing meanwhile,
 * and the resync ends in one recovery point that equals the source; older points stay.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { createVm, fileDigest, fillRandom, health, restartAgentProcess, startPair, stopAgentProcess, waitFor, waitForPoint, writePattern, type Pair, pointDigests as replicaPointDigests } from '../support/lab.js';

let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(async () => {
  await pair?.stop();
});

const MiB = 1024 * 1024;

const pointDigests = (vm: string, seq: number): Promise<string[]> => replicaPointDigests(pair.replica, vm, seq);

/** Overwrite scattered 4 KiB blocks of an image file directly: changes replication never saw. */
function scribble(file: string, size: number, blocks: number): number {
  const fd = fs.openSync(file, 'r+');
  try {
    for (let i = 0; i < blocks; i++) {
      const off = 4096 * crypto.randomInt(size / 4096);
      fs.writeSync(fd, crypto.randomBytes(4096), 0, 4096, off);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return blocks * 4096;
}

test('an asked-for resync sends only the blocks that differ, while the guest writes, and ends in a point equal to the source', async () => {
  const disks = await createVm(pair.primary, 'rs1', ['48M', '16M']);
  fillRandom(disks[0].image, 48 * MiB);
  await pair.primary.api.post('/v1/replications', { vm: 'rs1', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', maxPoints: 50, resyncWindow: 'never' });
  await waitForPoint(pair.primary, 'rs1', null);
  await writePattern(disks[1].nbd.unix, { writes: 50 });
  await pair.primary.api.post('/v1/replications/rs1/cycle');
  const h1 = await waitForPoint(pair.primary, 'rs1', 2);
  const p1 = h1.latestPoint!.seq;
  const p1Digests = await pointDigests('rs1', p1);
  // the disks change behind replication's back while the agent is stopped
  await stopAgentProcess(pair.primary, 'SIGTERM');
  const changed = scribble(disks[0].image, 48 * MiB, 40) + scribble(disks[1].image, 16 * MiB, 10);
  pair.primary = await restartAgentProcess(pair.primary);
  // the images' generation differs from the clean stop's: a resync is necessary, and waits
  // for its window (never, here) or for a request
  const required = await waitFor('resync required', async () => {
    const x = await health(pair.primary, 'rs1');
    return x.state === 'ResyncRequired' ? x : undefined;
  });
  assert.match(required.lastError!.message, /disk disk\d was changed outside replication/);
  assert.equal(required.health, 'Critical');
  assert.equal(required.resyncWaitingForWindow, true);
  assert.deepEqual(required.retry && { nextAt: required.retry.nextAt, waitingForAction: required.retry.waitingForAction }, { nextAt: null, waitingForAction: true });
  // the guest keeps writing through the resync
  const c = await NbdClient.connect(disks[0].nbd.unix);
  let writing = true;
  const writes = (async () => {
    let n = 0;
    while (writing) {
      await c.write(4096 * crypto.randomInt((48 * MiB) / 4096), crypto.randomBytes(4096));
      if (++n % 20 === 0) await c.flush();
    }
    await c.flush();
  })();
  await pair.primary.api.post('/v1/replications/rs1/resync');
  const done = await waitFor('the resync to complete', async () => {
    const x = await health(pair.primary, 'rs1');
    return x.resync?.completedAt ? x : undefined;
  });
  writing = false;
  await writes;
  await c.close();
  const r = done.resync!;
  assert.equal(r.totalBytes, 64 * MiB);
  assert.equal(r.doneBytes, 64 * MiB);
  assert.match(r.reason, /changed outside replication/);
  assert.ok(r.differingBytes >= changed * 0.9 && r.differingBytes <= changed + 4 * MiB, `differing ${r.differingBytes} of ${changed} changed`);
  // blocks plus the checksums that came back; far less than the disks
  assert.ok(r.wireBytesSent < 8 * MiB, `sent ${r.wireBytesSent}`);
  assert.ok(r.wireBytesReceived > 0 && r.wireBytesReceived < 2 * MiB, `received ${r.wireBytesReceived}`);
  assert.ok(done.latestPoint!.seq > p1);
  // a cycle after the guest stopped: the replica's latest point is exactly the source
  await pair.primary.api.post('/v1/replications/rs1/cycle');
  const h2 = await waitForPoint(pair.primary, 'rs1', done.latestPoint!.seq + 1);
  assert.deepEqual(await pointDigests('rs1', h2.latestPoint!.seq), disks.map((d) => fileDigest(d.image, d.size).digest));
  assert.deepEqual(await pointDigests('rs1', p1), p1Digests, 'the point before the resync is unchanged');
  const points = await pair.replica.api.get<{ seq: number }[]>('/v1/replicas/rs1/points');
  assert.ok(points.some((p) => p.seq === p1) && points.some((p) => p.seq === done.latestPoint!.seq));
});

for (const victim of ['primary', 'replica'] as const) {
  test(`a resync interrupted by kill -9 of the ${victim} resumes from the replica checkpoint and converges`, async () => {
    const vm = `rs2-${victim}`;
    const disks = await createVm(pair.primary, vm, ['1536M']);
    fillRandom(disks[0].image, 1536 * MiB);
    await pair.primary.api.post('/v1/replications', { vm, peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', resyncWindow: 'never', resyncBlockSize: 65536 });
    await waitForPoint(pair.primary, vm, null, 180_000);
    await stopAgentProcess(pair.primary, 'SIGTERM');
    scribble(disks[0].image, 1536 * MiB, 200);
    pair.primary = await restartAgentProcess(pair.primary);
    await waitFor('resync required', async () => (await health(pair.primary, vm)).state === 'ResyncRequired' || undefined);
    await pair.primary.api.post(`/v1/replications/${vm}/resync`);
    // past the first checkpoint (every 512 MiB compared), kill one agent
    await waitFor('the resync past a checkpoint', async () => ((await health(pair.primary, vm)).resync?.doneBytes ?? 0) > 600 * MiB || undefined, 120_000, 10);
    await stopAgentProcess(pair[victim], 'SIGKILL');
    pair[victim] = await restartAgentProcess(pair[victim]);
    const done = await waitFor('the resumed resync to complete', async () => {
      const x = await health(pair.primary, vm);
      return x.resync?.completedAt ? x : undefined;
    }, 120_000);
    assert.ok(done.resync!.resumedFromBytes >= 512 * MiB, `resumed from ${done.resync!.resumedFromBytes}`);
    await pair.primary.api.post(`/v1/replications/${vm}/cycle`);
    const h = await waitForPoint(pair.primary, vm, done.latestPoint!.seq + 1);
    assert.deepEqual(await pointDigests(vm, h.latestPoint!.seq), disks.map((d) => fileDigest(d.image, d.size).digest));
  });
}

test('pending change logs at half a disk make a resync necessary; inside its window it runs on its own and converges', async () => {
  const disks = await createVm(pair.primary, 'rs3', ['8M']);
  await pair.primary.api.post('/v1/replications', { vm: 'rs3', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', resyncWindow: 'always' });
  const h1 = await waitForPoint(pair.primary, 'rs3', null);
  // the replica is away while the guest rewrites more than half of the disk
  await stopAgentProcess(pair.replica, 'SIGTERM');
  await pair.primary.api.post('/v1/replications/rs3/cycle');
  await waitFor('the primary to notice', async () => (await health(pair.primary, 'rs3')).lastError?.code === 'NETWORK_ERROR' || undefined);
  await writePattern(disks[0].nbd.unix, { writes: 200, maxLen: 65536 });
  const required = await waitFor('resync required by log growth', async () => {
    const x = await health(pair.primary, 'rs3');
    return x.pendingLogBytes >= 4 * MiB && x.state === 'ResyncRequired' ? x : undefined;
  }).catch(async (e) => {
    throw new Error(`${String(e)}; health ${JSON.stringify(await health(pair.primary, 'rs3'))}`);
  });
  assert.equal(required.health, 'Critical');
  pair.replica = await restartAgentProcess(pair.replica);
  const done = await waitFor('the resync to complete', async () => {
    const x = await health(pair.primary, 'rs3');
    return x.resync?.completedAt && x.state === 'Replicating' ? x : undefined;
  });
  assert.match(done.resync!.reason, /pending change logs of disk disk0 \(\d+ bytes\) reached 50% of its size/);
  assert.ok(done.latestPoint!.seq > h1.latestPoint!.seq);
  assert.ok(done.pendingLogBytes < 1 * MiB, `the logs were dropped: ${done.pendingLogBytes} bytes pending`);
  await pair.primary.api.post('/v1/replications/rs3/cycle');
  const h = await waitForPoint(pair.primary, 'rs3', done.latestPoint!.seq + 1);
  assert.deepEqual(await pointDigests('rs3', h.latestPoint!.seq), [fileDigest(disks[0].image, 8 * MiB).digest]);
});

test('enabling a VM whose replica is still held from an earlier protection resynchronizes instead of copying', async () => {
  const disks = await createVm(pair.primary, 'rs4', ['32M']);
  fillRandom(disks[0].image, 32 * MiB);
  const source0 = fileDigest(disks[0].image, 32 * MiB).digest;
  await pair.primary.api.post('/v1/replications', { vm: 'rs4', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h' });
  const first = await waitForPoint(pair.primary, 'rs4', null);
  assert.deepEqual(await pointDigests('rs4', first.latestPoint!.seq), [source0]);
  // protection ends (the replica stays), the VM goes on being written, protection starts again
  await pair.primary.api.delete('/v1/replications/rs4');
  const written = await writePattern(disks[0].nbd.unix, { writes: 40, maxLen: 16384 });
  await pair.primary.api.post('/v1/replications', { vm: 'rs4', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h' });
  const done = await waitFor('the onboarding resync to complete', async () => {
    const x = await health(pair.primary, 'rs4');
    return x.resync?.completedAt && x.state === 'Replicating' ? x : undefined;
  });
  assert.equal(done.initial, null, 'no initial copy');
  assert.match(done.resync!.reason, /onboarding/);
  assert.ok(done.resync!.differingBytes <= written + 1 * MiB, `differing ${done.resync!.differingBytes} for ${written} written`);
  assert.ok(done.latestPoint!.seq > first.latestPoint!.seq);
  await pair.primary.api.post('/v1/replications/rs4/cycle');
  const h = await waitForPoint(pair.primary, 'rs4', done.latestPoint!.seq + 1);
  assert.deepEqual(await pointDigests('rs4', h.latestPoint!.seq), [fileDigest(disks[0].image, 32 * MiB).digest]);
  const points = await pair.replica.api.get<{ seq: number }[]>('/v1/replicas/rs4/points');
  assert.ok(points.some((p) => p.seq === first.latestPoint!.seq), 'the earlier protection\'s points are kept');
  assert.deepEqual(await pointDigests('rs4', first.latestPoint!.seq), [source0], 'and unchanged');
});
