import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ChangeLogWriter, diskKeyOf, LogStreamVerifier, scanLogFile } from '../../src/agent/tracking/change-log.js';
import { blockDigests } from '../../src/agent/io/checksum.js';
import type { Consistency } from '../../src/agent/ports/change-source.js';
import { ReplicaStore, type ReceivedDeltaFile } from '../../src/agent/replica/replica-store.js';
import type { DeltaDiskFile, RecoveryPoint, ReplicaDiskSpec, RetentionSpec } from '../../src/agent/ports/replica-target.js';
import { assertRejectsCode as assertCode, assertThrowsCode, prng, withDir } from '../support/unit.js';
import { writeDeltaLog, type Op } from '../support/delta-log.js';



/** A fixed pseudo-random pool: data is cut from it at a random place and stamped every 256 bytes, so no two writes match. */
const POOL = (() => {
  const r = prng(0x5eed);
  const b = Buffer.allocUnsafe(1 << 20);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(Math.floor(r() * 0x100000000), i);
  return b;
})();

function randomBytes(rnd: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let done = 0; done < n; ) {
    const at = Math.floor(rnd() * (POOL.length - 1));
    done += POOL.copy(b, done, at, Math.min(POOL.length, at + n - done));
  }
  for (let i = 0; i + 4 <= n; i += 256) b.writeUInt32LE(Math.floor(rnd() * 0x100000000), i);
  if (n < 4) for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}



const KiB = 1024;
const MiB = 1024 * KiB;
const HOUR = 3600_000;
const DISKS: ReplicaDiskSpec[] = [
  { id: 'disk-id-a', name: 'sda', size: 2 * MiB },
  { id: 'disk-id-b', name: 'sdb', size: 1 * MiB + 512 * KiB },
];
const VM = 'vm-under-test';

function applyOps(base: Buffer, ops: Op[]): Buffer {
  const b = Buffer.from(base);
  for (const op of ops) {
    if (op.kind === 'write') op.data.copy(b, op.offset);
    else b.fill(0, op.offset, op.offset + op.length);
  }
  return b;
}

function firstDiff(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

function assertBytes(got: Buffer, want: Buffer, what: string): void {
  if (!got.equals(want)) assert.fail(`${what}: differs (lengths ${got.length}/${want.length}, first difference at byte ${firstDiff(got, want)})`);
}

/** Random guest I/O of one cycle on one disk: 4-64 KiB writes, zero ranges, some unaligned and overlapping. */
function randomOps(rnd: () => number, size: number, n: number): Op[] {
  const ops: Op[] = [];
  for (let i = 0; i < n; i++) {
    const r = rnd();
    if (r < 0.1) {
      // a small unaligned write
      const len = 1 + Math.floor(rnd() * 3000);
      ops.push({ kind: 'write', offset: Math.floor(rnd() * (size - len)), data: randomBytes(rnd, len) });
    } else if (r < 0.25) {
      const len = 4 * KiB * (1 + Math.floor(rnd() * 32));
      ops.push({ kind: 'zero', offset: 4 * KiB * Math.floor(rnd() * ((size - len) / (4 * KiB))), length: len });
    } else if (r < 0.35 && ops.length > 0) {
      // overwrite part of an earlier write of the same cycle (the later one must win)
      const prev = ops[Math.floor(rnd() * ops.length)];
      const len = 512 + Math.floor(rnd() * 8 * KiB);
      const offset = Math.min(size - len, prev.offset + Math.floor(rnd() * 4 * KiB));
      ops.push({ kind: 'write', offset, data: randomBytes(rnd, len) });
    } else {
      const len = 4 * KiB * (1 + Math.floor(rnd() * 16));
      ops.push({ kind: 'write', offset: 4 * KiB * Math.floor(rnd() * ((size - len) / (4 * KiB))), data: randomBytes(rnd, len) });
    }
  }
  return ops;
}


/** Drives a store with a reference model of every disk at every point. */
class Harness {
  store!: ReplicaStore;
  clock = 1_700_000_000_000;
  readonly rnd: () => number;
  /** model of every disk at each point seq */
  readonly models = new Map<number, Buffer[]>();
  /** the disks as they are now (latest point) */
  current: Buffer[] = DISKS.map((d) => Buffer.alloc(d.size));
  nextSeq = 1;
  retention: RetentionSpec;
  /** when set, every point made has this consistency (otherwise a random one) */
  consistency: Consistency | undefined;

  constructor(
    readonly root: string,
    seed: number,
    retention: RetentionSpec = { hours: 24, maxPoints: 24 },
  ) {
    this.rnd = prng(seed);
    this.retention = retention;
  }

  async open(): Promise<ReplicaStore> {
    this.store = await ReplicaStore.open(this.root, { vmId: VM, disks: DISKS, retention: this.retention }, () => this.clock);
    return this.store;
  }

  /** The initial copy: random data in chunks with checkpoints, some zero ranges, each disk finished. */
  async initialCopy(): Promise<void> {
    for (const [i, d] of DISKS.entries()) {
      const chunk = 256 * KiB;
      for (let off = 0; off < d.size; off += chunk) {
        const r = this.rnd();
        if (r < 0.25) {
          this.store.zeroInitial(d.name, off, chunk);
          this.current[i].fill(0, off, off + chunk);
        } else {
          const data = randomBytes(this.rnd, chunk);
          await this.store.writeInitial(d.name, off, [data]);
          data.copy(this.current[i], off);
        }
        const end = off + chunk >= d.size;
        if (end || this.rnd() < 0.3) await this.store.checkpointInitial(d.name, off + chunk, end);
      }
    }
    assert.deepEqual(this.store.finishedInitialDisks().sort(), ['sda', 'sdb']);
    assert.deepEqual(this.store.initialProgress(), { sda: DISKS[0].size, sdb: DISKS[1].size });
  }

  /** Write the delta files of the next point into the store's incoming directory; advance the model. */
  makeDelta(opsPerDisk?: Op[][], seq = this.nextSeq): { point: RecoveryPoint; files: DeltaDiskFile[]; next: Buffer[] } {
    const ops = opsPerDisk ?? DISKS.map((d) => (this.rnd() < 0.1 ? [] : randomOps(this.rnd, d.size, 5 + Math.floor(this.rnd() * 25))));
    const dir = this.store.incomingDir(seq);
    const files = DISKS.map((d, i) => {
      const file = path.join(dir, `${d.name}.osrlog`);
      writeDeltaLog(file, seq, d, ops[i]);
      return { diskName: d.name, file };
    });
    const deltaBytes = ops.flat().reduce((n, o) => n + (o.kind === 'write' ? o.data.length : 0), 0);
    this.clock += 10 * 60_000;
    const consistency: Consistency = this.rnd() < 0.25 ? 'app-consistent' : 'crash-consistent';
    if (this.consistency) {
      return { point: { seq, timeMs: this.clock, consistency: this.consistency, deltaBytes }, files, next: this.current.map((b, i) => applyOps(b, ops[i])) };
    }
    const point: RecoveryPoint = { seq, timeMs: this.clock, consistency, deltaBytes };
    return { point, files, next: this.current.map((b, i) => applyOps(b, ops[i])) };
  }

  async applyNext(opsPerDisk?: Op[][]): Promise<RecoveryPoint> {
    const { point, files, next } = this.makeDelta(opsPerDisk);
    assert.equal(await this.store.applyDelta(point, files), 'applied');
    this.recordApplied(point, next);
    return point;
  }

  recordApplied(point: RecoveryPoint, next: Buffer[]): void {
    this.current = next;
    this.models.set(point.seq, next);
    this.nextSeq = point.seq + 1;
    assert.equal(fs.existsSync(this.store.incomingDir(point.seq)), false, 'incoming files removed after the apply');
  }

  /** Read every retained point through a fresh overlay and compare it with the model. */
  async checkAllPoints(what: string): Promise<void> {
    const points = this.store.points();
    assert.ok(points.length > 0);
    for (const p of points) {
      const model = this.models.get(p.seq);
      assert.ok(model, `${what}: point ${p.seq} has a model`);
      const o = this.store.openOverlay(p.seq);
      try {
        for (const [i, d] of DISKS.entries()) {
          assertBytes(await o.disk(d.name).read(0, d.size), model[i], `${what}: point ${p.seq} disk ${d.name}`);
          // a few partial reads at odd offsets, so pieces are cut inside extents
          for (let k = 0; k < 3; k++) {
            const off = Math.floor(this.rnd() * (d.size - 70000));
            const len = 1 + Math.floor(this.rnd() * 70000);
            assertBytes(await o.disk(d.name).read(off, len), model[i].subarray(off, off + len), `${what}: point ${p.seq} disk ${d.name} [${off}+${len}]`);
          }
        }
      } finally {
        this.store.discardOverlay(o.id);
      }
    }
    // the latest point is the images themselves
    const latest = this.store.latestPoint()!;
    for (const [i, d] of DISKS.entries()) assertBytes(fs.readFileSync(this.store.imagePath(d.name)), this.models.get(latest.seq)![i], `${what}: image of ${d.name}`);
  }

  async overlayBytes(o: ReturnType<ReplicaStore['openOverlay']>): Promise<Buffer[]> {
    return Promise.all(DISKS.map((d) => o.disk(d.name).read(0, d.size)));
  }
}

async function writeOverlay(h: Harness, o: ReturnType<ReplicaStore['openOverlay']>, model: Buffer[], n: number): Promise<void> {
  for (let k = 0; k < n; k++) {
    const i = Math.floor(h.rnd() * DISKS.length);
    const d = DISKS[i];
    const op = randomOps(h.rnd, d.size, 1)[0];
    if (op.kind === 'write') await o.disk(d.name).write(op.offset, op.data, { fua: h.rnd() < 0.2 });
    else await o.disk(d.name).writeZeroes(op.offset, op.length, { fua: false });
    model[i] = applyOps(model[i], [op]);
  }
}

function copyDir(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true });
}

