import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { AzureBlobReplica } from '../../src/agent/azure/blob-replica.js';
import { replicaContainerName } from '../../src/domain/azure-layout.js';
import { pointDisks, readReplicaPoints } from '../../src/drivers/azure/replica-points.js';
import { blockDigests } from '../../src/agent/io/checksum.js';
import type { ReplicaDiskSpec } from '../../src/agent/ports/replica-target.js';
import { useAzurite } from '../support/azurite.js';
import { writeDeltaLog, type Op } from '../support/delta-log.js';
import { assertRejectsCode, prng, withDir } from '../support/unit.js';

const MiB = 1024 * 1024;
const DISKS: ReplicaDiskSpec[] = [
  { id: 'disk-a', name: 'sda', size: 5 * MiB + 3000 },
  { id: 'disk-b', name: 'sdb', size: 2 * MiB },
];
const az = useAzurite();
let n = 0;

/** A cycle of guest writes: unaligned, zero ranges, and writes over earlier ones of the same cycle (the later wins). */
function randomOps(rnd: () => number, size: number, count: number): Op[] {
  const ops: Op[] = [];
  for (let i = 0; i < count; i++) {
    const r = rnd();
    const length = 1 + Math.floor(rnd() * (r < 0.1 ? 600_000 : 40_000));
    const offset = Math.floor(rnd() * (size - length));
    if (r < 0.25) ops.push({ kind: 'zero', offset, length });
    else ops.push({ kind: 'write', offset, data: crypto.randomBytes(length) });
  }
  return ops;
}

function apply(model: Buffer, ops: Op[]): void {
  for (const op of ops) {
    if (op.kind === 'write') op.data.copy(model, op.offset);
    else model.fill(0, op.offset, op.offset + op.length);
  }
}


test('a container name comes from the VM id, in the characters Azure allows', () => {
  assert.equal(replicaContainerName('VMM-Contoso.Web01'), 'osr-vmm-contoso-web01');
  assert.equal(replicaContainerName('a'.repeat(80)).length, 63);
  assert.match(replicaContainerName('x--y__z'), /^osr-x-y-z$/);
});

