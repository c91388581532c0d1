/**
 * The libvirt benchmark: a real domain (the tiny guest, TCG) replicated by
 * `osr agent --host libvirt` to a replica agent, against virtnbdbackup on the same domain
 * and the same changes, in the same run.
 *
 * - initialReplicationMBps: the initial copy of a data disk of random bytes (enable to the
 *   first recovery point), MB of data per second;
 * - deltaCycleOverheadSeconds: one cycle of an idle domain's change tracking (checkpoint,
 *   backup start, block status, job end), median;
 * - osrIncSeconds / virtnbdbackupIncSeconds: the same scattered changes (random bytes
 *   written while the domain is off, through qemu-nbd, so both tools' bitmaps see them):
 *   one osr cycle (read over NBD, shipped, applied at the replica, the point made) against
 *   `virtnbdbackup -l inc` (read over NBD, written to its backup directory); each tool's
 *   timed run starts from rest, as a cycle minutes after the last one does: every dirty
 *   page written back (`sync`, so neither runs while the kernel writes what the other left
 *   behind) and 10 s idle (on a virtual machine, pages freed a moment ago are far cheaper
 *   to take again than pages the guest has handed back to the host);
 *   deltaMBps: the changed bytes over osr's cycle time;
 * - testFailoverBootSeconds: a recovery point opened writable at the replica and a domain
 *   started on it over NBD, until the guest has mounted its file system;
 * - rpoP50Seconds / rpoP99Seconds: RPO of 4 tiny guests each writing about 2 MB/s to its
 *   data disk, replicated at a 30 s copy frequency by one agent pair for a few minutes:
 *   every replication's `rpoSeconds` sampled each second once each has a point, with both
 *   agents' CPU and RSS over the same window.
 */
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { LibvirtTracking } from '../src/agent/libvirt/tracking.js';
import { Virsh, xmlText } from '../src/agent/libvirt/virsh.js';
import { NbdClient, parseNbdUri } from '../src/agent/nbd/nbd-client.js';
import type { DeltaTimings, ReplicationHealth } from '../src/agent/wire/replication-types.js';
import { ensurePki } from '../src/lab/agent-process.js';
import { removeDomain, startTinyDomain, type TinyDomain } from '../src/lab/tiny-domain.js';
import { tinyGuest } from '../src/lab/tiny-guest.js';
import { parseBytes, UsageError, type Flags } from './lib/args.js';
import { onCleanup, sleep, startAgent, tempDir, waitFor, type BenchAgent } from './lib/lab.js';
import { machineFacts } from './lib/machine.js';
import { cpuSeconds, cpuTimes, ProcessSampler, threadCpu, threadCpuSince } from './lib/proc.js';
import { MB, median, percentile, round } from './lib/stats.js';
import { fmt, formatTable } from './lib/table.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

export interface LibvirtBenchOptions {
  runs: number;
  /** the data disk's size; it is filled with random bytes for the initial copy */
  bytes: number;
  /** bytes changed between cycles, in 64 KiB blocks at random offsets */
  changed: number;
  /** run one part: the compared cycles (with the initial copy, idle cycles and drill boots) or the RPO run */
  only: 'cycle' | 'rpo' | undefined;
  /** the RPO run: guests, KiB/s each writes, copy frequency, minutes measured */
  rpoGuests: number;
  rpoWriteKiBps: number;
  rpoFrequency: string;
  rpoMinutes: number;
  /** write CPU profiles of the agent processes into this directory */
  cpuProfDir: string | undefined;
  resultsDir: string;
}

