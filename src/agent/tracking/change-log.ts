/**
 * The change log: osr's counterpart of Hyper-V Replica's .hrl file. Every guest write to
 * a tracked disk is appended here (with its data) before it reaches the disk image, so a
 * closed log is a self-contained, point-in-time delta of one disk.
 *
 * Layout (all integers little-endian):
 *   file header, 64 bytes: magic "OSRCLOG\0" | version u16 | flags u16 | reserved u32 |
 *                          seq u64 | createdMs u64 | diskKey 16 | xxh128(bytes 0..47) 16
 *   record header, 48 bytes: magic u32 "OSRR" | type u8 | 3 reserved | index u64 |
 *                          offset u64 | length u64 | xxh128(header 0..31 ‖ payload) 16
 *   payload: WRITE → `length` bytes of data; ZERO → none; CLOSE → 40 bytes:
 *            chain 16 | recordCount u64 | dataBytes u64 | closedMs u64
 * `chain` is xxh128 folded over every record checksum in order, so a dropped, repeated or
 * reordered record is caught even when each record is intact. Invariants: docs/design/change-log.md.
 */
import fs from 'node:fs';
import { OsrError } from '../../domain/errors.js';
import { ByteQueue } from '../io/byte-queue.js';
import { createDigest, digest, DIGEST_BYTES } from '../io/checksum.js';
import { fdatasyncAsync, writeAllAt } from '../io/io.js';

export const LOG_MAGIC = Buffer.from('OSRCLOG\0', 'latin1');
export const LOG_VERSION = 1;
export const LOG_HEADER_BYTES = 64;
export const RECORD_HEADER_BYTES = 48;
const RECORD_MAGIC = 0x5252534f; // "OSRR" read as u32le
const CLOSE_PAYLOAD_BYTES = 40;
/** the largest single record payload; bigger guest writes are split */
export const MAX_RECORD_DATA = 32 * 1024 * 1024;
/** queued records are written to the file in batches of about this many bytes */
const QUEUE_BATCH_BYTES = 8 * 1024 * 1024;
/** batches of queued records being written at once, at most */
const QUEUE_BATCHES_IN_FLIGHT = 4;


export const RecordType = { Write: 1, Zero: 2, Close: 3 } as const;
export type RecordType = (typeof RecordType)[keyof typeof RecordType];

export interface LogHeader {
  seq: number;
  createdMs: number;
  diskKey: Buffer;
}

export interface LogRecord {
  type: RecordType;
  index: number;
  offset: number;
  length: number;
  /** position of the payload in the log file */
  dataPos: number;
}

export interface CloseInfo {
  recordCount: number;
  dataBytes: number;
  closedMs: number;
  chain: Buffer;
}

export function diskKeyOf(diskId: string): Buffer {
  return digest(Buffer.from(diskId, 'utf8'));
}

export function encodeLogHeader(h: LogHeader): Buffer {
  const b = Buffer.alloc(LOG_HEADER_BYTES);
  LOG_MAGIC.copy(b, 0);
  b.writeUInt16LE(LOG_VERSION, 8);
  b.writeBigUInt64LE(BigInt(h.seq), 16);
  b.writeBigUInt64LE(BigInt(h.createdMs), 24);
  h.diskKey.copy(b, 32, 0, 16);
  digest(b.subarray(0, 48)).copy(b, 48);
  return b;
}

export function decodeLogHeader(b: Buffer, where: string): LogHeader {
  if (b.length < LOG_HEADER_BYTES || !b.subarray(0, 8).equals(LOG_MAGIC)) {
    throw new OsrError('CHANGE_LOG_CORRUPT', `${where}: not a change log (bad magic)`);
  }
  if (!digest(b.subarray(0, 48)).equals(b.subarray(48, 64))) {
    throw new OsrError('CHANGE_LOG_CORRUPT', `${where}: change log header checksum mismatch`);
  }
  const version = b.readUInt16LE(8);
  if (version !== LOG_VERSION) {
    throw new OsrError('CHANGE_LOG_CORRUPT', `${where}: change log version ${version} is not supported`);
  }
  return {
    seq: Number(b.readBigUInt64LE(16)),
    createdMs: Number(b.readBigUInt64LE(24)),
    diskKey: Buffer.from(b.subarray(32, 48)),
  };
}

function payloadLength(type: number, length: number): number {
  if (type === RecordType.Write) return length;
  if (type === RecordType.Close) return CLOSE_PAYLOAD_BYTES;
  return 0;
}

