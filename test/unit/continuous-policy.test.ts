import { test } from 'node:test';
import assert from 'node:assert/strict';
import { unsupportedOptions } from '../../src/domain/capabilities.js';
import { copyCycleSeconds, pointSpacingSeconds, validatePolicy } from '../../src/domain/policy.js';
import { planCapacity } from '../../src/domain/capacity.js';
import { LAB_CAPABILITIES } from '../../src/lab/lab-driver.js';
import { LIBVIRT_CAPABILITIES } from '../../src/drivers/libvirt/libvirt-driver.js';
import { AZURE_CAPABILITIES } from '../../src/drivers/azure/capabilities.js';
import { nextPointToDrop } from '../../src/agent/ports/retention.js';
import { cutId, cutTimeMs } from '../../src/domain/groups.js';
import { assertThrowsCode } from '../support/unit.js';

const NOW = Date.parse('2026-12-07T00:00:00Z');

test('a continuous policy: a point every 5 s by default, 1 to 60 s when given; the interval belongs to continuous mode only', () => {
  const p = validatePolicy({ copyMode: 'continuous', retentionHours: 2 }, NOW);
  assert.equal(p.copyMode, 'continuous');
  assert.equal(p.pointIntervalSeconds, 5);
  assert.equal(pointSpacingSeconds(p), 5);
  assert.equal(copyCycleSeconds(p), 1);
  assert.equal(validatePolicy({ copyMode: 'continuous', pointIntervalSeconds: 60 }, NOW).pointIntervalSeconds, 60);
  for (const bad of [0, 61, 2.5]) {
    const e = assertThrowsCode(() => validatePolicy({ copyMode: 'continuous', pointIntervalSeconds: bad }, NOW), 'POLICY_INVALID', /every 1 to 60 whole seconds/);
    assert.equal(e.details?.field, 'pointIntervalSeconds');
  }
  assertThrowsCode(() => validatePolicy({ pointIntervalSeconds: 5 }, NOW), 'POLICY_INVALID', /for continuous replication/);
  assertThrowsCode(() => validatePolicy({ copyMode: 'streaming' }, NOW), 'POLICY_INVALID', /choose cycles or continuous/);
  // cycles, and a policy stored before the mode existed, keep their copy frequency
  const cycles = validatePolicy({ copyFrequencySeconds: 30 }, NOW);
  assert.equal(cycles.copyMode, 'cycles');
  assert.equal(cycles.pointIntervalSeconds, undefined);
  const { copyMode: _mode, ...old } = cycles;
  assert.equal(pointSpacingSeconds(old), 30);
  assert.equal(copyCycleSeconds(old), 30);
});

test('continuous replication: the lab does it both ways; libvirt only as a target, naming the shortest cycle it sustains; Azure not at all', () => {
  const p = validatePolicy({ copyMode: 'continuous', retentionHours: 1 }, NOW);
  assert.deepEqual(unsupportedOptions(LAB_CAPABILITIES, 'source', p), []);
  assert.deepEqual(unsupportedOptions(LAB_CAPABILITIES, 'target', p), []);
  assert.deepEqual(unsupportedOptions(LIBVIRT_CAPABILITIES, 'target', p), []);
  const libvirt = unsupportedOptions(LIBVIRT_CAPABILITIES, 'source', p);
  assert.deepEqual(libvirt.map((g) => g.option), ['copyMode']);
  assert.match(libvirt[0]!.message, /track writes by checkpoints.*shortest cycle it sustains is 30 s/);
  const azure = unsupportedOptions(AZURE_CAPABILITIES, 'target', p);
  assert.deepEqual(azure.map((g) => g.option), ['copyMode']);
  // a provider from before the mode existed reports no continuousReplication: refused
  const { continuousReplication: _c, ...old } = LAB_CAPABILITIES;
  assert.deepEqual(unsupportedOptions(old, 'source', p).map((g) => g.option), ['copyMode']);
});

