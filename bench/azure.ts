/**
 * The Azure benchmark (docs/benchmarks.md): the initial copy of a disk of random data to a
 * storage account (Azurite on this machine) by an osr agent, against the same bytes
 * uploaded by a plain loop of 4 MiB `uploadPages` calls of `@azure/storage-blob`, in the
 * same run (and, to show what concurrency alone gives, the same calls 8 at a time). Each
 * copy is read back and compared with the source. Azurite keeps blobs in files on the
 * local disk: the figures say how osr's data path compares with the SDK's on the same
 * storage, not what an Azure account would take.
 *
 * Its third part is failback: a disk failed over to Azure (a page blob with a VHD footer,
 * as a managed disk's read SAS shows it) with 1 % of it changed there, read by the region's
 * agent (an import, as failback does) and replicated home to the old primary's demoted
 * disks: the bytes sent over the wire against the bytes that differ.
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { BlobSASPermissions, ContainerSASPermissions, generateBlobSASQueryParameters, type ContainerClient } from '@azure/storage-blob';
import type { ReplicationHealth } from '../src/agent/wire/replication-types.js';
import { ensurePki } from '../src/lab/agent-process.js';
import { pageBlobBytes, vhdFooter, VHD_FOOTER_BYTES } from '../src/domain/vhd.js';
import { startAzurite, type Azurite } from '../test/support/azurite.js';
import { parseBytes, parseMs, UsageError, type Flags } from './lib/args.js';
import { NbdClient } from '../src/agent/nbd/nbd-client.js';
import { churn, randomPool } from './replication.js';
import { fillRandom } from './lib/files.js';
import { onCleanup, sleep, startAgent, tempDir, waitFor } from './lib/lab.js';
import { machineFacts } from './lib/machine.js';
import { ProcessSampler, cpuSeconds, ownCpuSeconds } from './lib/proc.js';
import { GiB, MB, median, percentile, round } from './lib/stats.js';
import { fmt, formatTable } from './lib/table.js';

export interface AzureBenchOptions {
  runs: number;
  bytes: number;
  /** the RPO run: VMs, each writing churnMBps, replicated every frequencySeconds, measured for minutes */
  rpoVms: number;
  churnMBps: number;
  frequencySeconds: number;
  minutes: number;
  rpoDiskBytes: number;
  only: 'upload' | 'rpo' | 'failback' | undefined;
  /** the failback run: the disk's size, and the share of it changed in Azure */
  failbackDiskBytes: number;
  failbackChangedFraction: number;
  resultsDir: string;
}

export function azureOptions(flags: Flags, resultsDir: string): AzureBenchOptions {
  const o: AzureBenchOptions = {
    runs: flags.number('runs', 3, (n) => Number.isInteger(n) && n > 0),
    bytes: parseBytes(flags.string('size', '2G')),
    rpoVms: flags.number('rpo-vms', 4, (n) => Number.isInteger(n) && n > 0),
    churnMBps: flags.number('churn', 2, (n) => n >= 0),
    frequencySeconds: parseMs(flags.string('frequency', '30s')) / 1000,
    minutes: flags.number('minutes', 3, (n) => n > 0),
    rpoDiskBytes: parseBytes(flags.string('rpo-disk', '256M')),
    failbackDiskBytes: parseBytes(flags.string('failback-disk', '1G')),
    failbackChangedFraction: flags.number('failback-changed', 0.01, (n) => n > 0 && n < 1),
    only: undefined,
    resultsDir,
  };
  const only = flags.optionalString('only');
  if (only !== undefined && only !== 'upload' && only !== 'rpo' && only !== 'failback') throw new UsageError(`--only ${only}: upload, rpo or failback`);
  o.only = only;
  if (o.bytes % (4 * 1024 * 1024) !== 0) throw new UsageError('--size must be a multiple of 4 MiB');
  if (o.failbackDiskBytes % (1024 * 1024) !== 0) throw new UsageError('--failback-disk must be a multiple of 1 MiB');
  return o;
}