test(
  'a VM\'s replica in a storage account: the initial copy resumes from its checkpoints; deltas become points equal to the source at each delta; retention keeps the newest',
  withDir(async (dir) => {
    const container = az().service.getContainerClient(`osr-replica-${n++}`);
    const spec = { vmId: 'vm-azure-1', vmName: 'web01', disks: DISKS, retention: { hours: 24, maxPoints: 3 } };
    let clock = 1_700_000_000_000;
    let r = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'spool'), now: () => clock, createContainer: true });
    const rnd = prng(0xa22);
    const models = DISKS.map((d) => crypto.randomBytes(d.size));
    // the initial copy, cut off after the first disk's first half and resumed by a new opener
    const chunk = 1 * MiB;
    for (const [i, d] of DISKS.entries()) {
      for (let off = 0; off < d.size; off += chunk) {
        const end = Math.min(d.size, off + chunk);
        if (rnd() < 0.3) {
          models[i]!.fill(0, off, end);
          await r.zeroInitial(d.name, off, end - off);
        } else await r.writeInitial(d.name, off, [models[i]!.subarray(off, end)]);
        await r.checkpointInitial(d.name, end, end === d.size);
        if (i === 0 && off === 2 * chunk) {
          r = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'spool'), now: () => clock, createContainer: true });
          assert.deepEqual(r.initialProgress(), { sda: 3 * chunk });
        }
      }
    }
    assert.deepEqual(r.finishedInitialDisks(), ['sda', 'sdb']);
    assert.equal(r.initialDone, false);
    await assertRejectsCode(AzureBlobReplica.open(container, { ...spec, vmId: 'another-vm' }, { spoolDir: path.join(dir, 'spool'), createContainer: true }), 'INVALID_STATE');
    await assertRejectsCode(AzureBlobReplica.open(container, { ...spec, disks: [DISKS[0]!] }, { spoolDir: path.join(dir, 'spool'), createContainer: true }), 'DISK_CHANGE_UNSUPPORTED');

    const expected = new Map<number, Buffer[]>();
    for (let seq = 1; seq <= 5; seq++) {
      clock += 5 * 60_000;
      const files = DISKS.map((d, i) => {
        const ops = randomOps(rnd, d.size, 12);
        apply(models[i]!, ops);
        const file = path.join(dir, String(seq), `${d.name}.osrlog`);
        writeDeltaLog(file, seq, d, ops);
        return { diskName: d.name, file };
      });
      expected.set(seq, models.map((m) => Buffer.from(m)));
      const point = { seq, timeMs: clock, consistency: 'crash-consistent' as const, deltaBytes: 0 };
      assert.equal(await r.applyDelta(point, files), 'applied');
      assert.equal(await r.applyDelta(point, files), 'duplicate');
    }
    assert.equal(r.initialDone, true);
    await assertRejectsCode(r.writeInitial('sda', 0, [Buffer.alloc(512)]), 'INVALID_STATE');
    // the retention keeps 3 points; a new opener sees the same
    r = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'spool'), now: () => clock, createContainer: true });
    // (points 5 minutes apart: the first stays, then the one closest to its predecessor goes)
    assert.deepEqual(r.points().map((p) => p.seq), [1, 3, 5]);
    assert.equal(r.latestPoint()?.seq, 5);
    // each point, as a reader of the container finds it, is the source at its delta
    const read = await readReplicaPoints(container);
    for (const p of r.points()) {
      for (const [i, d] of DISKS.entries()) {
        const blob = pointDisks(container, read, p.seq)[i]!.snapshot;
        assert.ok((await blob.downloadToBuffer(0, d.size)).equals(expected.get(p.seq)![i]!), `point ${p.seq}, disk ${d.name}: the source at that delta`);
      }
    }
    // a delta whose number a disk has passed (another numbering): refused, nothing recorded
    r = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'spool'), now: () => clock, createContainer: true });
    await container.getPageBlobClient('disks/sda.vhd').updateSequenceNumber('max', 9);
    const empty = DISKS.map((d) => {
      const file = path.join(dir, '7', `${d.name}.osrlog`);
      writeDeltaLog(file, 7, d, []);
      return { diskName: d.name, file };
    });
    // a corrupt log is refused before anything is written
    const bad = path.join(dir, 'bad', 'sda.osrlog');
    writeDeltaLog(bad, 6, DISKS[0]!, [{ kind: 'write', offset: 0, data: Buffer.alloc(4096, 1) }]);
    const bytes = fs.readFileSync(bad);
    bytes[200]! ^= 1;
    fs.writeFileSync(bad, bytes);
    const good = path.join(dir, 'bad', 'sdb.osrlog');
    writeDeltaLog(good, 6, DISKS[1]!, []);
    await assert.rejects(r.applyDelta({ seq: 6, timeMs: clock, consistency: 'crash-consistent', deltaBytes: 0 }, [{ diskName: 'sda', file: bad }, { diskName: 'sdb', file: good }]), (e: Error & { code?: string }) => e.code === 'CHANGE_LOG_CORRUPT');
    assert.equal(await container.getPageBlobClient('disks/sdb.vhd').getProperties().then((p) => p.blobSequenceNumber), 5, 'nothing of the refused delta was written');
    // (a resync's delta: its number may skip, so only the disk's own number refuses it)
    await r.beginResync('resync-7', 7, 64 * 1024);
    for (const d of DISKS) await r.checkpointResync(d.name, d.size, true);
    await assertRejectsCode(r.applyDelta({ seq: 7, timeMs: clock, consistency: 'crash-consistent', deltaBytes: 0 }, empty), 'REPLICA_CHAIN_BROKEN');
    await container.getPageBlobClient('disks/sda.vhd').updateSequenceNumber('update', 5);
    r = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'spool'), now: () => clock, createContainer: true });
    assert.equal(r.resync?.seq, 7, 'the resync is recorded with the replica');
    // while it is recorded (its writes may be in the blobs) no other delta is taken
    await assertRejectsCode(r.applyDelta({ seq: 6, timeMs: clock, consistency: 'crash-consistent', deltaBytes: 0 }, [{ diskName: 'sda', file: path.join(dir, 'bad', 'sda.osrlog') }, { diskName: 'sdb', file: path.join(dir, 'bad', 'sdb.osrlog') }]), 'INVALID_STATE');
    assert.equal(await r.applyDelta({ seq: 7, timeMs: clock, consistency: 'crash-consistent', deltaBytes: 0 }, empty), 'applied');
    assert.equal(r.resync, undefined, 'the resync ended in its point');
    assert.equal(r.latestPoint()?.seq, 7);
    // a disk blob gone while the record says it holds data: refused, never made anew as zeros
    const gone = container.getPageBlobClient('disks/sdb.vhd');
    await gone.delete({ deleteSnapshots: 'include' });
    await assertRejectsCode(AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'spool'), now: () => clock, createContainer: true }), 'REPLICA_STORE_CORRUPT');
  }),
);

