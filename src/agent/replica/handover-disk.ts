/**
 * A disk whose backing changes under its clients without disconnecting them: a failed-over
 * VM runs from an overlay on its recovery point until the failover is committed, then from
 * its own images. While the backing changes, new requests wait and those in flight finish
 * first, so every request sees one backing or the other, never a mix.
 */
import type { BlockDevice, Extent, WriteOptions } from '../io/block-device.js';

export class HandoverDisk implements BlockDevice {
  readonly readOnly = false;
  private inFlight = 0;
  private drained: (() => void) | undefined;
  private gate: Promise<void> | undefined;
  private open: (() => void) | undefined;

  constructor(private target: BlockDevice) {}

  get size(): number {
    return this.target.size;
  }

  private async run<T>(op: (d: BlockDevice) => Promise<T>): Promise<T> {
    while (this.gate) await this.gate;
    this.inFlight++;
    try {
      return await op(this.target);
    } finally {
      if (--this.inFlight === 0) this.drained?.();
    }
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.run((d) => d.read(offset, length));
  }
  write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    return this.run((d) => d.write(offset, data, opts));
  }
  writeZeroes(offset: number, length: number, opts: WriteOptions & { readonly mayTrim: boolean }): Promise<void> {
    return this.run((d) => d.writeZeroes(offset, length, opts));
  }
  trim(offset: number, length: number, opts: WriteOptions): Promise<void> {
    return this.run((d) => d.trim(offset, length, opts));
  }
  flush(): Promise<void> {
    return this.run((d) => d.flush());
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.run((d) => d.blockStatus(offset, length));
  }

  /** Hold new requests and wait for those in flight. */
  async hold(): Promise<void> {
    if (!this.gate) this.gate = new Promise((r) => (this.open = r));
    if (this.inFlight > 0) await new Promise<void>((r) => (this.drained = r));
    this.drained = undefined;
  }

  /** Let requests go on, against `next` when given (else the backing they had). */
  release(next?: BlockDevice): void {
    if (next) this.target = next;
    const open = this.open;
    this.gate = undefined;
    this.open = undefined;
    open?.();
  }
}