interface UploadRun {
  seconds: number;
  MBps: number;
  /** CPU seconds of the uploader (the agent, or this process for the SDK loop) and of Azurite */
  uploaderCpuSeconds: number | null;
  azuriteCpuSeconds: number | null;
}

const PUT = 4 * 1024 * 1024;

/** Compare a blob's first `bytes` with a file, 64 MiB at a time. */
async function sameAsFile(container: ContainerClient, blob: string, file: string, bytes: number): Promise<boolean> {
  const client = container.getPageBlobClient(blob);
  const fd = fs.openSync(file, 'r');
  try {
    const chunk = 64 * 1024 * 1024;
    const local = Buffer.alloc(chunk);
    for (let off = 0; off < bytes; off += chunk) {
      const n = Math.min(chunk, bytes - off);
      fs.readSync(fd, local, 0, n, off);
      if (!(await client.downloadToBuffer(off, n)).equals(local.subarray(0, n))) return false;
    }
    return true;
  } finally {
    fs.closeSync(fd);
  }
}

/** The plain SDK: a page blob, then the file's bytes in 4 MiB uploadPages calls, `inFlight` at a time. */
async function sdkUpload(az: Azurite, file: string, bytes: number, name: string, inFlight: number): Promise<UploadRun> {
  const container = az.service.getContainerClient(name);
  await container.create();
  const blob = container.getPageBlobClient('disk.vhd');
  const fd = fs.openSync(file, 'r');
  const az0 = cpuSeconds(az.child.pid!);
  const own0 = process.cpuUsage();
  const t0 = performance.now();
  try {
    await blob.create(pageBlobBytes(bytes));
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < bytes) {
        const off = next;
        next += PUT;
        const buf = Buffer.allocUnsafe(Math.min(PUT, bytes - off));
        fs.readSync(fd, buf, 0, buf.length, off);
        await blob.uploadPages(buf, off, buf.length);
      }
    };
    await Promise.all(Array.from({ length: inFlight }, () => worker()));
  } finally {
    fs.closeSync(fd);
  }
  const seconds = (performance.now() - t0) / 1000;
  const azCpu = cpuSeconds(az.child.pid!);
  const run = { seconds, MBps: bytes / MB / seconds, uploaderCpuSeconds: ownCpuSeconds(own0), azuriteCpuSeconds: az0 !== null && azCpu !== null ? azCpu - az0 : null };
  if (!(await sameAsFile(container, 'disk.vhd', file, bytes))) throw new Error('the SDK loop\'s blob differs from the source');
  await container.delete();
  return run;
}

