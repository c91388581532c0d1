/**
 * The replication benchmark (`npm run bench -- replication`):
 *
 *  1. Initial replication: one VM with a disk full of random data (2 GiB), copied by a
 *     primary agent to a replica agent, timed from enabling replication until the first
 *     recovery point exists; repeated, median. The peer is rsync (daemon on 127.0.0.1,
 *     --whole-file --inplace) copying a file of the same size on the same machine.
 *  2. Steady state: 20 VMs on one primary, copy frequency 30 s, every VM's guest writing
 *     2 MB/s over NBD for 3 minutes: RPO p50/p99 over per-second samples of every VM, CPU
 *     and RSS of both agents, bytes shipped, churn achieved. With `--mode continuous`, the
 *     steady state alone: first with continuous replication (a cut every second, a point
 *     kept every 5 s), then the same load in 30 s cycles, reported side by side.
 *
 * Units: MB = 1e6 bytes, MB/s = 1e6 bytes per second; GiB = 2^30 bytes. Details and
 * results: docs/benchmarks.md.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NbdClient } from '../src/agent/nbd/nbd-client.js';
import type { ReplicationHealth } from '../src/agent/wire/replication-types.js';
import { ensurePki } from '../src/lab/agent-process.js';
import { parseBytes, parseMs, UsageError, type Flags } from './lib/args.js';
import { sleep, startAgent, tempDir, type BenchAgent } from './lib/lab.js';
import { machineFacts } from './lib/machine.js';
import { MachineCpuMeter, ownCpuSeconds, ProcessSampler, type ProcessUsage } from './lib/proc.js';
import { rsyncCopy, startRsyncDaemon } from './lib/rsync.js';
import { fillRandom, sameBytes } from './lib/files.js';
import { tlsPipeRun, type TlsPipeRun } from './lib/tls-pipe.js';
import { GiB, MB, max, mean, median, percentile, round } from './lib/stats.js';
import { fmt, formatTable, type Cell } from './lib/table.js';

export interface ReplicationBenchOptions {
  /** repetitions of the initial replication and of the rsync copy */
  runs: number;
  /** bytes of random data for the initial replication */
  initialBytes: number;
  /** one extra initial replication with compression on */
  compressionRun: boolean;
  /** also time rsync --fsync (durable like osr's checkpoints) */
  rsyncFsync: boolean;
  vms: number;
  minutes: number;
  frequencyMs: number;
  /** the steady state's copy mode; continuous also runs the cycles of frequencyMs to compare */
  mode: 'cycles' | 'continuous';
  /** continuous: a point kept this often */
  pointIntervalMs: number;
  diskBytes: number;
  /** guest writes per VM, MB/s (1e6 bytes) */
  churnMBps: number;
  phases: { initial: boolean; steady: boolean };
  /** write agent CPU profiles (node --cpu-prof) into this directory */
  cpuProfDir: string | undefined;
  resultsDir: string;
}

export const TARGETS = { initialRatioToRsync: 1.5, initialRatioToPipe: 0.9, initialCpuRatioToRsync: 1.2, rpoP99Seconds: 35, continuousRpoP99Seconds: 5 } as const;

export function replicationOptions(flags: Flags, resultsDir: string): ReplicationBenchOptions {
  const only = flags.optionalString('only');
  if (only !== undefined && only !== 'initial' && only !== 'steady') throw new UsageError('--only takes initial or steady');
  const mode = flags.string('mode', 'cycles');
  if (mode !== 'cycles' && mode !== 'continuous') throw new UsageError('--mode takes cycles or continuous');
  if (mode === 'continuous' && only === 'initial') throw new UsageError('--mode continuous is a steady-state run: drop --only initial');
  const o: ReplicationBenchOptions = {
    runs: flags.number('runs', 3, (n) => Number.isInteger(n) && n >= 1),
    initialBytes: parseBytes(flags.string('size', '2G')),
    compressionRun: !flags.bool('no-compression-run'),
    rsyncFsync: !flags.bool('no-rsync-fsync'),
    vms: flags.number('vms', 20, (n) => Number.isInteger(n) && n >= 1 && n <= 200),
    minutes: flags.number('minutes', 3),
    frequencyMs: parseMs(flags.string('frequency', '30s')),
    mode,
    pointIntervalMs: parseMs(flags.string('point-interval', '5s')),
    diskBytes: parseBytes(flags.string('disk', '1G')),
    churnMBps: flags.number('churn', 2, (n) => n >= 0),
    phases: { initial: only !== 'steady' && mode === 'cycles', steady: only !== 'initial' },
    cpuProfDir: flags.optionalString('cpu-prof'),
    resultsDir,
  };
  if (o.initialBytes % 4096 !== 0 || o.diskBytes % 4096 !== 0) throw new UsageError('sizes must be multiples of 4 KiB');
  if (o.cpuProfDir) o.cpuProfDir = path.resolve(o.cpuProfDir);
  return o;
}

// ---- helpers ------------------------------------------------------------------------------

interface AgentPair {
  primary: BenchAgent;
  replica: BenchAgent;
  peer: string;
}

async function startPair(dir: string, pkiDir: string, o: ReplicationBenchOptions, tag: string): Promise<AgentPair> {
  const withProfile = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    if (!o.cpuProfDir) return fn();
    // node refuses --cpu-prof in NODE_OPTIONS; a preloaded module runs the profiler instead.
    // The agents inherit our environment at spawn: set it just for them.
    const saved = { ...process.env };
    const preload = new URL('./lib/cpu-prof-preload.js', import.meta.url).href;
    process.env.NODE_OPTIONS = `${saved.NODE_OPTIONS ?? ''} --import "${preload}"`.trim();
    process.env.OSR_BENCH_CPU_PROF_DIR = o.cpuProfDir;
    process.env.OSR_BENCH_CPU_PROF_NAME = `${tag}-${name}`;
    try {
      return await fn();
    } finally {
      for (const k of ['NODE_OPTIONS', 'OSR_BENCH_CPU_PROF_DIR', 'OSR_BENCH_CPU_PROF_NAME']) {
        if (saved[k] === undefined) delete process.env[k];
        else process.env[k] = saved[k];
      }
    }
  };
  const replica = await withProfile('replica', () =>
    startAgent({ name: 'replica', dataDir: path.join(dir, 'replica'), pkiDir, listenPort: 0, logFile: path.join(dir, 'replica.log'), extraArgs: ['--log-level', 'warn'] }),
  );
  const primary = await withProfile('primary', () =>
    startAgent({ name: 'primary', dataDir: path.join(dir, 'primary'), pkiDir, logFile: path.join(dir, 'primary.log'), extraArgs: ['--log-level', 'warn'] }),
  );
  return { primary, replica, peer: `127.0.0.1:${replica.replicationPort}` };
}

