/**
 * A lab virtual disk: a raw sparse image file served to the guest (over NBD) with every
 * write passing through change tracking. Order on the write path: change-log append, then
 * image write, both synchronous, so a swap of the logs (also synchronous) never splits a
 * write; on FLUSH or FUA the log is made durable before the image.
 */
import fs from 'node:fs';
import { FileDiskReader } from '../io/file-reader.js';
import { OsrError } from '../../domain/errors.js';
import type { BlockDevice, Extent, WriteOptions } from '../io/block-device.js';
import type { VmChangeTracker } from '../tracking/change-tracker.js';
import type { WriteGate } from '../io/write-gate.js';
import { fdatasyncAsync, readFully, writeFully } from '../io/io.js';
import { dataRanges, punchHole, writeZeroRange } from '../io/sparse.js';

export const MAX_DISK_BYTES = 4 * 1024 ** 4;

/** A lab disk's size: a positive multiple of 512 bytes, at most 4 TiB. */
export function checkDiskSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % 512 !== 0) {
    throw new OsrError('INVALID_ARGUMENT', `disk size ${size} must be a positive multiple of 512 bytes`);
  }
  if (size > MAX_DISK_BYTES) throw new OsrError('DISK_TOO_LARGE', `disk size ${size} exceeds 4 TiB`);
}


export class LabDisk implements BlockDevice {
  readonly readOnly = false;
  private fd: number;

  constructor(
    readonly id: string,
    readonly name: string,
    readonly imagePath: string,
    /** grows or shrinks with the disk (resize) */
    public size: number,
    private readonly tracker: VmChangeTracker | undefined,
    /** the disk's place among the VM's disks (its change tracking): moves when a disk before it is removed */
    public index: number,
    /** why writes are refused (a fenced VM), or undefined */
    private readonly fenced: () => string | undefined = () => undefined,
    /** the VM's write gate (a consistency group's cut holds it) */
    private readonly gate?: WriteGate,
  ) {
    this.fd = fs.openSync(imagePath, 'r+');
  }

  /** Create the image file (sparse) if it does not exist. */
  static createImage(imagePath: string, size: number): void {
    checkDiskSize(size);
    const fd = fs.openSync(imagePath, 'wx', 0o600);
    try {
      fs.ftruncateSync(fd, size);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Grow or shrink the disk to `size` bytes: the image is resized and synced. A shrink
   * drops the bytes past the new end (the replica keeps them for its older points).
   */
  resize(size: number): void {
    checkDiskSize(size);
    fs.ftruncateSync(this.fd, size);
    fs.fsyncSync(this.fd);
    this.size = size;
  }

  get imageFd(): number {
    return this.fd;
  }

  /** the sending side's reader of this disk: its live image */
  readonly reader = new FileDiskReader(() => this.fd);

  private check(offset: number, length: number): void {
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new OsrError('INVALID_ARGUMENT', `range ${offset}+${length} is outside disk ${this.name} (${this.size} bytes)`);
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    const buf = Buffer.allocUnsafe(length);
    readFully(this.fd, buf, offset);
    return buf;
  }

  private checkWritable(): void {
    const why = this.fenced();
    if (why) throw new OsrError('EPOCH_STALE', `disk ${this.name} refuses writes: ${why}`);
  }

  async write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    // held by a group cut: wait; from the check on, nothing yields until the write is logged and in the image
    const held = this.gate?.wait;
    if (held) await held;
    this.check(offset, data.length);
    this.checkWritable();
    this.tracker?.appendWrite(this.index, offset, data);
    writeFully(this.fd, data, offset);
    if (opts.fua) await this.flush();
  }

  async writeZeroes(offset: number, length: number, opts: WriteOptions & { mayTrim: boolean }): Promise<void> {
    const held = this.gate?.wait;
    if (held) await held;
    this.check(offset, length);
    this.checkWritable();
    this.tracker?.appendZero(this.index, offset, length);
    if (opts.mayTrim) punchHole(this.fd, offset, length);
    else writeZeroRange(this.fd, offset, length);
    if (opts.fua) await this.flush();
  }

  async trim(offset: number, length: number, opts: WriteOptions): Promise<void> {
    // a trimmed range reads back as zeroes here, and the replica is told the same
    await this.writeZeroes(offset, length, { ...opts, mayTrim: true });
  }

  async flush(): Promise<void> {
    await this.tracker?.syncLogs();
    await fdatasyncAsync(this.fd);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    const end = offset + length;
    const out: Extent[] = [];
    let pos = offset;
    for (const r of dataRanges(this.fd, offset, end)) {
      if (r.offset > pos) out.push({ offset: pos, length: r.offset - pos, hole: true, zero: true });
      out.push({ offset: r.offset, length: r.length, hole: false, zero: false });
      pos = r.offset + r.length;
      if (out.length >= 1024) return out;
    }
    if (pos < end) out.push({ offset: pos, length: end - pos, hole: true, zero: true });
    return out;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
