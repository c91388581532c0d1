/**
 * Faults with real agent processes, each ending in a byte-for-byte check of the replica:
 * connections cut in the middle of an initial copy, a delta and a resync (through a relay;
 * no process dies), and kill -9 at each step of promote, change of point, commit and demote (crash points), after
 * which a restart finishes or undoes the step and reverse replication converges. (kill -9
 * during a copy, a delta, a resync and a reverse: crash, resync and failover tests.)
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import type { RunningAgent } from '../../src/lab/agent-process.js';
import { assertInStep, digestsOf, disksOf, replicate } from '../support/failover.js';
import { createVm, fileDigest, fillRandom, health, nbdDigest, pointDigests, restartAgentProcess, startPair, stopAgentProcess, waitFor, waitForPoint, writePattern, type Pair } from '../support/lab.js';
import { startRelay } from '../support/relay.js';

let pair: Pair;
before(async () => {
  pair = await startPair(undefined, { primaryListens: true });
});
after(async () => {
  await pair?.stop();
});

const MiB = 1024 * 1024;
const fileDigestOf = (d: { image: string; size: number }) => fileDigest(d.image, d.size).digest;

/** Restart an agent so that it kills itself at crash point `at`; then run `step`, which must fail as the agent dies. */
async function crashAt(which: 'primary' | 'replica', at: string, step: (a: RunningAgent) => Promise<unknown>): Promise<void> {
  await stopAgentProcess(pair[which], 'SIGTERM');
  const armed = await restartAgentProcess(pair[which], { env: { OSR_TEST_CRASH_AT: at } });
  pair[which] = armed;
  const exited = new Promise<NodeJS.Signals | null>((resolve) => armed.child.once('exit', (_code, signal) => resolve(signal)));
  await assert.rejects(step(armed), `the agent dies at ${at}`);
  assert.equal(await exited, 'SIGKILL', `the agent killed itself at ${at}`);
  pair[which] = await restartAgentProcess(armed, { env: {} });
}

test('connections cut in the middle of an initial copy, a delta and a resync (no process dies): each resumes and converges byte for byte', async () => {
  const relay = await startRelay(pair.replica.replicationPort!);
  try {
    const disks = await createVm(pair.primary, 'cut1', ['32M']);
    fillRandom(disks[0].image, 32 * MiB);
    // a slow link, so each cut lands while bytes are on the wire
    await pair.primary.api.post('/v1/replications', { vm: 'cut1', peer: `127.0.0.1:${relay.port}`, copyFrequency: '1h', maxPoints: 50, bandwidth: '8MB/s' });
    await waitFor('the initial copy under way', async () => ((await health(pair.primary, 'cut1')).initial?.doneBytes ?? 0) > 4 * MiB || undefined, 60_000, 20);
    // a replication connection is two TCP connections: TLS, and the sealed channel its frames go over
    assert.equal(relay.cut(), 2, 'one replication connection cut during the initial copy');
    const first = await waitForPoint(pair.primary, 'cut1', null, 120_000);
    assert.ok(relay.accepted >= 4, 'the primary reconnected');
    assert.deepEqual(await pointDigests(pair.replica, 'cut1', first.latestPoint!.seq), digestsOf(disks));

    // a delta of about 12 MB, cut while it ships
    await writePattern(disks[0].nbd.unix, { writes: 200, maxLen: 131072, seed: 5 });
    const shipped = first.bytesShipped;
    const accepted = relay.accepted;
    await pair.primary.api.post('/v1/replications/cut1/cycle');
    await waitFor('the delta under way', async () => (await health(pair.primary, 'cut1')).bytesShipped > shipped + 2 * MiB || undefined, 60_000, 20);
    assert.equal(relay.cut(), 2, 'one replication connection cut during a delta');
    const second = await waitForPoint(pair.primary, 'cut1', first.latestPoint!.seq + 1, 120_000);
    assert.ok(relay.accepted > accepted, 'the primary reconnected');
    assert.deepEqual(await pointDigests(pair.replica, 'cut1', second.latestPoint!.seq), digestsOf(disks));

    // blocks changed behind replication's back, then a resync cut while it sends them
    const fd = fs.openSync(disks[0].image, 'r+');
    try {
      for (let i = 0; i < 2000; i++) fs.writeSync(fd, Buffer.alloc(4096, (i % 250) + 1), 0, 4096, ((i * 4099) % 8190) * 4096);
    } finally {
      fs.closeSync(fd);
    }
    await pair.primary.api.post('/v1/replications/cut1/resync');
    await waitFor('the resync sending', async () => ((await health(pair.primary, 'cut1')).resync?.differingBytes ?? 0) > 2 * MiB || undefined, 60_000, 20);
    assert.equal(relay.cut(), 2, 'one replication connection cut during a resync');
    const done = await waitFor('the resync to complete', async () => {
      const h = await health(pair.primary, 'cut1');
      return h.resync?.completedAt && h.state === 'Replicating' ? h : undefined;
    }, 120_000);
    assert.ok(done.resync!.resumedFromBytes >= 0);
    assert.deepEqual(await pointDigests(pair.replica, 'cut1', done.latestPoint!.seq), digestsOf(disks), 'the resync point equals the source');
    await assertInStep(pair.primary, pair.replica, 'cut1');
  } finally {
    await relay.close();
  }
});

