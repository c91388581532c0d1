import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ChangeLogWriter, LOG_HEADER_BYTES, MAX_RECORD_DATA, RecordType, diskKeyOf, scanLogFile } from '../../src/agent/tracking/change-log.js';
import { VmChangeTracker, currentBootId, type TrackingState } from '../../src/agent/tracking/change-tracker.js';
import { LabDisk } from '../../src/agent/hosts/lab-disk.js';
import { prng, randomBytes, withDir } from '../support/unit.js';





interface DiskSpec {
  id: string;
  name: string;
  size: number;
  image: string;
}

type Op = { kind: 'write'; offset: number; data: Buffer } | { kind: 'zero'; offset: number; length: number };

/** A lab VM as the host runs it: images, a tracker, LabDisks writing through it, and a model of each disk. */
class TestVm {
  tracker!: VmChangeTracker;
  disks: LabDisk[] = [];
  recovered: { recovered: boolean; tornBytes: number } | undefined;
  clock = 1_700_000_000_000;

  constructor(
    readonly dir: string,
    readonly specs: DiskSpec[],
    readonly models: Buffer[],
  ) {}

  static create(dir: string, sizes: number[]): TestVm {
    const storage = path.join(dir, 'storage');
    fs.mkdirSync(storage, { recursive: true });
    const specs = sizes.map((size, i) => ({ id: `disk-id-${i}`, name: `disk${i}`, size, image: path.join(storage, `disk${i}.img`) }));
    for (const s of specs) LabDisk.createImage(s.image, s.size);
    const vm = new TestVm(path.join(dir, 'vm'), specs, sizes.map((s) => Buffer.alloc(s)));
    fs.mkdirSync(vm.dir, { recursive: true });
    vm.open();
    return vm;
  }

  /** What the host does at start: open images, recover tracking. */
  open(): void {
    this.tracker = new VmChangeTracker(this.dir, this.specs, () => this.clock);
    this.disks = this.specs.map((d, i) => new LabDisk(d.id, d.name, d.image, d.size, this.tracker, i));
    this.recovered = this.tracker.recover(this.disks.map((d) => d.imageFd));
  }

  /** The agent process dies: no clean-stop record, files just closed. */
  crash(): void {
    for (const d of this.tracker.disks) d.active?.closeFile();
    for (const d of this.disks) d.close();
    this.disks = [];
  }

  closeClean(): void {
    for (const d of this.disks) fs.fdatasyncSync(d.imageFd);
    if (this.tracker.enabled) this.tracker.markCleanShutdown(this.disks.map((d) => d.imageFd));
    for (const d of this.disks) d.close();
    this.disks = [];
  }

  async apply(disk: number, op: Op): Promise<void> {
    if (op.kind === 'write') {
      await this.disks[disk].write(op.offset, op.data, { fua: false });
      op.data.copy(this.models[disk], op.offset);
    } else {
      await this.disks[disk].writeZeroes(op.offset, op.length, { fua: false, mayTrim: true });
      this.models[disk].fill(0, op.offset, op.offset + op.length);
    }
  }

  async randomOps(rnd: () => number, n: number): Promise<Op[][]> {
    const out: Op[][] = this.specs.map(() => []);
    for (let i = 0; i < n; i++) {
      const disk = Math.floor(rnd() * this.specs.length);
      const size = this.specs[disk].size;
      const len = 4096 * (1 + Math.floor(rnd() * 16));
      const offset = 4096 * Math.floor(rnd() * ((size - len) / 4096 + 1));
      const op: Op = rnd() < 0.8 ? { kind: 'write', offset, data: randomBytes(rnd, len) } : { kind: 'zero', offset, length: len };
      await this.apply(disk, op);
      out[disk].push(op);
    }
    return out;
  }

  image(disk: number): Buffer {
    const b = fs.readFileSync(this.specs[disk].image);
    assert.equal(b.length, this.specs[disk].size);
    return b;
  }