function encodeRecordHeader(type: RecordType, index: number, offset: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(RECORD_HEADER_BYTES);
  h.writeUInt32LE(RECORD_MAGIC, 0);
  h.writeUInt32LE(type, 4); // type in the low byte, reserved bytes zero
  h.writeBigUInt64LE(BigInt(index), 8);
  h.writeBigUInt64LE(BigInt(offset), 16);
  h.writeBigUInt64LE(BigInt(length), 24);
  return h;
}

/**
 * Appends records to an open log. Appends are synchronous and strictly ordered: the
 * caller appends, then writes the disk image, so after a crash the log holds every write
 * the image may hold (the last one possibly not yet in the image: recovery redoes it).
 */
export class ChangeLogWriter {
  private pos: number;
  private index: number;
  private chain: Buffer;
  private dataBytes = 0;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly header: LogHeader,
    state: { pos: number; index: number; chain: Buffer; dataBytes: number },
  ) {
    this.pos = state.pos;
    this.index = state.index;
    this.chain = state.chain;
    this.dataBytes = state.dataBytes;
  }

  /**
   * A log laid out without a file: its records are numbered, checksummed and chained as
   * in a file's, and their bytes go only to the `tee` (a delta streamed to the replica).
   */
  static detached(header: LogHeader): ChangeLogWriter {
    return new ChangeLogWriter('(streamed)', -1, header, { pos: LOG_HEADER_BYTES, index: 0, chain: Buffer.alloc(DIGEST_BYTES), dataBytes: 0 });
  }

  static create(path: string, header: LogHeader): ChangeLogWriter {
    const fd = fs.openSync(path, 'wx', 0o600);
    const hb = encodeLogHeader(header);
    fs.writeSync(fd, hb, 0, hb.length, 0);
    return new ChangeLogWriter(path, fd, header, { pos: LOG_HEADER_BYTES, index: 0, chain: Buffer.alloc(DIGEST_BYTES), dataBytes: 0 });
  }

  /** Reopen an open (not closed) log after a scan, truncating any torn tail. */
  static reopen(path: string, scan: LogScan): ChangeLogWriter {
    if (scan.close) throw new OsrError('INVALID_STATE', `${path}: log is closed and cannot be appended to`);
    const fd = fs.openSync(path, 'r+');
    if (scan.validBytes < scan.fileBytes) fs.ftruncateSync(fd, scan.validBytes);
    return new ChangeLogWriter(path, fd, scan.header, {
      pos: scan.validBytes,
      index: scan.records.length,
      chain: scan.chain,
      dataBytes: scan.dataBytes,
    });
  }

  get bytes(): number {
    return this.pos;
  }
  get recordCount(): number {
    return this.index;
  }
  get isClosed(): boolean {
    return this.closed;
  }

  /** Lay out the next record (header, checksum, chain): its bytes, to be written at the returned position. */
  private record(type: RecordType, offset: number, length: number, payload: Buffer | undefined): { bufs: Buffer[]; at: number; total: number } {
    if (this.closed) throw new OsrError('INVALID_STATE', `${this.path}: append to a closed change log`);
    const h = encodeRecordHeader(type, this.index, offset, length);
    const sum = payload ? digest(h.subarray(0, 32), payload) : digest(h.subarray(0, 32));
    sum.copy(h, 32);
    const bufs = payload ? [h, payload] : [h];
    const total = h.length + (payload?.length ?? 0);
    const at = this.pos;
    this.pos += total;
    this.index += 1;
    this.chain = digest(this.chain, sum);
    if (type === RecordType.Write) this.dataBytes += length;
    return { bufs, at, total };
  }

  private append(type: RecordType, offset: number, length: number, payload: Buffer | undefined): void {
    const { bufs, at, total } = this.record(type, offset, length, payload);
    this.tap?.(at, bufs);
    if (this.fd < 0) return;
    let written = 0;
    // writev may write partially (rare for regular files); finish the record in order
    while (written < total) {
      const n = written === 0 ? fs.writevSync(this.fd, bufs, at) : writeRest(this.fd, bufs, written, at + written);
      written += n;
    }
  }

  // ---- queued appends ----------------------------------------------------------------
  // A log written from a source that already holds the data (a libvirt backup's export)
  // need not reach the file record by record: records are laid out and checksummed in
  // order as they are queued, and their bytes go to the file in batches on the thread
  // pool while the caller reads on. (Starting write-back as the log grows was tried: its
  // flushes held up the backup's reads from the same disk far more than the final sync
  // costs.) The lab tracker's logs, which must hold a write before the image does, append
  // synchronously instead.
  private batch: { at: number; bytes: number; bufs: Buffer[] } | undefined;
  private readonly writing = new Set<Promise<void>>();
  private queueError: unknown;
  private tap: ((at: number, bufs: readonly Buffer[]) => void) | undefined;

  /**
   * Hand every queued record's bytes, in order and with their positions in the file, to
   * `fn` too (a delta shipped while it is read). The bytes are the ones written to the file.
   */
  tee(fn: ((at: number, bufs: readonly Buffer[]) => void) | undefined): void {
    if (fn && this.index === 0) fn(0, [encodeLogHeader(this.header)]);
    this.tap = fn;
  }

  /** Queue a write record; resolves when the caller may queue more (few batches in flight). */
  async queueWrite(offset: number, data: Buffer): Promise<void> {
    for (let done = 0; done < data.length; done += MAX_RECORD_DATA) {
      const part = data.subarray(done, Math.min(data.length, done + MAX_RECORD_DATA));
      this.enqueue(this.record(RecordType.Write, offset + done, part.length, part));
    }
    while (this.writing.size >= QUEUE_BATCHES_IN_FLIGHT) await Promise.race(this.writing);
    if (this.queueError !== undefined) throw this.queueError;
  }

  queueZero(offset: number, length: number): void {
    this.enqueue(this.record(RecordType.Zero, offset, length, undefined));
  }

  private enqueue(r: { bufs: Buffer[]; at: number; total: number }): void {
    if (this.queueError !== undefined) throw this.queueError;
    this.tap?.(r.at, r.bufs);
    if (this.fd < 0) return;
    const b = (this.batch ??= { at: r.at, bytes: 0, bufs: [] });
    b.bufs.push(...r.bufs);
    b.bytes += r.total;
    if (b.bytes >= QUEUE_BATCH_BYTES) this.startBatch();
  }

  private startBatch(): void {
    const b = this.batch;
    if (!b) return;
    this.batch = undefined;
    const w: Promise<void> = writeAllAt(this.fd, b.bufs, b.at).then(
      () => void this.writing.delete(w),
      (e: unknown) => {
        this.writing.delete(w);
        this.queueError ??= e;
      },
    );
    this.writing.add(w);
  }

  /** Write every queued record; throws the first write that failed. */
  async drain(): Promise<void> {
    this.startBatch();
    while (this.writing.size > 0) await Promise.all(this.writing);
    if (this.queueError !== undefined) throw this.queueError;
  }

  appendWrite(offset: number, data: Buffer): void {
    for (let done = 0; done < data.length; done += MAX_RECORD_DATA) {
      const part = data.subarray(done, Math.min(data.length, done + MAX_RECORD_DATA));
      this.append(RecordType.Write, offset + done, part.length, part);
    }
  }

  appendZero(offset: number, length: number): void {
    this.append(RecordType.Zero, offset, length, undefined);
  }

  /** Seal the log: no record may follow. Returns what the close record states. Queued records must be drained first. */
  close(closedMs: number): CloseInfo {
    if (this.batch || this.writing.size > 0) throw new OsrError('INVALID_STATE', `${this.path}: close with queued records not written`);
    const info: CloseInfo = { recordCount: this.index, dataBytes: this.dataBytes, closedMs, chain: this.chain };
    const p = Buffer.alloc(CLOSE_PAYLOAD_BYTES);
    this.chain.copy(p, 0);
    p.writeBigUInt64LE(BigInt(info.recordCount), 16);
    p.writeBigUInt64LE(BigInt(info.dataBytes), 24);
    p.writeBigUInt64LE(BigInt(closedMs), 32);
    this.append(RecordType.Close, 0, 0, p);
    this.closed = true;
    return info;
  }

  syncSync(): void {
    if (this.fd >= 0) fs.fdatasyncSync(this.fd);
  }

  sync(): Promise<void> {
    return this.fd >= 0 ? fdatasyncAsync(this.fd) : Promise.resolve();
  }

  closeFile(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
  }
}