function readManifest(root: string): Record<string, unknown> & { points: RecoveryPoint[] } {
  return JSON.parse(fs.readFileSync(path.join(root, 'manifest.json'), 'utf8')) as Record<string, unknown> & { points: RecoveryPoint[] };
}
function writeManifest(root: string, m: unknown): void {
  fs.writeFileSync(path.join(root, 'manifest.json'), JSON.stringify(m, null, 2));
}

test(
  'initial copy then a series of deltas: every retained point reads back byte for byte',
  withDir(async (dir) => {
    const h = new Harness(path.join(dir, 'store'), 101, { hours: 24, maxPoints: 100 });
    const store = await h.open();
    try {
      assert.equal(store.initialDone, false);
      assert.deepEqual(store.points(), []);
      await assertCode(() => store.openOverlay(), 'POINT_NOT_FOUND');
      await h.initialCopy();
      // the first delta makes the first point (the copy itself is fuzzy, not a point)
      const p1 = await h.applyNext();
      assert.equal(p1.seq, 1);
      assert.equal(store.initialDone, true);
      assert.equal(fs.existsSync(store.undoPath(1, 'sda')), false, 'the first point has no undo');
      await h.checkAllPoints('after 1');
      for (let k = 0; k < 11; k++) {
        await h.applyNext();
        if (k % 3 === 2) await h.checkAllPoints(`after ${h.nextSeq - 1}`);
      }
      assert.deepEqual(
        store.points().map((p) => p.seq),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
      );
      await h.checkAllPoints('final');
      // the same after a close and reopen (undo files re-read from disk)
      store.close();
      await h.open();
      await h.checkAllPoints('reopened');
    } finally {
      h.store.close();
    }
  }),
);

