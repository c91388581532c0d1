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
  await waitFor('replicating again', async () => (await health(pair.primary, 'rs1')).state === 'Replicating' || undefined);
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

test('a resync interrupted by kill -9 of the primary resumes from the replica checkpoint and converges', async () => {
  const disks = await createVm(pair.primary, 'rs2', ['1536M']);
  fillRandom(disks[0].image, 1536 * MiB);
  await pair.primary.api.post('/v1/replications', { vm: 'rs2', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', resyncWindow: 'never', resyncBlockSize: 65536 });
  await waitForPoint(pair.primary, 'rs2', null, 180_000);
  await stopAgentProcess(pair.primary, 'SIGTERM');
  scribble(disks[0].image, 1536 * MiB, 200);
  pair.primary = await restartAgentProcess(pair.primary);
  await waitFor('replicating again', async () => (await health(pair.primary, 'rs2')).state === 'Replicating' || undefined);
  await pair.primary.api.post('/v1/replications/rs2/resync');
  // past the first checkpoint (every 512 MiB compared), kill the primary
  await waitFor('the resync past a checkpoint', async () => ((await health(pair.primary, 'rs2')).resync?.doneBytes ?? 0) > 600 * MiB || undefined, 120_000, 10);
  await stopAgentProcess(pair.primary, 'SIGKILL');
  pair.primary = await restartAgentProcess(pair.primary);
  const done = await waitFor('the resumed resync to complete', async () => {
    const x = await health(pair.primary, 'rs2');
    return x.resync?.completedAt ? x : undefined;
  }, 120_000);
  assert.ok(done.resync!.resumedFromBytes >= 512 * MiB, `resumed from ${done.resync!.resumedFromBytes}`);
  await pair.primary.api.post('/v1/replications/rs2/cycle');
  const h = await waitForPoint(pair.primary, 'rs2', done.latestPoint!.seq + 1);
  assert.deepEqual(await pointDigests('rs2', h.latestPoint!.seq), disks.map((d) => fileDigest(d.image, d.size).digest));
});