function writeRest(fd: number, bufs: Buffer[], skip: number, pos: number): number {
  const joined = Buffer.concat(bufs).subarray(skip);
  return fs.writeSync(fd, joined, 0, joined.length, pos);
}

/** What a scan of a log file found. */
export interface LogScan {
  header: LogHeader;
  records: LogRecord[];
  close: CloseInfo | undefined;
  chain: Buffer;
  dataBytes: number;
  /** bytes up to the end of the last valid record */
  validBytes: number;
  fileBytes: number;
  /** bytes after the last valid record that were torn (only possible in an open log) */
  tornBytes: number;
}

/**
 * Streaming parser: feed it the log's bytes in order (from a file or the network) and it
 * verifies header, every record checksum, the record sequence and the close record.
 * It keeps the record index, not the data (data is read back by position).
 */
export class ChangeLogParser {
  private readonly pending = new ByteQueue();
  private consumed = 0;
  header: LogHeader | undefined;
  readonly records: LogRecord[] = [];
  close: CloseInfo | undefined;
  chain: Buffer = Buffer.alloc(DIGEST_BYTES);
  dataBytes = 0;
  private recHeader: Buffer | undefined;

  constructor(private readonly where: string) {}

  get validBytes(): number {
    return this.consumed;
  }

  private take(n: number): Buffer | undefined {
    return this.pending.take(n);
  }