test(
  'duplicate, out-of-order and malformed deltas',
  withDir(async (dir) => {
    const h = new Harness(path.join(dir, 'store'), 202, { hours: 24, maxPoints: 3 });
    const store = await h.open();
    try {
      // nothing may be applied before every disk is copied
      await store.checkpointInitial('sda', DISKS[0].size, true);
      const early = h.makeDelta();
      await assertCode(store.applyDelta(early.point, early.files), 'INVALID_STATE', /not copied every disk/);
      await h.initialCopy();
      for (let k = 0; k < 6; k++) await h.applyNext();
      const seqs = store.points().map((p) => p.seq);
      assert.equal(seqs.length, 3);
      assert.equal(seqs.at(-1), 6);

      // the latest again, an older retained point, an older pruned one: all duplicates
      for (const seq of [6, seqs[0], ...[1, 2, 3, 4, 5].filter((s) => !seqs.includes(s))]) {
        const d = h.makeDelta(undefined, seq);
        assert.equal(await store.applyDelta(d.point, d.files), 'duplicate', `seq ${seq}`);
      }
      await h.checkAllPoints('after duplicates');

      // a gap in the chain
      const gap = h.makeDelta(undefined, 8);
      await assertCode(store.applyDelta(gap.point, gap.files), 'REPLICA_CHAIN_BROKEN');
      // a log whose header names another seq than the delta
      const wrongSeq = h.makeDelta(undefined, 7);
      writeDeltaLog(wrongSeq.files[1].file, 9, DISKS[1], []);
      await assertCode(store.applyDelta(wrongSeq.point, wrongSeq.files), 'REPLICA_CHAIN_BROKEN', /arrived as delta 7/);
      // a log for the wrong disk (sdb's log under sda's name)
      const swapped = h.makeDelta(undefined, 7);
      await assertCode(
        store.applyDelta(swapped.point, [
          { diskName: 'sda', file: swapped.files[1].file },
          { diskName: 'sdb', file: swapped.files[0].file },
        ]),
        'CHANGE_LOG_CORRUPT',
        /another disk/,
      );
      // a disk missing from the delta
      const missing = h.makeDelta(undefined, 7);
      await assertCode(store.applyDelta(missing.point, [missing.files[0]]), 'INVALID_ARGUMENT', /no change log for disk sdb/);
      // a record beyond the end of the disk
      const outside = h.makeDelta(undefined, 7);
      writeDeltaLog(outside.files[1].file, 7, DISKS[1], [{ kind: 'write', offset: DISKS[1].size - 100, data: Buffer.alloc(200, 1) }]);
      await assertCode(store.applyDelta(outside.point, outside.files), 'CHANGE_LOG_CORRUPT', /outside disk/);
      // a log that was never closed, and one with a torn tail
      const open = h.makeDelta(undefined, 7);
      const w = ChangeLogWriter.create(open.files[0].file + '.x', { seq: 7, createdMs: 0, diskKey: diskKeyOf(DISKS[0].id) });
      w.appendWrite(0, Buffer.alloc(4096, 3));
      w.closeFile();
      fs.renameSync(open.files[0].file + '.x', open.files[0].file);
      await assertCode(store.applyDelta(open.point, open.files), 'CHANGE_LOG_CORRUPT', /incomplete/);
      const torn = h.makeDelta(undefined, 7);
      fs.truncateSync(torn.files[0].file, fs.statSync(torn.files[0].file).size - 1);
      await assertCode(store.applyDelta(torn.point, torn.files), 'CHANGE_LOG_CORRUPT');
      // a flipped data byte
      const flipped = h.makeDelta([[{ kind: 'write', offset: 0, data: Buffer.alloc(8192, 5) }], []], 7);
      const bytes = fs.readFileSync(flipped.files[0].file);
      bytes[64 + 48 + 100] ^= 1;
      fs.writeFileSync(flipped.files[0].file, bytes);
      await assertCode(store.applyDelta(flipped.point, flipped.files), 'CHANGE_LOG_CORRUPT', /checksum/);

      // none of that changed a point; the right delta still applies
      assert.deepEqual(
        store.points().map((p) => p.seq),
        seqs,
      );
      await h.checkAllPoints('after refusals');
      await h.applyNext();
      assert.equal(store.latestPoint()?.seq, 7);
      await h.checkAllPoints('after 7');
    } finally {
      h.store.close();
    }
  }),
);

test(
  'overlays: writes stay in the overlay, the point is unchanged, overlays survive a reopen and new deltas',
  withDir(async (dir) => {
    const h = new Harness(path.join(dir, 'store'), 303, { hours: 24, maxPoints: 100 });
    let store = await h.open();
    try {
      await h.initialCopy();
      for (let k = 0; k < 4; k++) await h.applyNext();
      // one overlay on an older point, one on the latest
      const oOld = store.openOverlay(2);
      const oNew = store.openOverlay();
      assert.equal(oNew.pointSeq, 4);
      const mOld = h.models.get(2)!.map((b) => Buffer.from(b));
      const mNew = h.models.get(4)!.map((b) => Buffer.from(b));
      await writeOverlay(h, oOld, mOld, 30);
      await writeOverlay(h, oNew, mNew, 30);
      for (const [i, b] of (await h.overlayBytes(oOld)).entries()) assertBytes(b, mOld[i], `overlay on 2, disk ${i}`);
      for (const [i, b] of (await h.overlayBytes(oNew)).entries()) assertBytes(b, mNew[i], `overlay on 4, disk ${i}`);
      // the points did not change: another overlay on the same point reads the point
      const again = store.openOverlay(2);
      for (const [i, b] of (await h.overlayBytes(again)).entries()) assertBytes(b, h.models.get(2)![i], `fresh overlay on 2, disk ${i}`);
      store.discardOverlay(again.id);
      await h.checkAllPoints('with overlays open');
      // out-of-range I/O on an overlay disk is refused
      await assertCode(oOld.disk('sdb').read(DISKS[1].size - 10, 11), 'INVALID_ARGUMENT');
      await assertCode(oOld.disk('sdb').write(DISKS[1].size, Buffer.alloc(1), { fua: false }), 'INVALID_ARGUMENT');

      // new deltas while the overlays are open: what they read does not change
      for (let k = 0; k < 3; k++) {
        await h.applyNext();
        for (const [i, b] of (await h.overlayBytes(oOld)).entries()) assertBytes(b, mOld[i], `overlay on 2 after delta ${h.nextSeq - 1}, disk ${i}`);
        for (const [i, b] of (await h.overlayBytes(oNew)).entries()) assertBytes(b, mNew[i], `overlay on 4 after delta ${h.nextSeq - 1}, disk ${i}`);
      }
      await h.checkAllPoints('after deltas with overlays open');

      // close and reopen the store: both overlays come back with their writes
      const ids = [oOld.id, oNew.id].sort();
      store.close();
      store = await h.open();
      assert.deepEqual(
        store
          .listOverlays()
          .map((o) => o.id)
          .sort(),
        ids,
      );
      const rOld = store.getOverlay(oOld.id);
      const rNew = store.getOverlay(oNew.id);
      assert.equal(rOld.pointSeq, 2);
      for (const [i, b] of (await h.overlayBytes(rOld)).entries()) assertBytes(b, mOld[i], `reopened overlay on 2, disk ${i}`);
      for (const [i, b] of (await h.overlayBytes(rNew)).entries()) assertBytes(b, mNew[i], `reopened overlay on 4, disk ${i}`);
      // writes go on after the reopen, and a later delta still does not show through
      await writeOverlay(h, rOld, mOld, 10);
      await h.applyNext();
      for (const [i, b] of (await h.overlayBytes(rOld)).entries()) assertBytes(b, mOld[i], `reopened overlay on 2 after writes, disk ${i}`);
      await h.checkAllPoints('after reopen');

      // a torn tail in an overlay log (crash during an overlay write) is cut on reopen
      store.close();
      const log = path.join(store.overlayDir(rOld.id), 'sda.osrlog');
      fs.appendFileSync(log, Buffer.alloc(30, 0x11));
      store = await h.open();
      for (const [i, b] of (await h.overlayBytes(store.getOverlay(rOld.id))).entries()) assertBytes(b, mOld[i], `overlay on 2 after torn tail, disk ${i}`);

      // discarding removes the overlay and its files; the point is untouched
      store.discardOverlay(rOld.id);
      assert.equal(fs.existsSync(store.overlayDir(rOld.id)), false);
      await assertCode(() => store.getOverlay(rOld.id), 'NOT_FOUND');
      await assertCode(() => store.openOverlay(99), 'POINT_NOT_FOUND');
      await h.checkAllPoints('after discard');
    } finally {
      h.store.close();
    }
  }),
);