async function stopPair(p: Partial<AgentPair>): Promise<void> {
  await Promise.all([p.primary?.stop(), p.replica?.stop()]);
}

/** The last lines of the agents' logs: printed when a run fails, before its directory goes. */
function logTails(dir: string): string {
  const out: string[] = [];
  for (const f of ['primary.log', 'replica.log']) {
    const file = path.join(dir, f);
    if (!fs.existsSync(file)) continue;
    const lines = fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-15);
    if (lines.length && lines[0]) out.push(`--- ${f} (last ${lines.length} lines)\n${lines.join('\n')}`);
  }
  return out.join('\n');
}

async function withRunDir<T>(label: string, fn: (dir: string) => Promise<T>, removing?: string): Promise<T> {
  const { dir, remove } = tempDir(label);
  try {
    return await fn(dir);
  } catch (e) {
    const tails = logTails(dir);
    if (tails) console.error(tails);
    throw e;
  } finally {
    if (removing) console.log(removing);
    await remove();
  }
}

// ---- 1. initial replication -------------------------------------------------------------------

/** What else ran on the machine during a timed window. */
export interface MachineLoad {
  /** all processes, % of one core (100 × cores = every core busy) */
  machineBusyPercent: number;
  /** machine busy minus the processes being measured and this benchmark process */
  otherProcessesPercent: number;
  loadAvg1: number;
}

function machineLoad(meter: MachineCpuMeter, ourCpuSeconds: number, wallSeconds: number): MachineLoad {
  const busy = meter.busyPercent();
  return { machineBusyPercent: busy, otherProcessesPercent: Math.max(0, busy - (ourCpuSeconds / wallSeconds) * 100), loadAvg1: os.loadavg()[0] };
}

export interface InitialRun extends MachineLoad {
  compression: boolean;
  bytes: number;
  seconds: number;
  MBps: number;
  /** bytes of DATA frame bodies on the wire (compressed where that helped), last progress seen */
  wireBytes: number | null;
  /** the agent's own rate estimate, last progress seen */
  agentReportedMBps: number | null;
  /** from the POST until every byte was copied (the rest: final swap and first point) */
  copySeconds: number | null;
  fillSeconds: number;
  verified: boolean;
  primaryCpuPercent: number;
  replicaCpuPercent: number;
  primaryCpuSeconds: number;
  replicaCpuSeconds: number;
  /** CPU seconds of both agents per GB (1e9 bytes) copied */
  cpuSecondsPerGB: number;
  primaryRssMBMax: number;
  replicaRssMBMax: number;
  /** [seconds since the POST, MB copied] about every 250 ms */
  progress: [number, number][];
  /** MB/s from the first poll that saw bytes copied to the one that saw them all (health polled every 50 ms) */
  streamMBps: number | null;
}

async function initialRun(pkiDir: string, o: ReplicationBenchOptions, meter: MachineCpuMeter, index: number, compression: boolean): Promise<InitialRun> {
  const label = compression ? 'initial-zstd' : `initial-${index + 1}`;
  return withRunDir(label, async (dir) => {
    const pair: Partial<AgentPair> = {};
    try {
      Object.assign(pair, await startPair(dir, pkiDir, o, label));
      const { primary, replica, peer } = pair as AgentPair;
      const vm = `big${index + 1}`;
      await primary.api.post('/v1/vms', { name: vm, disks: [o.initialBytes] });
      const [disk] = await primary.api.get<{ name: string; size: number; image: string }[]>(`/v1/vms/${vm}/disks`);
      // fill the image before replication starts: the copy reads it from the page cache
      const fillSeconds = fillRandom(disk.image, o.initialBytes);
      const sp = new ProcessSampler(primary.child.pid!, 250).start();
      const sr = new ProcessSampler(replica.child.pid!, 250).start();
      meter.restart();
      const own0 = process.cpuUsage();
      const t0 = performance.now();
      await primary.api.post('/v1/replications', { vm, peer, copyFrequency: '1h', retentionHours: 1, maxPoints: 4, compression });
      let last: ReplicationHealth['initial'] = null;
      let copySeconds: number | null = null;
      /** when the copy was first seen under way, and how far it was */
      let firstBytes: [number, number] | null = null;
      const progress: [number, number][] = [];
      let h: ReplicationHealth;
      for (;;) {
        h = await primary.api.get<ReplicationHealth>(`/v1/replications/${vm}`);
        const t = (performance.now() - t0) / 1000;
        if (h.initial) {
          last = h.initial;
          if (firstBytes === null && h.initial.doneBytes > 0) firstBytes = [t, h.initial.doneBytes];
          if (copySeconds === null && h.initial.doneBytes >= h.initial.totalBytes) copySeconds = t;
          if (progress.length === 0 || t - progress[progress.length - 1][0] >= 0.25) progress.push([round(t, 2)!, round(h.initial.doneBytes / MB, 0)!]);
        }
        if (h.latestPoint) break;
        if (t > 15 * 60) throw new Error(`initial replication of ${vm} not done after 15 minutes (state ${h.state}, last error ${h.lastError?.message ?? 'none'})`);
        await sleep(50);
      }
      const seconds = (performance.now() - t0) / 1000;
      progress.push([round(seconds, 2)!, round(o.initialBytes / MB, 0)!]);
      const up = sp.stop();
      const ur = sr.stop();
      const load = machineLoad(meter, up.cpuSeconds + ur.cpuSeconds + ownCpuSeconds(own0), seconds);
      const rep = await replica.api.get<{ vmId: string; points: number }>(`/v1/replicas/${vm}`);
      const replicaImage = path.join(dir, 'replica', 'replicas', rep.vmId, 'disks', `${disk.name}.img`);
      const verified = rep.points >= 1 && sameBytes(disk.image, replicaImage, o.initialBytes);
      if (!verified) throw new Error(`the replica of ${vm} differs from the source after the initial replication`);
      return {
        compression,
        bytes: o.initialBytes,
        seconds,
        MBps: o.initialBytes / MB / seconds,
        wireBytes: last?.wireBytes ?? null,
        agentReportedMBps: last ? last.rateBytesPerSec / MB : null,
        copySeconds: copySeconds ?? null,
        streamMBps: firstBytes && copySeconds !== null && copySeconds > firstBytes[0] ? (o.initialBytes - firstBytes[1]) / MB / (copySeconds - firstBytes[0]) : null,
        fillSeconds,
        verified,
        primaryCpuPercent: up.cpuPercentMean,
        replicaCpuPercent: ur.cpuPercentMean,
        primaryCpuSeconds: up.cpuSeconds,
        replicaCpuSeconds: ur.cpuSeconds,
        cpuSecondsPerGB: (up.cpuSeconds + ur.cpuSeconds) / (o.initialBytes / 1e9),
        primaryRssMBMax: Math.max(up.rssMBMax, up.peakRssMB),
        replicaRssMBMax: Math.max(ur.rssMBMax, ur.peakRssMB),
        progress,
        ...load,
      };
    } finally {
      await stopPair(pair);
    }
  });
}