  /** Feed bytes. Throws CHANGE_LOG_CORRUPT on anything that does not verify. */
  push(chunk: Buffer): void {
    this.pending.push(chunk);
    for (;;) {
      if (!this.header) {
        const hb = this.take(LOG_HEADER_BYTES);
        if (!hb) return;
        this.header = decodeLogHeader(hb, this.where);
        this.consumed += LOG_HEADER_BYTES;
        continue;
      }
      if (this.close) {
        if (this.pending.length > 0) throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: data after the close record`);
        return;
      }
      if (!this.recHeader) {
        const h = this.take(RECORD_HEADER_BYTES);
        if (!h) return;
        this.recHeader = Buffer.from(h);
        this.checkHeader(this.recHeader);
      }
      const h = this.recHeader;
      const type = h.readUInt8(4) as RecordType;
      const length = Number(h.readBigUInt64LE(24));
      const plen = payloadLength(type, length);
      const payload = plen > 0 ? this.take(plen) : Buffer.alloc(0);
      if (!payload) return;
      this.finishRecord(h, payload);
      this.recHeader = undefined;
    }
  }

  private checkHeader(h: Buffer): void {
    const at = this.consumed;
    if (h.readUInt32LE(0) !== RECORD_MAGIC) throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: bad record magic at byte ${at}`);
    const type = h.readUInt8(4);
    if (type !== RecordType.Write && type !== RecordType.Zero && type !== RecordType.Close) {
      throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: unknown record type ${type} at byte ${at}`);
    }
    const index = Number(h.readBigUInt64LE(8));
    if (index !== this.records.length) {
      throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: record ${index} found where ${this.records.length} was expected (byte ${at})`);
    }
    const length = Number(h.readBigUInt64LE(24));
    if (type === RecordType.Write && length > MAX_RECORD_DATA) {
      throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: record length ${length} exceeds the limit at byte ${at}`);
    }
  }

  private finishRecord(h: Buffer, payload: Buffer): void {
    const at = this.consumed;
    const sum = digest(h.subarray(0, 32), payload);
    if (!sum.equals(h.subarray(32, 48))) {
      throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: checksum mismatch in record ${this.records.length} at byte ${at}`);
    }
    const type = h.readUInt8(4) as RecordType;
    const rec: LogRecord = {
      type,
      index: this.records.length,
      offset: Number(h.readBigUInt64LE(16)),
      length: Number(h.readBigUInt64LE(24)),
      dataPos: at + RECORD_HEADER_BYTES,
    };
    if (type === RecordType.Close) {
      const close: CloseInfo = {
        chain: Buffer.from(payload.subarray(0, 16)),
        recordCount: Number(payload.readBigUInt64LE(16)),
        dataBytes: Number(payload.readBigUInt64LE(24)),
        closedMs: Number(payload.readBigUInt64LE(32)),
      };
      if (!close.chain.equals(this.chain) || close.recordCount !== this.records.length || close.dataBytes !== this.dataBytes) {
        throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: close record does not match the records before it (dropped or reordered records)`);
      }
      this.close = close;
    } else {
      this.records.push(rec);
      if (type === RecordType.Write) this.dataBytes += rec.length;
    }
    this.chain = digest(this.chain, sum);
    this.consumed = at + RECORD_HEADER_BYTES + payload.length;
  }

  /** Call at the end of input for a log that must be complete and closed. */
  finish(): CloseInfo {
    if (!this.header) throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: empty change log`);
    if (!this.close) throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: change log ends without its close record`);
    if (this.pending.length > 0 || this.recHeader) throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: trailing bytes after the close record`);
    return this.close;
  }

  /** bytes buffered but not yet a whole record */
  get partialBytes(): number {
    return this.pending.length + (this.recHeader ? RECORD_HEADER_BYTES : 0);
  }
}