test(
  'pruning by count merges middle points, keeps the latest and points with open overlays',
  withDir(async (dir) => {
    const h = new Harness(path.join(dir, 'store'), 404, { hours: 24, maxPoints: 4 });
    const store = await h.open();
    try {
      await h.initialCopy();
      for (let k = 0; k < 6; k++) {
        await h.applyNext();
        assert.ok(store.points().length <= 4);
        assert.equal(store.latestPoint()?.seq, h.nextSeq - 1);
      }
      await h.checkAllPoints('count-pruned');
      // the undo directories on disk are exactly those of the retained points but the first
      const undoDirs = fs.readdirSync(path.join(h.root, 'undo')).sort();
      assert.deepEqual(
        undoDirs,
        store
          .points()
          .slice(1)
          .map((p) => String(p.seq).padStart(12, '0')),
      );
      // an overlay on a middle point holds it through many more deltas
      const held = store.points()[1].seq;
      const o = store.openOverlay(held);
      const mHeld = h.models.get(held)!.map((b) => Buffer.from(b));
      await writeOverlay(h, o, mHeld, 10);
      for (let k = 0; k < 8; k++) {
        await h.applyNext();
        assert.ok(store.points().some((p) => p.seq === held), `point ${held} with an open overlay is kept`);
        assert.ok(store.points().length <= 4);
        assert.equal(store.latestPoint()?.seq, h.nextSeq - 1);
      }
      for (const [i, b] of (await h.overlayBytes(o)).entries()) assertBytes(b, mHeld[i], `overlay on ${held}, disk ${i}`);
      await h.checkAllPoints('count-pruned with overlay');
      // once the overlay goes, the next prune may take the point
      store.discardOverlay(o.id);
      store.setRetention({ hours: 24, maxPoints: 2 });
      const dropped = await store.prune();
      assert.ok(dropped.length >= 1);
      assert.equal(store.points().length, 2);
      assert.equal(store.points()[1].seq, h.nextSeq - 1);
      await h.checkAllPoints('pruned to 2');
      store.setRetention({ hours: 24, maxPoints: 1 });
      await store.prune();
      assert.deepEqual(
        store.points().map((p) => p.seq),
        [h.nextSeq - 1],
      );
      await h.checkAllPoints('pruned to 1');
      assert.deepEqual(fs.readdirSync(path.join(h.root, 'undo')), []);
    } finally {
      h.store.close();
    }
  }),
);

test(
  'thinning prefers crash-consistent points and the closest pair',
  withDir(async (dir) => {
    const h = new Harness(path.join(dir, 'store'), 505, { hours: 24, maxPoints: 100 });
    const store = await h.open();
    try {
      await h.initialCopy();
      const consistencies: Consistency[] = ['crash-consistent', 'app-consistent', 'crash-consistent', 'crash-consistent', 'app-consistent', 'crash-consistent'];
      const gaps = [0, 10, 10, 3, 10, 10]; // minutes after the previous point
      for (const [k, c] of consistencies.entries()) {
        const d = h.makeDelta();
        h.clock += gaps[k] * 60_000 - 10 * 60_000;
        d.point.timeMs = h.clock;
        d.point.consistency = c;
        assert.equal(await store.applyDelta(d.point, d.files), 'applied');
        h.recordApplied(d.point, d.next);
      }
      store.setRetention({ hours: 24, maxPoints: 5 });
      // crash-consistent candidates 3, 4 (1 is the oldest: dropped last); 4 is closest to 3
      const pruning = store.prune();
      // while its undo is merged away on the thread pool, the point cannot be opened
      assertThrowsCode(() => store.openOverlay(4), 'POINT_NOT_FOUND', /being pruned/);
      assert.deepEqual(
        (await pruning).map((p) => p.seq),
        [4],
      );
      store.setRetention({ hours: 24, maxPoints: 3 });
      assert.deepEqual(
        (await store.prune()).map((p) => p.seq),
        [3, 1],
      );
      assert.deepEqual(
        store.points().map((p) => [p.seq, p.consistency]),
        [
          [2, 'app-consistent'],
          [5, 'app-consistent'],
          [6, 'crash-consistent'],
        ],
      );
      await h.checkAllPoints('thinned');
    } finally {
      h.store.close();
    }
  }),
);