export function libvirtOptions(flags: Flags, resultsDir: string): LibvirtBenchOptions {
  const o: LibvirtBenchOptions = {
    runs: flags.number('runs', 3, (n) => Number.isInteger(n) && n > 0),
    bytes: parseBytes(flags.string('size', '2G')),
    changed: parseBytes(flags.string('changed', '1G')),
    only: undefined,
    rpoGuests: flags.number('rpo-guests', 4, (n) => Number.isInteger(n) && n > 0),
    rpoWriteKiBps: flags.number('rpo-write', 2000, (n) => n >= 0),
    rpoFrequency: flags.string('rpo-frequency', '30s'),
    rpoMinutes: flags.number('rpo-minutes', 3, (n) => n > 0),
    cpuProfDir: flags.optionalString('cpu-prof'),
    resultsDir,
  };
  const only = flags.optionalString('only');
  if (only !== undefined && only !== 'cycle' && only !== 'rpo') throw new UsageError('--only takes cycle or rpo');
  o.only = only;
  if (o.changed > o.bytes) throw new UsageError('--changed cannot be more than --size');
  return o;
}

/** Start an agent, profiled (a preloaded inspector session, see lib/cpu-prof-preload.ts) when asked. */
async function startBenchAgent(o: LibvirtBenchOptions, tag: string, opts: Parameters<typeof startAgent>[0]): Promise<BenchAgent> {
  if (!o.cpuProfDir) return startAgent(opts);
  // node refuses --cpu-prof in NODE_OPTIONS; the agents inherit this environment at spawn
  const saved = { ...process.env };
  const preload = new URL('./lib/cpu-prof-preload.js', import.meta.url).href;
  process.env.NODE_OPTIONS = `${saved.NODE_OPTIONS ?? ''} --import "${preload}"`.trim();
  process.env.OSR_BENCH_CPU_PROF_DIR = path.resolve(o.cpuProfDir);
  process.env.OSR_BENCH_CPU_PROF_NAME = `libvirt-${tag}-${opts.name}`;
  try {
    return await startAgent(opts);
  } finally {
    for (const k of ['NODE_OPTIONS', 'OSR_BENCH_CPU_PROF_DIR', 'OSR_BENCH_CPU_PROF_NAME']) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
}


/** A qcow2 v3 image of random bytes (converted from a raw file, which then goes). */
async function randomImage(file: string, bytes: number): Promise<void> {
  const raw = `${file}.raw`;
  const fd = fs.openSync(raw, 'w');
  for (let pos = 0; pos < bytes; pos += 4 * MiB) fs.writeSync(fd, crypto.randomBytes(Math.min(4 * MiB, bytes - pos)), 0, undefined, pos);
  fs.closeSync(fd);
  await run('qemu-img', ['convert', '-q', '-O', 'qcow2', '-o', 'compat=1.1', raw, file]);
  fs.rmSync(raw);
}

/** The blocks a round changes: 64 KiB blocks at random offsets, and the key their bytes are made from. */
function changeSet(size: number, bytes: number): { blocks: number[]; key: Buffer } {
  const total = size / (64 * 1024);
  const picked = new Set<number>();
  while (picked.size < Math.min(total, Math.floor(bytes / (64 * 1024)))) picked.add(crypto.randomInt(total));
  return { blocks: [...picked].sort((x, y) => x - y), key: crypto.randomBytes(16) };
}

/** One block's bytes: random-looking, the same for the same key and block (AES-CTR of zeroes). */
function blockBytes(key: Buffer, block: number): Buffer {
  const iv = Buffer.alloc(16);
  iv.writeUInt32BE(block, 0);
  return crypto.createCipheriv('aes-128-ctr', key, iv).update(Buffer.alloc(64 * 1024));
}

/** Write a change set into a shut-off domain's image through qemu-nbd (its bitmaps see the writes). */
async function scatter(image: string, changes: { blocks: number[]; key: Buffer }, dir: string): Promise<number> {
  const sock = path.join(dir, `scatter-${path.basename(image)}.sock`);
  fs.rmSync(sock, { force: true });
  const child = spawn('qemu-nbd', ['-k', sock, '-f', 'qcow2', image], { stdio: 'ignore' });
  try {
    await waitFor('qemu-nbd', async () => fs.existsSync(sock) || undefined, 10_000);
    const c = await NbdClient.connect({ socketPath: sock, exportName: '' });
    for (const b of changes.blocks) await c.write(b * 64 * 1024, blockBytes(changes.key, b));
    await c.flush();
    await c.close();
    return changes.blocks.length * 64 * 1024;
  } finally {
    child.kill();
    await new Promise((r) => child.once('exit', r));
  }
}

/** Wait until a (re)started tiny guest has mounted its file system. */
function mounted(d: TinyDomain): Promise<true> {
  return waitFor(`${d.name} to boot`, async () => (fs.existsSync(d.console) && fs.readFileSync(d.console, 'latin1').includes('osr-guest: mounted') ? true : undefined), 180_000, 200);
}

type Row = (string | null)[];

export async function runLibvirtBench(o: LibvirtBenchOptions): Promise<void> {
  const virsh = new Virsh();
  await virsh.run(['version']).catch(() => {
    throw new Error('libvirtd does not answer on qemu:///system: run bash scripts/libvirt-up.sh first');
  });
  const { dir, remove } = tempDir('libvirt');
  onCleanup(remove);
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, ['primary', 'replica']);
  const out = path.join(o.resultsDir, 'libvirt.json');
  // one part alone keeps the other part's figures from the last full run
  const previous = o.only && fs.existsSync(out) ? (JSON.parse(fs.readFileSync(out, 'utf8')) as Record<string, unknown>) : {};
  const result: Record<string, unknown> = { ...previous, benchmark: 'libvirt', at: new Date().toISOString(), machine: machineFacts(), options: { ...o, resultsDir: undefined, cpuProfDir: undefined } };
  delete result.notMeasured;
  const rows: Row[] = [];
  if (o.only !== 'rpo') Object.assign(result, await runCycles(o, virsh, dir, pkiDir, rows));
  if (o.only !== 'cycle') Object.assign(result, await runRpo(o, virsh, dir, pkiDir, rows));
  console.log(formatTable(['measure', 'value', 'target'], rows));
  fs.mkdirSync(o.resultsDir, { recursive: true });
  fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`wrote ${out}`);
}