for (const at of ['promote:fenced', 'promote:committed']) {
  test(`kill -9 at ${at}: promoting again after the restart gives the chosen point, and reverse replication converges`, async () => {
    const vm = `kp-${at.split(':')[1]}`;
    const disks = await createVm(pair.primary, vm, ['16M']);
    fillRandom(disks[0].image, 16 * MiB);
    const h1 = await replicate(pair.primary, pair.replica, vm);
    const chosen = h1.latestPoint!.seq;
    const chosenDigests = await pointDigests(pair.replica, vm, chosen);
    await writePattern(disks[0].nbd.unix, { writes: 30 });
    await pair.primary.api.post(`/v1/replications/${vm}/cycle`);
    await waitForPoint(pair.primary, vm, chosen + 1);
    // fail over to the older point: the later one is rolled back
    await crashAt('replica', at, (a) => a.api.post(`/v1/replicas/${vm}/promote`, { point: chosen }));
    const promoted = await pair.replica.api.post<{ epoch: number; point: { seq: number }; rolledBackBytes: number }>(`/v1/replicas/${vm}/promote`, { point: chosen });
    assert.equal(promoted.point.seq, chosen);
    assert.ok(promoted.rolledBackBytes > 0, 'the later point is rolled back');
    const atReplica = await disksOf(pair.replica, vm);
    assert.deepEqual(digestsOf(atReplica), chosenDigests, 'the promoted VM holds the chosen point');
    await pair.primary.api.post(`/v1/vms/${vm}/demote`, { epoch: promoted.epoch });
    await writePattern(atReplica[0].nbd.unix, { writes: 20 });
    await replicate(pair.replica, pair.primary, vm);
    await assertInStep(pair.replica, pair.primary, vm);
  });
}