export interface RsyncRun extends MachineLoad {
  fsync: boolean;
  seconds: number;
  MBps: number;
  clientCpuSeconds: number | null;
  serverCpuSeconds: number | null;
  /** CPU seconds of client and server per GB (1e9 bytes) copied */
  cpuSecondsPerGB: number | null;
}

interface RsyncPeer {
  run: (fsync: boolean) => Promise<RsyncRun>;
  close: () => Promise<void>;
}

/** A source file of random bytes and an rsync daemon, kept for the whole initial phase. */
async function rsyncPeer(o: ReplicationBenchOptions, meter: MachineCpuMeter): Promise<RsyncPeer> {
  const { dir, remove } = tempDir('rsync');
  try {
    const src = path.join(dir, 'source.img');
    fillRandom(src, o.initialBytes);
    const daemon = await startRsyncDaemon(dir);
    const dest = path.join(daemon.destDir, path.basename(src));
    return {
      run: async (fsync) => {
        fs.rmSync(dest, { force: true });
        meter.restart();
        const own0 = process.cpuUsage();
        const r = await rsyncCopy(daemon, src, fsync ? ['--fsync'] : []);
        const both = r.clientCpuSeconds !== null && r.serverCpuSeconds !== null ? r.clientCpuSeconds + r.serverCpuSeconds : null;
        // the client's CPU is in our children's time, not in process.cpuUsage()
        const load = machineLoad(meter, (both ?? 0) + ownCpuSeconds(own0), r.seconds);
        fs.rmSync(dest, { force: true });
        return {
          fsync,
          seconds: r.seconds,
          MBps: r.bytes / MB / r.seconds,
          clientCpuSeconds: r.clientCpuSeconds,
          serverCpuSeconds: r.serverCpuSeconds,
          cpuSecondsPerGB: both === null ? null : both / (r.bytes / 1e9),
          ...load,
        };
      },
      close: async () => {
        await daemon.stop();
        await remove();
      },
    };
  } catch (e) {
    await remove();
    throw e;
  }
}

// ---- 2. steady state ------------------------------------------------------------------------------

export interface ChurnResult {
  vm: string;
  bytes: number;
  writes: number;
  flushes: number;
  seconds: number;
  /** seconds in which the writer could not finish its quota before the next second began */
  lateSeconds: number;
}

/** 32 MiB of random bytes: writes take slices of it, so churn costs the writer little CPU. */
export function randomPool(): Buffer {
  return crypto.randomBytes(32 * 1024 * 1024);
}

/**
 * One guest's writes: every second, random 4-64 KiB writes at random 4 KiB-aligned
 * offsets until the second's quota (the rate times the seconds so far) is reached, then
 * a flush. One write in flight at a time, like a simple guest.
 */
export async function churn(vm: string, client: NbdClient, bytesPerSec: number, startMs: number, endMs: number, pool: Buffer): Promise<ChurnResult> {
  const blocks = Math.floor(client.size / 4096);
  const poolBlocks = pool.length / 4096;
  let bytes = 0;
  let writes = 0;
  let flushes = 0;
  let lateSeconds = 0;
  for (let second = 1; startMs + (second - 1) * 1000 < endMs && Date.now() < endMs; second++) {
    const quota = bytesPerSec * second;
    // a writer that falls behind catches up within the window, never after it
    while (bytes < quota && Date.now() < endMs) {
      const n = 1 + Math.floor(Math.random() * 16);
      const len = n * 4096;
      const off = Math.floor(Math.random() * (blocks - n + 1)) * 4096;
      const src = Math.floor(Math.random() * (poolBlocks - n + 1)) * 4096;
      await client.write(off, pool.subarray(src, src + len));
      bytes += len;
      writes++;
    }
    await client.flush();
    flushes++;
    const next = startMs + second * 1000;
    const wait = next - Date.now();
    if (wait > 0) await sleep(wait);
    else lateSeconds++;
  }
  return { vm, bytes, writes, flushes, seconds: (Math.min(Date.now(), endMs) - startMs) / 1000, lateSeconds };
}

export interface SteadyResult {
  vms: number;
  durationSeconds: number;
  /** 'continuous', or the copy frequency's seconds */
  mode: 'cycles' | 'continuous';
  frequencySeconds: number;
  /** continuous: seconds between the points kept */
  pointIntervalSeconds: number | null;
  diskBytes: number;
  initialAllSeconds: number;
  rpo: { samples: number; p50: number; p90: number; p99: number; max: number; mean: number; perVmMax: Record<string, number> };
  missingSamples: number;
  apiLatencyMs: { p50: number; p99: number; max: number };
  primary: ProcessUsage;
  replica: ProcessUsage;
  bench: { cpuPercentMean: number };
  churn: { targetMBpsPerVm: number; achievedMBpsPerVmMean: number; achievedMBpsTotal: number; bytes: number; writes: number; lateSeconds: number };
  bytesShipped: number;
  bytesShippedMBps: number;
  pendingLogMBMax: number;
  /** from a point's instant (its swap) until the replica had applied it, as the primary reports */
  shipLatencySeconds: { points: number; p50: number; p99: number; max: number };
  /** where the time from a point's instant to its apply went (lastDelta of the health answers), p50 / p99 in seconds */
  pointPhasesSeconds: Record<'sync' | 'wait' | 'send' | 'apply' | 'replicaApply', { p50: number; p99: number }>;
  /** guest data per recovery point (the replica's deltaBytes) */
  deltaMB: { points: number; mean: number; max: number };
  pointsCreated: number;
  missedCycles: number;
  errors: string[];
  finalStates: Record<string, number>;
  load: MachineLoad;
}

