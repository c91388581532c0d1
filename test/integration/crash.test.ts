/**
 * kill -9 of either agent in the middle of an initial copy or of a delta, broken
 * connections, and refused certificates. After every fault the replica must converge to
 * exactly the source, and no listed recovery point may change.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { OsrError } from '../../src/domain/errors.js';
import { classifyTlsError, clientTlsOptions } from '../../src/pki/index.js';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { ensurePki, restartAgentProcess, startAgentProcess, stopAgentProcess } from '../../src/lab/agent-process.js';
import { createVm, fileDigest, fillRandom, health, startPair, tempDir, waitFor, waitForPoint, writePattern, type Pair, pointDigests as replicaPointDigests } from '../support/lab.js';

let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(async () => {
  await pair?.stop();
});

const pointDigests = (vm: string, seq: number): Promise<string[]> => replicaPointDigests(pair.replica, vm, seq);

async function syncAndCompare(vm: string, disks: { image: string; size: number }[]): Promise<void> {
  // after a restart the primary learns the latest point from the replica when it reconnects
  const current = await waitFor('the replication to be running', async () => {
    const h = await health(pair.primary, vm);
    return h.state === 'Replicating' && h.latestPoint ? h : undefined;
  });
  const before = current.latestPoint!.seq;
  await pair.primary.api.post(`/v1/replications/${vm}/cycle`);
  const h = await waitForPoint(pair.primary, vm, before + 1);
  const expected = disks.map((d) => fileDigest(d.image, d.size).digest);
  assert.deepEqual(await pointDigests(vm, h.latestPoint!.seq), expected, 'latest point differs from the source');
}

test('kill -9 of the primary mid initial copy: the copy resumes from the last checkpoint', async () => {
  const disks = await createVm(pair.primary, 'big1', ['768M']);
  fillRandom(disks[0].image, 768 * 1024 * 1024);
  await pair.primary.api.post('/v1/replications', { vm: 'big1', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h' });
  await waitFor('a durable checkpoint at the replica', async () => ((await health(pair.primary, 'big1')).initial?.durableBytes ?? 0) >= 256 * 1024 * 1024 || undefined, 60_000, 10);
  await stopAgentProcess(pair.primary, 'SIGKILL');
  pair.primary = await restartAgentProcess(pair.primary);
  const h = await waitForPoint(pair.primary, 'big1', null, 120_000);
  assert.ok(h.initial && h.initial.resumedFromBytes >= 256 * 1024 * 1024, `copy did not resume: ${JSON.stringify(h.initial)}`);
  await syncAndCompare('big1', disks);
});

test('kill -9 of the replica mid initial copy: the primary reconnects and resumes', async () => {
  const disks = await createVm(pair.primary, 'big2', ['768M']);
  fillRandom(disks[0].image, 768 * 1024 * 1024);
  await pair.primary.api.post('/v1/replications', { vm: 'big2', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h' });
  await waitFor('a durable checkpoint at the replica', async () => ((await health(pair.primary, 'big2')).initial?.durableBytes ?? 0) >= 256 * 1024 * 1024 || undefined, 60_000, 10);
  await stopAgentProcess(pair.replica, 'SIGKILL');
  await waitFor('the primary to notice', async () => (await health(pair.primary, 'big2')).lastError?.code === 'NETWORK_ERROR' || undefined);
  pair.replica = await restartAgentProcess(pair.replica);
  const h = await waitForPoint(pair.primary, 'big2', null, 120_000);
  assert.ok(h.initial && h.initial.resumedFromBytes >= 256 * 1024 * 1024, `copy did not resume: ${JSON.stringify(h.initial)}`);
  await syncAndCompare('big2', disks);
});

test('kill -9 of either agent mid delta: points stay intact and replication converges', async () => {
  const disks = await createVm(pair.primary, 'churn1', ['64M', '16M']);
  await pair.primary.api.post('/v1/replications', { vm: 'churn1', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', maxPoints: 100 });
  await waitForPoint(pair.primary, 'churn1', null);
  const expected = new Map<number, string[]>();
  for (let round = 0; round < 6; round++) {
    // below half a disk per cycle: a delta the replica missed stays shippable (more would
    // make a resync necessary, which the log-growth test covers)
    await writePattern(disks[0].nbd.unix, { writes: 500, maxLen: 98304, zeroEvery: 9 });
    await writePattern(disks[1].nbd.unix, { writes: 100, zeroEvery: 4 });
    const source = disks.map((d) => fileDigest(d.image, d.size).digest);
    const before = (await health(pair.primary, 'churn1')).latestPoint!.seq;
    await pair.primary.api.post('/v1/replications/churn1/cycle');
    await new Promise((r) => setTimeout(r, 20 + crypto.randomInt(250)));
    const victim = round % 2 === 0 ? 'replica' : 'primary';
    await stopAgentProcess(pair[victim], 'SIGKILL');
    pair[victim] = await restartAgentProcess(pair[victim]);
    const h = await waitForPoint(pair.primary, 'churn1', before + 1, 60_000);
    // the killed cycle's writes are in the point that followed (one, or two if the swap
    // happened twice): the latest point must equal the source as it was
    expected.set(h.latestPoint!.seq, source);
  }
  const points = await pair.replica.api.get<{ seq: number }[]>('/v1/replicas/churn1/points');
  for (const [seq, digests] of expected) {
    assert.ok(points.some((p) => p.seq === seq), `point ${seq} is missing`);
    assert.deepEqual(await pointDigests('churn1', seq), digests, `point ${seq} differs`);
  }
});

test('writes acknowledged after FLUSH or with FUA survive kill -9 of the primary, with their change-log records', async () => {
  const disks = await createVm(pair.primary, 'fua1', ['32M']);
  await pair.primary.api.post('/v1/replications', { vm: 'fua1', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h' });
  await waitForPoint(pair.primary, 'fua1', null);
  const c = await NbdClient.connect(disks[0].nbd.unix);
  const acked: { off: number; data: Buffer }[] = [];
  let stop = false;
  const writer = (async () => {
    for (let i = 0; !stop; i++) {
      const off = 4096 * ((i * 37) % 8000);
      const data = crypto.randomBytes(4096);
      try {
        await c.write(off, data, i % 2 === 0);
        if (i % 2 === 1) await c.flush();
      } catch {
        return;
      }
      acked.push({ off, data });
    }
  })();
  await new Promise((r) => setTimeout(r, 400));
  await stopAgentProcess(pair.primary, 'SIGKILL');
  stop = true;
  await writer;
  assert.ok(acked.length > 20, `only ${acked.length} writes were acknowledged`);
  pair.primary = await restartAgentProcess(pair.primary);
  // the last acknowledged write to each offset is on the source disk
  const last = new Map<number, Buffer>();
  for (const w of acked) last.set(w.off, w.data);
  const c2 = await NbdClient.connect(disks[0].nbd.unix);
  for (const [off, data] of last) assert.deepEqual(await c2.read(off, 4096), data, `acknowledged write at ${off} lost`);
  await c2.close();
  // and they reach the replica: the change log held them
  await syncAndCompare('fua1', disks);
});

test('a peer with a certificate from another CA is refused on both sides', async () => {
  const dir = tempDir();
  try {
    const otherPki = path.join(dir, 'other-pki');
    await ensurePki(otherPki, ['intruder']);
    const intruder = await startAgentProcess({ name: 'intruder', dataDir: path.join(dir, 'intruder'), pkiDir: otherPki, listenPort: 0 });
    try {
      // our primary to a replica with a foreign certificate
      await createVm(pair.primary, 'tls1', ['4M']);
      await pair.primary.api.post('/v1/replications', { vm: 'tls1', peer: `127.0.0.1:${intruder.replicationPort}`, copyFrequency: '1h' });
      const h = await waitFor('a refused connection', async () => {
        const x = await health(pair.primary, 'tls1');
        return x.lastError ? x : undefined;
      });
      assert.equal(h.lastError!.code, 'TLS_PEER_CERT_UNTRUSTED');
      assert.equal(h.latestPoint, null);
      // a client that trusts our CA but holds a certificate from another one (an agent
      // refuses to start with such a pair, so this one is a raw TLS client)
      const refusal = await new Promise<OsrError>((resolve) => {
        const socket = tls.connect({
          ...clientTlsOptions({ cert: fs.readFileSync(path.join(otherPki, 'intruder.crt'), 'utf8'), key: fs.readFileSync(path.join(otherPki, 'intruder.key'), 'utf8'), ca: fs.readFileSync(path.join(pair.pkiDir, 'ca.crt'), 'utf8') }, { servername: 'localhost' }),
          host: '127.0.0.1',
          port: pair.replica.replicationPort!,
        });
        socket.on('error', (e) => resolve(classifyTlsError(e, 'client', { socket })));
        socket.on('close', () => resolve(classifyTlsError(undefined, 'client', { socket })));
        socket.on('data', () => resolve(new OsrError('INTERNAL', 'the replica answered a refused client')));
      });
      assert.equal(refusal.code, 'TLS_PEER_CERT_UNTRUSTED');
      const replicaLog = path.join(path.dirname(pair.replica.options.dataDir), 'replica.log');
      await waitFor('the replica to log the refusal', () => fs.readFileSync(replicaLog, 'utf8').includes('TLS_PEER_CERT_UNTRUSTED') || undefined, 10_000);
      const replicas = await pair.replica.api.get<{ vm: string }[]>('/v1/replicas');
      assert.ok(!replicas.some((r) => r.vm === 'tls1'), 'a refused peer created a replica');
    } finally {
      await stopAgentProcess(intruder, 'SIGKILL');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a change log that fails verification after a crash marks the VM resync required (Critical), never a silent divergence', async () => {
  const disks = await createVm(pair.primary, 'corrupt1', ['8M']);
  // automatic resync never starts here, so the state can be seen; the test then asks for one
  await pair.primary.api.post('/v1/replications', { vm: 'corrupt1', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', resyncWindow: 'never' });
  const h1 = await waitForPoint(pair.primary, 'corrupt1', null);
  await writePattern(disks[0].nbd.unix, { writes: 50 });
  await stopAgentProcess(pair.primary, 'SIGKILL');
  // flip one byte inside the data of the first record of the open log
  const logDir = path.join(pair.primary.options.dataDir, 'vms', 'corrupt1', 'logs', 'disk0');
  const newest = fs.readdirSync(logDir).sort().at(-1)!;
  const fd = fs.openSync(path.join(logDir, newest), 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, 64 + 48 + 100);
  b[0] ^= 0xff;
  fs.writeSync(fd, b, 0, 1, 64 + 48 + 100);
  fs.closeSync(fd);
  pair.primary = await restartAgentProcess(pair.primary);
  const h = await waitFor('resync required', async () => {
    const x = await health(pair.primary, 'corrupt1');
    return x.state === 'ResyncRequired' ? x : undefined;
  });
  assert.equal(h.health, 'Critical');
  assert.equal(h.lastError?.code, 'RESYNC_REQUIRED');
  assert.match(h.lastError!.message, /failed verification/);
  // the replica keeps its last good point and receives nothing from the untrusted log
  const points = await pair.replica.api.get<{ seq: number }[]>('/v1/replicas/corrupt1/points');
  assert.deepEqual(points.map((p) => p.seq), [h1.latestPoint!.seq]);
  assert.equal(h.resyncWaitingForWindow, true);
  const before = await pointDigests('corrupt1', h1.latestPoint!.seq);
  // a resync asked for runs at once, and converges to exactly the source
  await pair.primary.api.post('/v1/replications/corrupt1/resync');
  const done = await waitFor('the resync to complete', async () => {
    const x = await health(pair.primary, 'corrupt1');
    return x.resync?.completedAt && x.state === 'Replicating' ? x : undefined;
  });
  assert.equal(done.health, 'Healthy');
  assert.ok(done.latestPoint!.seq > h1.latestPoint!.seq);
  assert.equal(done.resync!.percent, 100);
  assert.ok(done.resync!.differingBytes > 0 && done.resync!.differingBytes <= 8 * 1024 * 1024, `differing bytes ${done.resync!.differingBytes}`);
  await syncAndCompare('corrupt1', disks);
  assert.deepEqual(await pointDigests('corrupt1', h1.latestPoint!.seq), before, 'the point before the resync is unchanged');
});
