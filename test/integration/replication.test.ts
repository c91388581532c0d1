/**
 * Two real agent processes, mutual TLS, guest I/O through NBD: every recovery point must
 * equal, byte for byte, what the source disks held at the instant of its swap.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { openTestOverlay } from '../../src/drivers/agent-replication.js';
import { assertRejectsCode, skipWithout } from '../support/unit.js';
import { createVm, fileDigest, health, nbdDigest, openOverlay, startPair, tempDir, waitFor, waitForPoint, writePattern, type Pair } from '../support/lab.js';

let pair: Pair;
/** the primary's quiesce hooks: the hook of VM X is HOOKS/X */
let hookDir: string;
before(async () => {
  hookDir = tempDir('osr-hooks-');
  pair = await startPair(undefined, { primaryArgs: ['--quiesce-hook-dir', hookDir] });
});
after(async () => {
  await pair?.stop();
  fs.rmSync(hookDir, { recursive: true, force: true });
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
  // agents carry the frames over the sealed channel beside their TLS session
  assert.equal(hFinal.channel, 'sealed');
  assert.ok(hFinal.rpoSeconds !== null && hFinal.rpoSeconds < 60);
  // churn is measured from the deltas after the first copy: change-log bytes over the guest time they cover
  assert.equal(hFinal.churn?.deltas, 5);
  assert.ok(hFinal.churn!.bytesPerSec > 0 && hFinal.churn!.peakBytesPerSec >= hFinal.churn!.bytesPerSec, JSON.stringify(hFinal.churn));
});