test(
  'two agents writing one replica: the second writer\'s record is refused, and its handle takes no more calls',
  withDir(async (dir) => {
    const container = az().service.getContainerClient(`osr-replica-${n++}`);
    const spec = { vmId: 'vm-azure-2', vmName: 'db01', disks: [DISKS[1]!], retention: { hours: 24, maxPoints: 24 } };
    const a = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'a'), createContainer: true });
    const b = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'b'), createContainer: true });
    await a.checkpointInitial('sdb', MiB, false);
    await assertRejectsCode(b.checkpointInitial('sdb', 2 * MiB, false), 'INVALID_STATE');
    // what the service holds is not what b read: b takes no more calls, a new opener reads it afresh
    assert.equal(b.broken, true);
    await assertRejectsCode(b.checkpointInitial('sdb', 2 * MiB, false), 'NETWORK_ERROR');
    const c = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'c'), createContainer: true });
    assert.deepEqual(c.initialProgress(), { sdb: MiB });
    await c.checkpointInitial('sdb', 2 * MiB, true);
    await assertRejectsCode(a.checkpointInitial('sdb', MiB + 4096, false), 'INVALID_STATE');
  }),
);

test(
  'a resync compares block checksums of the live blob with the source, writes only the blocks that differ, and ends in a point equal to the source',
  withDir(async (dir) => {
    const container = az().service.getContainerClient(`osr-replica-${n++}`);
    const disk = DISKS[0]!;
    const spec = { vmId: 'vm-azure-3', vmName: 'app01', disks: [disk], retention: { hours: 24, maxPoints: 24 } };
    const r = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'spool'), createContainer: true });
    const source = crypto.randomBytes(disk.size);
    await r.writeInitial(disk.name, 0, [source]);
    await r.checkpointInitial(disk.name, disk.size, true);
    const log1 = path.join(dir, '1', 'sda.osrlog');
    writeDeltaLog(log1, 1, disk, []);
    await r.applyDelta({ seq: 1, timeMs: Date.now(), consistency: 'crash-consistent', deltaBytes: 0 }, [{ diskName: 'sda', file: log1 }]);
    // the source changes where no log says (deltas 2-4 lost): scattered 64 KiB blocks
    const blockSize = 64 * 1024;
    const changed = [3, 17, 18, 40, Math.floor(disk.size / blockSize)];
    for (const b of changed) crypto.randomBytes(blockSize).copy(source, b * blockSize);
    const local = blockDigests(source, blockSize);
    const remote = await r.blockHashes(disk.name, 0, Math.floor(disk.size / blockSize) * blockSize, blockSize);
    const tail = await r.blockHashes(disk.name, Math.floor(disk.size / blockSize) * blockSize, disk.size % blockSize, blockSize);
    const all = Buffer.concat([remote, tail]);
    assert.equal(all.length, local.length);
    const differing: number[] = [];
    for (let i = 0; i * 16 < local.length; i++) if (!local.subarray(i * 16, i * 16 + 16).equals(all.subarray(i * 16, i * 16 + 16))) differing.push(i);
    assert.deepEqual(differing, changed, 'exactly the blocks written where no log says');
    await assertRejectsCode(r.stageResync(disk.name, 0, [Buffer.alloc(512)]), 'PROTOCOL_ERROR');
    await r.beginResync('resync-5', 5, blockSize);
    for (const b of differing) {
      const start = b * blockSize;
      await r.stageResync(disk.name, start, [source.subarray(start, Math.min(disk.size, start + blockSize))]);
    }
    await assertRejectsCode(r.applyDelta({ seq: 5, timeMs: Date.now(), consistency: 'crash-consistent', deltaBytes: 0 }, [{ diskName: 'sda', file: log1 }]), 'INVALID_STATE');
    assert.deepEqual((await r.checkpointResync(disk.name, disk.size, true)).disks, { sda: { offset: disk.size, bytes: 0, finished: true } });
    const log5 = path.join(dir, '5', 'sda.osrlog');
    writeDeltaLog(log5, 5, disk, [{ kind: 'write', offset: 1000, data: Buffer.alloc(3000, 0x5a) }]);
    Buffer.alloc(3000, 0x5a).copy(source, 1000);
    assert.equal(await r.applyDelta({ seq: 5, timeMs: Date.now(), consistency: 'crash-consistent', deltaBytes: 3000 }, [{ diskName: 'sda', file: log5 }]), 'applied');
    assert.deepEqual(r.points().map((p) => p.seq), [1, 5]);
    const at5 = pointDisks(container, await readReplicaPoints(container), 5)[0]!.snapshot;
    assert.ok((await at5.downloadToBuffer(0, disk.size)).equals(source), 'the resync\'s point is the source');
    await assertRejectsCode(r.stageResync(disk.name, 0, [Buffer.alloc(512)]), 'PROTOCOL_ERROR');
    await assertRejectsCode(r.beginResync('resync-5', 5, blockSize), 'INVALID_ARGUMENT');
    await assertRejectsCode(r.blockHashes(disk.name, 100, blockSize, blockSize), 'INVALID_ARGUMENT');
  }),
);