/** Before a timed run: nothing left dirty by the run before, and the machine at rest. */
async function settle(): Promise<void> {
  await run('sync', []);
  await sleep(10_000);
}

/** The initial copy, idle cycles, the compared incremental cycles and the drill boots. */
async function runCycles(o: LibvirtBenchOptions, virsh: Virsh, dir: string, pkiDir: string, rows: Row[]): Promise<Record<string, unknown>> {
  const hasVnb = await run('virtnbdbackup', ['--version']).then(
    () => true,
    () => false,
  );
  const guest = await tinyGuest();
  const name = `osr-bench-${process.pid}`;

  // the domain: an ext4 system disk, a data disk of random bytes; idle (no guest writes)
  const dataImage = path.join(dir, 'data.qcow2');
  await randomImage(dataImage, o.bytes);
  const dom: TinyDomain = await startTinyDomain(virsh, name, path.join(dir, 'domain'), { dataImage, idle: true });
  onCleanup(() => removeDomain(virsh, name));
  const replica = await startBenchAgent(o, 'cycle', { name: 'replica', dataDir: path.join(dir, 'replica'), pkiDir, listenPort: 0, logFile: path.join(dir, 'replica.log'), extraArgs: ['--log-level', 'warn'] });
  const primary = await startBenchAgent(o, 'cycle', { name: 'primary', dataDir: path.join(dir, 'primary'), pkiDir, logFile: path.join(dir, 'primary.log'), extraArgs: ['--log-level', 'warn', '--host', 'libvirt', '--libvirt-domains', `^${name}$`] });
  const health = () => primary.api.get<ReplicationHealth>(`/v1/replications/${name}`);
  const pointAfter = (seq: number | null) =>
    waitFor(
      'a recovery point',
      async () => {
        const h = await health();
        if (h.lastError && h.lastError.code !== 'NETWORK_ERROR') throw new Error(`${h.lastError.code}: ${h.lastError.message}`);
        return h.latestPoint && (seq === null || h.latestPoint.seq > seq) ? h.latestPoint.seq : undefined;
      },
      30 * 60_000,
    );

  // initial replication
  const t0 = performance.now();
  await primary.api.post('/v1/replications', { vm: name, peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50, compression: false });
  let seq = await pointAfter(null);
  const initialSeconds = (performance.now() - t0) / 1000;
  const initialMBps = o.bytes / MB / initialSeconds;

  // idle cycle overhead: a second, idle domain tracked in-process
  const idleName = `${name}-idle`;
  const idle = await startTinyDomain(virsh, idleName, path.join(dir, 'idle'), { idle: true });
  onCleanup(() => removeDomain(virsh, idleName));
  const tracking = new LibvirtTracking(virsh, idleName, [{ id: 'vda', target: 'vda', size: 64 * MiB }, { id: 'vdb', target: 'vdb', size: 16 * MiB }], path.join(dir, 'idle-tracking'), Date.now);
  await tracking.start();
  await tracking.swap('crash-consistent');
  const overhead: number[] = [];
  for (let i = 0; i < Math.max(5, o.runs); i++) {
    const s = performance.now();
    await tracking.swap('crash-consistent');
    overhead.push((performance.now() - s) / 1000);
  }
  tracking.stop();
  await idle.destroy();

  // the same changes for osr and virtnbdbackup: virtnbdbackup refuses a domain with
  // another tool's checkpoints, so it backs up a twin domain on a copy of the same images
  const vnbDir = path.join(dir, 'virtnbdbackup');
  const twinName = `${name}-vnb`;
  const twinImage = path.join(dir, 'twin-data.qcow2');
  let twin: TinyDomain | undefined;
  if (hasVnb) {
    await virsh.run(['destroy', name]);
    fs.copyFileSync(dataImage, twinImage);
    twin = await startTinyDomain(virsh, twinName, path.join(dir, 'twin'), { dataImage: twinImage, idle: true });
    onCleanup(() => removeDomain(virsh, twinName));
    fs.rmSync(dom.console, { force: true });
    await virsh.run(['start', name]);
    await mounted(dom);
    await run('virtnbdbackup', ['-d', twinName, '-l', 'full', '-o', vnbDir, '--noprogress'], { maxBuffer: 64 * MiB });
  }
  const rounds: {
    changedBytes: number;
    osrSeconds: number;
    vnbSeconds: number | null;
    readSeconds: number | null;
    sendSeconds: number | null;
    applySeconds: number | null;
    replicaApplySeconds: number | null;
    swap: DeltaTimings['swap'] | null;
    replicaApplySteps: DeltaTimings['replicaApplySteps'] | null;
    /** CPU seconds (user + system) over each tool's cycle: the agents, the domain's QEMU, virtnbdbackup */
    cpu: { primary: number | null; replica: number | null; qemu: number | null; vnbQemu: number | null; virtnbdbackup: number | null };
    /** the agents' CPU over the cycle per kind of thread */
    threads: { primary: Record<string, string>; replica: Record<string, string> };
  }[] = [];
  for (let r = 0; r < o.runs; r++) {
    await primary.api.post(`/v1/replications/${name}/cycle`);
    seq = await pointAfter(seq);
    const changes = changeSet(o.bytes, o.changed);
    let changedBytes = 0;
    for (const d of [dom, twin]) {
      if (!d) continue;
      await virsh.run(['destroy', d.name]);
      changedBytes = await scatter(d.images.vdb, changes, dir);
      fs.rmSync(d.console, { force: true });
      await virsh.run(['start', d.name]);
      await mounted(d);
    }
    const cpuOf = (pid: number | null) => (pid === null ? null : cpuSeconds(pid));
    const less = (a: number | null, b: number | null) => (a === null || b === null ? null : round(a - b, 2));
    const qemuPid = domainPid(name);
    await settle();
    const cpu0 = [cpuOf(primary.child.pid ?? null), cpuOf(replica.child.pid ?? null), cpuOf(qemuPid)];
    const threads0 = [primary, replica].map((a) => threadCpu(a.child.pid ?? 0));
    const s = performance.now();
    await primary.api.post(`/v1/replications/${name}/cycle`);
    seq = await pointAfter(seq);
    const osrSeconds = (performance.now() - s) / 1000;
    const cpu1 = [cpuOf(primary.child.pid ?? null), cpuOf(replica.child.pid ?? null), cpuOf(qemuPid)];
    const threads = [primary, replica].map((a, i) => threadCpuSince(threads0[i]!, threadCpu(a.child.pid ?? 0)));
    // where the cycle's time went: reading the dirty extents into the delta, sending it, applying it
    const d = (await health()).lastDelta;
    let vnbSeconds: number | null = null;
    let vnbQemuCpu: number | null = null;
    let vnbCpu: number | null = null;
    if (hasVnb) {
      await settle();
      const twinPid = domainPid(twinName);
      const q0 = cpuOf(twinPid);
      const c0 = cpuTimes('self')?.children ?? null;
      const v = performance.now();
      await run('virtnbdbackup', ['-d', twinName, '-l', 'inc', '-o', vnbDir, '--noprogress'], { maxBuffer: 64 * MiB });
      vnbSeconds = (performance.now() - v) / 1000;
      vnbQemuCpu = less(cpuOf(twinPid), q0);
      vnbCpu = less(cpuTimes('self')?.children ?? null, c0);
    }
    rounds.push({
      changedBytes,
      osrSeconds,
      vnbSeconds,
      readSeconds: d ? d.syncMs / 1000 : null,
      sendSeconds: d ? d.sendMs / 1000 : null,
      applySeconds: d ? d.applyMs / 1000 : null,
      replicaApplySeconds: d?.replicaApplyMs != null ? d.replicaApplyMs / 1000 : null,
      swap: d?.swap ?? null,
      replicaApplySteps: d?.replicaApplySteps ?? null,
      cpu: { primary: less(cpu1[0], cpu0[0]), replica: less(cpu1[1], cpu0[1]), qemu: less(cpu1[2], cpu0[2]), vnbQemu: vnbQemuCpu, virtnbdbackup: vnbCpu },
      threads: { primary: threads[0]!, replica: threads[1]! },
    });
  }

  // test failover boot: the latest point opened writable at the replica, a domain on it over NBD
  const boots: number[] = [];
  for (let r = 0; r < o.runs; r++) {
    const s = performance.now();
    const overlay = await replica.api.post<{ id: string; disks: { name: string; nbd: { unix: string } }[] }>(`/v1/replicas/${name}/overlays`, { point: seq });
    const drill = `${name}-drill`;
    const consoleLog = path.join(dir, `drill-${r}.console`);
    const disks = overlay.disks.map((d, i) => {
      const t = parseNbdUri(d.nbd.unix) as { socketPath: string; exportName: string };
      return `<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/><source protocol='nbd' name='${xmlText(t.exportName)}'><host transport='unix' socket='${xmlText(t.socketPath)}'/></source><target dev='vd${String.fromCharCode(97 + i)}' bus='virtio'/></disk>`;
    });
    await virsh.withXml(
      `<domain type='qemu'><name>${drill}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type><kernel>${xmlText(guest.kernel)}</kernel><initrd>${xmlText(guest.initrd)}</initrd><cmdline>${xmlText(`${guest.cmdline} osr.idle=1`)}</cmdline></os><on_poweroff>destroy</on_poweroff><devices>${disks.join('')}<serial type='file'><source path='${xmlText(consoleLog)}'/><target port='0'/></serial></devices></domain>`,
      (f) => ['define', f],
    );
    await virsh.run(['start', drill]);
    await waitFor('the drill guest', async () => (fs.existsSync(consoleLog) && fs.readFileSync(consoleLog, 'latin1').includes('osr-guest: mounted') ? true : undefined), 180_000, 50);
    boots.push((performance.now() - s) / 1000);
    await removeDomain(virsh, drill);
    await replica.api.delete(`/v1/replicas/${name}/overlays/${overlay.id}`);
  }

  const osrInc = median(rounds.map((x) => x.osrSeconds));
  const vnbInc = hasVnb ? median(rounds.map((x) => x.vnbSeconds!)) : null;
  const changedMedian = median(rounds.map((x) => x.changedBytes));
  const result = {
    initialReplicationMBps: round(initialMBps, 1),
    initialSeconds: round(initialSeconds, 2),
    deltaCycleOverheadSeconds: round(median(overhead), 3),
    deltaCycleOverheadRuns: overhead.map((x) => round(x, 3)),
    changedBytes: changedMedian,
    osrIncSeconds: round(osrInc, 2),
    virtnbdbackupIncSeconds: vnbInc === null ? null : round(vnbInc, 2),
    osrToVirtnbdbackup: vnbInc === null ? null : round(osrInc / vnbInc, 2),
    deltaMBps: round(changedMedian / MB / osrInc, 1),
    osrIncReadSeconds: round(median(rounds.map((x) => x.readSeconds ?? 0)), 2),
    osrIncSendSeconds: round(median(rounds.map((x) => x.sendSeconds ?? 0)), 2),
    osrIncApplySeconds: round(median(rounds.map((x) => x.applySeconds ?? 0)), 2),
    osrIncReplicaApplySeconds: round(median(rounds.map((x) => x.replicaApplySeconds ?? 0)), 2),
    // of the read: the backup begun, the extents read and logged (and streamed), the logs' sync, the backup ended
    osrIncSwapSeconds: {
      backup: round(median(rounds.map((x) => (x.swap?.backupMs ?? NaN) / 1000)), 2),
      readAndLog: round(median(rounds.map((x) => (x.swap?.readMs ?? NaN) / 1000)), 2),
      logSync: round(median(rounds.map((x) => (x.swap?.logSyncMs ?? NaN) / 1000)), 2),
      end: round(median(rounds.map((x) => (x.swap?.endMs ?? NaN) / 1000)), 2),
    },
    // of the apply: the logs verified, the undo written and synced, the images written, synced, the point recorded
    osrIncApplyStepsSeconds: Object.fromEntries(
      (['verifyMs', 'undoMs', 'imageMs', 'syncMs', 'finishMs'] as const).map((k) => [k.replace('Ms', ''), round(median(rounds.map((x) => (x.replicaApplySteps?.[k] ?? NaN) / 1000)), 2)]),
    ),
    // CPU seconds over the cycle (median): osr's agents and QEMU, virtnbdbackup and its domain's QEMU
    osrIncCpuSeconds: Object.fromEntries((['primary', 'replica', 'qemu', 'virtnbdbackup', 'vnbQemu'] as const).map((k) => [k, round(median(rounds.map((x) => x.cpu[k] ?? NaN)), 2)])),
    testFailoverBootSeconds: round(median(boots), 2),
    rounds,
  };
  rows.push(
        ['initial replication (MB/s)', fmt(result.initialReplicationMBps), null],
        ['idle cycle overhead (s, median)', fmt(result.deltaCycleOverheadSeconds, 3), '≤ 1'],
        [`osr cycle, ${fmt(changedMedian / MiB, 0)} MiB scattered (s)`, fmt(result.osrIncSeconds, 2), '≤ virtnbdbackup'],
        ['  of which: read into the delta (s)', fmt(result.osrIncReadSeconds, 2), null],
        ['    backup begun / extents read and logged / logs synced / backup ended (s)', [result.osrIncSwapSeconds.backup, result.osrIncSwapSeconds.readAndLog, result.osrIncSwapSeconds.logSync, result.osrIncSwapSeconds.end].map((x) => fmt(x, 2) ?? '—').join(' / '), null],
        ['  sent to the replica (s, after the read: streamed deltas go out while read)', fmt(result.osrIncSendSeconds, 2), null],
        ['  applied at the replica (s)', fmt(result.osrIncApplySeconds, 2), null],
        ['    verify / undo / image writes / image sync / finish (s)', Object.values(result.osrIncApplyStepsSeconds).map((x) => fmt(x, 2) ?? '—').join(' / '), null],
        ['    CPU s: primary / replica / QEMU', [result.osrIncCpuSeconds.primary, result.osrIncCpuSeconds.replica, result.osrIncCpuSeconds.qemu].map((x) => fmt(x, 2) ?? '—').join(' / '), null],
        ['virtnbdbackup -l inc, same changes (s)', fmt(result.virtnbdbackupIncSeconds, 2), null],
        ['    CPU s: virtnbdbackup / QEMU', [result.osrIncCpuSeconds.virtnbdbackup, result.osrIncCpuSeconds.vnbQemu].map((x) => fmt(x, 2) ?? '—').join(' / '), null],
        ['osr / virtnbdbackup', fmt(result.osrToVirtnbdbackup, 2), '≤ 1'],
        ['delta (MB/s, read + shipped + applied)', fmt(result.deltaMBps), null],
    ['test failover boot (s, median)', fmt(result.testFailoverBootSeconds, 2), null],
  );
  if (!hasVnb) console.log('virtnbdbackup is not installed (Debian package virtnbdbackup): its column is empty');
  await primary.stop();
  await replica.stop();
  return result;
}

