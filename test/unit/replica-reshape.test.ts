/**
 * The replica store's disks changed under protection (reshape): every point keeps its own
 * disks and sizes, a removed disk's image lives as long as a point holds it, a commit at an
 * older point gives back that point's disks, and a reshape a crash cut short is harmless.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ReplicaStore } from '../../src/agent/replica/replica-store.js';
import type { ReplicaDiskSpec } from '../../src/agent/ports/replica-target.js';
import { assertRejectsCode, withDir } from '../support/unit.js';
import { writeDeltaLog, type Op } from '../support/delta-log.js';

const MiB = 1024 * 1024;
const A: ReplicaDiskSpec = { id: 'id-a', name: 'sda', size: 2 * MiB };
const B: ReplicaDiskSpec = { id: 'id-b', name: 'sdb', size: MiB };

async function readAll(s: ReplicaStore, seq: number): Promise<Record<string, Buffer>> {
  const o = s.openOverlay(seq);
  try {
    const out: Record<string, Buffer> = {};
    for (const d of o.disks) out[d.name] = await d.read(0, d.size);
    return out;
  } finally {
    s.discardOverlay(o.id);
  }
}

/** Apply delta `seq` writing `ops` per disk of the store's current disks. */
async function apply(s: ReplicaStore, seq: number, ops: Record<string, Op[]>): Promise<void> {
  const files = s.disks.map((d) => {
    const file = path.join(s.incomingDir(seq), `${d.name}.osrlog`);
    writeDeltaLog(file, seq, d, ops[d.name] ?? []);
    return { diskName: d.name, file };
  });
  assert.equal(await s.applyDelta({ seq, timeMs: 1_700_000_000_000 + seq * 60_000, consistency: 'crash-consistent', deltaBytes: 0 }, files), 'applied');
}

async function twoDiskStore(root: string, clock: () => number): Promise<{ s: ReplicaStore; base: Record<string, Buffer> }> {
  const s = await ReplicaStore.open(root, { vmId: 'vm1', disks: [A, B], retention: { hours: 24, maxPoints: 3 } }, clock);
  const base: Record<string, Buffer> = {};
  for (const d of [A, B]) {
    base[d.name] = crypto.randomBytes(d.size);
    await s.writeInitial(d.name, 0, [base[d.name]!]);
    await s.checkpointInitial(d.name, d.size, true);
  }
  await apply(s, 1, {});
  return { s, base };
}

test(
  'a disk removed and one shrunk, confirmed: older points keep them; the image goes with the last point that holds it',
  withDir(async (dir) => {
    const root = path.join(dir, 'store');
    const now = 1_700_000_000_000 + 10 * 60_000;
    const { s, base } = await twoDiskStore(root, () => now);
    const tail = crypto.randomBytes(4096);
    await apply(s, 2, { sdb: [{ kind: 'write', offset: MiB - 4096, data: tail }] });
    const p2 = await readAll(s, 2);
    // unconfirmed: refused, nothing changed
    await assertRejectsCode(s.reshape([{ ...A, size: MiB }], false), 'DISK_CHANGE_UNCONFIRMED');
    assert.deepEqual(s.disks, [A, B]);
    // confirmed: sda shrinks to 1 MiB, sdb is removed
    const change = await s.reshape([{ ...A, size: MiB }], true);
    assert.deepEqual(change.shrunk, [{ name: 'sda', from: 2 * MiB, to: MiB }]);
    assert.deepEqual(change.removed.map((d) => d.name), ['sdb']);
    assert.equal(s.divergent, undefined, 'nothing to resynchronize');
    // a write past the new end, still in a log: dropped
    await apply(s, 3, { sda: [{ kind: 'write', offset: MiB + 4096, data: Buffer.alloc(4096, 7) }, { kind: 'write', offset: 0, data: Buffer.alloc(512, 9) }] });
    assert.deepEqual(s.points().map((p) => p.disks), [
      [{ name: 'sda', size: 2 * MiB }, { name: 'sdb', size: MiB }],
      [{ name: 'sda', size: 2 * MiB }, { name: 'sdb', size: MiB }],
      [{ name: 'sda', size: MiB }],
    ]);
    const p3 = await readAll(s, 3);
    assert.deepEqual(Object.keys(p3), ['sda']);
    assert.equal(p3.sda!.length, MiB);
    assert.deepEqual(p3.sda!.subarray(0, 512), Buffer.alloc(512, 9));
    assert.deepEqual(p3.sda!.subarray(512), base.sda!.subarray(512, MiB));
    // the older points read as they were, also after a restart
    assert.deepEqual(await readAll(s, 2), p2);
    s.close();
    const s2 = await ReplicaStore.open(root, { vmId: 'vm1', disks: [] }, () => now);
    assert.deepEqual(await readAll(s2, 2), p2);
    assert.deepEqual(await readAll(s2, 3), p3);
    assert.equal(fs.statSync(s2.imagePath('sda')).size, 2 * MiB, 'the shrunk image is not cut while a point needs its end');
    // retention: while a point holds sdb its image stays; once none does, it goes
    await apply(s2, 4, {});
    await apply(s2, 5, {});
    const holds = s2.points().some((p) => p.disks?.some((d) => d.name === 'sdb'));
    assert.equal(fs.existsSync(s2.imagePath('sdb')), holds);
    s2.setRetention({ hours: 0, maxPoints: 1 });
    await s2.prune();
    assert.deepEqual(s2.points().map((p) => p.seq), [5]);
    assert.equal(fs.existsSync(s2.imagePath('sdb')), false, 'no point holds sdb: its image is gone');
    const undoFiles = fs.readdirSync(path.join(root, 'undo'), { recursive: true }).map(String);
    assert.ok(!undoFiles.some((f) => f.endsWith('sdb.undo')), `undo of sdb left: ${undoFiles.join(', ')}`);
    assert.deepEqual(Object.keys(await readAll(s2, 5)), ['sda']);
    s2.close();
    // and it opens again
    const s3 = await ReplicaStore.open(root, { vmId: 'vm1', disks: [] }, () => now);
    assert.deepEqual(Object.keys(await readAll(s3, 5)), ['sda']);
    s3.close();
  }),
);