test(
  'continuous cuts: each is folded into the next until the points either side are an interval apart; every kept point reads back',
  withDir(async (dir) => {
    const h = new Harness(path.join(dir, 'store'), 909, { hours: 24, maxPoints: 1000, minSpacingMs: 5000 });
    const store = await h.open();
    try {
      await h.initialCopy();
      const base = h.clock;
      const times: number[] = [];
      for (let k = 1; k <= 23; k++) {
        const d = h.makeDelta();
        // cuts a second apart, with the jitter of a busy host; cut 12 is app-consistent
        h.clock = base + k * 1000 + (k % 3) * 40;
        d.point.timeMs = h.clock;
        d.point.consistency = k === 12 ? 'app-consistent' : 'crash-consistent';
        assert.equal(await store.applyDelta(d.point, d.files), 'applied');
        h.recordApplied(d.point, d.next);
        times.push(h.clock);
        await store.prune();
        const kept = store.points();
        assert.equal(kept.at(-1)!.seq, d.point.seq, 'the latest cut is always a point');
        for (let i = 1; i < kept.length - 1; i++) {
          assert.ok(kept[i + 1].timeMs - kept[i - 1].timeMs > 5000 || kept[i].consistency === 'app-consistent', `point ${kept[i].seq} was not folded`);
        }
        for (let i = 1; i < kept.length; i++) assert.ok(kept[i].timeMs - kept[i - 1].timeMs <= 5000 + 1000, 'kept points are at most an interval and a cut apart');
      }
      const kept = store.points();
      assert.ok(kept.some((p) => p.consistency === 'app-consistent'), 'an app-consistent cut is never folded');
      assert.ok(kept.length >= 5 && kept.length <= 8, `23 s of cuts keep about one point per 5 s, not ${kept.length}`);
      await h.checkAllPoints('continuous');
      // a restart finds the same points and the same bytes
      store.close();
      await h.open();
      assert.deepEqual(h.store.points().map((p) => p.seq), kept.map((p) => p.seq));
      await h.checkAllPoints('continuous, reopened');
    } finally {
      h.store.close();
    }
  }),
);

test(
  'pruning by age keeps the latest point and points with open overlays',
  withDir(async (dir) => {
    const h = new Harness(path.join(dir, 'store'), 606, { hours: 3, maxPoints: 24 });
    const store = await h.open();
    try {
      await h.initialCopy();
      for (let k = 0; k < 4; k++) {
        await h.applyNext();
        h.clock += HOUR - 10 * 60_000; // one point an hour
      }
      // points at t, t+1h, t+2h, t+3h and now t+4h: the cutoff is t+1h, and only points
      // strictly older than it expire
      await h.applyNext();
      assert.deepEqual(
        store.points().map((p) => p.seq),
        [2, 3, 4, 5],
      );
      await h.checkAllPoints('age-pruned');
      const o = store.openOverlay(3);
      h.clock += 10 * HOUR;
      await h.applyNext();
      assert.deepEqual(
        store.points().map((p) => p.seq),
        [3, 6],
        'everything expired but the latest and the point with an overlay',
      );
      for (const [i, b] of (await h.overlayBytes(o)).entries()) assertBytes(b, h.models.get(3)![i], `overlay on 3, disk ${i}`);
      await h.checkAllPoints('age-pruned with overlay');
      store.discardOverlay(o.id);
      // hours 0 keeps only the latest
      store.setRetention({ hours: 0, maxPoints: 24 });
      h.clock += 1;
      await store.prune();
      assert.deepEqual(
        store.points().map((p) => p.seq),
        [6],
      );
      await h.checkAllPoints('hours 0');
      // the retention passed to open is the one used
      store.close();
      h.retention = { hours: 24, maxPoints: 24 };
      await h.open();
      assert.deepEqual(h.store.retention, { hours: 24, maxPoints: 24 });
    } finally {
      h.store.close();
    }
  }),
);

test(
  'commitOverlay makes the images the point plus the overlay writes and leaves one point',
  withDir(async (dir) => {
    const h = new Harness(path.join(dir, 'store'), 707, { hours: 24, maxPoints: 100 });
    const store = await h.open();
    try {
      await h.initialCopy();
      for (let k = 0; k < 5; k++) await h.applyNext();
      const o = store.openOverlay(3);
      const other = store.openOverlay(5);
      const target = h.models.get(3)!.map((b) => Buffer.from(b));
      await writeOverlay(h, o, target, 40);
      h.clock += 5000;
      const committed = await store.commitOverlay(o.id);
      assert.equal(committed.seq, 3);
      assert.equal(committed.timeMs, h.clock);
      assert.equal(committed.deltaBytes, 0);
      assert.equal(store.isCommitted, true);
      assert.deepEqual(store.points(), [committed]);
      for (const [i, d] of DISKS.entries()) assertBytes(fs.readFileSync(store.imagePath(d.name)), target[i], `image ${d.name} after commit`);
      assert.deepEqual(fs.existsSync(path.join(h.root, 'undo')) ? fs.readdirSync(path.join(h.root, 'undo')) : [], []);
      assert.equal(fs.existsSync(path.join(h.root, 'overlays')), false);
      assert.deepEqual(store.listOverlays(), []);
      await assertCode(() => store.getOverlay(other.id), 'NOT_FOUND');
      // replication to a committed replica has ended
      const d = h.makeDelta(undefined, 6);
      await assertCode(store.applyDelta(d.point, d.files), 'INVALID_STATE', /committed/);
      await assertCode(() => store.openOverlay(3), 'INVALID_STATE');
      // and it stays so after a reopen
      store.close();
      await h.open();
      assert.equal(h.store.isCommitted, true);
      assert.deepEqual(h.store.points(), [committed]);
      for (const [i, d2] of DISKS.entries()) assertBytes(fs.readFileSync(h.store.imagePath(d2.name)), target[i], `image ${d2.name} after reopen`);
    } finally {
      h.store.close();
    }
  }),
);

/** A store with points 1..n; returns the harness, closed. */
async function storeWithPoints(root: string, seed: number, n: number, consistency?: Consistency): Promise<Harness> {
  const h = new Harness(root, seed, { hours: 24, maxPoints: 100 });
  h.consistency = consistency;
  await h.open();
  await h.initialCopy();
  for (let k = 0; k < n; k++) await h.applyNext();
  h.store.close();
  return h;
}

/** Images with the first `cut` bytes from `a` and the rest from `b`: a write cut short by a crash. */
function halfWrite(file: string, a: Buffer, cut: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, a, 0, cut, 0);
  } finally {
    fs.closeSync(fd);
  }
}