  logFile(disk: number, seq: number): string {
    return path.join(this.dir, 'logs', this.specs[disk].name, `${String(seq).padStart(12, '0')}.osrlog`);
  }

  stateFile(): string {
    return path.join(this.dir, 'tracking.json');
  }
  readState(): TrackingState {
    return JSON.parse(fs.readFileSync(this.stateFile(), 'utf8')) as TrackingState;
  }
  editState(change: (s: TrackingState) => void): void {
    const s = this.readState();
    change(s);
    fs.writeFileSync(this.stateFile(), JSON.stringify(s));
  }
}

/** The records of a log as ops (data read back from the file). */
function logOps(file: string): { ops: Op[]; closed: boolean; seq: number; diskKey: Buffer } {
  const scan = scanLogFile(file);
  const bytes = fs.readFileSync(file);
  const ops: Op[] = scan.records.map((r) =>
    r.type === RecordType.Write
      ? { kind: 'write', offset: r.offset, data: Buffer.from(bytes.subarray(r.dataPos, r.dataPos + r.length)) }
      : { kind: 'zero', offset: r.offset, length: r.length },
  );
  return { ops, closed: scan.close !== undefined, seq: scan.header.seq, diskKey: scan.header.diskKey };
}

function replay(base: Buffer, ops: Op[]): Buffer {
  const b = Buffer.from(base);
  for (const op of ops) {
    if (op.kind === 'write') op.data.copy(b, op.offset);
    else b.fill(0, op.offset, op.offset + op.length);
  }
  return b;
}

function assertSameOps(got: Op[], want: Op[], what: string): void {
  assert.equal(got.length, want.length, `${what}: record count`);
  got.forEach((g, i) => {
    const w = want[i];
    assert.equal(g.kind, w.kind, `${what}: kind of record ${i}`);
    assert.equal(g.offset, w.offset, `${what}: offset of record ${i}`);
    if (g.kind === 'write' && w.kind === 'write') assert.ok(g.data.equals(w.data), `${what}: data of record ${i}`);
    if (g.kind === 'zero' && w.kind === 'zero') assert.equal(g.length, w.length, `${what}: length of record ${i}`);
  });
}

const MiB = 1024 * 1024;

