/**
 * The resync benchmark (docs/benchmarks.md): a disk of random data, replicated; then 1 % of
 * it changes in scattered 4 KiB blocks behind replication's back, and a resync brings the
 * replica back. Compared in the same run with rsync's delta transfer (`--inplace -B 4096`)
 * through an rsync daemon on 127.0.0.1, on the same files and the same changed blocks.
 *
 * Then reverse replication after an unplanned failover: the primary writes blocks it never
 * ships, the replica is promoted and writes blocks of its own, the old primary is demoted,
 * and replication back sends what either side wrote since their last common point. Its
 * bytes are compared with those divergent bytes (target ≤ 1.2×), and the old primary's
 * replica is checked against the new primary's disk afterwards.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { NbdClient } from '../src/agent/nbd/nbd-client.js';
import type { ReplicationHealth } from '../src/agent/wire/replication-types.js';
import { ensurePki, restartAgentProcess, stopAgentProcess } from '../src/lab/agent-process.js';
import { parseBytes, UsageError, type Flags } from './lib/args.js';
import { fillRandom, sameBytes } from './lib/files.js';
import { onCleanup, startAgent, tempDir, waitFor, type BenchAgent } from './lib/lab.js';
import { machineFacts } from './lib/machine.js';
import { MB, median, round } from './lib/stats.js';
import { rsyncCopy, startRsyncDaemon, type RsyncCopy } from './lib/rsync.js';
import { fmt, formatTable } from './lib/table.js';

export interface ResyncBenchOptions {
  runs: number;
  bytes: number;
  /** fraction of the disk changed */
  changed: number;
  blockSizes: number[];
  /** fraction of the disk the old primary writes and never ships, before the failover */
  reverseOld: number;
  /** fraction of the disk the new primary writes after its promotion */
  reverseNew: number;
  /** run one part only: the resync against rsync, or reverse replication */
  only: 'resync' | 'reverse' | undefined;
  resultsDir: string;
}

export function resyncOptions(flags: Flags, resultsDir: string): ResyncBenchOptions {
  const o: ResyncBenchOptions = {
    runs: flags.number('runs', 3, (n) => Number.isInteger(n) && n > 0),
    bytes: parseBytes(flags.string('size', '2G')),
    changed: flags.number('changed', 1) / 100,
    blockSizes: flags
      .string('block-sizes', '4096')
      .split(',')
      .map((x) => parseBytes(x.trim())),
    reverseOld: flags.number('reverse-old', 1, (n) => n >= 0 && n <= 50) / 100,
    reverseNew: flags.number('reverse-new', 1, (n) => n >= 0 && n <= 50) / 100,
    only: undefined,
    resultsDir,
  };
  const only = flags.optionalString('only');
  if (only !== undefined && only !== 'resync' && only !== 'reverse') throw new UsageError(`--only ${only}: resync or reverse`);
  o.only = only;
  if (o.bytes % 65536 !== 0) throw new UsageError('--size must be a multiple of 64 KiB');
  if (!(o.changed > 0 && o.changed <= 0.5)) throw new UsageError('--changed is a percentage between 0 and 50');
  if (o.reverseOld + o.reverseNew === 0) throw new UsageError('--reverse-old and --reverse-new cannot both be 0');
  return o;
}

const BLOCK = 4096;

/** The same scattered 4 KiB blocks for every run of the benchmark (distinct offsets). */
function changedBlocks(bytes: number, fraction: number): number[] {
  const total = bytes / BLOCK;
  const want = Math.round(total * fraction);
  const picked = new Set<number>();
  while (picked.size < want) picked.add(crypto.randomInt(total));
  return [...picked].sort((a, b) => a - b).map((b) => b * BLOCK);
}