/** osr: an agent replicating a lab VM with the disk to a container, timed to its first point. */
async function osrUpload(az: Azurite, pkiDir: string, dir: string, bytes: number, index: number): Promise<UploadRun & { file: string }> {
  const agent = await startAgent({ name: 'primary', dataDir: path.join(dir, `primary-${index}`), pkiDir, logFile: path.join(dir, `primary-${index}.log`), extraArgs: ['--log-level', 'warn'] });
  try {
    const vm = `big${index}`;
    await agent.api.post('/v1/vms', { name: vm, disks: [bytes] });
    const [disk] = await agent.api.get<{ name: string; image: string }[]>(`/v1/vms/${vm}/disks`);
    fillRandom(disk!.image, bytes);
    const containerName = `osr-bench-${index}`;
    const container = az.service.getContainerClient(containerName);
    await container.create();
    const sas = generateBlobSASQueryParameters({ containerName, permissions: ContainerSASPermissions.parse('racwdl'), expiresOn: new Date(Date.now() + 6 * 3600_000) }, az.credential).toString();
    const sampler = new ProcessSampler(agent.child.pid!, 250).start();
    const az0 = cpuSeconds(az.child.pid!);
    const t0 = performance.now();
    await agent.api.post('/v1/replications', { vm, peer: `${az.url}/${containerName}`, azureSas: sas, copyFrequency: '1h', retentionHours: 1, maxPoints: 4 });
    for (;;) {
      const h = await agent.api.get<ReplicationHealth>(`/v1/replications/${vm}`);
      if (h.latestPoint) break;
      if (h.state === 'Error') throw new Error(`replication to Azurite failed: ${h.lastError?.message ?? 'no message'}`);
      if (performance.now() - t0 > 30 * 60_000) throw new Error('the initial copy to Azurite took more than 30 minutes');
      await sleep(50);
    }
    const seconds = (performance.now() - t0) / 1000;
    const usage = sampler.stop();
    const azCpu = cpuSeconds(az.child.pid!);
    if (!(await sameAsFile(container, `disks/${disk!.name}.vhd`, disk!.image, bytes))) {
      throw new Error('the replica blob differs from the source');
    }
    await agent.api.delete(`/v1/replications/${vm}`);
    await container.delete();
    return { seconds, MBps: bytes / MB / seconds, uploaderCpuSeconds: usage.cpuSeconds, azuriteCpuSeconds: az0 !== null && azCpu !== null ? azCpu - az0 : null, file: disk!.image };
  } finally {
    await agent.stop();
  }
}

interface RpoRun {
  vms: number;
  frequencySeconds: number;
  churnMBpsPerVm: number;
  durationSeconds: number;
  samples: number;
  p50: number;
  p99: number;
  max: number;
  pointsCreated: number;
  /** where a point's time went, from its instant to its apply (p50 / p99, s): waiting for earlier deltas, sending, applying into the blobs */
  phasesSeconds: Record<'wait' | 'send' | 'apply', { p50: number | null; p99: number | null }>;
  agentCpuPercentMean: number;
  agentRssMBMax: number;
  /** the storage emulator's CPU (100 = one core): near 100, it is what bounds the applies */
  azuriteCpuPercentMean: number;
  errors: string[];
}

