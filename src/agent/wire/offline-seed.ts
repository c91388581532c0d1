/**
 * Offline initial replication: the primary writes a VM's initial copy to a directory in a
 * portable, checksummed format; the directory travels (a disk shipped to the other site);
 * the replica imports it. Delta replication then goes on from the export's instant without
 * sending the disks over the network.
 *
 *   DIR/osr-export.json   what the export holds: the VM, its disks, a checksum per chunk;
 *                         written last, so a directory without it is an unfinished export
 *   DIR/<disk>.img        each disk, raw and sparse (all-zero chunks are holes)
 *
 * The export is taken from the live disks after change tracking started, like an online
 * initial copy: writes made while it runs are in the change log, which is shipped as the
 * first delta once the replica has imported the copy. An import checks every chunk against
 * its checksum before the replica uses it; a missing manifest, a missing or short file, a
 * checksum that does not match or an export of another VM are refused with EXPORT_INVALID.
 */
import fs from 'node:fs';
import path from 'node:path';
import { OsrError } from '../../domain/errors.js';
import { isSafeName, MAX_DISK_BYTES, MAX_DISKS } from '../../domain/names.js';
import { digest } from '../io/checksum.js';
import { fsyncDir, readJson, writeJsonDurable } from '../io/durable-file.js';
import { fdatasyncAsync, readAt, writeAllAt } from '../io/io.js';
import type { DiskReader } from '../ports/change-source.js';
import type { ReplicaTarget } from '../ports/replica-target.js';
import { isZero } from '../io/sparse.js';

export const EXPORT_MANIFEST = 'osr-export.json';
export const EXPORT_FORMAT = 'osr-offline-export';
const CHUNK = 4 * 1024 * 1024;

export interface ExportDisk {
  id: string;
  name: string;
  size: number;
  file: string;
  /** xxh128 (hex) of each chunk of `chunkSize` bytes; null for a chunk that is all zeroes */
  chunks: (string | null)[];
}

export interface ExportManifest {
  format: typeof EXPORT_FORMAT;
  version: 1;
  vmId: string;
  vmName: string;
  epoch: number;
  /** the change log that tracks every write since the export began: its first delta */
  seq: number;
  chunkSize: number;
  createdAt: string;
  disks: ExportDisk[];
}

export interface ExportSource {
  id: string;
  name: string;
  disks: readonly { id: string; name: string; size: number; reader: Pick<DiskReader, 'read'> }[];
}

const invalid = (dir: string, why: string) => new OsrError('EXPORT_INVALID', `offline export in ${dir}: ${why}`);

/** The manifest of a finished export of `vmId` in dir, if there is one. */
export function finishedExport(dir: string, vmId: string, seq: number): ExportManifest | undefined {
  const m = readJson<ExportManifest>(path.join(dir, EXPORT_MANIFEST));
  return m && m.format === EXPORT_FORMAT && m.vmId === vmId && m.seq === seq ? m : undefined;
}

/**
 * Write the export. `progress` is told each chunk's bytes; `stopped` ends it early (it is
 * written again from the start next time). Files are durable before the manifest names them.
 */
export async function writeExport(dir: string, vm: ExportSource, epoch: number, seq: number, nowMs: number, progress: (bytes: number) => void, stopped: () => boolean): Promise<ExportManifest> {
  fs.mkdirSync(dir, { recursive: true });
  fs.rmSync(path.join(dir, EXPORT_MANIFEST), { force: true });
  fsyncDir(dir);
  const disks: ExportDisk[] = [];
  const buf = Buffer.allocUnsafe(CHUNK);
  for (const d of vm.disks) {
    const file = `${d.name}.img`;
    const fd = fs.openSync(path.join(dir, file), 'w', 0o600);
    try {
      fs.ftruncateSync(fd, d.size);
      const chunks: (string | null)[] = [];
      for (let pos = 0; pos < d.size; pos += CHUNK) {
        if (stopped()) throw new OsrError('NETWORK_ERROR', 'replication stopped during the offline export');
        const data = await d.reader.read(pos, Math.min(CHUNK, d.size - pos), buf.subarray(0, Math.min(CHUNK, d.size - pos)));
        if (isZero(data)) chunks.push(null);
        else {
          chunks.push(digest(data).toString('hex'));
          await writeAllAt(fd, [data], pos);
        }
        progress(data.length);
      }
      await fdatasyncAsync(fd);
      disks.push({ id: d.id, name: d.name, size: d.size, file, chunks });
    } finally {
      fs.closeSync(fd);
    }
  }
  fsyncDir(dir);
  const manifest: ExportManifest = { format: EXPORT_FORMAT, version: 1, vmId: vm.id, vmName: vm.name, epoch, seq, chunkSize: CHUNK, createdAt: new Date(nowMs).toISOString(), disks };
  writeJsonDurable(path.join(dir, EXPORT_MANIFEST), manifest);
  return manifest;
}

