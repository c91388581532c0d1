/** The capacity planner's figures from known measurements. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bandwidthForRpo, growthRate, initialReplicationSeconds, planCapacity, type CapacityItemInput } from '../../src/domain/capacity.js';

const GiB = 1024 ** 3;
const MB = 1e6;

test('bandwidth for an RPO: the busiest cycle shipped within the RPO, never below the average churn', () => {
  // a 5-minute policy and a 15-minute RPO: cycles of 5 min shipped in 10 min
  assert.equal(bandwidthForRpo(900, 300, 1 * MB, 4 * MB), 2 * MB);
  // a 1-minute RPO: cycles of 30 s shipped in 30 s, at the peak rate
  assert.equal(bandwidthForRpo(60, 300, 1 * MB, 4 * MB), 4 * MB);
  // an hour's RPO: the peak spread over 55 minutes is below the average, which wins
  assert.equal(bandwidthForRpo(3600, 300, 1 * MB, 4 * MB), 1 * MB);
  assert.equal(bandwidthForRpo(60, 300, null, null), null, 'not measured: no figure');
});

test('initial replication finishes when the link has carried the disks and the churn meanwhile', () => {
  assert.equal(initialReplicationSeconds(100 * MB, 11 * MB, 1 * MB), 10);
  assert.equal(initialReplicationSeconds(100 * MB, 1 * MB, 1 * MB), null, 'a link no faster than the churn never catches up');
  assert.equal(initialReplicationSeconds(100 * MB, 10 * MB, null), 10);
});

test('a plan: per VM and in total, storage for the retention window, and the first forced resync', () => {
  const now = Date.parse('2026-12-01T00:00:00Z');
  const items: CapacityItemInput[] = [
    { id: 'a', name: 'db', diskBytes: 100 * GiB, churnBytesPerSec: 1 * MB, peakChurnBytesPerSec: 3 * MB, pendingLogBytes: 10 * GiB, logGrowthBytesPerSec: 1 * MB, copyFrequencySeconds: 300, retentionHours: 2 },
    { id: 'b', name: 'web', diskBytes: 20 * GiB, churnBytesPerSec: 0.1 * MB, peakChurnBytesPerSec: 0.1 * MB, pendingLogBytes: 0, logGrowthBytesPerSec: -5, copyFrequencySeconds: 30, retentionHours: 0 },
    { id: 'c', name: 'new', diskBytes: 10 * GiB, churnBytesPerSec: null, peakChurnBytesPerSec: null, pendingLogBytes: null, logGrowthBytesPerSec: null, copyFrequencySeconds: 300, retentionHours: 24 },
  ];
  const plan = planCapacity(items, { now, rpoTargetsSeconds: [60, 900], bandwidthBytesPerSec: 100 * MB });
  const [db, web, fresh] = plan.items;
  assert.deepEqual(db!.bandwidthForRpo, [{ rpoSeconds: 60, bytesPerSec: 3 * MB }, { rpoSeconds: 900, bytesPerSec: 1.5 * MB }]);
  assert.equal(db!.replicaStorageBytes, 100 * GiB + 2 * 3600 * MB, 'the disks and two hours of churn');
  assert.equal(web!.replicaStorageBytes, 20 * GiB + 30 * 0.1 * MB, 'latest point only: the disks and one cycle');
  assert.equal(fresh!.measured, false);
  assert.equal(fresh!.replicaStorageBytes, 10 * GiB);
  assert.deepEqual(fresh!.bandwidthForRpo.map((b) => b.bytesPerSec), [null, null]);
  // db's logs reach half its disks (50 GiB) from 10 GiB at 1 MB/s
  const inSeconds = Math.floor((50 * GiB - 10 * GiB) / MB);
  assert.equal(db!.resync.inSeconds, inSeconds);
  assert.equal(db!.resync.at, new Date(now + inSeconds * 1000).toISOString());
  assert.equal(web!.resync.inSeconds, null, 'logs that shrink force nothing');
  assert.deepEqual(plan.totals.firstResync, { item: 'db', inSeconds, at: db!.resync.at });
  assert.equal(plan.totals.diskBytes, 130 * GiB);
  assert.equal(plan.totals.measured, 2);
  assert.deepEqual(plan.totals.bandwidthForRpo, [{ rpoSeconds: 60, bytesPerSec: 3 * MB + 0.1 * MB }, { rpoSeconds: 900, bytesPerSec: 1.5 * MB + 0.1 * MB }]);
  assert.equal(plan.totals.initialReplicationSeconds, Math.ceil((130 * GiB) / (100 * MB - 1.1 * MB)));
});

test('log growth is a least-squares slope over at least a minute of samples', () => {
  const t = 1_000_000;
  assert.equal(growthRate([{ atMs: t, bytes: 0 }]), null);
  assert.equal(growthRate([{ atMs: t, bytes: 0 }, { atMs: t + 30_000, bytes: 10 }]), null, 'under a minute');
  const steady = Array.from({ length: 11 }, (_, k) => ({ atMs: t + k * 60_000, bytes: 1000 + k * 60 * 500 }));
  assert.equal(growthRate(steady), 500);
  // one outlier does not decide it
  steady[5] = { ...steady[5]!, bytes: steady[5]!.bytes + 600_000 };
  assert.ok(Math.abs(growthRate(steady)! - 500) < 50);
});
