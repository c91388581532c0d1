/**
 * Two real agent processes, mutual TLS, guest I/O through NBD: every recovery point must
 * equal, byte for byte, what the source disks held at the instant of its swap.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { createVm, fileDigest, health, nbdDigest, openOverlay, startPair, waitForPoint, writePattern, type Pair } from '../support/lab.js';

let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(async () => {
  await pair?.stop();
});

test('every recovery point equals the source at its instant; overlays never change a point', async () => {
  const { primary, replica } = pair;
  const disks = await createVm(primary, 'app1', ['24M', '8M']);
  await writePattern(disks[0].nbd.unix, { writes: 200 });
  await writePattern(disks[1].nbd.unix, { writes: 50 });

  // a long copy frequency: the test decides when each cycle runs
  await primary.api.post('/v1/replications', { vm: 'app1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50, compression: true });
  const h1 = await waitForPoint(primary, 'app1', null);
  const expected = new Map<number, string[]>();
  // no writes ran since the first swap, so the source now is point 1
  expected.set(h1.latestPoint!.seq, disks.map((d) => fileDigest(d.image, d.size).digest));

  for (let round = 0; round < 5; round++) {
    await writePattern(disks[0].nbd.unix, { writes: 150, zeroEvery: 7 });
    await writePattern(disks[1].nbd.unix, { writes: 40, zeroEvery: 5 });
    const before = (await health(primary, 'app1')).latestPoint!.seq;
    await primary.api.post('/v1/replications/app1/cycle');
    const h = await waitForPoint(primary, 'app1', before + 1);
    expected.set(h.latestPoint!.seq, disks.map((d) => fileDigest(d.image, d.size).digest));
  }

  const points = await replica.api.get<{ seq: number; consistency: string }[]>('/v1/replicas/app1/points');
  assert.deepEqual(points.map((p) => p.seq), [...expected.keys()]);
  for (const p of points) {
    const o = await openOverlay(replica, 'app1', p.seq);
    assert.ok(o.openMs < 500, `overlay opened in ${o.openMs} ms`);
    const got = [];
    for (const d of o.disks) got.push((await nbdDigest(d.nbd.unix)).digest);
    assert.deepEqual(got, expected.get(p.seq), `point ${p.seq} differs from the source at its instant`);
    // writes to the overlay change what the overlay reads, never the point
    const c = await NbdClient.connect(o.disks[0].nbd.unix);
    await c.write(0, Buffer.alloc(65536, 0xee));
    assert.deepEqual(await c.read(0, 4), Buffer.alloc(4, 0xee));
    await c.close();
    await replica.api.delete(`/v1/replicas/app1/overlays/${o.id}`);
    const again = await openOverlay(replica, 'app1', p.seq);
    assert.equal((await nbdDigest(again.disks[0].nbd.unix)).digest, expected.get(p.seq)![0]);
    await replica.api.delete(`/v1/replicas/app1/overlays/${again.id}`);
  }

  const hFinal = await health(primary, 'app1');
  assert.equal(hFinal.state, 'Replicating');
  assert.equal(hFinal.health, 'Healthy');
  assert.equal(hFinal.lastError, null);
  assert.ok(hFinal.rpoSeconds !== null && hFinal.rpoSeconds < 60);
});

test('points taken while the guest keeps writing are crash-consistent across disks', async () => {
  const { primary, replica } = pair;
  const disks = await createVm(primary, 'db1', ['4M', '4M']);
  const blockSize = 4096;
  const blocks = (4 * 1024 * 1024) / blockSize;
  await primary.api.post('/v1/replications', { vm: 'db1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '300ms', retentionHours: 24, maxPoints: 500 });
  await waitForPoint(primary, 'db1', null);

  // one writer, writes acknowledged one at a time: a total order. Each write stamps
  // its sequence number into a block of one of the disks.
  const clients = await Promise.all(disks.map((d) => NbdClient.connect(d.nbd.unix)));
  const history: { id: number; disk: number; block: number }[] = [];
  const deadline = Date.now() + 3000;
  let id = 0;
  while (Date.now() < deadline) {
    id++;
    const disk = id % 2;
    const block = Math.floor(Math.random() * blocks);
    const buf = Buffer.alloc(blockSize);
    buf.writeUInt32LE(id, 0);
    buf.writeUInt32LE(id, blockSize - 4);
    await clients[disk].write(block * blockSize, buf);
    history.push({ id, disk, block });
  }
  for (const c of clients) await c.close();
  const last = (await health(primary, 'db1')).latestPoint!.seq;
  await primary.api.post('/v1/replications/db1/cycle');
  await waitForPoint(primary, 'db1', last + 1);

  const points = await replica.api.get<{ seq: number }[]>('/v1/replicas/db1/points');
  assert.ok(points.length >= 5, `expected several points during the writes, got ${points.length}`);
  let sawIntermediate = 0;
  for (const p of points) {
    const o = await openOverlay(replica, 'db1', p.seq);
    const stamps: number[][] = [];
    for (const d of o.disks) {
      const c = await NbdClient.connect(d.nbd.unix);
      const data = await c.read(0, blocks * blockSize);
      await c.close();
      const s: number[] = [];
      for (let b = 0; b < blocks; b++) {
        const head = data.readUInt32LE(b * blockSize);
        assert.equal(head, data.readUInt32LE(b * blockSize + blockSize - 4), `torn block ${b} in point ${p.seq}`);
        s.push(head);
      }
      stamps.push(s);
    }
    await replica.api.delete(`/v1/replicas/db1/overlays/${o.id}`);
    // the point is the prefix up to k = the newest stamp it holds: every block must hold
    // the last write to it among writes 1..k, on both disks
    const k = Math.max(...stamps.flat());
    const expectedBlocks = [new Array<number>(blocks).fill(0), new Array<number>(blocks).fill(0)];
    for (const w of history) if (w.id <= k) expectedBlocks[w.disk][w.block] = w.id;
    assert.deepEqual(stamps, expectedBlocks, `point ${p.seq} is not a prefix of the write history (k=${k})`);
    if (k > 0 && k < id) sawIntermediate++;
  }
  assert.ok(sawIntermediate >= 3, `only ${sawIntermediate} points fell inside the write run`);
});
