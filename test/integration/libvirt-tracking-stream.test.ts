/**
 * A libvirt domain's delta streamed without a log at the primary (LibvirtTracking.swap
 * with a stream, then settle), while the tiny guest writes:
 *
 * - delivered: nothing is written to the tracking's logs, the streamed bytes are a
 *   complete, verified change log per disk, and the delta is closed (the next one is
 *   active, only its checkpoint is left);
 * - not delivered (the fallback): the delta is read again from the backup, still open,
 *   into log files that hold exactly the bytes that were streamed, synced, and it is then
 *   a closed delta shipped from its files like any other;
 * - a swap whose read fails: the checkpoint it made is dropped (libvirt merges its bitmap
 *   into the previous one), no resync is asked for, and the next delta holds every range
 *   the failed one had read.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { listCheckpoints } from '../../src/agent/libvirt/backup.js';
import { LibvirtTracking } from '../../src/agent/libvirt/tracking.js';
import { LogStreamVerifier, RecordWalker } from '../../src/agent/tracking/change-log.js';
import { tempDir } from '../support/lab.js';
import { libvirtSkip, startTinyDomain, virsh, type TinyDomain } from '../support/libvirt.js';

const skip = libvirtSkip();
const dir = tempDir('osr-libvirt-stream-');
const MiB = 1024 * 1024;
let dom: TinyDomain | undefined;

before(async () => {
  if (skip) return;
  dom = await startTinyDomain(`osrt-stream-${process.pid}`, path.join(dir, 'domain'));
});
after(async () => {
  await dom?.destroy();
});

/** A stream that keeps every disk's log bytes, checking they come in order. */
class Collect {
  seq: number | undefined;
  readonly logs = new Map<string, Buffer[]>();
  private disk: string | undefined;
  private pos = 0;
  begin(seq: number): void {
    this.seq = seq;
  }
  disk_(name: string): void {
    this.disk = name;
    this.pos = 0;
    this.logs.set(name, []);
  }
  data(pos: number, bufs: readonly Buffer[]): void {
    assert.equal(pos, this.pos, 'log bytes in order, each once');
    for (const b of bufs) {
      this.logs.get(this.disk!)!.push(Buffer.from(b));
      this.pos += b.length;
    }
  }
  log(name: string): Buffer {
    return Buffer.concat(this.logs.get(name) ?? []);
  }
}

function streamOf(c: Collect) {
  return { begin: (seq: number) => c.begin(seq), disk: (name: string) => c.disk_(name), data: (pos: number, bufs: readonly Buffer[]) => c.data(pos, bufs) };
}

test('a streamed delta: delivered, no log is written here; not delivered, the logs written from the open backup hold exactly the streamed bytes; a failed read drops its checkpoint and loses nothing', { skip }, async () => {
  const d = dom!;
  const disks = [
    { id: 'vda', target: 'vda', size: 64 * MiB, file: d.images.vda },
    { id: 'vdb', target: 'vdb', size: 16 * MiB, file: d.images.vdb },
  ];
  const tdir = path.join(dir, 'tracking');
  const t = new LibvirtTracking(virsh, d.name, disks, tdir, Date.now);
  const first = await t.start();
  await t.swap('crash-consistent');
  t.releaseThrough(first);
  await new Promise((r) => setTimeout(r, 1500));

  // delivered
  const c1 = new Collect();
  const seq1 = await t.swap('crash-consistent', streamOf(c1));
  assert.equal(c1.seq, seq1);
  assert.equal(fs.existsSync(path.join(tdir, 'logs', String(seq1))), false, 'no log file while the delta is streamed');
  let records = 0;
  for (const disk of disks) {
    const bytes = c1.log(disk.target);
    const v = new LogStreamVerifier(disk.target);
    v.push(0, [bytes]);
    const scan = v.result();
    assert.ok(scan, `the streamed log of ${disk.target} is complete and verifies`);
    assert.equal(scan.header.seq, seq1);
    records += scan.records.length;
  }
  assert.ok(records > 0, 'the guest wrote something in the delta');
  await t.settle(seq1, true);
  assert.equal(t.activeSeq, seq1 + 1);
  assert.equal(t.closedDeltas(0).size, 0, 'a delivered delta leaves no log');
  assert.deepEqual((await listCheckpoints(virsh, d.name)).ours, [`osr-${seq1 + 1}`]);

  // not delivered: the fallback writes the same log from the backup, still open
  await new Promise((r) => setTimeout(r, 1500));
  const c2 = new Collect();
  const seq2 = await t.swap('crash-consistent', streamOf(c2));
  assert.equal(seq2, seq1 + 1);
  await t.settle(seq2, false);
  assert.equal(t.activeSeq, seq2 + 1);
  const closed = t.closedDeltas(seq1).get(seq2);
  assert.ok(closed, 'the delta is a closed delta with its files');
  for (const disk of disks) {
    const file = closed.find((l) => l.disk === disk.target)!.file;
    assert.ok(fs.readFileSync(file).equals(c2.log(disk.target)), `the log file of ${disk.target} holds exactly the streamed bytes`);
  }
  assert.deepEqual((await listCheckpoints(virsh, d.name)).ours, [`osr-${seq2 + 1}`]);
  // settling again, or a seq not streamed, does nothing
  await t.settle(seq2, true);
  assert.equal(t.activeSeq, seq2 + 1);

  // a swap whose read fails drops the checkpoint it made: the next delta holds those changes too
  await new Promise((r) => setTimeout(r, 1500));
  const c3 = new Collect();
  const failing = streamOf(c3);
  let handed = 0;
  const broken = { ...failing, data: (pos: number, bufs: readonly Buffer[]) => {
    failing.data(pos, bufs);
    if ((handed += 1) > 3) throw new Error('the stream broke');
  } };
  await assert.rejects(t.swap('crash-consistent', broken), /the stream broke/);
  assert.equal(t.resyncRequired, undefined);
  assert.equal(t.activeSeq, seq2 + 1);
  assert.deepEqual((await listCheckpoints(virsh, d.name)).ours, [`osr-${seq2 + 1}`]);
  const seen: [string, number, number][] = [];
  for (const disk of disks) new RecordWalker((o, l) => seen.push([disk.target, o, l])).push(0, [c3.log(disk.target)]);
  assert.ok(seen.length > 0, 'the failed swap had read some records');
  const c4 = new Collect();
  const seq4 = await t.swap('crash-consistent', streamOf(c4));
  assert.equal(seq4, seq2 + 1);
  const covered: [string, number, number][] = [];
  for (const disk of disks) new RecordWalker((o, l) => covered.push([disk.target, o, l])).push(0, [c4.log(disk.target)]);
  for (const [disk, o, l] of seen) {
    // every byte of it lies in the next delta's records
    let at = o;
    for (const [, o2, l2] of covered.filter((c) => c[0] === disk).sort((a, b) => a[1] - b[1])) if (o2 <= at && at < o2 + l2) at = o2 + l2;
    assert.ok(at >= o + l, `the range ${disk} ${o}+${l} read by the failed swap is in the next delta`);
  }
  await t.settle(seq4, true);
  t.stop();
});
