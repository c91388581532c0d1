/**
 * The guest-facing view of a virtual disk: what the NBD server serves. A lab disk (with
 * change tracking) and a recovery-point overlay both implement it.
 */
export interface Extent {
  readonly offset: number;
  readonly length: number;
  /** true when the range is not allocated (reads as zeroes) */
  readonly hole: boolean;
  /** true when the range is known to read as zeroes */
  readonly zero: boolean;
}

export interface WriteOptions {
  /** force unit access: durable before the call resolves */
  readonly fua: boolean;
}

export interface BlockDevice {
  /** virtual size in bytes (up to 4 TiB) */
  readonly size: number;
  readonly readOnly: boolean;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer, opts: WriteOptions): Promise<void>;
  /** make the range read as zeroes; may deallocate when mayTrim is true */
  writeZeroes(offset: number, length: number, opts: WriteOptions & { readonly mayTrim: boolean }): Promise<void>;
  /** the guest no longer needs the range; it may read back as zeroes afterwards */
  trim(offset: number, length: number, opts: WriteOptions): Promise<void>;
  /** make every acknowledged write durable */
  flush(): Promise<void>;
  /** allocation of [offset, offset+length): contiguous extents covering at least part of it */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
}