test('capacity of a continuous policy counts one-second cuts, not the copy frequency it keeps for cycles', () => {
  const input = { id: 'a', name: 'a', diskBytes: 1e9, churnBytesPerSec: 1e6, peakChurnBytesPerSec: 4e6, pendingLogBytes: 0, logGrowthBytesPerSec: 0, retentionHours: 0 };
  const options = { rpoTargetsSeconds: [5], bandwidthBytesPerSec: 1e8, now: NOW };
  const continuous = planCapacity([{ ...input, copyFrequencySeconds: copyCycleSeconds(validatePolicy({ copyMode: 'continuous' }, NOW)) }], options).items[0]!;
  const cycles = planCapacity([{ ...input, copyFrequencySeconds: 300 }], options).items[0]!;
  // a 5 s RPO: a one-second cut at 4 MB/s peak needs 1 MB/s; half of the RPO as a cycle needs 4 MB/s
  assert.equal(continuous.bandwidthForRpo[0]!.bytesPerSec, 1e6);
  assert.equal(cycles.bandwidthForRpo[0]!.bytesPerSec, 4e6);
  assert.ok(continuous.replicaStorageBytes < cycles.replicaStorageBytes);
});

test('retention with a spacing folds a crash-consistent cut only when its neighbours are no more than the spacing apart', () => {
  const pt = (seq: number, s: number, consistency: 'crash-consistent' | 'app-consistent' = 'crash-consistent') => ({ seq, timeMs: NOW + s * 1000, consistency, deltaBytes: 0 });
  const r = { hours: 24, maxPoints: 100, minSpacingMs: 5000 };
  assert.equal(nextPointToDrop([pt(1, 0), pt(2, 1), pt(3, 2)], r, NOW + 3000)?.seq, 2);
  assert.equal(nextPointToDrop([pt(1, 0), pt(2, 4), pt(3, 5)], r, NOW + 6000)?.seq, 2);
  assert.equal(nextPointToDrop([pt(1, 0), pt(2, 4), pt(3, 6)], r, NOW + 6000), undefined);
  assert.equal(nextPointToDrop([pt(1, 0), pt(2, 1, 'app-consistent'), pt(3, 2)], r, NOW + 3000), undefined);
  // the latest point and the first are never folded; without a spacing nothing is
  assert.equal(nextPointToDrop([pt(1, 0), pt(2, 1)], r, NOW + 3000), undefined);
  assert.equal(nextPointToDrop([pt(1, 0), pt(2, 1), pt(3, 2)], { hours: 24, maxPoints: 100 }, NOW + 3000), undefined);
  // a point in use (an overlay on it) stays
  assert.equal(nextPointToDrop([pt(1, 0), pt(2, 1), pt(3, 2)], r, NOW + 3000, new Set([2])), undefined);
});

test('a consistency group\'s points: never folded, aged by the cut\'s time, thinned oldest first and after the others, so every member keeps the same cuts', () => {
  const at = (s: number) => NOW + s * 1000;
  // each member's host stamps its points a few ms apart; the cut's id carries the coordinator's time
  const cut = (seq: number, s: number, jitterMs: number) => ({ seq, timeMs: at(s) + jitterMs, consistency: 'crash-consistent' as const, deltaBytes: 0, cut: cutId(at(s), 'abc') });
  assert.equal(cutTimeMs(cutId(at(7), 'x1y2z3')), at(7));
  assert.equal(cutTimeMs('c1'), undefined);
  const spaced = { hours: 24, maxPoints: 100, minSpacingMs: 5000 };
  assert.equal(nextPointToDrop([cut(1, 0, 0), cut(2, 1, 2), cut(3, 2, 1)], spaced, at(3)), undefined, 'a cut is never folded');
  // over the count: the oldest cut goes, whatever the hosts' jitter (a gap-based choice would differ between members)
  const a = [cut(1, 0, 0), cut(2, 10, 3), cut(3, 11, 0), cut(4, 30, 1)];
  const b = [cut(1, 0, 2), cut(2, 10, 0), cut(3, 11, 4), cut(4, 30, 0)];
  const r = { hours: 24, maxPoints: 3 };
  assert.equal(nextPointToDrop(a, r, at(31))?.seq, 1);
  assert.equal(nextPointToDrop(b, r, at(31))?.seq, 1);
  // a point of the member's own (a cycle asked for) goes before any cut
  const mixed = [cut(1, 0, 0), { seq: 2, timeMs: at(5), consistency: 'crash-consistent' as const, deltaBytes: 0 }, cut(3, 10, 0), cut(4, 20, 0)];
  assert.equal(nextPointToDrop(mixed, r, at(21))?.seq, 2);
  // aged by the cut's time: a member whose clock runs a second late drops it at the same instant
  const late = [{ ...cut(1, 0, 0), timeMs: at(1) }, cut(2, 3700, 0)];
  assert.equal(nextPointToDrop(late, { hours: 1, maxPoints: 100 }, at(3600) + 1)?.seq, 1);
});