/** VMs writing all the time, replicated to Azurite every frequencySeconds: the RPO each second, from the agent's health. */
async function rpoRun(az: Azurite, pkiDir: string, dir: string, o: AzureBenchOptions, log: (s: string) => void): Promise<RpoRun> {
  const agent = await startAgent({ name: 'primary', dataDir: path.join(dir, 'rpo'), pkiDir, logFile: path.join(dir, 'rpo.log'), extraArgs: ['--log-level', 'warn'] });
  const clients: NbdClient[] = [];
  try {
    const names = Array.from({ length: o.rpoVms }, (_, i) => `rpo${i + 1}`);
    for (const vm of names) {
      await agent.api.post('/v1/vms', { name: vm, disks: [o.rpoDiskBytes] });
      await agent.api.post(`/v1/vms/${vm}/start`);
      const containerName = `osr-${vm}`;
      await az.service.getContainerClient(containerName).create();
      const sas = generateBlobSASQueryParameters({ containerName, permissions: ContainerSASPermissions.parse('racwdl'), expiresOn: new Date(Date.now() + 6 * 3600_000) }, az.credential).toString();
      await agent.api.post('/v1/replications', { vm, peer: `${az.url}/${containerName}`, azureSas: sas, copyFrequency: `${o.frequencySeconds}s`, retentionHours: 1, maxPoints: 24 });
    }
    const t0 = performance.now();
    for (;;) {
      const all = await agent.api.get<ReplicationHealth[]>('/v1/replications');
      if (all.every((h) => h.latestPoint !== null)) break;
      if (performance.now() - t0 > 15 * 60_000) throw new Error('the initial copies to Azurite took more than 15 minutes');
      await sleep(200);
    }
    log(`  initial copies of ${names.length} disks of ${fmt(o.rpoDiskBytes / MB, 0)} MB: ${fmt((performance.now() - t0) / 1000, 1)} s`);
    for (const vm of names) {
      const [d] = await agent.api.get<{ nbd: { unix: string } }[]>(`/v1/vms/${vm}/disks`);
      clients.push(await NbdClient.connect(d!.nbd.unix));
    }
    const seq0 = new Map((await agent.api.get<ReplicationHealth[]>('/v1/replications')).map((h) => [h.vm, h.latestPoint?.seq ?? 0]));
    const sampler = new ProcessSampler(agent.child.pid!, 1000).start();
    const azSampler = new ProcessSampler(az.child.pid!, 1000).start();
    const startMs = Date.now() + 200;
    const endMs = startMs + o.minutes * 60_000;
    const pool = randomPool();
    const writers = names.map((vm, i) => churn(vm, clients[i]!, o.churnMBps * MB, startMs, endMs, pool));
    const samples: number[] = [];
    const errors = new Set<string>();
    await sleep(startMs - Date.now());
    let last: ReplicationHealth[] = [];
    const seen = new Set<string>();
    const phases = { wait: [] as number[], send: [] as number[], apply: [] as number[] };
    for (let k = 1; startMs + k * 1000 <= endMs; k++) {
      const wait = startMs + k * 1000 - Date.now();
      if (wait > 0) await sleep(wait);
      last = await agent.api.get<ReplicationHealth[]>('/v1/replications');
      for (const h of last) {
        if (h.rpoSeconds !== null) samples.push(h.rpoSeconds);
        if (h.lastError) errors.add(`${h.vm}: ${h.lastError.code} ${h.lastError.message}`);
        const t = h.lastDelta;
        if (t && !seen.has(`${h.vm}/${t.seq}`)) {
          seen.add(`${h.vm}/${t.seq}`);
          phases.wait.push(t.waitMs / 1000);
          phases.send.push(t.sendMs / 1000);
          phases.apply.push(t.applyMs / 1000);
        }
      }
    }
    const pp = (xs: number[]) => ({ p50: xs.length ? round(percentile(xs, 50), 1) : null, p99: xs.length ? round(percentile(xs, 99), 1) : null });
    await Promise.all(writers);
    const usage = sampler.stop();
    const azUsage = azSampler.stop();
    return {
      vms: names.length,
      frequencySeconds: o.frequencySeconds,
      churnMBpsPerVm: o.churnMBps,
      durationSeconds: o.minutes * 60,
      samples: samples.length,
      p50: round(percentile(samples, 50), 1)!,
      p99: round(percentile(samples, 99), 1)!,
      max: round(Math.max(...samples), 1)!,
      pointsCreated: last.reduce((n, h) => n + (h.latestPoint?.seq ?? 0) - (seq0.get(h.vm) ?? 0), 0),
      phasesSeconds: { wait: pp(phases.wait), send: pp(phases.send), apply: pp(phases.apply) },
      agentCpuPercentMean: round(usage.cpuPercentMean, 0)!,
      agentRssMBMax: round(Math.max(usage.rssMBMax, usage.peakRssMB), 0)!,
      azuriteCpuPercentMean: round(azUsage.cpuPercentMean, 0)!,
      errors: [...errors].slice(0, 10),
    };
  } finally {
    for (const c of clients) await c.close().catch(() => undefined);
    await agent.stop();
  }
}

interface FailbackRun {
  diskBytes: number;
  divergentBytes: number;
  differingBytes: number;
  /** data bytes the region's agent sent home (the replica's checksums came the other way) */
  wireBytesSent: number;
  wireBytesReceived: number;
  importSeconds: number;
  importMBps: number;
  resyncSeconds: number;
}

/**
 * Failback's data path with real agent processes: the old primary's disk demoted at home;
 * the same bytes as a page blob with 1 % changed "in Azure"; the region's agent imports the
 * blob through a read SAS and replicates it home, comparing every 4 KiB block.
 */