async function steadyRun(pkiDir: string, o: ReplicationBenchOptions, mode: 'cycles' | 'continuous', meter: MachineCpuMeter, log: (s: string) => void): Promise<SteadyResult> {
  return withRunDir('steady', async (dir) => {
    const pair: Partial<AgentPair> = {};
    const clients: NbdClient[] = [];
    try {
      Object.assign(pair, await startPair(dir, pkiDir, o, 'steady'));
      const { primary, peer } = pair as AgentPair;
      const replica = pair.replica!;
      const names = Array.from({ length: o.vms }, (_, i) => `vm${String(i + 1).padStart(2, '0')}`);
      for (const vm of names) {
        await primary.api.post('/v1/vms', { name: vm, disks: [o.diskBytes] });
        await primary.api.post(`/v1/vms/${vm}/start`);
      }
      const t0 = performance.now();
      for (const vm of names) {
        const copy = mode === 'continuous' ? { copyFrequency: 'continuous', pointInterval: `${o.pointIntervalMs}ms`, maxPoints: Math.ceil(3600_000 / o.pointIntervalMs) + 1 } : { copyFrequency: `${o.frequencyMs}ms`, maxPoints: 24 };
        await primary.api.post('/v1/replications', { vm, peer, ...copy, retentionHours: 1, compression: false });
      }
      for (;;) {
        const all = await primary.api.get<ReplicationHealth[]>('/v1/replications');
        if (all.length === names.length && all.every((h) => h.latestPoint !== null)) break;
        if (performance.now() - t0 > 15 * 60_000) {
          const waiting = all.filter((h) => h.latestPoint === null).map((h) => `${h.vm}: ${h.state} ${h.lastError?.message ?? ''}`);
          throw new Error(`initial replication of ${waiting.length} VMs not done after 15 minutes: ${waiting.slice(0, 5).join('; ')}`);
        }
        await sleep(100);
      }
      const initialAllSeconds = (performance.now() - t0) / 1000;
      log(`  initial replication of ${names.length} empty ${fmt(o.diskBytes / GiB, 1)} GiB disks: ${fmt(initialAllSeconds, 1)} s`);

      for (const vm of names) {
        const [d] = await primary.api.get<{ nbd: { unix: string } }[]>(`/v1/vms/${vm}/disks`);
        clients.push(await NbdClient.connect(d.nbd.unix));
      }
      const before = await primary.api.get<ReplicationHealth[]>('/v1/replications');
      const shippedBefore = before.reduce((n, h) => n + h.bytesShipped, 0);
      const seqBefore = new Map(before.map((h) => [h.vm, h.latestPoint?.seq ?? 0]));

      const durationMs = o.minutes * 60_000;
      const sp = new ProcessSampler(primary.child.pid!, 1000).start();
      const sr = new ProcessSampler(replica.child.pid!, 1000).start();
      const benchCpu0 = process.cpuUsage();
      meter.restart();
      const startMs = Date.now() + 200;
      const endMs = startMs + durationMs;
      const pool = randomPool();
      const bytesPerSec = o.churnMBps * MB;
      const writers = bytesPerSec > 0 ? names.map((vm, i) => churn(vm, clients[i], bytesPerSec, startMs, endMs, pool)) : [];

      // one sample per second of every replication's RPO, from the primary's health
      const rpoSamples: number[] = [];
      const perVmMax: Record<string, number> = {};
      const latencies: number[] = [];
      const errors = new Set<string>();
      let missing = 0;
      let pendingMax = 0;
      const lastSeq = new Map(seqBefore);
      const shipLatency: number[] = [];
      const phases = { sync: [] as number[], wait: [] as number[], send: [] as number[], apply: [] as number[], replicaApply: [] as number[] };
      await sleep(startMs - Date.now());
      for (let k = 1; startMs + k * 1000 <= endMs; k++) {
        const wait = startMs + k * 1000 - Date.now();
        if (wait > 0) await sleep(wait);
        const q0 = performance.now();
        const all = await primary.api.get<ReplicationHealth[]>('/v1/replications');
        latencies.push(performance.now() - q0);
        for (const h of all) {
          const seq = h.latestPoint?.seq ?? 0;
          if (h.latestPoint && h.lastSuccessfulCycleAt && seq !== lastSeq.get(h.vm)) {
            // a new point: how long after its instant (the swap) the replica had applied it
            lastSeq.set(h.vm, seq);
            shipLatency.push((Date.parse(h.lastSuccessfulCycleAt) - Date.parse(h.latestPoint.time)) / 1000);
            const t = h.lastDelta;
            if (t && t.seq === seq) {
              phases.sync.push(t.syncMs / 1000);
              phases.wait.push(t.waitMs / 1000);
              phases.send.push(t.sendMs / 1000);
              phases.apply.push(t.applyMs / 1000);
              if (t.replicaApplyMs !== null) phases.replicaApply.push(t.replicaApplyMs / 1000);
            }
          }
          if (h.rpoSeconds === null) missing++;
          else {
            rpoSamples.push(h.rpoSeconds);
            perVmMax[h.vm] = Math.max(perVmMax[h.vm] ?? 0, h.rpoSeconds);
          }
          pendingMax = Math.max(pendingMax, h.pendingLogBytes);
          if (h.lastError) errors.add(`${h.vm}: ${h.lastError.code} ${h.lastError.message}`);
        }
        if (k % 30 === 0) {
          const recent = rpoSamples.slice(-names.length * 30);
          log(`  ${k} s: RPO p50 ${fmt(percentile(recent, 50))} s, max ${fmt(max(recent))} s over the last 30 s; primary ${fmt(sp.peek().cpuPercent, 0)}% CPU, replica ${fmt(sr.peek().cpuPercent, 0)}% CPU`);
        }
      }
      const churned = await Promise.all(writers);
      const benchCpu = process.cpuUsage(benchCpu0);
      const up = sp.stop();
      const ur = sr.stop();
      const load = machineLoad(meter, up.cpuSeconds + ur.cpuSeconds + (benchCpu.user + benchCpu.system) / 1e6, up.wallSeconds);
      const after = await primary.api.get<ReplicationHealth[]>('/v1/replications');
      const shipped = after.reduce((n, h) => n + h.bytesShipped, 0) - shippedBefore;
      const finalStates: Record<string, number> = {};
      for (const h of after) finalStates[h.state] = (finalStates[h.state] ?? 0) + 1;
      const deltas: number[] = [];
      for (const vm of names) {
        const pts = await replica.api.get<{ seq: number; deltaBytes: number }[]>(`/v1/replicas/${vm}/points`).catch(() => []);
        for (const p of pts) if (p.seq > (seqBefore.get(vm) ?? 0)) deltas.push(p.deltaBytes);
      }
      const churnBytes = churned.reduce((n, c) => n + c.bytes, 0);
      const churnSeconds = max(churned.map((c) => c.seconds));
      return {
        vms: names.length,
        durationSeconds: durationMs / 1000,
        mode,
        frequencySeconds: mode === 'continuous' ? 1 : o.frequencyMs / 1000,
        pointIntervalSeconds: mode === 'continuous' ? o.pointIntervalMs / 1000 : null,
        diskBytes: o.diskBytes,
        initialAllSeconds,
        rpo: {
          samples: rpoSamples.length,
          p50: percentile(rpoSamples, 50),
          p90: percentile(rpoSamples, 90),
          p99: percentile(rpoSamples, 99),
          max: max(rpoSamples),
          mean: mean(rpoSamples),
          perVmMax,
        },
        missingSamples: missing,
        apiLatencyMs: { p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: max(latencies) },
        primary: up,
        replica: ur,
        bench: { cpuPercentMean: ((benchCpu.user + benchCpu.system) / 1e6 / (durationMs / 1000)) * 100 },
        churn: {
          targetMBpsPerVm: o.churnMBps,
          achievedMBpsPerVmMean: mean(churned.map((c) => c.bytes / MB / c.seconds)),
          achievedMBpsTotal: churnSeconds > 0 ? churnBytes / MB / churnSeconds : 0,
          bytes: churnBytes,
          writes: churned.reduce((n, c) => n + c.writes, 0),
          lateSeconds: churned.reduce((n, c) => n + c.lateSeconds, 0),
        },
        bytesShipped: shipped,
        bytesShippedMBps: shipped / MB / (durationMs / 1000),
        pendingLogMBMax: pendingMax / MB,
        shipLatencySeconds: { points: shipLatency.length, p50: percentile(shipLatency, 50), p99: percentile(shipLatency, 99), max: max(shipLatency) },
        pointPhasesSeconds: Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, { p50: percentile(v, 50), p99: percentile(v, 99) }])) as SteadyResult['pointPhasesSeconds'],
        deltaMB: { points: deltas.length, mean: mean(deltas) / MB, max: max(deltas) / MB },
        pointsCreated: after.reduce((n, h) => n + ((h.latestPoint?.seq ?? 0) - (seqBefore.get(h.vm) ?? 0)), 0),
        missedCycles: after.reduce((n, h) => n + h.missedCyclesLastHour, 0),
        errors: [...errors].slice(0, 20),
        finalStates,
        load,
      };
    } finally {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
      await stopPair(pair);
    }
  }, '  removing the temporary files of the steady-state phase (a few GB; slow where the file system discards)…');
}