test(
  'start, writes, swap: each closed log holds exactly the writes of its interval',
  withDir(async (dir) => {
    const rnd = prng(1);
    const vm = TestVm.create(dir, [4 * MiB, 2 * MiB]);
    try {
      assert.equal(vm.tracker.enabled, false);
      // writes before tracking starts are not logged (the initial copy carries them)
      await vm.randomOps(rnd, 10);
      assert.equal(vm.tracker.start(), 1);
      assert.equal(vm.tracker.enabled, true);
      assert.equal(vm.tracker.activeSeq, 1);
      assert.equal(vm.tracker.start(), 1, 'start is idempotent while enabled');
      const snapshots: Buffer[][] = [vm.models.map((m) => Buffer.from(m))];
      const perInterval: Op[][][] = [];
      for (let cycle = 0; cycle < 4; cycle++) {
        perInterval.push(await vm.randomOps(rnd, 40));
        vm.clock += 60_000;
        const closed = vm.tracker.swap(cycle === 2 ? 'app-consistent' : 'crash-consistent');
        assert.equal(closed, cycle + 1);
        assert.equal(vm.tracker.activeSeq, cycle + 2);
        snapshots.push(vm.models.map((m) => Buffer.from(m)));
      }
      // what is in the active log now
      const tail = await vm.randomOps(rnd, 15);

      for (let seq = 1; seq <= 4; seq++) {
        for (let d = 0; d < 2; d++) {
          const log = logOps(vm.logFile(d, seq));
          assert.equal(log.closed, true);
          assert.equal(log.seq, seq);
          assert.deepEqual(log.diskKey, diskKeyOf(`disk-id-${d}`));
          assertSameOps(log.ops, perInterval[seq - 1][d], `log ${seq} of disk ${d}`);
          assert.ok(replay(snapshots[seq - 1][d], log.ops).equals(snapshots[seq][d]), `log ${seq} of disk ${d} turns point ${seq - 1} into ${seq}`);
        }
        const meta = vm.tracker.pointMetaOf(seq, -1);
        assert.equal(meta.timeMs, 1_700_000_000_000 + seq * 60_000);
        assert.equal(meta.consistency, seq === 3 ? 'app-consistent' : 'crash-consistent');
      }
      for (let d = 0; d < 2; d++) {
        const log = logOps(vm.logFile(d, 5));
        assert.equal(log.closed, false);
        assertSameOps(log.ops, tail[d], `active log of disk ${d}`);
        assert.ok(replay(snapshots[4][d], log.ops).equals(vm.models[d]));
        assert.ok(vm.image(d).equals(vm.models[d]), `image of disk ${d}`);
      }

      // closedLogs: every closed seq, one entry per disk; never the active log
      const all = vm.tracker.closedDeltas(0);
      assert.deepEqual([...all.keys()].sort(), [1, 2, 3, 4]);
      for (const [seq, list] of all) {
        assert.deepEqual(
          list.map((l) => l.file).sort(),
          [vm.logFile(0, seq), vm.logFile(1, seq)].sort(),
        );
        for (const l of list) {
          assert.equal(l.seq, seq);
          assert.equal(l.bytes, fs.statSync(l.file).size);
          assert.equal(l.file, vm.logFile(l.disk === 'disk0' ? 0 : 1, seq), `disk of ${l.file}`);
        }
      }
      assert.deepEqual([...vm.tracker.closedDeltas(2).keys()].sort(), [3, 4]);

      // pendingBytes: the closed logs after the seq plus the data in the active logs (not their headers)
      const size = (d: number, seq: number) => fs.statSync(vm.logFile(d, seq)).size;
      const active = size(0, 5) - LOG_HEADER_BYTES + size(1, 5) - LOG_HEADER_BYTES;
      assert.equal(vm.tracker.pendingBytes(0), [1, 2, 3, 4].reduce((n, s) => n + size(0, s) + size(1, s), 0) + active);
      assert.equal(vm.tracker.pendingBytes(3), size(0, 4) + size(1, 4) + active);
      assert.equal(vm.tracker.pendingBytes(4), active);

      // releaseThrough deletes the shipped logs and their point metadata, never the active log
      vm.tracker.releaseThrough(2);
      for (let d = 0; d < 2; d++) {
        assert.equal(fs.existsSync(vm.logFile(d, 1)), false);
        assert.equal(fs.existsSync(vm.logFile(d, 2)), false);
        assert.equal(fs.existsSync(vm.logFile(d, 3)), true);
      }
      assert.deepEqual([...vm.tracker.closedDeltas(0).keys()].sort(), [3, 4]);
      assert.deepEqual(vm.tracker.pointMetaOf(2, -7), { timeMs: -7, consistency: 'crash-consistent' });
      assert.equal(vm.tracker.pointMetaOf(3, -7).consistency, 'app-consistent');
      assert.deepEqual(Object.keys(vm.readState().pointMeta ?? {}).sort(), ['3', '4']);
      vm.tracker.releaseThrough(100);
      for (let d = 0; d < 2; d++) {
        assert.equal(fs.existsSync(vm.logFile(d, 4)), false);
        assert.equal(fs.existsSync(vm.logFile(d, 5)), true, 'the active log is never released');
      }
      assert.equal(vm.tracker.pendingBytes(0), vm.tracker.disks[0].active!.bytes - LOG_HEADER_BYTES + vm.tracker.disks[1].active!.bytes - LOG_HEADER_BYTES);

      // the active log keeps working after the release
      const more = await vm.randomOps(rnd, 5);
      vm.tracker.swap();
      for (let d = 0; d < 2; d++) assertSameOps(logOps(vm.logFile(d, 5)).ops, [...tail[d], ...more[d]], `log 5 of disk ${d}`);
    } finally {
      vm.closeClean();
    }
  }),
);