async function failbackRun(az: Azurite, pkiDir: string, dir: string, o: AzureBenchOptions): Promise<FailbackRun> {
  const size = o.failbackDiskBytes;
  await ensurePki(pkiDir, ['home', 'azure-westeurope']);
  const home = await startAgent({ name: 'home', dataDir: path.join(dir, 'home'), pkiDir, listenPort: 0, logFile: path.join(dir, 'home.log'), extraArgs: ['--log-level', 'warn'] });
  const region = await startAgent({ name: 'azure-westeurope', dataDir: path.join(dir, 'region'), pkiDir, logFile: path.join(dir, 'region.log'), extraArgs: ['--log-level', 'warn'] });
  try {
    // the old primary: its disk as it was at the failover, demoted to be the replica
    const vm = (await home.api.post<{ id: string; disks: { id: string; name: string }[] }>('/v1/vms', { name: 'web', disks: [size] }));
    const [disk] = await home.api.get<{ name: string; image: string }[]>('/v1/vms/web/disks');
    fillRandom(disk!.image, size);
    await home.api.post('/v1/vms/web/demote', { epoch: 2, source: 'azure-westeurope' });
    // the disk in Azure: the same bytes, then 4 KiB writes at random places (1 %), the VHD footer after the disk
    const container = az.service.getContainerClient('failback');
    await container.createIfNotExists();
    const blob = container.getPageBlobClient('web-disk0.vhd');
    await blob.create(pageBlobBytes(size));
    // (the demote took the image into the replica store)
    const replicaImage = path.join(dir, 'home', 'replicas', vm.id, 'disks', `${vm.disks[0]!.name}.img`);
    const fd = fs.openSync(replicaImage, 'r');
    const chunk = Buffer.alloc(PUT);
    for (let at = 0; at < size; at += PUT) {
      fs.readSync(fd, chunk, 0, PUT, at);
      await blob.uploadPages(chunk, at, PUT);
    }
    fs.closeSync(fd);
    await blob.uploadPages(vhdFooter(size), pageBlobBytes(size) - VHD_FOOTER_BYTES, VHD_FOOTER_BYTES);
    const blocks = size / 4096;
    const changed = new Set<number>();
    while (changed.size < Math.round(blocks * o.failbackChangedFraction)) changed.add(Math.floor(Math.random() * blocks));
    for (const b of changed) await blob.uploadPages(crypto.randomBytes(4096), b * 4096, 4096);
    const divergentBytes = changed.size * 4096;
    const sas = generateBlobSASQueryParameters({ containerName: 'failback', blobName: 'web-disk0.vhd', permissions: BlobSASPermissions.parse('r'), expiresOn: new Date(Date.now() + 6 * 3600_000) }, az.credential).toString();

    // the region's agent reads the disk (inside the region: no WAN bytes), then replicates it home
    const t0 = performance.now();
    await region.api.post('/v1/vms/web/import', { id: vm.id, epoch: 2, disks: [{ id: vm.disks[0]!.id, name: vm.disks[0]!.name, size, url: `${blob.url}?${sas}` }] });
    await waitFor('the import', async () => {
      const p = await region.api.get<{ state: string; error?: { message: string } }>('/v1/vms/web/import');
      if (p.state === 'failed') throw new Error(`the import failed: ${p.error?.message ?? ''}`);
      return p.state === 'done' ? true : undefined;
    }, 30 * 60_000, 100);
    const importSeconds = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    await region.api.post('/v1/replications', { vm: 'web', peer: `127.0.0.1:${home.replicationPort}`, copyFrequency: '1h', resyncWindow: 'never' });
    const h = await waitFor('the resync home', async () => {
      const x = await region.api.get<ReplicationHealth>('/v1/replications/web');
      if (x.lastError && x.state === 'Error') throw new Error(`failback failed: ${x.lastError.message}`);
      return x.resync?.completedAt ? x : undefined;
    }, 30 * 60_000, 100);
    const resyncSeconds = (performance.now() - t1) / 1000;
    // the replica at home now holds the disk as it was in Azure
    if (!(await sameAsFile(container, 'web-disk0.vhd', replicaImage, size))) throw new Error('the disk at home differs from the disk in Azure after the failback');
    const r = h.resync!;
    return { diskBytes: size, divergentBytes, differingBytes: r.differingBytes, wireBytesSent: r.wireBytesSent, wireBytesReceived: r.wireBytesReceived, importSeconds, importMBps: size / MB / importSeconds, resyncSeconds };
  } finally {
    await region.stop();
    await home.stop();
  }
}

