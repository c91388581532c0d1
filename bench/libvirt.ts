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
 *   `virtnbdbackup -l inc` (read over NBD, written to its backup directory);
 *   deltaMBps: the changed bytes over osr's cycle time;
 * - testFailoverBootSeconds: a recovery point opened writable at the replica and a domain
 *   started on it over NBD, until the guest has mounted its file system.
 */
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { LibvirtTracking } from '../src/agent/libvirt/tracking.js';
import { Virsh, xmlText } from '../src/agent/libvirt/virsh.js';
import { NbdClient, parseNbdUri } from '../src/agent/nbd/nbd-client.js';
import type { ReplicationHealth } from '../src/agent/wire/replication-types.js';
import { ensurePki } from '../src/lab/agent-process.js';
import { removeDomain, startTinyDomain, type TinyDomain } from '../src/lab/tiny-domain.js';
import { tinyGuest } from '../src/lab/tiny-guest.js';
import { parseBytes, UsageError, type Flags } from './lib/args.js';
import { onCleanup, startAgent, tempDir, waitFor } from './lib/lab.js';
import { machineFacts } from './lib/machine.js';
import { MB, median, round } from './lib/stats.js';
import { fmt, formatTable } from './lib/table.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

export interface LibvirtBenchOptions {
  runs: number;
  /** the data disk's size; it is filled with random bytes for the initial copy */
  bytes: number;
  /** bytes changed between cycles, in 64 KiB blocks at random offsets */
  changed: number;
  resultsDir: string;
}

export function libvirtOptions(flags: Flags, resultsDir: string): LibvirtBenchOptions {
  const o: LibvirtBenchOptions = {
    runs: flags.number('runs', 3, (n) => Number.isInteger(n) && n > 0),
    bytes: parseBytes(flags.string('size', '2G')),
    changed: parseBytes(flags.string('changed', '1G')),
    resultsDir,
  };
  if (o.changed > o.bytes) throw new UsageError('--changed cannot be more than --size');
  return o;
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

export async function runLibvirtBench(o: LibvirtBenchOptions): Promise<void> {
  const virsh = new Virsh();
  await virsh.run(['version']).catch(() => {
    throw new Error('libvirtd does not answer on qemu:///system: run bash scripts/libvirt-up.sh first');
  });
  const hasVnb = await run('virtnbdbackup', ['--version']).then(
    () => true,
    () => false,
  );
  const { dir, remove } = tempDir('libvirt');
  onCleanup(remove);
  const guest = await tinyGuest();
  const name = `osr-bench-${process.pid}`;
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, ['primary', 'replica']);

  // the domain: an ext4 system disk, a data disk of random bytes; idle (no guest writes)
  const dataImage = path.join(dir, 'data.qcow2');
  await randomImage(dataImage, o.bytes);
  const dom: TinyDomain = await startTinyDomain(virsh, name, path.join(dir, 'domain'), { dataImage, idle: true });
  onCleanup(() => removeDomain(virsh, name));
  const replica = await startAgent({ name: 'replica', dataDir: path.join(dir, 'replica'), pkiDir, listenPort: 0, logFile: path.join(dir, 'replica.log'), extraArgs: ['--log-level', 'warn'] });
  const primary = await startAgent({ name: 'primary', dataDir: path.join(dir, 'primary'), pkiDir, logFile: path.join(dir, 'primary.log'), extraArgs: ['--log-level', 'warn', '--host', 'libvirt', '--libvirt-domains', `^${name}$`] });
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
  const rounds: { changedBytes: number; osrSeconds: number; vnbSeconds: number | null; readSeconds: number | null; sendSeconds: number | null; applySeconds: number | null }[] = [];
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
    const s = performance.now();
    await primary.api.post(`/v1/replications/${name}/cycle`);
    seq = await pointAfter(seq);
    const osrSeconds = (performance.now() - s) / 1000;
    // where the cycle's time went: reading the dirty extents into the delta, sending it, applying it
    const d = (await health()).lastDelta;
    let vnbSeconds: number | null = null;
    if (hasVnb) {
      const v = performance.now();
      await run('virtnbdbackup', ['-d', twinName, '-l', 'inc', '-o', vnbDir, '--noprogress'], { maxBuffer: 64 * MiB });
      vnbSeconds = (performance.now() - v) / 1000;
    }
    rounds.push({ changedBytes, osrSeconds, vnbSeconds, readSeconds: d ? d.syncMs / 1000 : null, sendSeconds: d ? d.sendMs / 1000 : null, applySeconds: d ? d.applyMs / 1000 : null });
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
    benchmark: 'libvirt',
    at: new Date().toISOString(),
    machine: machineFacts(),
    options: { ...o, resultsDir: undefined },
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
    testFailoverBootSeconds: round(median(boots), 2),
    rounds,
    notMeasured: 'RPO p99 at a 30 s copy frequency for 4 guests writing 2 MB/s each',
  };
  console.log(
    formatTable(
      ['measure', 'value', 'target'],
      [
        ['initial replication (MB/s)', fmt(result.initialReplicationMBps), null],
        ['idle cycle overhead (s, median)', fmt(result.deltaCycleOverheadSeconds, 3), '≤ 1'],
        [`osr cycle, ${fmt(changedMedian / MiB, 0)} MiB scattered (s)`, fmt(result.osrIncSeconds, 2), '≤ virtnbdbackup'],
        ['  of which: read into the delta (s)', fmt(result.osrIncReadSeconds, 2), null],
        ['  sent to the replica (s)', fmt(result.osrIncSendSeconds, 2), null],
        ['  applied at the replica (s)', fmt(result.osrIncApplySeconds, 2), null],
        ['virtnbdbackup -l inc, same changes (s)', fmt(result.virtnbdbackupIncSeconds, 2), null],
        ['osr / virtnbdbackup', fmt(result.osrToVirtnbdbackup, 2), '≤ 1'],
        ['delta (MB/s, read + shipped + applied)', fmt(result.deltaMBps), null],
        ['test failover boot (s, median)', fmt(result.testFailoverBootSeconds, 2), null],
      ],
    ),
  );
  if (!hasVnb) console.log('virtnbdbackup is not installed (Debian package virtnbdbackup): its column is empty');
  fs.mkdirSync(o.resultsDir, { recursive: true });
  const out = path.join(o.resultsDir, 'libvirt.json');
  fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`wrote ${out}`);
  await primary.stop();
  await replica.stop();
}
