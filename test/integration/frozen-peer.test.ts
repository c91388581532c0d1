/**
 * A replica host frozen mid-delta (SIGSTOP: its kernel still acknowledges, its agent says
 * nothing): the primary gives the connection up within the idle timeout, keeps retrying,
 * and once the replica runs again the RPO recovers.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { IDLE_TIMEOUT_MS } from '../../src/agent/wire/wire.js';
import { createVm, health, startPair, waitFor, waitForPoint, writePattern, type Pair } from '../support/lab.js';

let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(async () => {
  if (pair?.replica.child.pid) process.kill(pair.replica.child.pid, 'SIGCONT');
  await pair?.stop();
});

test('a replica frozen with SIGSTOP mid-delta: the primary reconnects within 60 s and the RPO recovers', async () => {
  const { primary, replica } = pair;
  const disks = await createVm(primary, 'busy', ['256M']);
  await primary.api.post('/v1/replications', { vm: 'busy', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 100, bandwidth: '8MB/s' });
  const first = await waitForPoint(primary, 'busy', null);

  // a delta of tens of MiB at 8 MB/s, frozen on its way
  await writePattern(disks[0].nbd.unix, { writes: 400, maxLen: 256 * 1024 });
  await primary.api.post('/v1/replications/busy/cycle');
  await waitFor('the delta is on its way', async () => ((await health(primary, 'busy')).pendingLogBytes > 0 ? true : undefined), 10_000, 5);
  process.kill(replica.child.pid!, 'SIGSTOP');
  const frozenAt = Date.now();

  const noticed = await waitFor(
    'the primary gives the frozen connection up',
    async () => {
      const h = await health(primary, 'busy');
      return h.lastError?.code === 'NETWORK_ERROR' && Date.parse(h.lastError.at) >= frozenAt ? h : undefined;
    },
    60_000,
    250,
  );
  const noticedAfterMs = Date.now() - frozenAt;
  assert.ok(noticedAfterMs < 60_000, `noticed after ${noticedAfterMs} ms`);
  assert.ok(noticedAfterMs >= IDLE_TIMEOUT_MS - 1000, `noticed after ${noticedAfterMs} ms, before the idle timeout: ${noticed.lastError!.message}`);

  process.kill(replica.child.pid!, 'SIGCONT');
  const back = await waitForPoint(primary, 'busy', first.latestPoint!.seq + 1, 90_000);
  await waitFor('the RPO recovers', async () => {
    const h = await health(primary, 'busy');
    return h.lastError === null && h.rpoSeconds !== null && h.latestPoint!.seq >= back.latestPoint!.seq ? h : undefined;
  }, 30_000);
  // the replica was not hurt: a new cycle lands as a point
  await writePattern(disks[0].nbd.unix, { writes: 10 });
  await primary.api.post('/v1/replications/busy/cycle');
  await waitForPoint(primary, 'busy', back.latestPoint!.seq + 1, 30_000);
});