test(
  'a group cut\'s swap: prepared (synced) first, made without a sync, kept by a crash; a save between the two makes it save as any swap; a dropped one leaves nothing',
  withDir(async (dir) => {
    const rnd = prng(12);
    const vm = TestVm.create(dir, [2 * MiB, 1 * MiB]);
    vm.tracker.start();
    const before = await vm.randomOps(rnd, 20);
    const p = await vm.tracker.prepareHeldSwap();
    assert.equal(p.nextSeq, 2);
    assert.equal(vm.readState().nextSeq, 2, 'preparing changes nothing');
    const { seq, durable } = vm.tracker.swapPrepared(p, 'crash-consistent', 'cut-a');
    assert.equal(seq, 1);
    // in place at once (an agent restarted now reads it), with the point's facts once durable
    assert.equal(vm.readState().nextSeq, 3);
    await durable;
    assert.deepEqual(vm.readState().pointMeta?.['1'], { timeMs: vm.clock, consistency: 'crash-consistent', cut: 'cut-a' });
    // prepared, then a resync marked (a save) before the swap: the swap saves the state as it is
    const q = await vm.tracker.prepareHeldSwap();
    vm.tracker.markResyncRequired('a test');
    vm.tracker.swapPrepared(q, 'crash-consistent', 'cut-b');
    assert.equal(vm.readState().resyncRequired?.reason, 'a test', 'the prepared state did not undo the resync mark');
    assert.equal(vm.readState().pointMeta?.['2']?.cut, 'cut-b');
    // prepared and dropped: nothing changes, nothing is left
    const r = await vm.tracker.prepareHeldSwap();
    vm.tracker.dropPrepared(r);
    assert.equal(vm.tracker.swap(), 3);
    await new Promise((res) => setTimeout(res, 50));
    assert.equal(vm.readState().nextSeq, 5);
    assert.equal(fs.readdirSync(vm.dir).filter((f) => f.includes('.tmp-')).length, 0, 'no temporary state file left');
    // the agent dies: the closed deltas and their cuts are there after recovery
    vm.crash();
    vm.open();
    try {
      assert.deepEqual([...vm.tracker.closedDeltas(0).keys()].sort(), [1, 2, 3]);
      assert.equal(vm.tracker.pointMetaOf(1, -1).cut, 'cut-a');
      assertSameOps(logOps(vm.logFile(0, 1)).ops, before[0], 'log 1 of disk 0');
    } finally {
      vm.closeClean();
    }
  }),
);

test(
  'a clean stop and restart keeps tracking in the same log',
  withDir(async (dir) => {
    const rnd = prng(2);
    const vm = TestVm.create(dir, [2 * MiB]);
    vm.tracker.start();
    const first = await vm.randomOps(rnd, 10);
    vm.closeClean();
    assert.equal(vm.readState().cleanShutdown, true);
    vm.open();
    try {
      assert.deepEqual(vm.recovered, { recovered: false, tornBytes: 0 });
      assert.equal(vm.tracker.resyncRequired, undefined);
      assert.equal(vm.readState().cleanShutdown, false, 'running again: not clean until the next stop');
      const second = await vm.randomOps(rnd, 10);
      assert.equal(vm.tracker.swap(), 1);
      assertSameOps(logOps(vm.logFile(0, 1)).ops, [...first[0], ...second[0]], 'log 1');
      assert.ok(replay(Buffer.alloc(2 * MiB), logOps(vm.logFile(0, 1)).ops).equals(vm.models[0]));
    } finally {
      vm.closeClean();
    }
  }),
);