/** Read and check an export's manifest and files (sizes), without reading the data. */
export function readExport(dir: string, expect?: { vm?: string | undefined }): ExportManifest {
  if (!fs.existsSync(dir)) throw invalid(dir, 'the directory does not exist');
  const file = path.join(dir, EXPORT_MANIFEST);
  if (!fs.existsSync(file)) throw invalid(dir, `${EXPORT_MANIFEST} is missing: the export is unfinished or this is not an export`);
  let m: ExportManifest | undefined;
  try {
    m = JSON.parse(fs.readFileSync(file, 'utf8')) as ExportManifest;
  } catch (e) {
    throw invalid(dir, `${EXPORT_MANIFEST} is not valid JSON (${(e as Error).message})`);
  }
  if (m.format !== EXPORT_FORMAT || m.version !== 1) throw invalid(dir, `not an ${EXPORT_FORMAT} version 1 manifest`);
  if (typeof m.vmId !== 'string' || typeof m.vmName !== 'string' || !Number.isSafeInteger(m.seq) || !Array.isArray(m.disks) || m.disks.length === 0 || !Number.isSafeInteger(m.chunkSize) || m.chunkSize <= 0) {
    throw invalid(dir, 'the manifest lacks the VM, its disks or the chunk size');
  }
  // every name here becomes a file name at the replica: the one rule for names (domain/names.ts)
  if (!isSafeName(m.vmId) || !isSafeName(m.vmName)) throw invalid(dir, 'the manifest names its VM with characters a replica cannot use as a file name');
  if (m.chunkSize > 64 * 1024 * 1024 || m.seq < 0 || !Number.isSafeInteger(m.epoch) || m.epoch < 0 || m.disks.length > MAX_DISKS) throw invalid(dir, 'the manifest has an out-of-range chunk size, sequence, epoch or disk count');
  if (expect?.vm !== undefined && expect.vm !== m.vmName && expect.vm !== m.vmId) throw invalid(dir, `it holds VM ${m.vmName} (${m.vmId}), not ${expect.vm}`);
  for (const d of m.disks) {
    if (typeof d !== 'object' || d === null || !isSafeName(d.id) || !isSafeName(d.name) || !isSafeName(d.file)) throw invalid(dir, 'a disk of the manifest has an id, name or file that is not a valid name');
    if (!Number.isSafeInteger(d.size) || d.size <= 0 || d.size > MAX_DISK_BYTES) throw invalid(dir, `disk ${d.name} has an invalid size`);
    const chunks = Math.ceil(d.size / m.chunkSize);
    if (!Array.isArray(d.chunks) || d.chunks.length !== chunks || !d.chunks.every((c) => c === null || (typeof c === 'string' && /^[0-9a-f]{32}$/.test(c)))) {
      throw invalid(dir, `disk ${String(d.name)} is described inconsistently`);
    }
    const f = path.join(dir, d.file);
    if (!fs.existsSync(f)) throw invalid(dir, `${d.file} is missing: the export is partial`);
    if (fs.statSync(f).size !== d.size) throw invalid(dir, `${d.file} is ${fs.statSync(f).size} bytes, the manifest says ${d.size}: the export is partial or damaged`);
  }
  return m;
}

/**
 * Import a checked export into a replica target as its initial copy: every chunk is read,
 * checked against its checksum, and written; each disk is checkpointed as finished. On any
 * mismatch the import stops with EXPORT_INVALID and the caller discards the target.
 */
export async function importExport(dir: string, m: ExportManifest, target: ReplicaTarget, progress: (bytes: number) => void = () => undefined): Promise<void> {
  for (const d of m.disks) {
    const fd = fs.openSync(path.join(dir, d.file), 'r');
    try {
      for (let i = 0; i < d.chunks.length; i++) {
        const pos = i * m.chunkSize;
        const len = Math.min(m.chunkSize, d.size - pos);
        const data = await readAt(fd, len, pos);
        const want = d.chunks[i];
        if (want === null) {
          if (!isZero(data)) throw invalid(dir, `${d.file} holds data at ${pos} where the export recorded zeroes: it was changed after the export`);
          target.zeroInitial(d.name, pos, len);
        } else {
          if (digest(data).toString('hex') !== want) throw invalid(dir, `${d.file} fails its checksum at ${pos}+${len}: the file was damaged or changed after the export`);
          await target.writeInitial(d.name, pos, [data]);
        }
        progress(len);
      }
    } finally {
      fs.closeSync(fd);
    }
    await target.checkpointInitial(d.name, d.size, true);
  }
}