// ---- the benchmark -----------------------------------------------------------------------------------

export async function runReplicationBench(o: ReplicationBenchOptions): Promise<void> {
  const log = (s: string) => console.log(s);
  const machine = machineFacts();
  log(`replication benchmark: ${machine.cpus} CPUs (${machine.cpuModel}), node ${machine.node}, ${machine.rsync ?? 'no rsync'}, temp ${machine.tmpdir} (${machine.tmpFilesystem ?? '?'})`);
  // a shared machine makes every number here pessimistic: say how busy it is before we start
  const idle = new MachineCpuMeter(machine.cpus);
  const own0 = process.cpuUsage();
  await sleep(3000);
  const busyBefore = Math.max(0, idle.busyPercent() - (ownCpuSeconds(own0) / 3) * 100);
  const loadBefore = os.loadavg();
  log(`other processes used ${fmt(busyBefore, 0)}% of a core over the 3 s before the benchmark (load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')})`);
  if (busyBefore > 25) log(`  warning: the machine is busy with other work; throughput and RPO below are pessimistic`);
  const { dir: pkiRoot, remove: removePki } = tempDir('pki');
  const pkiDir = path.join(pkiRoot, 'pki');
  await ensurePki(pkiDir, ['primary', 'replica']);

  const runs: InitialRun[] = [];
  let compressed: InitialRun | null = null;
  const rsync: { plain: RsyncRun[]; fsync: RsyncRun[] } = { plain: [], fsync: [] };
  const tlsPipe: TlsPipeRun[] = [];
  const meter = new MachineCpuMeter(machine.cpus);
  if (o.phases.initial) {
    log(`\n1. initial replication of ${fmt(o.initialBytes / GiB, 2)} GiB of random data: ${o.runs} runs of osr, each followed by rsync${o.rsyncFsync ? ' and rsync --fsync' : ''}`);
    const peer = await rsyncPeer(o, meter);
    try {
      for (let i = 0; i < o.runs; i++) {
        const r = await initialRun(pkiDir, o, meter, i, false);
        runs.push(r);
        log(
          `  run ${i + 1}/${o.runs} osr:   ${fmt(r.seconds, 2)} s, ${fmt(r.MBps, 0)} MB/s; CPU primary ${fmt(r.primaryCpuSeconds, 1)} s, replica ${fmt(r.replicaCpuSeconds, 1)} s; other processes ${fmt(r.otherProcessesPercent, 0)}% of a core; replica verified`,
        );
        const p = await peer.run(false);
        rsync.plain.push(p);
        log(`  run ${i + 1}/${o.runs} rsync: ${fmt(p.seconds, 2)} s, ${fmt(p.MBps, 0)} MB/s; CPU client ${fmt(p.clientCpuSeconds, 1)} s, server ${fmt(p.serverCpuSeconds, 1)} s; other processes ${fmt(p.otherProcessesPercent, 0)}% of a core`);
        if (o.rsyncFsync) {
          const f = await peer.run(true);
          rsync.fsync.push(f);
          log(`  run ${i + 1}/${o.runs} rsync --fsync: ${fmt(f.seconds, 2)} s, ${fmt(f.MBps, 0)} MB/s`);
        }
        const t = await tlsPipeRun(pkiDir, o.initialBytes);
        tlsPipe.push(t);
        log(`  run ${i + 1}/${o.runs} bare TLS pipe: ${fmt(t.seconds, 2)} s, ${fmt(t.mbps, 0)} MB/s; CPU sender ${fmt(t.cpuSecondsSender, 1)} s, receiver ${fmt(t.cpuSecondsReceiver, 1)} s (${t.cipher ?? '?'})`);
      }
    } finally {
      await peer.close();
    }
    if (o.compressionRun) {
      compressed = await initialRun(pkiDir, o, meter, o.runs, true);
      log(`  osr with compression: ${fmt(compressed.seconds, 2)} s, ${fmt(compressed.MBps, 0)} MB/s, ${fmt((compressed.wireBytes ?? NaN) / MB, 0)} MB on the wire`);
    }
  }

  let steady: SteadyResult | null = null;
  /** --mode continuous: the same load in cycles, to compare */
  let cycles: SteadyResult | null = null;
  if (o.phases.steady) {
    const load = `${o.vms} VMs × ${fmt(o.diskBytes / GiB, 1)} GiB, churn ${o.churnMBps} MB/s per VM for ${o.minutes} min`;
    if (o.mode === 'continuous') {
      log(`\n2. steady state, continuous (a cut every second, a point kept every ${o.pointIntervalMs / 1000} s): ${load}`);
      steady = await steadyRun(pkiDir, o, 'continuous', meter, log);
      log(`\n2b. the same load in cycles of ${o.frequencyMs / 1000} s`);
      cycles = await steadyRun(pkiDir, o, 'cycles', meter, log);
    } else {
      log(`\n2. steady state: ${load}, copy frequency ${o.frequencyMs / 1000} s`);
      steady = await steadyRun(pkiDir, o, 'cycles', meter, log);
    }
  }
  const rpoTarget = o.mode === 'continuous' ? TARGETS.continuousRpoP99Seconds : TARGETS.rpoP99Seconds;
  await removePki();

  const initialMBps = median(runs.map((r) => r.MBps));
  const rsyncMBps = median(rsync.plain.map((r) => r.MBps));
  const rsyncFsyncMBps = median(rsync.fsync.map((r) => r.MBps));
  const ratio = initialMBps / rsyncMBps;
  const pipeRatio = tlsPipe.length > 0 ? initialMBps / median(tlsPipe.map((t) => t.mbps)) : null;
  const cpuRatio = median(runs.map((x) => x.cpuSecondsPerGB)) / median(rsync.plain.map((x) => x.cpuSecondsPerGB ?? NaN));
  const result = {
    benchmark: 'replication',
    schema: 1,
    machine: { ...machine, otherProcessesPercentBefore: round(busyBefore, 1), loadAvgBefore: loadBefore.map((x) => round(x, 2)) },
    units: { MB: '1e6 bytes', MBps: '1e6 bytes per second', GiB: '2^30 bytes', cpuPercent: '100 = one core fully busy', percentiles: 'linear interpolation between closest ranks' },
    options: { ...o, cpuProfDir: o.cpuProfDir ?? null },
    targets: TARGETS,
    // headline numbers
    initialReplicationMBps: round(initialMBps),
    initialReplicationSeconds: round(median(runs.map((r) => r.seconds)), 3),
    initialReplicationCompressedMBps: compressed ? round(compressed.MBps) : null,
    rsyncWholeFileMBps: round(rsyncMBps),
    rsyncWholeFileSeconds: round(median(rsync.plain.map((r) => r.seconds)), 3),
    rsyncWholeFileFsyncMBps: round(rsyncFsyncMBps),
    bareTlsPipeMBps: round(median(tlsPipe.map((t) => t.mbps))),
    initialToRsyncRatio: round(ratio, 3),
    initialToRsyncFsyncRatio: round(initialMBps / rsyncFsyncMBps, 3),
    initialTargetMet: Number.isFinite(ratio) ? ratio >= TARGETS.initialRatioToRsync : null,
    initialToPipeRatio: pipeRatio === null ? null : round(pipeRatio, 3),
    initialPipeTargetMet: pipeRatio === null ? null : pipeRatio >= TARGETS.initialRatioToPipe,
    initialCpuToRsyncRatio: Number.isFinite(cpuRatio) ? round(cpuRatio, 3) : null,
    initialCpuTargetMet: Number.isFinite(cpuRatio) ? cpuRatio <= TARGETS.initialCpuRatioToRsync : null,
    rpoP50Seconds: steady ? round(steady.rpo.p50) : null,
    rpoP99Seconds: steady ? round(steady.rpo.p99) : null,
    rpoMaxSeconds: steady ? round(steady.rpo.max) : null,
    rpoTargetSeconds: rpoTarget,
    rpoTargetMet: steady ? steady.rpo.p99 <= rpoTarget : null,
    agentRssMB: steady ? round(steady.primary.rssMBMax, 1) : null,
    replicaAgentRssMB: steady ? round(steady.replica.rssMBMax, 1) : null,
    agentCpuPercent: steady ? round(steady.primary.cpuPercentMean, 1) : null,
    replicaAgentCpuPercent: steady ? round(steady.replica.cpuPercentMean, 1) : null,
    bytesShipped: steady ? steady.bytesShipped : null,
    churnAchievedMBps: steady ? round(steady.churn.achievedMBpsTotal, 2) : null,
    // details
    initial: {
      bytes: o.initialBytes,
      note: 'both sides read the source from the page cache (it was just written); nothing was dropped from the cache; osr makes the replica durable (fdatasync) every 256 MiB, rsync does not sync unless --fsync',
      osrRuns: runs.map(roundAll),
      osrCompressed: compressed ? roundAll(compressed) : null,
      rsyncArgs: ['--whole-file', '--inplace'],
      rsyncRuns: rsync.plain.map(roundAll),
      rsyncFsyncRuns: rsync.fsync.map(roundAll),
      bareTlsPipeRuns: tlsPipe.map(roundAll),
    },
    steady: steady ? steadyJson(steady) : null,
    /** --mode continuous: the same load in cycles */
    steadyCycles: cycles ? steadyJson(cycles) : null,
  };

  log('');
  log(formatTable(['metric', 'osr', 'peer', 'ratio / target'], tableRows(result, runs, compressed, rsync, tlsPipe, steady, cycles, o)));
  fs.mkdirSync(o.resultsDir, { recursive: true });
  const out = path.join(o.resultsDir, 'replication.json');
  fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  log(`\nresults: ${path.relative(process.cwd(), out) || out}   (MB = 1e6 bytes; CPU % of one core)`);
}