/**
 * Scan a log file. A record cut short at the end of the file is a torn tail (a crash in
 * the middle of an append) and is reported, not thrown; anything else that fails
 * verification throws CHANGE_LOG_CORRUPT.
 */
/** Scan a log file; `length`: scan only its first bytes (a reused file's log ends there: the bytes after are an older log's). */
export function scanLogFile(path: string, length?: number): LogScan {
  const fd = fs.openSync(path, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const fileBytes = length === undefined ? size : Math.min(size, length);
    const parser = new ChangeLogParser(path);
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    let pos = 0;
    while (pos < fileBytes) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, fileBytes - pos), pos);
      if (n <= 0) break;
      parser.push(Buffer.from(buf.subarray(0, n)));
      pos += n;
    }
    if (!parser.header) throw new OsrError('CHANGE_LOG_CORRUPT', `${path}: change log header is missing or torn`);
    return {
      header: parser.header,
      records: parser.records,
      close: parser.close,
      chain: parser.chain,
      dataBytes: parser.dataBytes,
      validBytes: parser.validBytes,
      fileBytes,
      tornBytes: fileBytes - parser.validBytes,
    };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The ranges a log's records name, read from its bytes as they arrive in order (a delta on
 * the wire), without verifying anything: what the log will change is known before it is
 * complete. Verification stays with ChangeLogParser / scanLogFile. Bytes that are not
 * contiguous, or a record header that does not look like one, end the walk (`ok` false).
 */
export class RecordWalker {
  ok = true;
  private received = 0;
  private next = LOG_HEADER_BYTES;
  private readonly head = Buffer.alloc(RECORD_HEADER_BYTES);
  private filled = 0;
  private closed = false;

  constructor(private readonly onRange: (offset: number, length: number) => void) {}

  push(at: number, parts: readonly Buffer[]): void {
    if (!this.ok || this.closed) return;
    if (at !== this.received) {
      this.ok = false;
      return;
    }
    for (const part of parts) {
      const start = this.received;
      const end = start + part.length;
      while (this.ok && !this.closed) {
        const need = this.next + this.filled;
        if (need >= end) break;
        const n = Math.min(RECORD_HEADER_BYTES - this.filled, end - need);
        part.copy(this.head, this.filled, need - start, need - start + n);
        this.filled += n;
        if (this.filled < RECORD_HEADER_BYTES) break;
        this.record();
      }
      this.received = end;
    }
  }

  private record(): void {
    const h = this.head;
    this.filled = 0;
    const type = h.readUInt8(4);
    const length = Number(h.readBigUInt64LE(24));
    if (h.readUInt32LE(0) !== RECORD_MAGIC || (type !== RecordType.Write && type !== RecordType.Zero && type !== RecordType.Close) || (type === RecordType.Write && length > MAX_RECORD_DATA)) {
      this.ok = false;
      return;
    }
    if (type === RecordType.Close) {
      this.closed = true;
      return;
    }
    this.onRange(Number(h.readBigUInt64LE(16)), length);
    this.next += RECORD_HEADER_BYTES + (type === RecordType.Write ? length : 0);
  }
}

/**
 * A log verified as its bytes arrive in order (a delta on the wire), as scanLogFile would
 * verify the file they are written to: the header, every record's checksum (fed part by
 * part, no payload copied), the record sequence, the chain and the close record. Bytes
 * that are not contiguous, or anything that does not verify, stop it (`ok` false): the
 * log is then scanned from its file, which reports what is wrong. `result()` is the scan
 * of a log that verified and is closed, for exactly `fileBytes` bytes.
 */
export class LogStreamVerifier {
  ok = true;
  private received = 0;
  private header: LogHeader | undefined;
  private readonly head = Buffer.alloc(LOG_HEADER_BYTES);
  private filled = 0;
  /** the record whose payload is arriving, and how much of it is still to come */
  private rec: { type: RecordType; index: number; offset: number; length: number; dataPos: number; sum: Buffer } | undefined;
  private payloadLeft = 0;
  private readonly closePayload = Buffer.alloc(CLOSE_PAYLOAD_BYTES);
  private readonly hasher = createDigest();
  private readonly records: LogRecord[] = [];
  private chain: Buffer = Buffer.alloc(DIGEST_BYTES);
  private dataBytes = 0;
  private close: CloseInfo | undefined;