for (const stage of ['received', 'undo-written'] as const) {
  test(
    `a crash while applying a delta (stage ${stage}) is finished on open`,
    withDir(async (dir) => {
      const root = path.join(dir, 'store');
      const h = await storeWithPoints(root, stage === 'received' ? 808 : 809, 4);
      const before = path.join(dir, 'before');
      copyDir(root, before);
      // apply delta 5 for real, keeping its files: the reference for the undo files
      await h.open();
      const d = h.makeDelta(DISKS.map((disk) => [{ kind: 'write', offset: 4096, data: randomBytes(h.rnd, 64 * KiB) }, ...randomOps(h.rnd, disk.size, 20)]));
      const saved = path.join(dir, 'delta5');
      copyDir(h.store.incomingDir(5), saved);
      assert.equal(await h.store.applyDelta(d.point, d.files), 'applied');
      h.recordApplied(d.point, d.next);
      h.store.close();
      const after = path.join(dir, 'after');
      copyDir(root, after);

      // build the state a crash leaves behind: the manifest before the point, `applying`
      // set, the delta in incoming/
      fs.rmSync(root, { recursive: true });
      copyDir(before, root);
      const m = readManifest(root);
      writeManifest(root, { ...m, applying: { point: d.point, stage } });
      copyDir(saved, h.store.incomingDir(5));
      if (stage === 'received') {
        // an undo file half written before the crash
        fs.mkdirSync(path.dirname(h.store.undoPath(5, 'sda')), { recursive: true });
        fs.writeFileSync(h.store.undoPath(5, 'sda'), Buffer.alloc(1000, 0xee));
      } else {
        // undo files complete, images half written (sda cut inside, sdb untouched)
        copyDir(path.join(after, 'undo', '000000000005'), path.join(root, 'undo', '000000000005'));
        halfWrite(h.store.imagePath('sda'), fs.readFileSync(path.join(after, 'disks', 'sda.img')), 1_034_567);
        assert.ok(!fs.readFileSync(h.store.imagePath('sda')).equals(h.models.get(4)![0]), 'image half written');
      }

      await h.open();
      try {
        assert.deepEqual(
          h.store.points().map((p) => p.seq),
          [1, 2, 3, 4, 5],
        );
        assert.deepEqual(h.store.latestPoint(), d.point);
        assert.equal(readManifest(root).applying, undefined);
        assert.equal(fs.existsSync(h.store.incomingDir(5)), false);
        await h.checkAllPoints(`recovered from ${stage}`);
        // the chain goes on
        await h.applyNext();
        await h.checkAllPoints('after the next delta');
      } finally {
        h.store.close();
      }
    }),
  );
}

test(
  'a received delta lost with a crash during its apply is dropped and the images rolled back',
  withDir(async (dir) => {
    const root = path.join(dir, 'store');
    const h = await storeWithPoints(root, 810, 3);
    const before = path.join(dir, 'before');
    copyDir(root, before);
    await h.open();
    const d = h.makeDelta();
    const saved = path.join(dir, 'delta4');
    copyDir(h.store.incomingDir(4), saved);
    assert.equal(await h.store.applyDelta(d.point, d.files), 'applied');
    h.store.close();
    const after = path.join(dir, 'after');
    copyDir(root, after);

    fs.rmSync(root, { recursive: true });
    copyDir(before, root);
    writeManifest(root, { ...readManifest(root), applying: { point: d.point, stage: 'undo-written' } });
    copyDir(saved, h.store.incomingDir(4));
    copyDir(path.join(after, 'undo', '000000000004'), path.join(root, 'undo', '000000000004'));
    for (const disk of DISKS) halfWrite(h.store.imagePath(disk.name), fs.readFileSync(path.join(after, 'disks', `${disk.name}.img`)), disk.size / 2);
    // the received log is not synced before the undo is: a host crash can leave it torn
    const f = path.join(h.store.incomingDir(4), 'sdb.osrlog');
    const bytes = fs.readFileSync(f);
    fs.writeFileSync(f, bytes.subarray(0, Math.floor(bytes.length / 2)));

    // open rolls the images back to point 3 and says so
    await h.open();
    try {
      assert.equal(h.store.recoveryNotes.length, 1);
      assert.match(h.store.recoveryNotes[0], /delta 4 .* rolled back to point 3/);
      assert.deepEqual(
        h.store.points().map((p) => p.seq),
        [1, 2, 3],
      );
      await h.checkAllPoints('rolled back');
      assert.equal(fs.existsSync(path.join(root, 'undo', '000000000004')), false);
      // the sender ships delta 4 again
      h.nextSeq = 4;
      await h.applyNext();
      await h.checkAllPoints('delta 4 again');
    } finally {
      h.store.close();
    }
  }),
);

/**
 * Receive a delta as the replication server does: into the last delta's log file where the
 * store kept one (reuseLog), overwritten in place from the start, verified as it arrives.
 */
function receiveInPlace(h: Harness, d: ReturnType<Harness['makeDelta']>): { files: ReceivedDeltaFile[]; reused: string[] } {
  const reused: string[] = [];
  const files = d.files.map((f) => {
    const bytes = fs.readFileSync(f.file);
    fs.rmSync(f.file);
    if (h.store.reuseLog(f.diskName, f.file)) reused.push(f.diskName);
    const fd = fs.openSync(f.file, fs.existsSync(f.file) ? 'r+' : 'w');
    const verifier = new LogStreamVerifier(f.file);
    for (let at = 0; at < bytes.length; at += 7000) {
      const part = bytes.subarray(at, Math.min(bytes.length, at + 7000));
      fs.writeSync(fd, part, 0, part.length, at);
      verifier.push(at, [part]);
    }
    fs.closeSync(fd);
    return { ...f, verified: verifier.result() };
  });
  return { files, reused };
}