for (const at of ['change-point:recorded', 'promote:commit-recorded', 'promote:committed']) {
  test(`kill -9 at ${at} of a failover before its commit: the restart ${at === 'change-point:recorded' ? 'runs the VM from the new point' : 'finishes the commit with the VM\'s writes'}, and reverse replication converges`, async () => {
    const vm = `kc-${at.replace(/[:]/g, '-')}`;
    const disks = await createVm(pair.primary, vm, ['16M']);
    fillRandom(disks[0].image, 16 * MiB);
    const older = (await replicate(pair.primary, pair.replica, vm)).latestPoint!.seq;
    const olderDigests = await pointDigests(pair.replica, vm, older);
    await writePattern(disks[0].nbd.unix, { writes: 30 });
    await pair.primary.api.post(`/v1/replications/${vm}/cycle`);
    await waitForPoint(pair.primary, vm, older + 1);
    const promoted = await pair.replica.api.post<{ epoch: number; pending: boolean }>(`/v1/replicas/${vm}/promote`, { commit: false });
    assert.equal(promoted.pending, true);
    const uri = async () => (await pair.replica.api.get<{ nbd: { unix: string } }[]>(`/v1/vms/${vm}/disks`))[0]!.nbd.unix;
    await writePattern(await uri(), { writes: 20 });
    const listed = async () => (await pair.replica.api.get<{ name: string; origin?: { pending?: boolean; point: { seq: number } } }[]>('/v1/vms')).find((v) => v.name === vm);
    if (at === 'change-point:recorded') {
      await crashAt('replica', at, (a) => a.api.post(`/v1/vms/${vm}/recovery-point`, { point: older }));
      const after = await listed();
      assert.equal(after?.origin?.pending, true);
      assert.equal(after?.origin?.point.seq, older);
      assert.equal((await nbdDigest(await uri())).digest, olderDigests[0], 'the VM runs from the older point, its writes discarded');
      await writePattern(await uri(), { writes: 20 });
      await pair.replica.api.post(`/v1/vms/${vm}/commit`);
    } else {
      const wrote = await nbdDigest(await uri());
      await crashAt('replica', at, (a) => a.api.post(`/v1/vms/${vm}/commit`));
      assert.equal((await listed())?.origin?.pending, undefined, 'the restart finished the commit');
      const image = (await disksOf(pair.replica, vm))[0]!;
      assert.equal(fileDigestOf(image), wrote.digest, 'the committed disk holds what the VM wrote before');
      await pair.replica.api.post(`/v1/vms/${vm}/commit`);
    }
    await pair.primary.api.post(`/v1/vms/${vm}/demote`, { epoch: promoted.epoch });
    await writePattern((await disksOf(pair.replica, vm))[0]!.nbd.unix, { writes: 20 });
    await replicate(pair.replica, pair.primary, vm);
    await assertInStep(pair.replica, pair.primary, vm);
  });
}

for (const at of ['demote:images-moved', 'demote:adopted']) {
  test(`kill -9 at ${at}: the restart ${at === 'demote:adopted' ? 'finishes' : 'undoes'} the demote, no image is lost, and reverse replication converges`, async () => {
    const vm = `kd-${at.split(':')[1]}`;
    const disks = await createVm(pair.primary, vm, ['16M', '4M']);
    fillRandom(disks[0].image, 16 * MiB);
    await replicate(pair.primary, pair.replica, vm);
    await writePattern(disks[0].nbd.unix, { writes: 30 });
    const promoted = await pair.replica.api.post<{ epoch: number }>(`/v1/replicas/${vm}/promote`, {});
    await crashAt('primary', at, (a) => a.api.post(`/v1/vms/${vm}/demote`, { epoch: promoted.epoch }));
    const vms = await pair.primary.api.get<{ name: string }[]>('/v1/vms');
    if (at === 'demote:adopted') {
      assert.ok(!vms.some((v) => v.name === vm), 'the demote was finished: the VM is gone, its images are the replica');
    } else {
      assert.ok(vms.some((v) => v.name === vm), 'the demote was undone: the VM is back with its images');
      for (const d of disks) assert.ok(fs.existsSync(d.image), `image ${d.name} is back where it was`);
      await pair.primary.api.post(`/v1/vms/${vm}/demote`, { epoch: promoted.epoch });
    }
    const atReplica = await disksOf(pair.replica, vm);
    await writePattern(atReplica[1].nbd.unix, { writes: 20 });
    await replicate(pair.replica, pair.primary, vm);
    await assertInStep(pair.replica, pair.primary, vm);
  });
}