test(
  'a replica started over is blank, even when the reset was cut off; a primary of an older epoch is refused',
  withDir(async (dir) => {
    const container = az().service.getContainerClient(`osr-replica-${n++}`);
    const disk = DISKS[1]!;
    const spec = { vmId: 'vm-azure-4', vmName: 'file01', disks: [disk], retention: { hours: 24, maxPoints: 24 } };
    const opts = { spoolDir: path.join(dir, 'spool'), createContainer: true };
    let r = await AzureBlobReplica.open(container, spec, opts);
    const copy = async (): Promise<void> => {
      await r.writeInitial(disk.name, 0, [crypto.randomBytes(disk.size)]);
      await r.checkpointInitial(disk.name, disk.size, true);
      const log = path.join(dir, `${n}-1.osrlog`);
      writeDeltaLog(log, 1, disk, []);
      assert.equal(await r.applyDelta({ seq: 1, timeMs: Date.now(), consistency: 'crash-consistent', deltaBytes: 0 }, [{ diskName: disk.name, file: log }]), 'applied');
    };
    await copy();
    await r.setEpoch(3);
    await assertRejectsCode(r.setEpoch(2), 'EPOCH_STALE');
    r = await AzureBlobReplica.open(container, spec, opts);
    assert.equal(r.epoch, 3, 'the epoch is recorded with the replica');
    const blob = container.getPageBlobClient(`disks/${disk.name}.vhd`);
    const blank = async (): Promise<void> => {
      assert.ok((await blob.downloadToBuffer(0, disk.size)).equals(Buffer.alloc(disk.size)), 'the blob reads as zeros');
      assert.equal((await blob.getProperties()).blobSequenceNumber, 0);
      let snapshots = 0;
      for await (const b of container.listBlobsFlat({ includeSnapshots: true, prefix: 'disks/' })) if (b.snapshot) snapshots++;
      assert.equal(snapshots, 0, 'no point is left');
    };
    await r.resetInitial();
    await blank();
    assert.deepEqual([r.initialDone, r.points(), r.initialProgress()], [false, [], {}]);
    // a reset cut off after it was recorded: the next opener finishes it before anything is copied
    await copy();
    const record = container.getBlockBlobClient('replica.json');
    const text = (await record.downloadToBuffer()).toString('utf8');
    const cut = JSON.stringify({ ...JSON.parse(text), initial: { done: false, copied: {}, finishedDisks: [] }, resetting: true });
    await record.upload(cut, Buffer.byteLength(cut));
    r = await AzureBlobReplica.open(container, spec, opts);
    await blank();
    assert.deepEqual([r.initialDone, r.points()], [false, []]);
  }),
);

test(
  'a replaced handle takes no more calls, and its retirement ends only once the calls under way have ended',
  withDir(async (dir) => {
    const container = az().service.getContainerClient(`osr-replica-${n++}`);
    const disk = DISKS[0]!;
    const spec = { vmId: 'vm-azure-5', vmName: 'app05', disks: [disk], retention: { hours: 24, maxPoints: 24 } };
    const r = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'spool'), createContainer: true });
    await r.writeInitial(disk.name, 0, [crypto.randomBytes(disk.size)]);
    await r.checkpointInitial(disk.name, disk.size, true);
    const log = path.join(dir, '1.osrlog');
    writeDeltaLog(log, 1, disk, randomOps(prng(5), disk.size, 40));
    const apply = r.applyDelta({ seq: 1, timeMs: Date.now(), consistency: 'crash-consistent', deltaBytes: 0 }, [{ diskName: disk.name, file: log }]);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(r.latestPoint(), undefined, 'the apply is under way');
    await r.retire();
    assert.equal(r.latestPoint()?.seq, 1, 'the apply under way ended, its point made, before the retirement did');
    assert.equal(await apply, 'applied');
    await assertRejectsCode(r.writeInitial(disk.name, 0, [Buffer.alloc(512)]), 'NETWORK_ERROR');
    await assertRejectsCode(r.beginResync('x', 2, 4096), 'NETWORK_ERROR');
    const again = await AzureBlobReplica.open(container, spec, { spoolDir: path.join(dir, 'spool') });
    assert.equal(again.latestPoint()?.seq, 1);
  }),
);