test(
  'a delta is received into the last delta\'s log file, overwritten in place: applied only as verified, and after a crash only the log that was verified',
  withDir(async (dir) => {
    const root = path.join(dir, 'store');
    const h = await storeWithPoints(root, 812, 2);
    await h.open();
    const spare = (disk: string) => path.join(root, 'spare', `${disk}.osrlog`);
    try {
      // a large delta: its logs are kept for the next one
      await h.applyNext(DISKS.map((d) => randomOps(h.rnd, d.size, 80)));
      const large = DISKS.map((d) => fs.statSync(spare(d.name)).size);
      assert.ok(large.every((n) => n > 100 * KiB), 'the applied logs were kept');

      // the next, smaller delta overwrites them in place: an older log's bytes follow its own
      const small = h.makeDelta(DISKS.map((d) => randomOps(h.rnd, d.size, 4)));
      const got = receiveInPlace(h, small);
      assert.deepEqual(got.reused, ['sda', 'sdb']);
      for (const [i, f] of got.files.entries()) assert.equal(fs.statSync(f.file).size, large[i], 'the reused file keeps its length (and its pages)');
      // without the scan made as it arrived, a reused file is refused (a scan of the file would read the older bytes)
      await assertCode(
        h.store.applyDelta(
          small.point,
          got.files.map(({ verified: _, ...f }) => f),
        ),
        'CHANGE_LOG_CORRUPT',
      );
      assert.equal(await h.store.applyDelta(small.point, got.files), 'applied');
      h.recordApplied(small.point, small.next);
      await h.checkAllPoints('after a delta received in place');
      assert.equal(fs.statSync(spare('sda')).size, large[0], 'the kept file is still the large one');

      // a crash after the undo of the next in-place delta, twice over: once with the log
      // intact (recovery reads it up to its recorded length), once with a power cut having
      // left another valid log of the same delta in the file (recovery must not apply it)
      for (const lost of [false, true]) {
        h.store.close();
        const before = path.join(dir, `before-${lost}`);
        copyDir(root, before);
        await h.open();
        const ops = DISKS.map((disk) => randomOps(h.rnd, disk.size, 6));
        const d = h.makeDelta(ops);
        const r = receiveInPlace(h, d);
        const saved = path.join(dir, `delta-${lost}`);
        copyDir(h.store.incomingDir(d.point.seq), saved);
        const logs = Object.fromEntries(DISKS.map((disk) => {
          const scan = scanLogFile(path.join(saved, `${disk.name}.osrlog`), r.files.find((f) => f.diskName === disk.name)!.verified!.fileBytes);
          return [disk.name, { chain: scan.close!.chain.toString('hex'), bytes: scan.validBytes }];
        }));
        assert.equal(await h.store.applyDelta(d.point, r.files), 'applied');
        h.store.close();
        const after = path.join(dir, `after-${lost}`);
        copyDir(root, after);

        fs.rmSync(root, { recursive: true });
        copyDir(before, root);
        writeManifest(root, { ...readManifest(root), applying: { point: d.point, stage: 'undo-written', logs } });
        copyDir(saved, h.store.incomingDir(d.point.seq));
        copyDir(path.join(after, 'undo', `${String(d.point.seq).padStart(12, '0')}`), path.join(root, 'undo', `${String(d.point.seq).padStart(12, '0')}`));
        for (const disk of DISKS) halfWrite(h.store.imagePath(disk.name), fs.readFileSync(path.join(after, 'disks', `${disk.name}.img`)), disk.size / 2);
        if (lost) {
          // a valid log of the same delta, as long, with other bytes, where this delta's writes were lost
          const other = path.join(h.store.incomingDir(d.point.seq), 'sdb.osrlog');
          const tail = fs.readFileSync(other).subarray(logs.sdb!.bytes);
          writeDeltaLog(other, d.point.seq, DISKS[1], ops[1]!.map((o) => (o.kind === 'write' ? { ...o, data: randomBytes(h.rnd, o.data.length) } : o)));
          assert.equal(fs.statSync(other).size, logs.sdb!.bytes);
          fs.appendFileSync(other, tail);
        }
        await h.open();
        if (lost) {
          assert.match(h.store.recoveryNotes.join('\n'), new RegExp(`delta ${d.point.seq} .* rolled back to point ${d.point.seq - 1}`));
          await h.checkAllPoints('rolled back from a log that was not the one verified');
        } else {
          assert.deepEqual(h.store.recoveryNotes, []);
          h.recordApplied(d.point, d.next);
          await h.checkAllPoints('recovered from a reused log');
        }
      }
      // and the chain goes on
      await h.applyNext();
      await h.checkAllPoints('the next delta');
    } finally {
      h.store.close();
    }
  }),
);

test(
  'a crashed apply recovered on open does not prune a point that has an overlay',
  withDir(async (dir) => {
    const root = path.join(dir, 'store');
    const h = new Harness(root, 811, { hours: 24, maxPoints: 3 });
    h.consistency = 'crash-consistent';
    await h.open();
    await h.initialCopy();
    for (let k = 0; k < 3; k++) await h.applyNext();
    assert.deepEqual(
      h.store.points().map((p) => p.seq),
      [1, 2, 3],
    );
    const o = h.store.openOverlay(2);
    const mOv = h.models.get(2)!.map((b) => Buffer.from(b));
    await writeOverlay(h, o, mOv, 10);
    const oid = o.id;
    const d = h.makeDelta();
    h.store.close();
    // crash right after `applying: received` was recorded
    writeManifest(root, { ...readManifest(root), applying: { point: d.point, stage: 'received' } });
    await h.open();
    try {
      h.models.set(4, d.next);
      h.current = d.next;
      h.nextSeq = 5;
      const seqs = h.store.points().map((p) => p.seq);
      assert.ok(seqs.includes(2), `point 2 with an open overlay is kept (points ${seqs.join(',')})`);
      assert.equal(seqs.at(-1), 4);
      assert.equal(seqs.length, 3);
      const ov = h.store.getOverlay(oid);
      for (const [i, b] of (await h.overlayBytes(ov)).entries()) assertBytes(b, mOv[i], `overlay on 2, disk ${i}`);
      await h.checkAllPoints('recovered with overlay');
    } finally {
      h.store.close();
    }
  }),
);

test(
  'a commit interrupted by a crash completes on open',
  withDir(async (dir) => {
    const root = path.join(dir, 'store');
    const h = await storeWithPoints(root, 909, 5);
    await h.open();
    const o = h.store.openOverlay(2);
    const target = h.models.get(2)!.map((b) => Buffer.from(b));
    await writeOverlay(h, o, target, 40);
    const oid = o.id;
    h.store.openOverlay(4); // another overlay, which the commit removes
    h.store.close();
    // the crash: `commit` recorded, images half way between the latest point and the target
    writeManifest(root, { ...readManifest(root), commit: { overlayId: oid, pointSeq: 2 } });
    halfWrite(h.store.imagePath('sda'), target[0], DISKS[0].size - 300_000);
    halfWrite(h.store.imagePath('sdb'), target[1], 100_000);
    await h.open();
    try {
      assert.equal(h.store.isCommitted, true);
      assert.deepEqual(
        h.store.points().map((p) => p.seq),
        [2],
      );
      for (const [i, d] of DISKS.entries()) assertBytes(fs.readFileSync(h.store.imagePath(d.name)), target[i], `image ${d.name}`);
      assert.equal(readManifest(root).commit, undefined);
      assert.deepEqual(h.store.listOverlays(), []);
      assert.equal(fs.existsSync(path.join(root, 'overlays')), false);
      assert.deepEqual(fs.readdirSync(path.join(root, 'undo')), []);
    } finally {
      h.store.close();
    }
  }),
);