  constructor(private readonly where: string) {}

  push(at: number, parts: readonly Buffer[]): void {
    if (!this.ok) return;
    if (at !== this.received) {
      this.ok = false;
      return;
    }
    try {
      for (const part of parts) this.feed(part);
    } catch {
      this.ok = false;
    }
  }

  private feed(part: Buffer): void {
    let i = 0;
    while (i < part.length) {
      if (this.close) throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: data after the close record`);
      if (!this.header) {
        const n = Math.min(LOG_HEADER_BYTES - this.filled, part.length - i);
        part.copy(this.head, this.filled, i, i + n);
        this.filled += n;
        i += n;
        if (this.filled === LOG_HEADER_BYTES) {
          this.header = decodeLogHeader(this.head, this.where);
          this.filled = 0;
        }
      } else if (!this.rec) {
        const n = Math.min(RECORD_HEADER_BYTES - this.filled, part.length - i);
        part.copy(this.head, this.filled, i, i + n);
        this.filled += n;
        i += n;
        if (this.filled === RECORD_HEADER_BYTES) this.beginRecord();
      } else {
        const n = Math.min(this.payloadLeft, part.length - i);
        const bytes = part.subarray(i, i + n);
        this.hasher.update(bytes);
        if (this.rec.type === RecordType.Close) bytes.copy(this.closePayload, CLOSE_PAYLOAD_BYTES - this.payloadLeft);
        this.payloadLeft -= n;
        i += n;
        if (this.payloadLeft === 0) this.endRecord();
      }
    }
    this.received += part.length;
  }

  private beginRecord(): void {
    const h = this.head;
    this.filled = 0;
    const type = h.readUInt8(4);
    const index = Number(h.readBigUInt64LE(8));
    const length = Number(h.readBigUInt64LE(24));
    if (h.readUInt32LE(0) !== RECORD_MAGIC || (type !== RecordType.Write && type !== RecordType.Zero && type !== RecordType.Close)) throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: bad record header`);
    if (index !== this.records.length || (type === RecordType.Write && length > MAX_RECORD_DATA)) throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: bad record ${index}`);
    const last = this.records.at(-1);
    const start = last ? last.dataPos + payloadLength(last.type, last.length) : LOG_HEADER_BYTES;
    this.rec = { type: type as RecordType, index, offset: Number(h.readBigUInt64LE(16)), length, dataPos: start + RECORD_HEADER_BYTES, sum: Buffer.from(h.subarray(32, 48)) };
    this.hasher.reset();
    this.hasher.update(h.subarray(0, 32));
    this.payloadLeft = payloadLength(type, length);
    if (this.payloadLeft === 0) this.endRecord();
  }

  private endRecord(): void {
    const r = this.rec!;
    this.rec = undefined;
    const sum = this.hasher.digest();
    if (!sum.equals(r.sum)) throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: checksum mismatch in record ${r.index}`);
    if (r.type === RecordType.Close) {
      const p = this.closePayload;
      const close: CloseInfo = { chain: Buffer.from(p.subarray(0, 16)), recordCount: Number(p.readBigUInt64LE(16)), dataBytes: Number(p.readBigUInt64LE(24)), closedMs: Number(p.readBigUInt64LE(32)) };
      if (!close.chain.equals(this.chain) || close.recordCount !== this.records.length || close.dataBytes !== this.dataBytes) throw new OsrError('CHANGE_LOG_CORRUPT', `${this.where}: close record does not match the records before it`);
      this.close = close;
    } else {
      this.records.push({ type: r.type, index: r.index, offset: r.offset, length: r.length, dataPos: r.dataPos });
      if (r.type === RecordType.Write) this.dataBytes += r.length;
    }
    this.chain = digest(this.chain, sum);
  }

  /** The scan of the log received, if every byte so far verified and it ended in its close record. */
  result(): LogScan | undefined {
    if (!this.ok || !this.header || !this.close || this.rec || this.filled > 0) return undefined;
    return { header: this.header, records: this.records, close: this.close, chain: this.chain, dataBytes: this.dataBytes, validBytes: this.received, fileBytes: this.received, tornBytes: 0 };
  }
}