test(
  'a disk changed outside replication while the agent was stopped makes a resync necessary',
  withDir(async (dir) => {
    const rnd = prng(21);
    const vm = TestVm.create(dir, [2 * MiB, 2 * MiB]);
    vm.tracker.start();
    await vm.randomOps(rnd, 5);
    vm.closeClean();
    // another tool writes into the second disk's image while no agent runs
    const fd = fs.openSync(vm.specs[1].image, 'r+');
    fs.writeSync(fd, Buffer.alloc(4096, 0xab), 0, 4096, 64 * 1024);
    fs.closeSync(fd);
    vm.open();
    try {
      const required = vm.tracker.resyncRequired;
      assert.ok(required, 'resync required');
      assert.match(required.reason, /disk disk1 was changed outside replication/);
      assert.equal(vm.readState().resyncRequired?.reason, required.reason, 'the fact is durable');
    } finally {
      vm.closeClean();
    }
    // an untouched clean stop and start does not
    const other = TestVm.create(path.join(dir, 'other'), [1 * MiB]);
    other.tracker.start();
    await other.randomOps(rnd, 5);
    other.closeClean();
    other.open();
    try {
      assert.equal(other.tracker.resyncRequired, undefined);
    } finally {
      other.closeClean();
    }
  }),
);

test(
  'an unclean stop on the same boot: torn tail cut, last write redone, tracking goes on',
  withDir(async (dir) => {
    const rnd = prng(3);
    const vm = TestVm.create(dir, [4 * MiB, 1 * MiB]);
    vm.tracker.start();
    const before = await vm.randomOps(rnd, 20);
    // the crash hits between the log append and the image write of one write on disk 0
    const lost: Op = { kind: 'write', offset: 8192, data: randomBytes(rnd, 12288) };
    vm.tracker.appendWrite(0, lost.offset, lost.data);
    lost.data.copy(vm.models[0], lost.offset);
    // and between the log append and the image write of a zero on disk 1
    const lostZero: Op = { kind: 'zero', offset: 0, length: 65536 };
    await vm.apply(1, { kind: 'write', offset: 0, data: Buffer.alloc(65536, 0x5a) });
    vm.tracker.appendZero(1, lostZero.offset, lostZero.length);
    vm.models[1].fill(0, 0, 65536);
    vm.crash();
    // a record cut short at the end of disk 0's log (the append itself was torn):
    // append a real one, then cut it to its header and 30 bytes of data
    const f0 = vm.logFile(0, 1);
    const whole = fs.statSync(f0).size;
    const w = ChangeLogWriter.reopen(f0, scanLogFile(f0));
    w.appendWrite(0, randomBytes(rnd, 4096));
    w.closeFile();
    fs.truncateSync(f0, whole + 78);
    assert.equal(vm.readState().cleanShutdown, false);
    assert.equal(vm.readState().bootId, currentBootId());
    assert.ok(!vm.image(0).equals(vm.models[0]), 'the image lacks the lost write before recovery');

    vm.open();
    try {
      assert.deepEqual(vm.recovered, { recovered: true, tornBytes: 78 });
      assert.equal(vm.tracker.resyncRequired, undefined);
      for (let d = 0; d < 2; d++) assert.ok(vm.image(d).equals(vm.models[d]), `image of disk ${d} after recovery`);
      assert.equal(scanLogFile(vm.logFile(0, 1)).tornBytes, 0, 'torn tail cut');
      // tracking continues in the recovered logs
      const after = await vm.randomOps(rnd, 20);
      assert.equal(vm.tracker.swap(), 1);
      const log0 = logOps(vm.logFile(0, 1));
      assert.equal(log0.closed, true);
      assertSameOps(log0.ops, [...before[0], lost, ...after[0]], 'log 1 of disk 0');
      assertSameOps(logOps(vm.logFile(1, 1)).ops, [...before[1], { kind: 'write', offset: 0, data: Buffer.alloc(65536, 0x5a) }, lostZero, ...after[1]], 'log 1 of disk 1');
      for (let d = 0; d < 2; d++) assert.ok(replay(Buffer.alloc(vm.specs[d].size), logOps(vm.logFile(d, 1)).ops).equals(vm.models[d]));
      for (let d = 0; d < 2; d++) assert.ok(vm.image(d).equals(vm.models[d]));
    } finally {
      vm.closeClean();
    }
  }),
);