test(
  'a crash in the middle of merging a pruned point leaves every listed point intact',
  withDir(async (dir) => {
    const root = path.join(dir, 'store');
    for (const moment of ['old undo moved aside', 'merged undo installed'] as const) {
      fs.rmSync(root, { recursive: true, force: true });
      const h = await storeWithPoints(root, moment === 'old undo moved aside' ? 1001 : 1002, 5, 'crash-consistent');
      await h.open();
      const manifestBefore = readManifest(root);
      const undoBefore = path.join(dir, 'undo-before');
      fs.rmSync(undoBefore, { recursive: true, force: true });
      copyDir(path.join(root, 'undo'), undoBefore);
      h.store.setRetention({ hours: 24, maxPoints: 4 });
      const dropped = await h.store.prune();
      assert.equal(dropped.length, 1);
      const p = dropped[0].seq;
      assert.ok(p > 1 && p < 5, 'a middle point was merged away');
      const x = manifestBefore.points[manifestBefore.points.findIndex((q) => q.seq === p) + 1].seq;
      h.store.close();
      const pad = (n: number) => String(n).padStart(12, '0');
      // put back what the manifest before the merge refers to, and the merge's leftovers
      const undo = path.join(root, 'undo');
      writeManifest(root, { ...manifestBefore, retention: { hours: 24, maxPoints: 100 } });
      copyDir(path.join(undoBefore, pad(p)), path.join(undo, pad(p)));
      if (moment === 'old undo moved aside') {
        fs.renameSync(path.join(undo, pad(x)), path.join(undo, `${pad(x)}.merge-${pad(p)}`));
      }
      copyDir(path.join(undoBefore, pad(x)), path.join(undo, `${pad(x)}.old-${pad(p)}`));
      h.retention = { hours: 24, maxPoints: 100 };
      await h.open();
      try {
        assert.deepEqual(
          h.store.points().map((q) => q.seq),
          [1, 2, 3, 4, 5],
        );
        await h.checkAllPoints(`crash with ${moment}`);
        assert.deepEqual(
          fs.readdirSync(undo).sort(),
          [2, 3, 4, 5].map(pad),
        );
      } finally {
        h.store.close();
      }
    }
  }),
);

test(
  'a resync stages differing blocks, survives a restart mid-way, and ends in one point after a gap; older points stay intact',
  withDir(async (dir) => {
    const h = new Harness(path.join(dir, 'store'), 909, { hours: 24, maxPoints: 100 });
    const store = await h.open();
    try {
      await h.initialCopy();
      for (let k = 0; k < 3; k++) await h.applyNext();
      const before = store.points().map((p) => p.seq);
      // the primary's disks diverged (untrusted logs 4..6 were dropped); it resyncs into point 7
      const source = h.current.map((b) => applyOps(b, randomOps(h.rnd, b.length, 40)));
      const BS = 4 * KiB;
      assertThrowsCode(() => store.beginResync('r1', 3, BS), 'INVALID_ARGUMENT');
      assertThrowsCode(() => store.beginResync('r1', 7, 3000), 'INVALID_ARGUMENT');
      let state = store.beginResync('r1', 7, BS);
      const diffs = async (i: number, from: number, to: number): Promise<number[]> => {
        const theirs = await h.store.blockHashes(DISKS[i].name, from, to - from, BS);
        const out: number[] = [];
        for (let b = 0; b < (to - from) / BS; b++) {
          const mine = source[i].subarray(from + b * BS, from + (b + 1) * BS);
          if (!theirs.subarray(b * 16, b * 16 + 16).equals(blockDigests(mine, BS))) out.push(from + b * BS);
        }
        return out;
      };
      let staged = 0;
      const stageRange = async (i: number, from: number, to: number) => {
        for (const off of await diffs(i, from, to)) {
          const block = source[i].subarray(off, off + BS);
          if (block.every((x) => x === 0)) h.store.stageResyncZero(DISKS[i].name, off, BS);
          else h.store.stageResync(DISKS[i].name, off, [block]);
          staged += BS;
        }
      };
      // half of disk sda, checkpointed; then more staged but not checkpointed, and a crash
      const half = DISKS[0].size / 2;
      await stageRange(0, 0, half);
      await store.checkpointResync('sda', half, false);
      await stageRange(0, half, half + 64 * KiB);
      store.close();
      await h.open();
      assert.equal(h.store.resync?.id, 'r1');
      assert.equal(h.store.resync?.disks.sda.offset, half);
      // the points are untouched by a resync in progress
      await h.checkAllPoints('mid-resync');
      await assertCode(() => h.store.applyDelta({ seq: 7, timeMs: h.clock, consistency: 'crash-consistent', deltaBytes: 0 }, []), 'INVALID_STATE');
      // resuming with another id starts over; the same id continues from the checkpoint
      state = h.store.beginResync('r1', 7, BS);
      assert.equal(state.disks.sda.offset, half);
      await stageRange(0, half, DISKS[0].size);
      await h.store.checkpointResync('sda', DISKS[0].size, true);
      await stageRange(1, 0, DISKS[1].size);
      await h.store.checkpointResync('sdb', DISKS[1].size, true);
      assert.ok(staged > 0 && staged < DISKS[0].size, `only differing blocks were staged (${staged} bytes)`);
      // writes made while the resync ran come in the primary's log of point 7, after the staged blocks
      const during = DISKS.map((d) => randomOps(h.rnd, d.size, 10));
      h.current = source;
      const { point, files, next } = h.makeDelta(during, 7);
      assert.equal(await h.store.applyDelta(point, files), 'applied');
      h.recordApplied(point, next);
      assert.deepEqual(h.store.points().map((p) => p.seq), [...before, 7]);
      assert.equal(h.store.resync, undefined);
      assert.equal(fs.existsSync(path.join(h.root, 'resync')), false, 'staged logs removed');
      await h.checkAllPoints('after the resync');
      // and the chain goes on from 7
      await h.applyNext();
      await h.checkAllPoints('after the next delta');
    } finally {
      h.store.close();
    }
  }),
);