test(
  'a disk added: a new image, the whole disk divergent until a resync, and a commit at an older point gives that point its disks back',
  withDir(async (dir) => {
    const root = path.join(dir, 'store');
    const now = 1_700_000_000_000 + 10 * 60_000;
    const { s, base } = await twoDiskStore(root, () => now);
    const C: ReplicaDiskSpec = { id: 'id-c', name: 'sdc', size: MiB };
    // a crash after the image was made, before the manifest named it: a stray image, deleted at open
    fs.writeFileSync(path.join(root, 'disks', 'sdc.img'), 'left by a crash');
    s.close();
    const s1 = await ReplicaStore.open(root, { vmId: 'vm1', disks: [] }, () => now);
    assert.equal(fs.existsSync(path.join(root, 'disks', 'sdc.img')), false);
    // a disk under an old name with another id is refused
    await assertRejectsCode(s1.reshape([A, { ...B, id: 'another' }], false), 'DISK_CHANGE_UNSUPPORTED');
    const change = await s1.reshape([{ ...A, size: 3 * MiB }, B, C], false);
    assert.deepEqual(change.added.map((d) => d.name), ['sdc']);
    assert.deepEqual(s1.divergent, { sda: [[2 * MiB, MiB]], sdc: [[0, MiB]] });
    // the same disks again change nothing (a reopen after a lost answer)
    await s1.reshape([{ ...A, size: 3 * MiB }, B, C], false);
    assert.deepEqual(s1.divergent, { sda: [[2 * MiB, MiB]], sdc: [[0, MiB]] });
    assert.equal(fs.statSync(s1.imagePath('sda')).size, 3 * MiB);
    // deltas wait for the resync of the new ranges
    await assert.rejects(apply(s1, 2, {}), (e: { code?: string }) => e.code === 'INVALID_STATE');
    // a commit at point 1 (before the change): the images are point 1's disks again
    const o = s1.openOverlay(1);
    assert.deepEqual(o.disks.map((d) => [d.name, d.size]), [['sda', 2 * MiB], ['sdb', MiB]]);
    const committed = await s1.commitOverlay(o.id);
    assert.equal(committed.seq, 1);
    assert.deepEqual(s1.disks, [A, B]);
    assert.equal(fs.statSync(s1.imagePath('sda')).size, 2 * MiB);
    assert.equal(fs.existsSync(path.join(root, 'disks', 'sdc.img')), false);
    assert.deepEqual(fs.readFileSync(s1.imagePath('sda')), base.sda);
    s1.close();
  }),
);