function steadyJson(steady: SteadyResult) {
  return {
    ...steady,
    primary: summarizeUsage(steady.primary),
    replica: summarizeUsage(steady.replica),
    rpo: { ...roundAll(steady.rpo), perVmMax: roundAll(steady.rpo.perVmMax) },
    apiLatencyMs: roundAll(steady.apiLatencyMs),
    shipLatencySeconds: roundAll(steady.shipLatencySeconds),
    pointPhasesSeconds: Object.fromEntries(Object.entries(steady.pointPhasesSeconds).map(([k, v]) => [k, roundAll(v)])),
    deltaMB: roundAll(steady.deltaMB),
    load: roundAll(steady.load),
    churn: roundAll(steady.churn),
    bench: roundAll(steady.bench),
    bytesShippedMBps: round(steady.bytesShippedMBps),
    pendingLogMBMax: round(steady.pendingLogMBMax),
    initialAllSeconds: round(steady.initialAllSeconds),
  };
}

function tableRows(
  r: { initialToRsyncRatio: number | null; initialToRsyncFsyncRatio: number | null },
  runs: InitialRun[],
  compressed: InitialRun | null,
  rsync: { plain: RsyncRun[]; fsync: RsyncRun[] },
  tlsPipe: TlsPipeRun[],
  steady: SteadyResult | null,
  cycles: SteadyResult | null,
  o: ReplicationBenchOptions,
): Cell[][] {
  const rows: Cell[][] = [];
  const gib = fmt(o.initialBytes / GiB, 2);
  if (runs.length > 0) {
    const osr = median(runs.map((x) => x.MBps));
    const peer = median(rsync.plain.map((x) => x.MBps));
    rows.push([
      `initial replication ${gib} GiB random, MB/s (median of ${runs.length})`,
      fmt(osr, 0),
      `rsync ${fmt(peer, 0)}`,
      `${fmt(r.initialToRsyncRatio, 2)}× (target ≥ ${TARGETS.initialRatioToRsync}×)`,
    ]);
    rows.push([`  seconds (median)`, fmt(median(runs.map((x) => x.seconds)), 2), `rsync ${fmt(median(rsync.plain.map((x) => x.seconds)), 2)}`, null]);
    rows.push([`  runs, MB/s`, runs.map((x) => fmt(x.MBps, 0)).join(' '), `rsync ${rsync.plain.map((x) => fmt(x.MBps, 0)).join(' ')}`, null]);
    if (rsync.fsync.length > 0) {
      rows.push([`  vs rsync --fsync (durable, like osr), MB/s`, fmt(osr, 0), `rsync --fsync ${fmt(median(rsync.fsync.map((x) => x.MBps)), 0)}`, `${fmt(r.initialToRsyncFsyncRatio, 2)}×`]);
    }
    if (tlsPipe.length > 0) {
      const t = median(tlsPipe.map((x) => x.mbps));
      rows.push([`  bare TLS pipe between two processes (no disk, no framing), MB/s`, fmt(osr, 0), `TLS ${fmt(t, 0)}`, `${fmt(osr / t, 2)}× the pipe (target ≥ ${TARGETS.initialRatioToPipe}×); the pipe is ${fmt(t / peer, 2)}× rsync`]);
      rows.push([`  of which the copy itself, first byte to last (no connect, no point), MB/s`, fmt(median(runs.map((x) => x.streamMBps ?? NaN)), 0), `TLS ${fmt(t, 0)}`, `${fmt(median(runs.map((x) => x.streamMBps ?? NaN)) / t, 2)}× the pipe`]);
    }
    const osrCpu = median(runs.map((x) => x.cpuSecondsPerGB));
    const rsyncCpu = median(rsync.plain.map((x) => x.cpuSecondsPerGB ?? NaN));
    rows.push([`  CPU seconds per GB, both ends (median)`, fmt(osrCpu, 2), `rsync ${fmt(rsyncCpu, 2)}`, `${fmt(osrCpu / rsyncCpu, 2)}× rsync's CPU (target ≤ ${TARGETS.initialCpuRatioToRsync}×)`]);
    rows.push([
      `  CPU seconds per run: primary / replica (median)`,
      `${fmt(median(runs.map((x) => x.primaryCpuSeconds)), 1)} / ${fmt(median(runs.map((x) => x.replicaCpuSeconds)), 1)}`,
      `client / server ${fmt(median(rsync.plain.map((x) => x.clientCpuSeconds ?? NaN)), 1)} / ${fmt(median(rsync.plain.map((x) => x.serverCpuSeconds ?? NaN)), 1)}`,
      null,
    ]);
    rows.push([
      `  other processes on the machine, % of a core (median)`,
      fmt(median(runs.map((x) => x.otherProcessesPercent)), 0),
      `rsync runs ${fmt(median(rsync.plain.map((x) => x.otherProcessesPercent)), 0)}`,
      null,
    ]);
    if (compressed) {
      rows.push([`initial replication with compression (zstd), MB/s`, fmt(compressed.MBps, 0), `rsync ${fmt(peer, 0)}`, `${fmt(compressed.MBps / peer, 2)}× (random data: overhead only)`]);
    }
  }
  if (steady) rows.push(...steadyRows(steady, cycles));
  return rows;
}