test(
  'an unclean stop recorded in tracking.json after a clean one is recovered the same way',
  withDir(async (dir) => {
    const rnd = prng(4);
    const vm = TestVm.create(dir, [2 * MiB]);
    vm.tracker.start();
    await vm.randomOps(rnd, 5);
    vm.closeClean();
    // the state says clean, then the agent ran again and died: edit the file as a run would leave it
    vm.editState((s) => {
      s.cleanShutdown = false;
    });
    // a write that reached the log (reopened by hand) but not the image
    const scan = scanLogFile(vm.logFile(0, 1));
    const w = ChangeLogWriter.reopen(vm.logFile(0, 1), scan);
    const data = randomBytes(rnd, 4096 * 3);
    w.appendWrite(MiB, data);
    w.closeFile();
    data.copy(vm.models[0], MiB);
    vm.open();
    try {
      assert.equal(vm.recovered?.recovered, true);
      assert.equal(vm.tracker.resyncRequired, undefined);
      assert.ok(vm.image(0).equals(vm.models[0]));
    } finally {
      vm.closeClean();
    }
  }),
);

test(
  'a write larger than one record lost between log and image is redone whole',
  withDir(async (dir) => {
    const rnd = prng(5);
    const size = MAX_RECORD_DATA + 8 * MiB;
    const vm = TestVm.create(dir, [size]);
    vm.tracker.start();
    await vm.apply(0, { kind: 'write', offset: 0, data: randomBytes(rnd, 4096) });
    // one guest write of MAX_RECORD_DATA + 1 MiB: two records in the log, none in the image
    const big = Buffer.alloc(MAX_RECORD_DATA + MiB, 0x77);
    randomBytes(rnd, 4096).copy(big, 0);
    randomBytes(rnd, 4096).copy(big, big.length - 4096);
    vm.tracker.appendWrite(0, 4096, big);
    big.copy(vm.models[0], 4096);
    vm.crash();
    assert.equal(scanLogFile(vm.logFile(0, 1)).records.length, 3);
    vm.open();
    try {
      assert.equal(vm.recovered?.recovered, true);
      assert.ok(vm.image(0).equals(vm.models[0]), 'every part of the split write reaches the image');
    } finally {
      vm.closeClean();
    }
  }),
);

test(
  'a corrupt closed log makes the VM resync required',
  withDir(async (dir) => {
    const rnd = prng(6);
    const vm = TestVm.create(dir, [2 * MiB, 2 * MiB]);
    vm.tracker.start();
    await vm.randomOps(rnd, 20);
    vm.tracker.swap();
    await vm.randomOps(rnd, 5);
    vm.closeClean();
    // damage a data byte of disk 1's closed log
    const file = vm.logFile(1, 1);
    const scan = scanLogFile(file);
    const rec = scan.records.find((r) => r.type === RecordType.Write)!;
    const fd = fs.openSync(file, 'r+');
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, rec.dataPos + 5);
    b[0] ^= 0xff;
    fs.writeSync(fd, b, 0, 1, rec.dataPos + 5);
    fs.closeSync(fd);

    vm.open();
    try {
      const r = vm.tracker.resyncRequired;
      assert.ok(r, 'resync required');
      assert.match(r.reason, /000000000001\.osrlog/);
      assert.match(r.reason, /disk1/);
      assert.ok(vm.readState().resyncRequired, 'recorded durably');
      // a restart does not forget it
      vm.closeClean();
      vm.open();
      assert.ok(vm.tracker.resyncRequired);
    } finally {
      vm.closeClean();
    }
  }),
);

