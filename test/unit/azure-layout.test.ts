import { test } from 'node:test';
import assert from 'node:assert/strict';
import { groupPointSets, parseReplicaRecordView, pointMetadata } from '../../src/domain/azure-layout.js';

const p = (seq: number) => ({ seq, timeMs: 1_700_000_000_000 + seq, consistency: 'crash-consistent' as const, deltaBytes: 10 });

test('point sets: only this generation\'s snapshots, complete only with every disk, a snapshot made twice kept with its set', () => {
  const entries = [
    { name: 'disks/sda.vhd', snapshot: 's1a', metadata: pointMetadata(p(1), 'g2') },
    { name: 'disks/sdb.vhd', snapshot: 's1b', metadata: pointMetadata(p(1), 'g2') },
    { name: 'disks/sda.vhd', snapshot: 's1a2', metadata: pointMetadata(p(1), 'g2') },
    // a crash left point 2 short of sdb
    { name: 'disks/sda.vhd', snapshot: 's2a', metadata: pointMetadata(p(2), 'g2') },
    // an earlier copy's point (before a start over), and snapshots that are not osr's
    { name: 'disks/sda.vhd', snapshot: 'old', metadata: pointMetadata(p(9), 'g1') },
    { name: 'disks/sdb.vhd', snapshot: 'old', metadata: pointMetadata(p(9), 'g1') },
    { name: 'disks/sda.vhd', snapshot: 'manual', metadata: { note: 'by hand' } },
    { name: 'disks/other.vhd', snapshot: 'x', metadata: pointMetadata(p(1), 'g2') },
    { name: 'disks/sdb.vhd', snapshot: 'bad', metadata: { ...pointMetadata(p(3), 'g2'), osrconsistency: 'maybe' } },
    { name: 'disks/sda.vhd', snapshot: 'hex', metadata: { ...pointMetadata(p(5), 'g2'), osrseq: '0x5' } },
    // two tries at point 4 that disagree on what it is: no point
    { name: 'disks/sda.vhd', snapshot: 's4a', metadata: pointMetadata(p(4), 'g2') },
    { name: 'disks/sdb.vhd', snapshot: 's4b', metadata: { ...pointMetadata(p(4), 'g2'), osrtime: '1' } },
  ];
  const sets = groupPointSets(entries, ['sda', 'sdb'], 'g2');
  assert.deepEqual(
    sets.map((s) => [s.point.seq, s.complete, s.snapshots.map((x) => x.snapshot), s.every.length]),
    [
      [1, true, ['s1a', 's1b'], 3],
      [2, false, ['s2a'], 1],
      [4, false, ['s4a', 's4b'], 2],
    ],
  );
});

test('a replica record read back is taken only when it has the shape osr writes', () => {
  const good = { version: 1, vmId: 'vm1', vmName: 'web1', generation: 'g', disks: [{ id: 'd', name: 'sda', size: 1024 }], extra: true };
  assert.deepEqual(parseReplicaRecordView(JSON.stringify(good)), { vmId: 'vm1', vmName: 'web1', generation: 'g', disks: [{ id: 'd', name: 'sda', size: 1024 }], epoch: 1 });
  // the epoch a failback recorded is read; one that is not a sane epoch counts as none
  assert.equal(parseReplicaRecordView(JSON.stringify({ ...good, epoch: 7 }))?.epoch, 7);
  for (const epoch of [0, -1, 1.5, 'x', Number.MAX_SAFE_INTEGER]) assert.equal(parseReplicaRecordView(JSON.stringify({ ...good, epoch }))?.epoch, 1, String(epoch));
  for (const bad of ['not json', 'null', '[]', JSON.stringify({ ...good, version: 2 }), JSON.stringify({ ...good, generation: 5 }), JSON.stringify({ ...good, disks: [{ id: 'd', name: 'sda', size: -1 }] }), JSON.stringify({ ...good, disks: 'sda' }), JSON.stringify({ ...good, disks: [] }), JSON.stringify({ ...good, disks: [{ id: 'd', name: '../etc', size: 1024 }] }), JSON.stringify({ ...good, disks: [{ id: 'd', name: 'sda', size: 1024 }, { id: 'e', name: 'sda', size: 1024 }] })]) {
    assert.equal(parseReplicaRecordView(bad), undefined, bad);
  }
});
