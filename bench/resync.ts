/**
 * The resync benchmark (docs/benchmarks.md): a disk of random data, replicated; then 1 % of
 * it changes in scattered 4 KiB blocks behind replication's back, and a resync brings the
 * replica back. Compared in the same run with rsync's delta transfer (`--inplace -B 4096`)
 * through an rsync daemon on 127.0.0.1, on the same files and the same changed blocks.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ReplicationHealth } from '../src/agent/replication-types.js';
import { ensurePki, restartAgentProcess, stopAgentProcess } from '../src/lab/agent-process.js';
import { parseBytes, UsageError, type Flags } from './lib/args.js';
import { fillRandom, sameBytes } from './lib/files.js';
import { sleep, startAgent, tempDir, type BenchAgent } from './lib/lab.js';
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
    resultsDir,
  };
  if (o.bytes % 65536 !== 0) throw new UsageError('--size must be a multiple of 64 KiB');
  if (!(o.changed > 0 && o.changed <= 0.5)) throw new UsageError('--changed is a percentage between 0 and 50');
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

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number, intervalMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(intervalMs);
  }
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
    await waitFor('replicating again', async () => ((await p.api.get<ReplicationHealth>('/v1/replications/vm1')).state === 'Replicating' ? true : undefined), 60_000, 50);
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

export async function runResyncBench(o: ResyncBenchOptions): Promise<void> {
  const machine = machineFacts();
  const { dir, remove } = tempDir('resync-files');
  try {
    console.log(`resync benchmark: ${machine.cpus} CPUs (${machine.cpuModel}), ${o.bytes / 2 ** 30} GiB random disk, ${(o.changed * 100).toFixed(1)} % changed in scattered 4 KiB blocks`);
    const pkiDir = path.join(dir, 'pki');
    await ensurePki(pkiDir, ['primary', 'replica']);
    const base = path.join(dir, 'base.img');
    fillRandom(base, o.bytes);
    const offsets = changedBlocks(o.bytes, o.changed);
    const seed = crypto.randomBytes(16);
    const divergentBytes = offsets.length * BLOCK;
    const changedFile = path.join(dir, 'disk.img');
    fs.copyFileSync(base, changedFile);
    scribble(changedFile, offsets, seed);
    const osrRuns: OsrResyncRun[] = [];
    const rsyncRuns: RsyncCopy[] = [];
    for (let i = 0; i < o.runs; i++) {
      for (const bs of o.blockSizes) {
        const r = await osrRun(pkiDir, base, offsets, seed, o, bs);
        osrRuns.push(r);
        console.log(`  run ${i + 1}/${o.runs} osr (blocks of ${bs} B): ${r.seconds.toFixed(2)} s, ${(r.differingBytes / MB).toFixed(1)} MB differing, sent ${(r.bytesSent / MB).toFixed(1)} MB, received ${(r.bytesReceived / MB).toFixed(1)} MB; replica verified`);
      }
      const rs = await rsyncRun(dir, base, changedFile, o.bytes);
      rsyncRuns.push(rs);
      console.log(`  run ${i + 1}/${o.runs} rsync -B 4096: ${rs.seconds.toFixed(2)} s, sent ${((rs.bytesSent ?? 0) / MB).toFixed(1)} MB, received ${((rs.bytesReceived ?? 0) / MB).toFixed(1)} MB; destination verified`);
    }
    const bySize = (bs: number) => osrRuns.filter((r) => r.blockSize === bs);
    const main = bySize(o.blockSizes[0]);
    const resyncSeconds = median(main.map((r) => r.seconds));
    const resyncBytesSent = median(main.map((r) => r.bytesSent));
    const rsyncSeconds = median(rsyncRuns.map((r) => r.seconds));
    const rsyncBytesSent = median(rsyncRuns.map((r) => r.bytesSent ?? 0));
    const rows = [
      ['resync time, s (median)', fmt(resyncSeconds, 2), `rsync ${fmt(rsyncSeconds, 2)}`, `${fmt(rsyncSeconds / resyncSeconds, 2)}× faster (target ≥ 3×)`],
      ['bytes sent to the replica, MB', fmt(resyncBytesSent / MB, 1), `rsync ${fmt(rsyncBytesSent / MB, 1)}`, `${fmt(resyncBytesSent / rsyncBytesSent, 2)}× (target ≤ 1×)`],
      ['bytes back (checksums), MB', fmt(median(main.map((r) => r.bytesReceived)) / MB, 1), `rsync ${fmt(median(rsyncRuns.map((r) => r.bytesReceived ?? 0)) / MB, 1)}`, ''],
      ['divergent bytes, MB', fmt(divergentBytes / MB, 1), '', ''],
      ...o.blockSizes.slice(1).map((bs) => [`blocks of ${bs} B: time, s / sent, MB`, `${fmt(median(bySize(bs).map((r) => r.seconds)), 2)} / ${fmt(median(bySize(bs).map((r) => r.bytesSent)) / MB, 1)}`, '', '']),
      ['reverse replication after failover, MB sent', 'not measured yet', '', ''],
    ];
    console.log(`\n${formatTable(['metric', 'osr', 'peer', 'ratio / target'], rows)}`);
    const result = {
      resyncSeconds: round(resyncSeconds, 3),
      resyncBytesSent,
      resyncBytesReceived: median(main.map((r) => r.bytesReceived)),
      rsyncSeconds: round(rsyncSeconds, 3),
      rsyncBytesSent,
      rsyncBytesReceived: median(rsyncRuns.map((r) => r.bytesReceived ?? 0)),
      speedupOverRsync: round(rsyncSeconds / resyncSeconds, 2),
      bytesRatioToRsync: round(resyncBytesSent / rsyncBytesSent, 3),
      reverseBytesSent: null,
      divergentBytes,
      targets: { speedupOverRsync: 3, bytesRatioToRsync: 1, reverseToDivergent: 1.2 },
      machine,
      options: { ...o, resultsDir: undefined },
      osrRuns,
      rsyncRuns,
    };
    fs.mkdirSync(o.resultsDir, { recursive: true });
    const out = path.join(o.resultsDir, 'resync.json');
    fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`\nresults: ${path.relative(process.cwd(), out)}   (MB = 1e6 bytes)`);
  } finally {
    await remove();
  }
}