test(
  'an unclean stop with another boot id makes the VM resync required; a clean one does not',
  withDir(async (dir) => {
    const rnd = prng(7);
    const vm = TestVm.create(dir, [2 * MiB]);
    vm.tracker.start();
    await vm.randomOps(rnd, 10);
    vm.crash();
    vm.editState((s) => {
      s.bootId = 'another-boot';
    });
    vm.open();
    try {
      assert.ok(vm.tracker.resyncRequired);
      assert.match(vm.tracker.resyncRequired.reason, /host restarted/);
      const st = vm.readState();
      assert.ok(st.resyncRequired);
      assert.equal(st.bootId, currentBootId());
    } finally {
      vm.closeClean();
    }

    // the same, after a clean stop: the logs hold everything, nothing to resync
    const vm2 = TestVm.create(path.join(dir, 'two'), [2 * MiB]);
    vm2.tracker.start();
    const ops = await vm2.randomOps(rnd, 10);
    vm2.closeClean();
    vm2.editState((s) => {
      s.bootId = 'another-boot';
    });
    vm2.open();
    try {
      assert.equal(vm2.tracker.resyncRequired, undefined);
      assert.equal(vm2.recovered?.recovered, false);
      vm2.tracker.swap();
      assertSameOps(logOps(vm2.logFile(0, 1)).ops, ops[0], 'log 1');
    } finally {
      vm2.closeClean();
    }
  }),
);

for (const variant of ['some old logs closed', 'all old logs closed', 'no old log closed yet'] as const) {
  test(
    `a swap cut short by a crash is finished consistently on recovery (${variant})`,
    withDir(async (dir) => {
      const rnd = prng(8);
      const vm = TestVm.create(dir, [2 * MiB, 2 * MiB, 1 * MiB]);
      vm.tracker.start();
      const first = await vm.randomOps(rnd, 15);
      vm.tracker.swap();
      const base = vm.models.map((m) => Buffer.from(m));
      const second = await vm.randomOps(rnd, 30);
      // the swap of seq 2 as swap() does it, up to the crash: new logs opened, then
      // old logs closed one by one; the state file never learns of it
      const t = vm.tracker;
      const old = t.disks.map((d) => d.active!);
      for (const d of t.disks) d.open(3, vm.clock);
      const closeCount = variant === 'some old logs closed' ? 1 : variant === 'all old logs closed' ? 3 : 0;
      for (let i = 0; i < closeCount; i++) old[i].close(vm.clock);
      for (const w of old) w.closeFile();
      for (const d of t.disks) d.active!.closeFile();
      for (const d of vm.disks) d.close();
      vm.disks = [];
      assert.equal(vm.readState().nextSeq, 3, 'state still names seq 2 as active');

      vm.open();
      try {
        assert.equal(vm.tracker.resyncRequired, undefined);
        for (let d = 0; d < 3; d++) {
          const l1 = logOps(vm.logFile(d, 1));
          assertSameOps(l1.ops, first[d], `log 1 of disk ${d}`);
        }
        if (variant === 'no old log closed yet') {
          // as if the swap never ran: seq 2 is still the active log on every disk
          assert.equal(vm.tracker.activeSeq, 2);
          for (let d = 0; d < 3; d++) {
            assert.equal(fs.existsSync(vm.logFile(d, 3)), false, 'the unrecorded new log is removed');
            const l2 = logOps(vm.logFile(d, 2));
            assert.equal(l2.closed, false);
            assertSameOps(l2.ops, second[d], `log 2 of disk ${d}`);
          }
          assert.deepEqual([...vm.tracker.closedDeltas(0).keys()], [1]);
        } else {
          // the swap is finished: seq 2 closed on every disk, seq 3 active and empty
          assert.equal(vm.tracker.activeSeq, 3);
          assert.equal(vm.readState().nextSeq, 4);
          for (let d = 0; d < 3; d++) {
            const l2 = logOps(vm.logFile(d, 2));
            assert.equal(l2.closed, true, `log 2 of disk ${d} closed`);
            assertSameOps(l2.ops, second[d], `log 2 of disk ${d}`);
            assert.ok(replay(base[d], l2.ops).equals(vm.models[d]));
            const l3 = logOps(vm.logFile(d, 3));
            assert.equal(l3.closed, false);
            assert.equal(l3.ops.length, 0);
          }
          const closed = vm.tracker.closedDeltas(0);
          assert.deepEqual([...closed.keys()].sort(), [1, 2]);
          assert.equal(closed.get(2)!.length, 3);
        }
        for (let d = 0; d < 3; d++) assert.ok(vm.image(d).equals(vm.models[d]));
        // tracking goes on: the next writes land in the active log and a swap closes it
        const active = vm.tracker.activeSeq;
        const third = await vm.randomOps(rnd, 10);
        assert.equal(vm.tracker.swap(), active);
        for (let d = 0; d < 3; d++) {
          const expected = variant === 'no old log closed yet' ? [...second[d], ...third[d]] : third[d];
          assertSameOps(logOps(vm.logFile(d, active)).ops, expected, `log ${active} of disk ${d}`);
        }
        // recovering once more (another crash right away) changes nothing
        const seqBefore = vm.tracker.activeSeq;
        vm.crash();
        vm.open();
        assert.equal(vm.tracker.activeSeq, seqBefore);
        assert.equal(vm.tracker.resyncRequired, undefined);
      } finally {
        vm.closeClean();
      }
    }),
  );
}