export async function runAzureBench(o: AzureBenchOptions): Promise<void> {
  const log = (s: string) => console.log(s);
  const machine = machineFacts();
  log(`Azure benchmark: ${machine.cpus} CPUs (${machine.cpuModel}), node ${machine.node}, temp ${machine.tmpdir} (${machine.tmpFilesystem ?? '?'}); storage: Azurite on this machine`);
  const { dir, remove } = tempDir('azure');
  onCleanup(remove);
  const az = await startAzurite();
  onCleanup(() => az.stop());
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, ['primary']);
  // a part not run keeps its figures from the last run
  const file = path.join(o.resultsDir, 'azure.json');
  const previous = (fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : {}) as Record<string, unknown>;
  const result: Record<string, unknown> = { ...previous, machine, options: o };
  const rows: (string | null)[][] = [];

  if (o.only === undefined || o.only === 'upload') {
    const runs: { osr: UploadRun; sdk: UploadRun; sdkParallel: UploadRun }[] = [];
    log(`\n1. initial upload of ${fmt(o.bytes / GiB, 2)} GiB of random data: ${o.runs} runs of osr, each followed by the plain SDK loop (4 MiB uploadPages, one at a time) and the same calls 8 at a time`);
    for (let i = 0; i < o.runs; i++) {
      const osr = await osrUpload(az, pkiDir, dir, o.bytes, i);
      log(`  run ${i + 1}/${o.runs} osr:           ${fmt(osr.seconds, 2)} s, ${fmt(osr.MBps, 0)} MB/s; CPU agent ${fmt(osr.uploaderCpuSeconds, 1)} s, Azurite ${fmt(osr.azuriteCpuSeconds, 1)} s; blob verified`);
      const sdk = await sdkUpload(az, osr.file, o.bytes, `sdk-${i}`, 1);
      log(`  run ${i + 1}/${o.runs} SDK loop:      ${fmt(sdk.seconds, 2)} s, ${fmt(sdk.MBps, 0)} MB/s; CPU uploader ${fmt(sdk.uploaderCpuSeconds, 1)} s, Azurite ${fmt(sdk.azuriteCpuSeconds, 1)} s; blob verified`);
      const sdkParallel = await sdkUpload(az, osr.file, o.bytes, `sdk8-${i}`, 8);
      log(`  run ${i + 1}/${o.runs} SDK 8 at once: ${fmt(sdkParallel.seconds, 2)} s, ${fmt(sdkParallel.MBps, 0)} MB/s; CPU uploader ${fmt(sdkParallel.uploaderCpuSeconds, 1)} s, Azurite ${fmt(sdkParallel.azuriteCpuSeconds, 1)} s`);
      runs.push({ osr, sdk, sdkParallel });
    }
    const osrMBps = median(runs.map((r) => r.osr.MBps));
    const sdkMBps = median(runs.map((r) => r.sdk.MBps));
    const parallelMBps = median(runs.map((r) => r.sdkParallel.MBps));
    Object.assign(result, { initialUploadMBps: round(osrMBps, 1), sdkUploadMBps: round(sdkMBps, 1), sdkParallelUploadMBps: round(parallelMBps, 1), uploadRatio: round(osrMBps / sdkMBps, 2), uploadRuns: runs });
    rows.push(
      ['upload MB/s, osr (median)', fmt(osrMBps, 0), `SDK loop ${fmt(sdkMBps, 0)}, 8 at once ${fmt(parallelMBps, 0)}`, ''],
      ['upload, osr / SDK loop', fmt(osrMBps / sdkMBps, 2), '', '≥ 0.9'],
      ['CPU s of the uploader (median)', fmt(median(runs.map((r) => r.osr.uploaderCpuSeconds ?? NaN)), 1), `SDK loop ${fmt(median(runs.map((r) => r.sdk.uploaderCpuSeconds ?? NaN)), 1)}`, ''],
    );
  }
  if (o.only === undefined || o.only === 'failback') {
    log(`\n3. failback: a ${fmt(o.failbackDiskBytes / GiB, 2)} GiB disk failed over to Azure, ${fmt(o.failbackChangedFraction * 100, 1)} % of it changed there in 4 KiB writes; the region's agent reads it and replicates it home`);
    const fb = await failbackRun(az, pkiDir, dir, o);
    log(`  import in the region ${fmt(fb.importSeconds, 2)} s (${fmt(fb.importMBps, 0)} MB/s); resync ${fmt(fb.resyncSeconds, 2)} s; ${fb.differingBytes} bytes found different and ${fb.wireBytesSent} sent for ${fb.divergentBytes} changed; home disk verified`);
    Object.assign(result, { failbackBytesSent: fb.wireBytesSent, divergentBytes: fb.divergentBytes, failbackRatio: round(fb.wireBytesSent / fb.divergentBytes, 3), failback: fb });
    rows.push(['failback bytes sent / divergent', fmt(fb.wireBytesSent / fb.divergentBytes, 3), `${fb.wireBytesSent} / ${fb.divergentBytes} bytes; checksums the other way ${fb.wireBytesReceived}; a full download ${o.failbackDiskBytes}`, '≤ 1.2']);
  }
  if (o.only === undefined || o.only === 'rpo') {
    log(`\n2. RPO: ${o.rpoVms} VMs writing ${o.churnMBps} MB/s each, a copy every ${o.frequencySeconds} s to Azurite, for ${o.minutes} min`);
    const rpo = await rpoRun(az, pkiDir, dir, o, log);
    log(`  a point's time (p50/p99): waiting ${fmt(rpo.phasesSeconds.wait.p50, 1)}/${fmt(rpo.phasesSeconds.wait.p99, 1)} s, sending ${fmt(rpo.phasesSeconds.send.p50, 1)}/${fmt(rpo.phasesSeconds.send.p99, 1)} s, applying into the blobs ${fmt(rpo.phasesSeconds.apply.p50, 1)}/${fmt(rpo.phasesSeconds.apply.p99, 1)} s`);
    log(`  RPO p50 ${fmt(rpo.p50, 1)} s, p99 ${fmt(rpo.p99, 1)} s, max ${fmt(rpo.max, 1)} s over ${rpo.samples} samples; ${rpo.pointsCreated} points; agent CPU ${fmt(rpo.agentCpuPercentMean, 0)}%, RSS ≤ ${fmt(rpo.agentRssMBMax, 0)} MB; Azurite CPU ${fmt(rpo.azuriteCpuPercentMean, 0)}%${rpo.errors.length ? `; errors: ${rpo.errors.join('; ')}` : ''}`);
    Object.assign(result, { rpoP99Seconds: rpo.p99, rpo });
    rows.push(['RPO p99 (s)', fmt(rpo.p99, 1), `p50 ${fmt(rpo.p50, 1)}, max ${fmt(rpo.max, 1)}`, `none set (a site's: ≤ ${o.frequencySeconds + 5})`]);
  }
  log('\n' + formatTable(['', 'osr', 'beside it', 'target'], rows));
  fs.mkdirSync(o.resultsDir, { recursive: true });
  fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  log(`\nwritten to ${file}`);
}
