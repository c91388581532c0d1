/**
 * Disk images of libvirt domains, as change tracking needs them.
 *
 * - Only qcow2 v3 (compat 1.1) images carry persistent dirty bitmaps: a domain with another
 *   kind of disk is refused at enable, naming the disk and the fix.
 * - A committed failover's disks become files libvirt manages without copying a byte: a
 *   qcow2 whose data is the replica's raw image (an external data file, `data_file_raw`),
 *   so that checkpoints, and so reprotect's change tracking, work on it.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { OsrError } from '../../domain/errors.js';
import { xmlText, type DomainDisk } from './virsh.js';

const run = promisify(execFile);

export interface ImageInfo {
  format: string;
  virtualSize: number;
  /** qcow2: the compatibility level (1.1 for v3) */
  compat?: string;
  /** qcow2 with an external data file: its path */
  dataFile?: string;
  bitmaps: string[];
}

/** Run qemu-img; its output, or NOT_SUPPORTED (not installed) or HYPERVISOR_ERROR with its message. */
export async function qemuImg(args: string[]): Promise<string> {
  try {
    return (await run('qemu-img', args, { maxBuffer: 16 * 1024 * 1024 })).stdout;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new OsrError('NOT_SUPPORTED', 'qemu-img is not installed (package qemu-utils)');
    throw new OsrError('HYPERVISOR_ERROR', `qemu-img ${args[0]}: ${(err.stderr ?? err.message).trim()}`);
  }
}

/** What an image is (read with a shared lock: the domain may be running). */
export async function imageInfo(file: string): Promise<ImageInfo> {
  const j = JSON.parse(await qemuImg(['info', '--output=json', '-U', file])) as {
    format: string;
    'virtual-size': number;
    'format-specific'?: { type?: string; data?: { compat?: string; 'data-file'?: string; bitmaps?: { name: string }[] } };
  };
  const data = j['format-specific']?.data;
  return {
    format: j.format,
    virtualSize: j['virtual-size'],
    ...(data?.compat ? { compat: data.compat } : {}),
    ...(data?.['data-file'] ? { dataFile: data['data-file'] } : {}),
    bitmaps: (data?.bitmaps ?? []).map((b) => b.name),
  };
}

/**
 * Refuse a disk whose changes cannot be tracked by checkpoints: anything but a qcow2 v3
 * file. The error names the disk and what to do.
 */
export function checkTrackable(domain: string, disk: DomainDisk, info: ImageInfo | undefined): void {
  const fix = `convert it to qcow2 v3 with the domain shut off (qemu-img convert -O qcow2 -o compat=1.1 OLD NEW, then point the domain at NEW)`;
  if (!disk.file || !info) throw new OsrError('NOT_SUPPORTED', `disk ${disk.target} of ${domain} is not an image file; osr tracks changes of qcow2 v3 files only: ${fix}`, { domain, disk: disk.target });
  if (info.format !== 'qcow2') throw new OsrError('NOT_SUPPORTED', `disk ${disk.target} of ${domain} (${disk.file}) is ${info.format}: it cannot carry the dirty bitmaps osr tracks changes with; ${fix}`, { domain, disk: disk.target, format: info.format });
  if (info.compat !== '1.1') throw new OsrError('NOT_SUPPORTED', `disk ${disk.target} of ${domain} (${disk.file}) is qcow2 compat ${info.compat ?? '?'}: only qcow2 v3 (compat 1.1) carries dirty bitmaps; upgrade it with the domain shut off (qemu-img amend -o compat=1.1 ${disk.file})`, { domain, disk: disk.target });
}

/**
 * A qcow2 file over a raw image, without copying: its data is the raw image itself.
 * `qemu-img create` would truncate an existing data file, so the qcow2 is made against a
 * scratch name (metadata preallocated: every cluster maps to the same offset of the raw
 * image) and then pointed at the image. Run again, it finds the wrapper in place.
 */
export async function wrapRawImage(raw: string, qcow2: string): Promise<void> {
  if (fs.existsSync(qcow2)) {
    const info = await imageInfo(qcow2).catch(() => undefined);
    if (info?.format === 'qcow2' && info.dataFile && path.resolve(info.dataFile) === path.resolve(raw)) return;
    fs.rmSync(qcow2, { force: true });
  }
  const size = fs.statSync(raw).size;
  const scratch = `${qcow2}.scratch-data`;
  const tmp = `${qcow2}.tmp`;
  fs.rmSync(scratch, { force: true });
  fs.rmSync(tmp, { force: true });
  try {
    // in qemu-img's option lists a comma separates options: one in a path is written twice
    const opt = (file: string) => file.replace(/,/g, ',,');
    await qemuImg(['create', '-q', '-f', 'qcow2', '-o', `compat=1.1,data_file=${opt(scratch)},data_file_raw=on,preallocation=metadata`, tmp, String(size)]);
    await qemuImg(['amend', '-q', '-f', 'qcow2', '-o', `data_file=${opt(path.resolve(raw))}`, tmp]);
    const fd = fs.openSync(tmp, 'r');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tmp, qcow2);
    const dirFd = fs.openSync(path.dirname(qcow2), 'r');
    fs.fsyncSync(dirFd);
    fs.closeSync(dirFd);
  } finally {
    fs.rmSync(scratch, { force: true });
    fs.rmSync(tmp, { force: true });
  }
}

/** The domain XML of a disk that is a wrapped raw image. */
export function wrappedDiskXml(qcow2: string, raw: string, target: string): string {
  return `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${xmlText(qcow2)}'><dataStore type='file'><format type='raw'/><source file='${xmlText(raw)}'/></dataStore></source><target dev='${xmlText(target)}' bus='virtio'/></disk>`;
}
