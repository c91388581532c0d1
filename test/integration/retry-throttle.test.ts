/**
 * Retry and throttling with real agent processes: a replica whose storage fills up is
 * retried on the back-off and converges once space is freed, with nothing corrupted; a
 * non-recoverable refusal waits for someone to act; bandwidth limits of a replication and
 * of an agent hold the copy to their rates.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { createVm, fileDigest, fillRandom, health, pointDigests, startPair, tempDir, waitFor, waitForPoint, writePattern } from '../support/lab.js';

const MiB = 1024 * 1024;

test('disk full at the replica is recoverable: retried on the back-off, nothing corrupted, converges once space is freed', async (t) => {
  const dir = tempDir();
  const replicaDir = path.join(dir, 'replica-fs');
  fs.mkdirSync(replicaDir);
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24M', 'tmpfs', replicaDir]);
  } catch (e) {
    // a small file system of its own is the only honest way to fill the replica's disk
    t.skip(`cannot mount a tmpfs here (${String(e)}); run the tests as root`);
    fs.rmSync(dir, { recursive: true, force: true });
    return;
  }
  const pair = await startPair(dir, { replicaDataDir: path.join(replicaDir, 'data'), primaryArgs: ['--retry-backoff', '300ms,600ms', '--retry-every', '1s'] });
  try {
    const disks = await createVm(pair.primary, 'full1', ['40M']);
    fillRandom(disks[0].image, 40 * MiB);
    await pair.primary.api.post('/v1/replications', { vm: 'full1', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h' });
    const failing = await waitFor('the copy to fail for lack of space', async () => {
      const h = await health(pair.primary, 'full1');
      return h.lastError?.code === 'REPLICA_DISK_FULL' && (h.retry?.failures ?? 0) >= 3 ? h : undefined;
    });
    assert.equal(failing.state, 'InitialReplication', 'a recoverable error does not change the state');
    assert.equal(failing.health, 'Healthy');
    assert.equal(failing.retry!.waitingForAction, false);
    assert.ok(failing.retry!.nextAt, 'the next attempt is scheduled');
    // the replica agent survived and answers
    assert.ok(Array.isArray(await pair.replica.api.get('/v1/replicas')));
    execFileSync('mount', ['-o', 'remount,size=160M', replicaDir]);
    const h = await waitForPoint(pair.primary, 'full1', null, 60_000);
    assert.equal(h.retry, null, 'a success clears the failures');
    await writePattern(disks[0].nbd.unix, { writes: 40 });
    await pair.primary.api.post('/v1/replications/full1/cycle');
    const next = await waitForPoint(pair.primary, 'full1', h.latestPoint!.seq + 1);
    assert.deepEqual(await pointDigests(pair.replica, 'full1', next.latestPoint!.seq), [fileDigest(disks[0].image, 40 * MiB).digest]);
  } finally {
    await pair.stop().catch(() => undefined);
    execFileSync('umount', ['-l', replicaDir]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a non-recoverable error is not retried until someone acts', async () => {
  const pair = await startPair();
  try {
    await createVm(pair.primary, 'gone1', ['4M']);
    // the peer's certificate names another host: the handshake is refused every time
    await pair.primary.api.post('/v1/replications', { vm: 'gone1', peer: `127.0.0.1:${pair.replica.replicationPort}`, servername: 'elsewhere.example', copyFrequency: '1h' });
    const h = await waitFor('the refusal', async () => {
      const x = await health(pair.primary, 'gone1');
      return x.lastError ? x : undefined;
    });
    assert.equal(h.lastError!.code, 'TLS_HANDSHAKE_FAILED');
    assert.equal(h.state, 'Error');
    assert.equal(h.health, 'Critical');
    assert.deepEqual(h.retry, { failures: 1, nextAt: null, waitingForAction: true });
    // the lab back-off is 250 ms: several retries would have run by now
    await new Promise((r) => setTimeout(r, 1500));
    const still = await health(pair.primary, 'gone1');
    assert.equal(still.lastError!.at, h.lastError!.at, 'no retry on its own');
    await pair.primary.api.post('/v1/replications/gone1/retry');
    const again = await waitFor('the retry asked for', async () => {
      const x = await health(pair.primary, 'gone1');
      return x.lastError && x.lastError.at !== h.lastError!.at ? x : undefined;
    });
    assert.equal(again.lastError!.code, 'TLS_HANDSHAKE_FAILED');
    assert.equal(again.retry!.waitingForAction, true);
  } finally {
    await pair.stop();
  }
});

test('bandwidth limits of a replication and of the agent hold the copy to their rates', async () => {
  const pair = await startPair(undefined, { primaryArgs: ['--bandwidth', '6MB/s'] });
  try {
    const slow = await createVm(pair.primary, 'slow1', ['8M']);
    const other = await createVm(pair.primary, 'other1', ['16M']);
    fillRandom(slow[0].image, 8 * MiB);
    fillRandom(other[0].image, 16 * MiB);
    const started = Date.now();
    const peer = `127.0.0.1:${pair.replica.replicationPort}`;
    await pair.primary.api.post('/v1/replications', { vm: 'slow1', peer, copyFrequency: '1h', bandwidth: '2MB/s' });
    await pair.primary.api.post('/v1/replications', { vm: 'other1', peer, copyFrequency: '1h' });
    const [a, b] = await Promise.all([waitForPoint(pair.primary, 'slow1', null), waitForPoint(pair.primary, 'other1', null)]);
    const slowSeconds = (Date.parse(a.initial!.completedAt!) - started) / 1000;
    const allSeconds = (Math.max(Date.parse(a.initial!.completedAt!), Date.parse(b.initial!.completedAt!)) - started) / 1000;
    // 8.4 MB at 2 MB/s is 4.2 s; 25 MB through the agent's 6 MB/s is 4.2 s (less a 0.1 s burst each)
    assert.ok(slowSeconds >= 3.9, `8 MiB at 2 MB/s took ${slowSeconds} s`);
    assert.ok(allSeconds >= 3.9, `24 MiB at 6 MB/s took ${allSeconds} s`);
    assert.equal(a.bandwidthLimitBytesPerSec, 2_000_000, 'the tighter of the two limits');
    assert.equal(b.bandwidthLimitBytesPerSec, 6_000_000);
    assert.deepEqual(await pointDigests(pair.replica, 'slow1', a.latestPoint!.seq), [fileDigest(slow[0].image, 8 * MiB).digest]);
    // a schedule that does not parse is refused with its code
    await assert.rejects(pair.primary.api.post('/v1/replications', { vm: 'other1', peer, bandwidth: 'fast' }), (e: { code?: string }) => e.code === 'CONFIG_INVALID');
  } finally {
    await pair.stop();
  }
});