test('points taken while the guest keeps writing are crash-consistent across disks', async () => {
  const { primary, replica } = pair;
  const disks = await createVm(primary, 'db1', ['4M', '4M']);
  const blockSize = 4096;
  const blocks = (4 * 1024 * 1024) / blockSize;
  await primary.api.post('/v1/replications', { vm: 'db1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '300ms', retentionHours: 24, maxPoints: 500 });
  await waitForPoint(primary, 'db1', null);

  const { history, last: lastId } = await stampedWrites(disks, blocks, blockSize, 3000);
  const last = (await health(primary, 'db1')).latestPoint!.seq;
  await primary.api.post('/v1/replications/db1/cycle');
  await waitForPoint(primary, 'db1', last + 1);

  const points = await replica.api.get<{ seq: number }[]>('/v1/replicas/db1/points');
  assert.ok(points.length >= 5, `expected several points during the writes, got ${points.length}`);
  const sawIntermediate = await assertPrefixPoints(replica, 'db1', points, history, blocks, blockSize, lastId);
  assert.ok(sawIntermediate >= 3, `only ${sawIntermediate} points fell inside the write run`);
});

interface StampedWrite {
  id: number;
  disk: number;
  block: number;
}

/**
 * One writer, writes acknowledged one at a time: a total order. Each write stamps its
 * sequence number into both ends of a block of one of the disks. `during` runs beside it.
 */
async function stampedWrites(disks: { nbd: { unix: string } }[], blocks: number, blockSize: number, ms: number, during?: () => Promise<void>): Promise<{ history: StampedWrite[]; last: number }> {
  const clients = await Promise.all(disks.map((d) => NbdClient.connect(d.nbd.unix)));
  const history: StampedWrite[] = [];
  const deadline = Date.now() + ms;
  let id = 0;
  let done = false;
  const beside = during ? (async () => {
    while (!done) await during();
  })() : Promise.resolve();
  try {
    while (Date.now() < deadline) {
      id++;
      const disk = id % disks.length;
      const block = Math.floor(Math.random() * blocks);
      const buf = Buffer.alloc(blockSize);
      buf.writeUInt32LE(id, 0);
      buf.writeUInt32LE(id, blockSize - 4);
      await clients[disk].write(block * blockSize, buf);
      history.push({ id, disk, block });
    }
  } finally {
    done = true;
    await beside;
    for (const c of clients) await c.close();
  }
  return { history, last: id };
}

/**
 * Every point must be a prefix of the write history: with k the newest stamp it holds,
 * every block holds the last write to it among writes 1..k, on every disk. Answers how
 * many points fell inside the run (0 < k < last).
 */
async function assertPrefixPoints(replica: Pair['replica'], vm: string, points: { seq: number }[], history: StampedWrite[], blocks: number, blockSize: number, last: number): Promise<number> {
  let inside = 0;
  for (const p of points) {
    const o = await openOverlay(replica, vm, p.seq);
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
    await replica.api.delete(`/v1/replicas/${vm}/overlays/${o.id}`);
    const k = Math.max(...stamps.flat());
    const expectedBlocks = stamps.map(() => new Array<number>(blocks).fill(0));
    for (const w of history) if (w.id <= k) expectedBlocks[w.disk][w.block] = w.id;
    assert.deepEqual(stamps, expectedBlocks, `point ${p.seq} is not a prefix of the write history (k=${k})`);
    if (k > 0 && k < last) inside++;
  }
  return inside;
}

test('continuous replication: a cut every second, one point kept per interval, each a prefix of the writes; the RPO stays in seconds', async () => {
  const { primary, replica } = pair;
  const disks = await createVm(primary, 'cont1', ['4M', '4M']);
  const blockSize = 4096;
  const blocks = (4 * 1024 * 1024) / blockSize;
  await primary.api.post('/v1/replications', { vm: 'cont1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: 'continuous', pointInterval: '2s', retentionHours: 24, maxPoints: 500 });
  await waitForPoint(primary, 'cont1', null);
  const rpo: number[] = [];
  const seqs = new Set<number>();
  const { history, last } = await stampedWrites(disks, blocks, blockSize, 9000, async () => {
    const h = await health(primary, 'cont1');
    if (h.rpoSeconds !== null) rpo.push(h.rpoSeconds);
    if (h.latestPoint) seqs.add(h.latestPoint.seq);
    await new Promise((r) => setTimeout(r, 250));
  });
  const h = await health(primary, 'cont1');
  assert.equal(h.state, 'Replicating');
  assert.ok(seqs.size >= 6, `a cut about every second: ${seqs.size} latest points seen in 9 s`);
  assert.ok(rpo.length >= 20 && Math.max(...rpo) <= 4, `RPO while writing: max ${Math.max(...rpo)} s over ${rpo.length} samples`);

  const points = await replica.api.get<{ seq: number; time: string; consistency: string }[]>('/v1/replicas/cont1/points');
  const t = points.map((p) => Date.parse(p.time));
  // the cuts between kept points were folded: points either side of a kept one are more than the interval apart
  for (let i = 1; i < t.length - 1; i++) assert.ok(t[i + 1] - t[i - 1] > 2000, `point ${points[i].seq} should have been folded`);
  assert.ok(points.length >= 3 && points.length <= 9, `9 s of writes keep about one point per 2 s: ${points.length}`);
  assert.ok(points.at(-1)!.seq - points[0].seq >= 6, 'the kept points are cuts with folded ones between them');
  // the newest may be folded into the next cut while the others are read: they stay
  const inside = await assertPrefixPoints(replica, 'cont1', points.slice(0, -1), history, blocks, blockSize, last);
  assert.ok(inside >= 2, `only ${inside} points fell inside the write run`);

  // a drill that chose the latest point after the replica folded it opens the newest one instead
  const listed = new Set(points.map((p) => p.seq));
  let gone = points.at(-1)!.seq - 1;
  while (listed.has(gone)) gone--;
  assert.ok(gone > points[0]!.seq, 'a cut between the kept points was folded');
  const folded = String(gone);
  await assertRejectsCode(openTestOverlay(replica.api, 'cont1', folded), 'POINT_NOT_FOUND');
  const o = await openTestOverlay(replica.api, 'cont1', folded, true);
  assert.ok(Number(o.point.id) >= points.at(-1)!.seq, `opened point ${o.point.id}`);
  // the overlay holds its point: the cuts that follow do not fold it
  await new Promise((r) => setTimeout(r, 2500));
  const held = (await replica.api.get<{ seq: number; time: string }[]>('/v1/replicas/cont1/points')).find((p) => String(p.seq) === o.point.id);
  assert.deepEqual(held && { id: String(held.seq), at: held.time, consistency: 'crash' }, o.point);
  await replica.api.delete(`/v1/replicas/cont1/overlays/${o.id}`);
});

test('any NBD client is the guest: qemu-io over TCP and Unix socket, nbdinfo map, nbdcopy', { skip: skipWithout(['qemu-io', 'nbdinfo'], 'qemu-utils, libnbd-bin') }, async () => {
  const { primary, replica } = pair;
  const disks = await createVm(primary, 'qemu1', ['64M']);
  const tcp = disks[0].nbd.tcp!;
  assert.match(tcp, /^nbd:\/\/127\.0\.0\.1:\d+\/qemu1\/disk0$/);
  const io = (uri: string, ...cmds: string[]) => {
    const r = spawnSync('qemu-io', ['-f', 'raw', uri, ...cmds.flatMap((c) => ['-c', c])], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  };
  io(tcp, 'write -P 0x11 0 1M', 'write -P 0x22 -f 8M 64k', 'flush');
  io(disks[0].nbd.unix, 'write -P 0x33 16M 2M', 'write -z -u 16M 1M', 'discard 8M 64k');
  assert.match(io(disks[0].nbd.unix, 'read -P 0x11 0 1M', 'read -P 0 16M 1M', 'read -P 0x33 17M 1M'), /read 1048576\/1048576 bytes/);
  const map = spawnSync('nbdinfo', ['--map', disks[0].nbd.unix], { encoding: 'utf8' });
  assert.equal(map.status, 0, map.stderr);
  // allocated data at 0 and 17M, holes elsewhere (0 = data, 3 = hole,zero)
  assert.match(map.stdout, /^\s*0\s+1048576\s+0\s+data/m);
  assert.match(map.stdout, /hole,zero/);

  await primary.api.post('/v1/replications', { vm: 'qemu1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '1h' });
  const h = await waitForPoint(primary, 'qemu1', null);
  assert.ok(h.initial!.sentBytes <= 4 * 1024 * 1024, `the copy sent ${h.initial!.sentBytes} bytes: holes and zeroes were not skipped`);
  const o = await openOverlay(replica, 'qemu1');
  const dir = tempDir();
  const out = path.join(dir, 'copy.img');
  const cp = spawnSync('nbdcopy', [o.disks[0].nbd.unix, out], { encoding: 'utf8' });
  assert.equal(cp.status, 0, cp.stderr);
  assert.equal(fileDigest(out, disks[0].size).digest, fileDigest(disks[0].image, disks[0].size).digest);
  fs.rmSync(dir, { recursive: true, force: true });
  await replica.api.delete(`/v1/replicas/qemu1/overlays/${o.id}`);
});

test('a scheduled start waits; app-consistent points call the agent\'s quiesce hook and are tagged', async () => {
  const { primary, replica } = pair;
  await createVm(primary, 'sched1', ['4M']);
  const dir = tempDir();
  const hookLog = path.join(dir, 'hook.log');
  const startAt = new Date(Date.now() + 2500).toISOString();
  // a request names no program to run: the hook is the agent's, HOOKS/sched1
  await assertRejectsCode(
    primary.api.post('/v1/replications', { vm: 'sched1', peer: `127.0.0.1:${replica.replicationPort}`, quiesceHook: path.join(dir, 'quiesce.sh') }),
    'INVALID_ARGUMENT',
    /quiesceHook is not taken from a request: quiesce hooks are the agent's configuration/,
  );
  fs.writeFileSync(path.join(hookDir, 'sched1'), `#!/bin/sh\necho "$1 $2" >> ${hookLog}\n`, { mode: 0o755 });
  await primary.api.post('/v1/replications', { vm: 'sched1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '200ms', startAt, appConsistentFrequency: '1s', maxPoints: 100 });
  assert.equal((await health(primary, 'sched1')).state, 'Scheduled');
  const h = await waitForPoint(primary, 'sched1', null);
  assert.ok(Date.parse(h.latestPoint!.time) >= Date.parse(startAt), 'replication started before its scheduled time');
  // app-consistent every second, crash-consistent in between
  await waitFor('two app-consistent points and crash-consistent ones between', async () => {
    const pts = await replica.api.get<{ consistency: string }[]>('/v1/replicas/sched1/points');
    return (pts.filter((p) => p.consistency === 'app-consistent').length >= 2 && pts.some((p) => p.consistency === 'crash-consistent')) || undefined;
  }, 30_000);
  const calls = fs.readFileSync(hookLog, 'utf8').trim().split('\n');
  assert.deepEqual(calls.slice(0, 2), ['freeze sched1', 'thaw sched1']);
  assert.equal(calls.length % 2 === 0 || calls.at(-1)!.startsWith('freeze'), true);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a 4 TiB disk: served, replicated without reading its holes, any point opened at once', async () => {
  const { primary, replica } = pair;
  const disks = await createVm(primary, 'huge1', ['4T']);
  assert.equal(disks[0].size, 4 * 1024 ** 4);
  const c = await NbdClient.connect(disks[0].nbd.unix);
  const tail = disks[0].size - 65536;
  await c.write(0, Buffer.alloc(65536, 0x41));
  await c.write(tail, Buffer.alloc(65536, 0x5a), true);
  await c.close();
  await primary.api.post('/v1/replications', { vm: 'huge1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '1h' });
  const h1 = await waitForPoint(primary, 'huge1', null, 120_000);
  assert.equal(h1.initial!.totalBytes, disks[0].size);
  assert.ok(h1.initial!.sentBytes <= 1024 * 1024, `sent ${h1.initial!.sentBytes} bytes of a nearly empty disk`);
  const c2 = await NbdClient.connect(disks[0].nbd.unix);
  await c2.write(2 * 1024 ** 4, Buffer.alloc(4096, 0x77));
  await c2.close();
  await primary.api.post('/v1/replications/huge1/cycle');
  await waitForPoint(primary, 'huge1', h1.latestPoint!.seq + 1);
  for (const [point, mid] of [[h1.latestPoint!.seq, 0], [h1.latestPoint!.seq + 1, 0x77]] as const) {
    const o = await openOverlay(replica, 'huge1', point);
    assert.ok(o.openMs < 1000, `a 4 TiB point opened in ${o.openMs} ms`);
    const r = await NbdClient.connect(o.disks[0].nbd.unix);
    assert.equal(r.size, 4 * 1024 ** 4);
    assert.deepEqual(await r.read(0, 65536), Buffer.alloc(65536, 0x41));
    assert.deepEqual(await r.read(tail, 65536), Buffer.alloc(65536, 0x5a));
    assert.deepEqual(await r.read(2 * 1024 ** 4, 4096), Buffer.alloc(4096, mid));
    await r.close();
    await replica.api.delete(`/v1/replicas/huge1/overlays/${o.id}`);
  }
});