/**
 * RPO under load: `rpoGuests` tiny guests, each writing `rpoWriteKiBps` KiB/s of random
 * bytes to its data disk, replicated by one agent pair at `rpoFrequency`. Once every
 * replication has its first point, each one's `rpoSeconds` is sampled every second for
 * `rpoMinutes`, with both agents' CPU and RSS.
 */
async function runRpo(o: LibvirtBenchOptions, virsh: Virsh, dir: string, pkiDir: string, rows: Row[]): Promise<Record<string, unknown>> {
  const prefix = `osr-rpo-${process.pid}-`;
  const names = Array.from({ length: o.rpoGuests }, (_, i) => `${prefix}${i}`);
  const domains: TinyDomain[] = [];
  for (const n of names) {
    onCleanup(() => removeDomain(virsh, n));
    domains.push(await startTinyDomain(virsh, n, path.join(dir, n), { dataMiB: 256, idle: true, writeKiBps: o.rpoWriteKiBps, bootTimeoutMs: 300_000 }));
  }
  const replica = await startBenchAgent(o, 'rpo', { name: 'replica', dataDir: path.join(dir, 'rpo-replica'), pkiDir, listenPort: 0, logFile: path.join(dir, 'rpo-replica.log'), extraArgs: ['--log-level', 'warn'] });
  const primary = await startBenchAgent(o, 'rpo', { name: 'primary', dataDir: path.join(dir, 'rpo-primary'), pkiDir, logFile: path.join(dir, 'rpo-primary.log'), extraArgs: ['--log-level', 'warn', '--host', 'libvirt', '--libvirt-domains', `^${prefix}`] });
  for (const n of names) await primary.api.post('/v1/replications', { vm: n, peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: o.rpoFrequency, retentionHours: 1, maxPoints: 20, compression: false });
  const healths = () => Promise.all(names.map((n) => primary.api.get<ReplicationHealth>(`/v1/replications/${n}`)));
  await waitFor(
    'a first point of every guest',
    async () => {
      const hs = await healths();
      for (const h of hs) if (h.lastError && h.lastError.code !== 'NETWORK_ERROR') throw new Error(`${h.vm}: ${h.lastError.code}: ${h.lastError.message}`);
      return hs.every((h) => h.latestPoint) ? true : undefined;
    },
    15 * 60_000,
    500,
  );
  const shippedAt = (await healths()).map((h) => h.bytesShipped);
  const samplers = [primary, replica].map((a) => new ProcessSampler(a.child.pid!).start());
  const samples: number[] = [];
  const perVmMax = names.map(() => 0);
  const errors = new Set<string>();
  const t0 = performance.now();
  const endMs = t0 + o.rpoMinutes * 60_000;
  while (performance.now() < endMs) {
    const at = performance.now();
    const hs = await healths();
    hs.forEach((h, i) => {
      if (h.rpoSeconds !== null) {
        samples.push(h.rpoSeconds);
        perVmMax[i] = Math.max(perVmMax[i]!, h.rpoSeconds);
      }
      if (h.lastError) errors.add(`${h.lastError.code}: ${h.lastError.message}`);
    });
    await sleep(Math.max(0, 1000 - (performance.now() - at)));
  }
  const wallSeconds = (performance.now() - t0) / 1000;
  const [pu, ru] = samplers.map((s) => s.stop());
  const end = await healths();
  const shippedMBps = end.map((h, i) => (h.bytesShipped - shippedAt[i]!) / MB / wallSeconds);
  const result = {
    rpoGuests: o.rpoGuests,
    rpoWriteMBpsPerGuest: round((o.rpoWriteKiBps * 1024) / MB, 2),
    rpoShippedMBpsPerGuest: round(median(shippedMBps), 2),
    rpoFrequency: o.rpoFrequency,
    rpoMinutes: o.rpoMinutes,
    rpoSamples: samples.length,
    rpoP50Seconds: round(percentile(samples, 50), 1),
    rpoP99Seconds: round(percentile(samples, 99), 1),
    rpoMaxSeconds: round(Math.max(...samples), 1),
    rpoMaxSecondsPerGuest: perVmMax.map((x) => round(x, 1)),
    rpoCycles: end.map((h) => h.cyclesLastHour),
    rpoMissedCycles: end.map((h) => h.missedCyclesLastHour),
    rpoErrors: [...errors],
    rpoLastDeltas: end.map((h) => h.lastDelta),
    rpoPrimaryCpuPercent: round(pu!.cpuPercentMean, 1),
    rpoPrimaryRssMBMax: round(pu!.rssMBMax, 0),
    rpoReplicaCpuPercent: round(ru!.cpuPercentMean, 1),
    rpoReplicaRssMBMax: round(ru!.rssMBMax, 0),
  };
  rows.push(
    [`RPO p50, ${o.rpoGuests} guests × ${fmt(result.rpoWriteMBpsPerGuest, 1)} MB/s, every ${o.rpoFrequency} (s)`, fmt(result.rpoP50Seconds, 1), null],
    ['RPO p99 (s)', fmt(result.rpoP99Seconds, 1), '≤ 35'],
    ['  shipped per guest (MB/s, median)', fmt(result.rpoShippedMBpsPerGuest, 2), null],
    ['  primary agent CPU (% of a core) / RSS max (MB)', `${fmt(result.rpoPrimaryCpuPercent, 1)} / ${fmt(result.rpoPrimaryRssMBMax, 0)}`, null],
    ['  replica agent CPU (% of a core) / RSS max (MB)', `${fmt(result.rpoReplicaCpuPercent, 1)} / ${fmt(result.rpoReplicaRssMBMax, 0)}`, null],
  );
  for (const n of names) await primary.api.delete(`/v1/replications/${n}`).catch(() => undefined);
  await primary.stop();
  await replica.stop();
  for (const d of domains) await d.destroy();
  return result;
}

/** The QEMU process of a running domain (libvirt's pid file), or null. */
function domainPid(name: string): number | null {
  try {
    const pid = Number(fs.readFileSync(`/run/libvirt/qemu/${name}.pid`, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}