/** The steady state's rows; with `cycles` (--mode continuous), the cycles run's figure in the peer column. */
function steadyRows(steady: SteadyResult, cycles: SteadyResult | null): Cell[][] {
  const rows: Cell[][] = [];
  const continuous = steady.mode === 'continuous';
  const cmp = (f: (x: SteadyResult) => string | null) => (cycles ? `${cycles.frequencySeconds} s cycles ${f(cycles) ?? '—'}` : null);
  const what = continuous ? `continuous, a point every ${steady.pointIntervalSeconds} s` : `${steady.frequencySeconds} s frequency`;
  const f = steady.frequencySeconds;
  rows.push([`RPO p50, s (${steady.vms} VMs, ${what}, ${fmt(steady.durationSeconds / 60, 1)} min)`, fmt(steady.rpo.p50, 1), cmp((x) => fmt(x.rpo.p50, 1)), `≈ ${f / 2} s + shipping`]);
  rows.push([`RPO p99, s`, fmt(steady.rpo.p99, 1), cmp((x) => fmt(x.rpo.p99, 1)), `target ≤ ${continuous ? TARGETS.continuousRpoP99Seconds : TARGETS.rpoP99Seconds} s`]);
  rows.push([`RPO max, s`, fmt(steady.rpo.max, 1), cmp((x) => fmt(x.rpo.max, 1)), null]);
  const ratio = (a: number, b: number | undefined) => (b !== undefined && b > 0 ? `${fmt(a / b, 2)}× the cycles'` : null);
  rows.push([`primary agent CPU mean / max, % of a core`, `${fmt(steady.primary.cpuPercentMean, 0)} / ${fmt(steady.primary.cpuPercentMax, 0)}`, cmp((x) => `${fmt(x.primary.cpuPercentMean, 0)} / ${fmt(x.primary.cpuPercentMax, 0)}`), ratio(steady.primary.cpuPercentMean, cycles?.primary.cpuPercentMean)]);
  rows.push([`primary agent RSS max, MB`, fmt(steady.primary.rssMBMax, 0), cmp((x) => fmt(x.primary.rssMBMax, 0)), ratio(steady.primary.rssMBMax, cycles?.primary.rssMBMax)]);
  rows.push([`replica agent CPU mean / max, % of a core`, `${fmt(steady.replica.cpuPercentMean, 0)} / ${fmt(steady.replica.cpuPercentMax, 0)}`, cmp((x) => `${fmt(x.replica.cpuPercentMean, 0)} / ${fmt(x.replica.cpuPercentMax, 0)}`), ratio(steady.replica.cpuPercentMean, cycles?.replica.cpuPercentMean)]);
  rows.push([`replica agent RSS max, MB`, fmt(steady.replica.rssMBMax, 0), cmp((x) => fmt(x.replica.rssMBMax, 0)), ratio(steady.replica.rssMBMax, cycles?.replica.rssMBMax)]);
  rows.push([`churn achieved, MB/s (all VMs)`, fmt(steady.churn.achievedMBpsTotal, 1), cmp((x) => fmt(x.churn.achievedMBpsTotal, 1)), `target ${fmt(steady.churn.targetMBpsPerVm * steady.vms, 1)}`]);
  rows.push([`bytes shipped, MB (MB/s)`, `${fmt(steady.bytesShipped / MB, 0)} (${fmt(steady.bytesShippedMBps, 1)})`, cmp((x) => `${fmt(x.bytesShipped / MB, 0)} (${fmt(x.bytesShippedMBps, 1)})`), null]);
  rows.push([`point applied after its instant p50 / p99, s`, `${fmt(steady.shipLatencySeconds.p50, 1)} / ${fmt(steady.shipLatencySeconds.p99, 1)}`, cmp((x) => `${fmt(x.shipLatencySeconds.p50, 1)} / ${fmt(x.shipLatencySeconds.p99, 1)}`), null]);
  const ph = steady.pointPhasesSeconds;
  rows.push([
    `  of which log sync / wait / send / apply, p50 (p99), s`,
    (['sync', 'wait', 'send', 'apply'] as const).map((k) => `${fmt(ph[k].p50, 1)} (${fmt(ph[k].p99, 1)})`).join(' / '),
    null,
    null,
  ]);
  rows.push([`  replica's own apply time p50 (p99), s`, `${fmt(ph.replicaApply.p50, 1)} (${fmt(ph.replicaApply.p99, 1)})`, null, null]);
  rows.push([continuous ? `cuts made / points kept / missed cycles` : `points created / missed cycles`, continuous ? `${steady.pointsCreated} / ${steady.deltaMB.points} / ${steady.missedCycles}` : `${steady.pointsCreated} / ${steady.missedCycles}`, cmp((x) => `${x.pointsCreated} / ${x.missedCycles}`), null]);
  rows.push([`primary API latency p50 / p99, ms`, `${fmt(steady.apiLatencyMs.p50, 0)} / ${fmt(steady.apiLatencyMs.p99, 0)}`, cmp((x) => `${fmt(x.apiLatencyMs.p50, 0)} / ${fmt(x.apiLatencyMs.p99, 0)}`), null]);
  rows.push([`other processes on the machine, % of a core`, fmt(steady.load.otherProcessesPercent, 0), cmp((x) => fmt(x.load.otherProcessesPercent, 0)), null]);
  return rows;
}

function summarizeUsage(u: ProcessUsage) {
  return {
    samples: u.samples,
    cpuPercentMean: round(u.cpuPercentMean, 1),
    cpuPercentMax: round(u.cpuPercentMax, 1),
    rssMBMean: round(u.rssMBMean, 1),
    rssMBMax: round(u.rssMBMax, 1),
    peakRssMB: round(u.peakRssMB, 1),
    cpuSeconds: round(u.cpuSeconds, 2),
    wallSeconds: round(u.wallSeconds, 2),
    cpuPercentSeries: u.cpuPercentSeries.map((x) => round(x, 0)),
    rssMBSeries: u.rssMBSeries.map((x) => round(x, 0)),
  };
}

/** Round every number of a flat object (3 decimals) for the JSON file. */
function roundAll<T extends object>(o: T): { [K in keyof T]: T[K] extends number ? number | null : T[K] } {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) out[k] = typeof v === 'number' ? (Number.isInteger(v) ? v : round(v, 3)) : v;
  return out as { [K in keyof T]: T[K] extends number ? number | null : T[K] };
}