function scribble(file: string, offsets: number[], seed: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    for (const [i, off] of offsets.entries()) {
      const block = crypto.createHash('sha256').update(seed).update(String(i)).digest();
      const data = Buffer.alloc(BLOCK);
      for (let p = 0; p < BLOCK; p += block.length) block.copy(data, p);
      fs.writeSync(fd, data, 0, BLOCK, off);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

interface OsrResyncRun {
  blockSize: number;
  seconds: number;
  differingBytes: number;
  bytesSent: number;
  bytesReceived: number;
  verified: boolean;
}


function warm(file: string): void {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
  try {
    while (fs.readSync(fd, buf) > 0);
  } finally {
    fs.closeSync(fd);
  }
}

function findReplicaImage(root: string): string {
  const stack = [root];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) stack.push(p);
      else if (e.name === 'disk0.img' && path.basename(dir) === 'disks') return p;
    }
  }
  throw new Error(`no replica image under ${root}`);
}

async function osrRun(pkiDir: string, base: string, offsets: number[], seed: Buffer, o: ResyncBenchOptions, blockSize: number): Promise<OsrResyncRun> {
  const { dir, remove } = tempDir('resync');
  let primary: BenchAgent | undefined;
  let replica: BenchAgent | undefined;
  try {
    replica = await startAgent({ name: 'replica', dataDir: path.join(dir, 'replica'), pkiDir, listenPort: 0, logFile: path.join(dir, 'replica.log'), extraArgs: ['--log-level', 'warn'] });
    primary = await startAgent({ name: 'primary', dataDir: path.join(dir, 'primary'), pkiDir, logFile: path.join(dir, 'primary.log'), extraArgs: ['--log-level', 'warn'] });
    await primary.api.post('/v1/vms', { name: 'vm1', disks: [String(o.bytes)] });
    const [disk] = await primary.api.get<{ image: string; size: number }[]>('/v1/vms/vm1/disks');
    fs.copyFileSync(base, disk.image);
    await primary.api.post('/v1/vms/vm1/start');
    await primary.api.post('/v1/replications', { vm: 'vm1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '1h', resyncWindow: 'never', resyncBlockSize: blockSize });
    await waitFor('the first recovery point', async () => ((await primary!.api.get<ReplicationHealth>('/v1/replications/vm1')).latestPoint ? true : undefined), 300_000, 100);
    // the disk changes while the agent is stopped: replication never sees these writes
    await stopAgentProcess(primary, 'SIGTERM');
    scribble(disk.image, offsets, seed);
    const restarted = await restartAgentProcess(primary);
    primary = Object.assign(restarted, { stop: primary.stop });
    const p = primary;
    // as for rsync, whose files were just written, both sides read from the page cache (the
    // replica's image was written with direct I/O by the initial copy, so it is read once here)
    warm(disk.image);
    warm(findReplicaImage(path.join(dir, 'replica')));
    // the restarted agent sees that the image changed while it was stopped (its generation
    // differs from the clean stop's): the resync it needs waits for its window, here never,
    // until it is asked for (an agent that did not notice would be Replicating)
    await waitFor('replicating again, or waiting for a resync', async () => {
      const x = await p.api.get<ReplicationHealth>('/v1/replications/vm1');
      return x.state === 'Replicating' || (x.state === 'ResyncRequired' && x.resyncWaitingForWindow) ? true : undefined;
    }, 60_000, 50);
    const t0 = performance.now();
    await p.api.post('/v1/replications/vm1/resync');
    const h = await waitFor('the resync to complete', async () => {
      const x = await p.api.get<ReplicationHealth>('/v1/replications/vm1');
      return x.resync?.completedAt ? x : undefined;
    }, 600_000);
    const seconds = (performance.now() - t0) / 1000;
    const r = h.resync!;
    const verified = sameBytes(disk.image, findReplicaImage(path.join(dir, 'replica')), o.bytes);
    if (!verified) throw new Error('the replica differs from the source after the resync');
    return { blockSize, seconds, differingBytes: r.differingBytes, bytesSent: r.wireBytesSent, bytesReceived: r.wireBytesReceived, verified };
  } finally {
    if (primary) await stopAgentProcess(primary, 'SIGTERM');
    await Promise.all([primary?.stop(), replica?.stop()]);
    await remove();
  }
}

async function rsyncRun(dir: string, base: string, changedFile: string, bytes: number): Promise<RsyncCopy> {
  const daemon = await startRsyncDaemon(path.join(dir, `rsyncd-${crypto.randomBytes(3).toString('hex')}`));
  try {
    // the destination holds the old content; rsync sends what changed
    const dest = path.join(daemon.destDir, path.basename(changedFile));
    fs.copyFileSync(base, dest);
    const run = await rsyncCopy(daemon, changedFile, ['-B', String(BLOCK)], 'delta');
    if (!sameBytes(changedFile, dest, bytes)) throw new Error('rsync left a destination that differs from its source');
    return run;
  } finally {
    await daemon.stop();
  }
}

/** Blocks written through NBD by one side of the failover: 4 KiB-aligned offsets and their data. */
interface Writes {
  offsets: number[];
  data: Buffer;
}

function randomWrites(bytes: number, fraction: number): Writes {
  const offsets = fraction > 0 ? changedBlocks(bytes, fraction) : [];
  return { offsets, data: crypto.randomBytes(offsets.length * BLOCK) };
}

/** Write the blocks through a VM disk's NBD export (so change tracking sees them), 32 in flight, then flush. */
async function writeThroughNbd(uri: string, w: Writes): Promise<void> {
  const c = await NbdClient.connect(uri);
  try {
    for (let i = 0; i < w.offsets.length; i += 32) {
      const batch = w.offsets.slice(i, i + 32).map((off, j) => c.write(off, w.data.subarray((i + j) * BLOCK, (i + j + 1) * BLOCK)));
      await Promise.all(batch);
    }
    await c.flush();
  } finally {
    await c.close();
  }
}

/** A TCP relay on 127.0.0.1 that counts the bytes going each way (TLS records and handshakes included). */
interface CountingProxy {
  port: number;
  toServer: number;
  toClient: number;
  close: () => Promise<void>;
}

async function countingProxy(targetPort: number): Promise<CountingProxy> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((a) => {
    const b = net.connect(targetPort, '127.0.0.1');
    for (const s of [a, b]) {
      s.setNoDelay(true);
      sockets.add(s);
    }
    a.on('data', (d: Buffer) => (proxy.toServer += d.length));
    b.on('data', (d: Buffer) => (proxy.toClient += d.length));
    a.pipe(b);
    b.pipe(a);
    const end = () => {
      for (const s of [a, b]) {
        s.destroy();
        sockets.delete(s);
      }
    };
    for (const s of [a, b]) {
      s.on('error', end);
      s.on('close', end);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const close = onCleanup(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const proxy: CountingProxy = { port: (server.address() as net.AddressInfo).port, toServer: 0, toClient: 0, close };
  return proxy;
}

interface DiskInfo {
  name: string;
  size: number;
  image: string;
  nbd: { unix: string; tcp: string | null };
}

interface ReverseRun {
  /** from enabling replication back until the health facts show the resync completed */
  seconds: number;
  /** the union of both sides' blocks since the last common point (4 KiB granularity) */
  divergentBytes: number;
  oldWrittenBytes: number;
  newWrittenBytes: number;
  /** the old primary's own count of its unshipped ranges, from the demote */
  demoteDivergentBytes: number | null;
  rolledBackBytes: number;
  reason: string;
  /** the resync's ranges (what the reverse set out to send besides the open log) */
  totalBytes: number;
  differingBytes: number;
  /** osr's count: DATA frames of the ranges, and the change-log bytes of the final delta */
  wireBytesSent: number;
  wireBytesReceived: number;
  /** measured on the connection by a relay, TLS included, until the resync completed */
  tcpBytesSent: number;
  tcpBytesReceived: number;
  verified: boolean;
}

/** A 4 MiB-at-a-time comparison of a recovery point read through NBD, the new primary's image, and what it must hold. */
async function verifyReverse(overlayUri: string, image: string, base: string, bytes: number, newWrites: Writes): Promise<void> {
  const CHUNK = 4 * 1024 * 1024;
  const c = await NbdClient.connect(overlayUri);
  const fi = fs.openSync(image, 'r');
  const fb = fs.openSync(base, 'r');
  const mine = Buffer.alloc(CHUNK);
  const expected = Buffer.alloc(CHUNK);
  let w = 0;
  try {
    if (c.size !== bytes) throw new Error(`the old primary's replica is ${c.size} bytes, not ${bytes}`);
    for (let pos = 0; pos < bytes; pos += CHUNK) {
      const n = Math.min(CHUNK, bytes - pos);
      const parts: Promise<Buffer>[] = [];
      for (let o = 0; o < n; o += 1024 * 1024) parts.push(c.read(pos + o, Math.min(1024 * 1024, n - o)));
      const theirs = Buffer.concat(await Promise.all(parts));
      mine.fill(0);
      expected.fill(0);
      fs.readSync(fi, mine, 0, n, pos);
      fs.readSync(fb, expected, 0, n, pos);
      // what the promoted point held (the base: the old primary's later writes were never shipped), then the new primary's writes
      for (; w < newWrites.offsets.length && newWrites.offsets[w] < pos + n; w++) newWrites.data.copy(expected, newWrites.offsets[w] - pos, w * BLOCK, (w + 1) * BLOCK);
      const firstDiff = (a: Buffer, b: Buffer) => {
        for (let o = 0; o < n; o += BLOCK) if (!a.subarray(o, o + BLOCK).equals(b.subarray(o, o + BLOCK))) return pos + o;
        return -1;
      };
      if (!theirs.equals(mine.subarray(0, n))) throw new Error(`after reverse replication the old primary's replica differs from the new primary's disk at byte ${firstDiff(theirs, mine)}`);
      if (!mine.subarray(0, n).equals(expected.subarray(0, n))) throw new Error(`the new primary's disk is not the promoted point plus its own writes at byte ${firstDiff(mine, expected)}`);
    }
  } finally {
    fs.closeSync(fi);
    fs.closeSync(fb);
    await c.close();
  }
}

async function reverseRun(pkiDir: string, base: string, o: ResyncBenchOptions, oldWrites: Writes, newWrites: Writes): Promise<ReverseRun> {
  const { dir, remove } = tempDir('reverse');
  let oldPrimary: BenchAgent | undefined;
  let newPrimary: BenchAgent | undefined;
  let proxy: CountingProxy | undefined;
  try {
    // both agents accept replication: the replica now, the primary once it is demoted
    newPrimary = await startAgent({ name: 'replica', dataDir: path.join(dir, 'replica'), pkiDir, listenPort: 0, logFile: path.join(dir, 'replica.log'), extraArgs: ['--log-level', 'warn'] });
    oldPrimary = await startAgent({ name: 'primary', dataDir: path.join(dir, 'primary'), pkiDir, listenPort: 0, logFile: path.join(dir, 'primary.log'), extraArgs: ['--log-level', 'warn'] });
    const before = oldPrimary;
    const after = newPrimary;
    await before.api.post('/v1/vms', { name: 'vm1', disks: [String(o.bytes)] });
    const [disk] = await before.api.get<DiskInfo[]>('/v1/vms/vm1/disks');
    fs.copyFileSync(base, disk.image);
    await before.api.post('/v1/vms/vm1/start');
    await before.api.post('/v1/replications', { vm: 'vm1', peer: `127.0.0.1:${after.replicationPort}`, copyFrequency: '1h', resyncWindow: 'never' });
    const first = await waitFor('the first recovery point', async () => (await before.api.get<ReplicationHealth>('/v1/replications/vm1')).latestPoint ?? undefined, 300_000, 100);
    // the old primary writes what it will never ship; then its site is lost and the replica promoted
    await writeThroughNbd(disk.nbd.unix, oldWrites);
    const promoted = await after.api.post<{ epoch: number; point: { seq: number }; rolledBackBytes: number }>('/v1/replicas/vm1/promote', {});
    if (promoted.point.seq !== first.seq) throw new Error(`promoted point ${promoted.point.seq}, expected the only point ${first.seq}: the old primary's writes were shipped`);
    const demoted = await before.api.post<{ divergentBytes: number | null }>('/v1/vms/vm1/demote', { epoch: promoted.epoch });
    const [promotedDisk] = await after.api.get<DiskInfo[]>('/v1/vms/vm1/disks');
    await writeThroughNbd(promotedDisk.nbd.unix, newWrites);
    // the promoted image was written with direct I/O by the initial copy: read it once, so that
    // the reverse reads from the page cache like the resync runs
    warm(promotedDisk.image);
    proxy = await countingProxy(before.replicationPort!);
    const wire = proxy;
    const t0 = performance.now();
    await after.api.post('/v1/replications', { vm: 'vm1', peer: `127.0.0.1:${wire.port}`, copyFrequency: '1h', resyncWindow: 'never' });
    const h = await waitFor('reverse replication to complete', async () => {
      const x = await after.api.get<ReplicationHealth>('/v1/replications/vm1');
      return x.resync?.completedAt && x.latestPoint ? x : undefined;
    }, 600_000);
    const seconds = (performance.now() - t0) / 1000;
    const tcpBytesSent = wire.toServer;
    const tcpBytesReceived = wire.toClient;
    const r = h.resync!;
    // in step: one more cycle, and its point at the old primary must be the new primary's disk
    await after.api.post('/v1/replications/vm1/cycle');
    const next = await waitFor('the point after the reverse', async () => {
      const x = await after.api.get<ReplicationHealth>('/v1/replications/vm1');
      return x.latestPoint && x.latestPoint.seq > h.latestPoint!.seq ? x.latestPoint : undefined;
    }, 120_000);
    const overlay = await before.api.post<{ id: string; disks: { nbd: { unix: string } }[] }>('/v1/replicas/vm1/overlays', { point: next.seq });
    await verifyReverse(overlay.disks[0].nbd.unix, promotedDisk.image, base, o.bytes, newWrites);
    await before.api.delete(`/v1/replicas/vm1/overlays/${overlay.id}`);
    const blocks = new Set([...oldWrites.offsets, ...newWrites.offsets]);
    return {
      seconds,
      divergentBytes: blocks.size * BLOCK,
      oldWrittenBytes: oldWrites.offsets.length * BLOCK,
      newWrittenBytes: newWrites.offsets.length * BLOCK,
      demoteDivergentBytes: demoted.divergentBytes,
      rolledBackBytes: promoted.rolledBackBytes,
      reason: r.reason,
      totalBytes: r.totalBytes,
      differingBytes: r.differingBytes,
      wireBytesSent: r.wireBytesSent,
      wireBytesReceived: r.wireBytesReceived,
      tcpBytesSent,
      tcpBytesReceived,
      verified: true,
    };
  } finally {
    await Promise.all([newPrimary?.stop(), oldPrimary?.stop()]);
    await proxy?.close();
    await remove();
  }
}

export async function runResyncBench(o: ResyncBenchOptions): Promise<void> {
  const machine = machineFacts();
  const { dir, remove } = tempDir('resync-files');
  const forward = o.only !== 'reverse';
  const reverse = o.only !== 'resync';
  try {
    const parts = [
      forward ? `${(o.changed * 100).toFixed(1)} % changed in scattered 4 KiB blocks` : '',
      reverse ? `reverse replication after a failover with ${(o.reverseOld * 100).toFixed(1)} % unshipped on the old primary and ${(o.reverseNew * 100).toFixed(1)} % written on the new` : '',
    ].filter(Boolean);
    console.log(`resync benchmark: ${machine.cpus} CPUs (${machine.cpuModel}), ${o.bytes / 2 ** 30} GiB random disk; ${parts.join('; ')}`);
    const pkiDir = path.join(dir, 'pki');
    await ensurePki(pkiDir, ['primary', 'replica']);
    const base = path.join(dir, 'base.img');
    fillRandom(base, o.bytes);
    const offsets = changedBlocks(o.bytes, o.changed);
    const seed = crypto.randomBytes(16);
    const divergentBytes = offsets.length * BLOCK;
    const changedFile = path.join(dir, 'disk.img');
    if (forward) {
      fs.copyFileSync(base, changedFile);
      scribble(changedFile, offsets, seed);
    }
    // the same blocks on each side in every run, chosen independently (they may meet)
    const oldWrites = randomWrites(o.bytes, o.reverseOld);
    const newWrites = randomWrites(o.bytes, o.reverseNew);
    const osrRuns: OsrResyncRun[] = [];
    const rsyncRuns: RsyncCopy[] = [];
    const reverseRuns: ReverseRun[] = [];
    for (let i = 0; i < o.runs; i++) {
      if (forward) {
        for (const bs of o.blockSizes) {
          const r = await osrRun(pkiDir, base, offsets, seed, o, bs);
          osrRuns.push(r);
          console.log(`  run ${i + 1}/${o.runs} osr (blocks of ${bs} B): ${r.seconds.toFixed(2)} s, ${(r.differingBytes / MB).toFixed(1)} MB differing, sent ${(r.bytesSent / MB).toFixed(1)} MB, received ${(r.bytesReceived / MB).toFixed(1)} MB; replica verified`);
        }
        const rs = await rsyncRun(dir, base, changedFile, o.bytes);
        rsyncRuns.push(rs);
        console.log(`  run ${i + 1}/${o.runs} rsync -B 4096: ${rs.seconds.toFixed(2)} s, sent ${((rs.bytesSent ?? 0) / MB).toFixed(1)} MB, received ${((rs.bytesReceived ?? 0) / MB).toFixed(1)} MB; destination verified`);
      }
      if (reverse) {
        const r = await reverseRun(pkiDir, base, o, oldWrites, newWrites);
        reverseRuns.push(r);
        console.log(`  run ${i + 1}/${o.runs} reverse: ${r.seconds.toFixed(2)} s, ${(r.divergentBytes / MB).toFixed(1)} MB divergent (old primary's count ${r.demoteDivergentBytes === null ? 'unknown' : (r.demoteDivergentBytes / MB).toFixed(1)}), sent ${(r.wireBytesSent / MB).toFixed(1)} MB (${(r.wireBytesSent / r.divergentBytes).toFixed(3)}×), on the connection ${(r.tcpBytesSent / MB).toFixed(1)} MB out, ${(r.tcpBytesReceived / MB).toFixed(2)} MB back; old primary's replica verified`);
      }
    }
    const bySize = (bs: number) => osrRuns.filter((r) => r.blockSize === bs);
    const main = bySize(o.blockSizes[0]);
    const resyncSeconds = median(main.map((r) => r.seconds));
    const resyncBytesSent = median(main.map((r) => r.bytesSent));
    const resyncBytesReceived = median(main.map((r) => r.bytesReceived));
    const rsyncSeconds = median(rsyncRuns.map((r) => r.seconds));
    const rsyncBytesSent = median(rsyncRuns.map((r) => r.bytesSent ?? 0));
    const rsyncBytesReceived = median(rsyncRuns.map((r) => r.bytesReceived ?? 0));
    const rev = {
      seconds: median(reverseRuns.map((r) => r.seconds)),
      divergentBytes: median(reverseRuns.map((r) => r.divergentBytes)),
      wireBytesSent: median(reverseRuns.map((r) => r.wireBytesSent)),
      wireBytesReceived: median(reverseRuns.map((r) => r.wireBytesReceived)),
      tcpBytesSent: median(reverseRuns.map((r) => r.tcpBytesSent)),
      tcpBytesReceived: median(reverseRuns.map((r) => r.tcpBytesReceived)),
      differingBytes: median(reverseRuns.map((r) => r.differingBytes)),
    };
    const reverseToDivergent = rev.wireBytesSent / rev.divergentBytes;
    const reverseTcpToDivergent = rev.tcpBytesSent / rev.divergentBytes;
    const rows = [];
    if (forward) {
      rows.push(
        ['resync time, s (median)', fmt(resyncSeconds, 2), `rsync ${fmt(rsyncSeconds, 2)}`, `${fmt(rsyncSeconds / resyncSeconds, 2)}× faster (target ≥ 3×)`],
        ['bytes sent to the replica, MB', fmt(resyncBytesSent / MB, 1), `rsync ${fmt(rsyncBytesSent / MB, 1)}`, `${fmt(resyncBytesSent / rsyncBytesSent, 2)}× (target ≤ 1×)`],
        ['bytes back (checksums), MB', fmt(resyncBytesReceived / MB, 1), `rsync ${fmt(rsyncBytesReceived / MB, 1)}`, ''],
        ['divergent bytes, MB', fmt(divergentBytes / MB, 1), '', ''],
        ...o.blockSizes.slice(1).map((bs) => [`blocks of ${bs} B: time, s / sent, MB`, `${fmt(median(bySize(bs).map((r) => r.seconds)), 2)} / ${fmt(median(bySize(bs).map((r) => r.bytesSent)) / MB, 1)}`, '', '']),
      );
    }
    if (reverse) {
      const full = forward ? 'full compare ' : '';
      rows.push(
        ['reverse after failover: divergent bytes, MB', fmt(rev.divergentBytes / MB, 1), `old ${fmt((oldWrites.offsets.length * BLOCK) / MB, 1)} + new ${fmt((newWrites.offsets.length * BLOCK) / MB, 1)}`, ''],
        ['reverse: bytes sent to the old primary, MB', fmt(rev.wireBytesSent / MB, 1), forward ? `${full}${fmt(resyncBytesSent / divergentBytes, 3)}× its divergent` : '', `${fmt(reverseToDivergent, 3)}× divergent (target ≤ 1.2×) — ${reverseToDivergent <= 1.2 ? 'met' : 'missed'}`],
        ['reverse: on the connection (TLS included), MB', fmt(rev.tcpBytesSent / MB, 1), '', `${fmt(reverseTcpToDivergent, 3)}× divergent`],
        ['reverse: bytes back on the connection, MB', fmt(rev.tcpBytesReceived / MB, 2), forward ? `${full}${fmt(resyncBytesReceived / MB, 1)}` : '', `osr's count ${fmt(rev.wireBytesReceived / MB, 2)}`],
        ['reverse: time, s', fmt(rev.seconds, 2), forward ? `${full}${fmt(resyncSeconds, 2)}` : '', ''],
      );
    }
    console.log(`\n${formatTable(['metric', 'osr', 'peer', 'ratio / target'], rows)}`);
    const result = {
      resyncSeconds: forward ? round(resyncSeconds, 3) : null,
      resyncBytesSent: forward ? resyncBytesSent : null,
      resyncBytesReceived: forward ? resyncBytesReceived : null,
      rsyncSeconds: forward ? round(rsyncSeconds, 3) : null,
      rsyncBytesSent: forward ? rsyncBytesSent : null,
      rsyncBytesReceived: forward ? rsyncBytesReceived : null,
      speedupOverRsync: forward ? round(rsyncSeconds / resyncSeconds, 2) : null,
      bytesRatioToRsync: forward ? round(resyncBytesSent / rsyncBytesSent, 3) : null,
      reverseBytesSent: reverse ? rev.wireBytesSent : null,
      reverseToDivergent: reverse ? round(reverseToDivergent, 3) : null,
      divergentBytes: forward ? divergentBytes : null,
      targets: { speedupOverRsync: 3, bytesRatioToRsync: 1, reverseToDivergent: 1.2 },
      machine,
      options: { ...o, resultsDir: undefined },
      osrRuns,
      rsyncRuns,
      reverse: reverse
        ? {
            seconds: round(rev.seconds, 3),
            divergentBytes: rev.divergentBytes,
            oldWrittenBytes: oldWrites.offsets.length * BLOCK,
            newWrittenBytes: newWrites.offsets.length * BLOCK,
            wireBytesSent: rev.wireBytesSent,
            wireBytesReceived: rev.wireBytesReceived,
            tcpBytesSent: rev.tcpBytesSent,
            tcpBytesReceived: rev.tcpBytesReceived,
            differingBytes: rev.differingBytes,
            toDivergent: round(reverseToDivergent, 3),
            tcpToDivergent: round(reverseTcpToDivergent, 3),
            targetMet: reverseToDivergent <= 1.2,
            fullCompare: forward ? { seconds: round(resyncSeconds, 3), bytesSent: resyncBytesSent, bytesReceived: resyncBytesReceived, divergentBytes } : null,
            runs: reverseRuns,
          }
        : null,
    };
    fs.mkdirSync(o.resultsDir, { recursive: true });
    const out = path.join(o.resultsDir, 'resync.json');
    fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`\nresults: ${path.relative(process.cwd(), out)}   (MB = 1e6 bytes)`);
  } finally {
    await remove();
  }
}
