/**
 * The Azure benchmark (docs/benchmarks.md): the initial copy of a disk of random data to a
 * storage account (Azurite on this machine) by an osr agent, against the same bytes
 * uploaded by a plain loop of 4 MiB `uploadPages` calls of `@azure/storage-blob`, in the
 * same run (and, to show what concurrency alone gives, the same calls 8 at a time). Each
 * copy is read back and compared with the source. Azurite keeps blobs in files on the
 * local disk: the figures say how osr's data path compares with the SDK's on the same
 * storage, not what an Azure account would take.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ContainerSASPermissions, generateBlobSASQueryParameters, type ContainerClient } from '@azure/storage-blob';
import type { ReplicationHealth } from '../src/agent/wire/replication-types.js';
import { ensurePki } from '../src/lab/agent-process.js';
import { pageBlobBytes } from '../src/domain/vhd.js';
import { startAzurite, type Azurite } from '../test/support/azurite.js';
import { parseBytes, UsageError, type Flags } from './lib/args.js';
import { fillRandom } from './lib/files.js';
import { onCleanup, sleep, startAgent, tempDir } from './lib/lab.js';
import { machineFacts } from './lib/machine.js';
import { ProcessSampler, cpuSeconds, ownCpuSeconds } from './lib/proc.js';
import { GiB, MB, median, round } from './lib/stats.js';
import { fmt, formatTable } from './lib/table.js';

export interface AzureBenchOptions {
  runs: number;
  bytes: number;
  resultsDir: string;
}

export function azureOptions(flags: Flags, resultsDir: string): AzureBenchOptions {
  const o: AzureBenchOptions = {
    runs: flags.number('runs', 3, (n) => Number.isInteger(n) && n > 0),
    bytes: parseBytes(flags.string('size', '2G')),
    resultsDir,
  };
  if (o.bytes % (4 * 1024 * 1024) !== 0) throw new UsageError('--size must be a multiple of 4 MiB');
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
  const runs: { osr: UploadRun; sdk: UploadRun; sdkParallel: UploadRun }[] = [];
  log(`\n1. initial upload of ${fmt(o.bytes / GiB, 2)} GiB of random data: ${o.runs} runs of osr, each followed by the plain SDK loop (4 MiB uploadPages, one at a time) and the same calls 8 at a time`);
  for (let i = 0; i < o.runs; i++) {
    const osr = await osrUpload(az, pkiDir, dir, o.bytes, i);
    log(`  run ${i + 1}/${o.runs} osr:          ${fmt(osr.seconds, 2)} s, ${fmt(osr.MBps, 0)} MB/s; CPU agent ${fmt(osr.uploaderCpuSeconds, 1)} s, Azurite ${fmt(osr.azuriteCpuSeconds, 1)} s; blob verified`);
    const sdk = await sdkUpload(az, osr.file, o.bytes, `sdk-${i}`, 1);
    log(`  run ${i + 1}/${o.runs} SDK loop:     ${fmt(sdk.seconds, 2)} s, ${fmt(sdk.MBps, 0)} MB/s; CPU uploader ${fmt(sdk.uploaderCpuSeconds, 1)} s, Azurite ${fmt(sdk.azuriteCpuSeconds, 1)} s; blob verified`);
    const sdkParallel = await sdkUpload(az, osr.file, o.bytes, `sdk8-${i}`, 8);
    log(`  run ${i + 1}/${o.runs} SDK 8 at once: ${fmt(sdkParallel.seconds, 2)} s, ${fmt(sdkParallel.MBps, 0)} MB/s; CPU uploader ${fmt(sdkParallel.uploaderCpuSeconds, 1)} s, Azurite ${fmt(sdkParallel.azuriteCpuSeconds, 1)} s`);
    runs.push({ osr, sdk, sdkParallel });
  }
  const initialUploadMBps = median(runs.map((r) => r.osr.MBps));
  const sdkUploadMBps = median(runs.map((r) => r.sdk.MBps));
  const sdkParallelUploadMBps = median(runs.map((r) => r.sdkParallel.MBps));
  const result = {
    machine,
    options: { runs: o.runs, bytes: o.bytes },
    initialUploadMBps: round(initialUploadMBps, 1),
    sdkUploadMBps: round(sdkUploadMBps, 1),
    sdkParallelUploadMBps: round(sdkParallelUploadMBps, 1),
    uploadRatio: round(initialUploadMBps / sdkUploadMBps, 2),
    runs,
  };
  log('\n' + formatTable(['', 'osr', 'SDK loop', 'SDK, 8 at once', 'target'], [
    ['upload MB/s (median)', fmt(initialUploadMBps, 0), fmt(sdkUploadMBps, 0), fmt(sdkParallelUploadMBps, 0), ''],
    ['osr / SDK loop', fmt(initialUploadMBps / sdkUploadMBps, 2), '', '', '≥ 0.9'],
    ['CPU s of the uploader (median)', fmt(median(runs.map((r) => r.osr.uploaderCpuSeconds ?? NaN)), 1), fmt(median(runs.map((r) => r.sdk.uploaderCpuSeconds ?? NaN)), 1), fmt(median(runs.map((r) => r.sdkParallel.uploaderCpuSeconds ?? NaN)), 1), ''],
  ]));
  fs.mkdirSync(o.resultsDir, { recursive: true });
  fs.writeFileSync(path.join(o.resultsDir, 'azure.json'), JSON.stringify(result, null, 2) + '\n');
  log(`\nwritten to ${path.join(o.resultsDir, 'azure.json')}`);
}