test(
  'stop deletes every log; a new start begins clean',
  withDir(async (dir) => {
    const rnd = prng(9);
    const vm = TestVm.create(dir, [1 * MiB]);
    vm.tracker.start();
    await vm.randomOps(rnd, 5);
    vm.tracker.swap();
    vm.tracker.stop();
    try {
      assert.equal(vm.tracker.enabled, false);
      assert.equal(fs.existsSync(path.join(vm.dir, 'logs', 'disk0')), false);
      assert.equal(vm.tracker.pendingBytes(0), 0);
      // writes while stopped are not tracked
      await vm.randomOps(rnd, 3);
      const seq = vm.tracker.start();
      assert.equal(seq, 3);
      const ops = await vm.randomOps(rnd, 4);
      assert.equal(vm.tracker.swap(), 3);
      assertSameOps(logOps(vm.logFile(0, 3)).ops, ops[0], 'log 3');
      assert.deepEqual([...vm.tracker.closedDeltas(0).keys()], [3]);
    } finally {
      vm.closeClean();
    }
  }),
);

test(
  'a closed log whose point time was not recorded (a crash inside the swap) is offered with a whole-millisecond time',
  withDir(async (dir) => {
    const rnd = prng(9);
    const vm = TestVm.create(dir, [2 * MiB]);
    vm.tracker.start();
    try {
      await vm.randomOps(rnd, 5);
      const seq = vm.tracker.swap();
      // what recovery after a crash inside the swap leaves: the log closed, no point time recorded
      vm.crash();
      vm.editState((s) => {
        delete s.pointMeta?.[seq];
      });
      vm.open();
      const logs = vm.tracker.closedDeltas(0).get(seq)!;
      assert.ok(logs.length > 0);
      for (const l of logs) assert.ok(Number.isSafeInteger(l.closedMs), `closedMs ${l.closedMs} is not whole: the replica refuses a point time that is not an integer`);
      assert.ok(Number.isSafeInteger(vm.tracker.pointMetaOf(seq, logs[0]!.closedMs).timeMs));
    } finally {
      vm.closeClean();
    }
  }),
);
