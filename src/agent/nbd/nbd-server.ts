/**
 * An NBD server (fixed newstyle handshake only) that serves BlockDevice objects to
 * standard clients such as qemu and the libnbd tools (nbdcopy, nbdinfo).
 *
 * Each connection negotiates options, then runs a transmission loop that reads requests
 * and executes them concurrently; replies go out whole, in completion order. Reading stops
 * while too much work or output is pending, so a client cannot make the server buffer
 * without bound. A client that breaks the protocol loses its connection (with a warning in
 * the log) and nothing else: other connections and the process carry on.
 *
 * docs/design/nbd.md describes what is supported and how errors map onto the wire.
 */
import fs from 'node:fs';
import net from 'node:net';

import type { BlockDevice, Extent } from '../io/block-device.js';
import { OsrError, isOsrError } from '../../domain/errors.js';
import {
  AllocationState,
  BASE_ALLOCATION,
  BASE_NAMESPACE,
  ClientFlag,
  CmdFlag,
  HandshakeFlag,
  NBD_INIT_MAGIC,
  NBD_MAX_STRING,
  NBD_OPTS_MAGIC,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NbdCmd,
  NbdErrno,
  NbdInfo,
  NbdOpt,
  NbdRep,
  ReplyFlag,
  ReplyType,
  TransmissionFlag,
  WireSize,
  constantName,
} from './protocol.js';

// ---------------------------------------------------------------------------------------
// Public API

/** Where the server finds the devices it exports, by name. */
export interface NbdExportResolver {
  get(name: string): BlockDevice | undefined;
  list(): string[];
  description?(name: string): string | undefined;
}

/** pino-compatible subset: the server logs `(context object, message)`. */
export interface NbdLogger {
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
}

export interface NbdServerOptions {
  logger?: NbdLogger;
  /** a client must reach the transmission phase within this time (default 10 s) */
  handshakeTimeoutMs?: number;
  /** close() waits this long for in-flight requests before cutting connections (default 10 s) */
  closeTimeoutMs?: number;
}

/** Advertised block size constraints (NBD_INFO_BLOCK_SIZE). */
export const NBD_MIN_BLOCK_SIZE = 1;
export const NBD_PREFERRED_BLOCK_SIZE = 4096;
/** Largest READ or WRITE accepted; also bounds the memory one request can pin. */
export const NBD_MAX_BLOCK_SIZE = 32 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Limits

/** Option data beyond this is not a real client; strings are limited to 4 KiB anyway. */
const MAX_OPTION_DATA = 64 * 1024;
/** Flow control: stop reading requests while this many are executing ... */
const MAX_IN_FLIGHT_REQUESTS = 64;
/** ... or while their payloads and expected reply data add up to this much ... */
const MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024;
/** ... or while the client is not reading replies and this much output is queued. */
const MAX_QUEUED_OUTPUT = 32 * 1024 * 1024;
/** Unconsumed input kept before the socket is paused. */
const INPUT_HIGH_WATER = 1024 * 1024;
/** Reads larger than this are assembled straight into their final buffer. */
const DIRECT_FILL_THRESHOLD = 64 * 1024;
/** A block status reply describes at most this many extents; clients ask again for the rest. */
const MAX_STATUS_DESCRIPTORS = 16 * 1024;
/** Context id under which base:allocation is selected. Any value would do; 0 is avoided
 * because NBD_OPT_LIST_META_CONTEXT replies use it as "not an id". */
const BASE_ALLOCATION_ID = 1;

/** After hanging up on a client, how long its unread output may hold the socket open. */
const HANG_UP_GRACE_MS = 2_000;
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
const DEFAULT_CLOSE_TIMEOUT_MS = 10_000;

const EMPTY = Buffer.alloc(0);

// ---------------------------------------------------------------------------------------
// Why a connection ends

type LogLevel = 'info' | 'warn';

/**
 * Raised to end a connection. `graceful` ends let in-flight requests finish and their
 * replies go out; the others hang up at once (output already queued is still flushed).
 */
class ConnectionEnd extends Error {
  constructor(
    message: string,
    readonly level: LogLevel,
    readonly graceful: boolean,
  ) {
    super(message);
    this.name = 'ConnectionEnd';
  }
}

/** The client broke a MUST of the protocol or looks like a denial of service. */
function protocolViolation(message: string): ConnectionEnd {
  return new ConnectionEnd(message, 'warn', false);
}

function peerClosed(midMessage: boolean): ConnectionEnd {
  return midMessage
    ? new ConnectionEnd('client closed the connection in the middle of a message', 'warn', false)
    : new ConnectionEnd('client closed the connection', 'info', true);
}

// ---------------------------------------------------------------------------------------
// Socket reader

interface PendingRead {
  readonly length: number;
  readonly resolve: (data: Buffer) => void;
  readonly reject: (reason: ConnectionEnd) => void;
  /** for large reads: the final buffer, filled as chunks arrive */
  readonly target: Buffer | undefined;
  filled: number;
}

/**
 * Turns socket chunks into exact-length reads. Chunks are queued as they come (no
 * concatenation); a read takes a zero-copy slice when one chunk holds it, otherwise copies
 * once into a buffer of its own. Large reads (WRITE payloads) get their buffer up front so
 * the payload is copied once as it arrives rather than queued and then copied. The socket
 * is paused while enough unread input is queued and nobody is waiting for it, which is
 * what propagates backpressure to the client through TCP.
 */
class SocketReader {
  private readonly chunks: Buffer[] = [];
  private first = 0;
  private firstOffset = 0;
  private queued = 0;
  private pending: PendingRead | undefined;
  /** the peer sent EOF or the socket closed: queued bytes are all there will be */
  private ended = false;
  private stopReason: ConnectionEnd | undefined;

  constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    socket.on('close', () => this.onEnd());
    socket.on('error', (e: NodeJS.ErrnoException) =>
      this.stop(new ConnectionEnd(`socket error: ${e.code ?? e.message}`, 'info', false)),
    );
  }

  get stopped(): boolean {
    return this.stopReason !== undefined;
  }

  /** Resolves with exactly `length` bytes, or rejects with why no more input will come. */
  read(length: number): Promise<Buffer> {
    if (this.pending) return Promise.reject(new Error('SocketReader: concurrent reads'));
    if (this.stopReason) return Promise.reject(this.stopReason);
    if (this.queued >= length) return Promise.resolve(this.take(length));
    if (this.ended) return Promise.reject(peerClosed(this.queued > 0));
    return new Promise<Buffer>((resolve, reject) => {
      const target = length > DIRECT_FILL_THRESHOLD ? Buffer.allocUnsafe(length) : undefined;
      const filled = target ? this.copyOut(target, 0, this.queued) : 0;
      this.pending = { length, resolve, reject, target, filled };
      this.socket.resume();
    });
  }

  /** Delivers no more input; a pending read, and every later one, fails with `reason`. */
  stop(reason: ConnectionEnd): void {
    if (this.stopReason) return;
    this.stopReason = reason;
    this.fail(reason);
  }

  private onEnd(): void {
    if (this.ended) return;
    this.ended = true;
    const midMessage = this.queued > 0 || (this.pending?.filled ?? 0) > 0;
    this.fail(this.stopReason ?? peerClosed(midMessage));
  }

  private fail(reason: ConnectionEnd): void {
    const pending = this.pending;
    this.pending = undefined;
    pending?.reject(reason);
  }

  private onData(chunk: Buffer): void {
    if (this.stopReason) return;
    const pending = this.pending;
    if (pending?.target) {
      const n = Math.min(chunk.length, pending.length - pending.filled);
      chunk.copy(pending.target, pending.filled, 0, n);
      pending.filled += n;
      if (n < chunk.length) this.enqueue(chunk.subarray(n));
      if (pending.filled === pending.length) this.settle(pending, pending.target);
    } else {
      this.enqueue(chunk);
      if (pending && this.queued >= pending.length) this.settle(pending, this.take(pending.length));
    }
    if (!this.pending && this.queued >= INPUT_HIGH_WATER) this.socket.pause();
  }

  private settle(pending: PendingRead, data: Buffer): void {
    this.pending = undefined;
    pending.resolve(data);
  }

  private enqueue(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.queued += chunk.length;
  }

  private take(length: number): Buffer {
    if (length === 0) return EMPTY;
    const head = this.chunks[this.first];
    if (head.length - this.firstOffset >= length) {
      const slice = head.subarray(this.firstOffset, this.firstOffset + length);
      this.consume(length);
      return slice;
    }
    const out = Buffer.allocUnsafe(length);
    this.copyOut(out, 0, length);
    return out;
  }

  /** Moves `length` queued bytes into target at `at`; returns the count moved. */
  private copyOut(target: Buffer, at: number, length: number): number {
    let done = 0;
    while (done < length) {
      const head = this.chunks[this.first];
      const n = Math.min(head.length - this.firstOffset, length - done);
      head.copy(target, at + done, this.firstOffset, this.firstOffset + n);
      done += n;
      this.consume(n);
    }
    return done;
  }

  private consume(n: number): void {
    this.queued -= n;
    this.firstOffset += n;
    if (this.firstOffset < this.chunks[this.first].length) return;
    this.first++;
    this.firstOffset = 0;
    // drop consumed chunks in batches so the queue stays O(1) per chunk
    if (this.first === this.chunks.length) {
      this.chunks.length = 0;
      this.first = 0;
    } else if (this.first >= 1024) {
      this.chunks.splice(0, this.first);
      this.first = 0;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Wire encoding

const GREETING = (() => {
  const b = Buffer.alloc(WireSize.Greeting);
  b.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  b.writeUInt16BE(HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes, 16);
  return b;
})();

function optionReply(option: number, type: number, data: Buffer = EMPTY): Buffer {
  const b = Buffer.allocUnsafe(WireSize.OptionReplyHeader + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, WireSize.OptionReplyHeader);
  return b;
}

function optionError(option: number, type: number, message: string): Buffer {
  return optionReply(option, type, protocolString(message));
}

/** UTF-8 bytes of s, cut to the protocol's string limit. */
function protocolString(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  return b.length > NBD_MAX_STRING ? b.subarray(0, NBD_MAX_STRING) : b;
}

function serverEntry(name: string, description: string | undefined): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const len = Buffer.allocUnsafe(4);
  len.writeUInt32BE(nameBytes.length, 0);
  return Buffer.concat([len, nameBytes, description ? protocolString(description) : EMPTY]);
}

function infoExport(size: number, flags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(NbdInfo.Export, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

function infoBlockSize(): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(NbdInfo.BlockSize, 0);
  b.writeUInt32BE(NBD_MIN_BLOCK_SIZE, 2);
  b.writeUInt32BE(NBD_PREFERRED_BLOCK_SIZE, 6);
  b.writeUInt32BE(NBD_MAX_BLOCK_SIZE, 10);
  return b;
}

function infoString(type: number, s: string): Buffer {
  const head = Buffer.allocUnsafe(2);
  head.writeUInt16BE(type, 0);
  return Buffer.concat([head, protocolString(s)]);
}

function metaContextEntry(id: number, name: string): Buffer {
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(id, 0);
  return Buffer.concat([head, Buffer.from(name, 'utf8')]);
}

/** Reply to NBD_OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zero bytes. */
function exportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : WireSize.ExportNamePadding));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

function simpleReply(handle: bigint, errno: number): Buffer {
  const b = Buffer.allocUnsafe(WireSize.SimpleReplyHeader);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(errno, 4);
  b.writeBigUInt64BE(handle, 8);
  return b;
}

/** A structured chunk header followed by `extra` bytes of the payload's fixed part. */
function chunkHeader(handle: bigint, type: number, payloadLength: number, extra: number): Buffer {
  const b = Buffer.allocUnsafe(WireSize.StructuredReplyHeader + extra);
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(ReplyFlag.Done, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeUInt32BE(payloadLength, 16);
  return b;
}

function doneChunk(handle: bigint): Buffer {
  return chunkHeader(handle, ReplyType.None, 0, 0);
}

/** Header and offset of an OFFSET_DATA chunk; the data follows as a separate buffer. */
function dataChunkHeader(handle: bigint, offset: number, dataLength: number): Buffer {
  const b = chunkHeader(handle, ReplyType.OffsetData, 8 + dataLength, 8);
  b.writeBigUInt64BE(BigInt(offset), WireSize.StructuredReplyHeader);
  return b;
}

function errorChunk(handle: bigint, errno: number, message: string): Buffer {
  const text = protocolString(message);
  const b = chunkHeader(handle, ReplyType.Error, 6 + text.length, 6 + text.length);
  b.writeUInt32BE(errno, WireSize.StructuredReplyHeader);
  b.writeUInt16BE(text.length, WireSize.StructuredReplyHeader + 4);
  text.copy(b, WireSize.StructuredReplyHeader + 6);
  return b;
}

interface StatusDescriptor {
  length: number;
  flags: number;
}

function blockStatusChunk(handle: bigint, contextId: number, descriptors: readonly StatusDescriptor[]): Buffer {
  const payload = 4 + 8 * descriptors.length;
  const b = chunkHeader(handle, ReplyType.BlockStatus, payload, payload);
  let at = WireSize.StructuredReplyHeader;
  b.writeUInt32BE(contextId, at);
  at += 4;
  for (const d of descriptors) {
    b.writeUInt32BE(d.length, at);
    b.writeUInt32BE(d.flags, at + 4);
    at += 8;
  }
  return b;
}

// ---------------------------------------------------------------------------------------
// Option parsing

/** Sequential reader over one option's data; every getter returns undefined on overrun. */
class OptionData {
  private at = 0;
  constructor(private readonly data: Buffer) {}

  u16(): number | undefined {
    if (this.at + 2 > this.data.length) return undefined;
    const v = this.data.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }

  u32(): number | undefined {
    if (this.at + 4 > this.data.length) return undefined;
    const v = this.data.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }

  /** A string preceded by its 32-bit length. */
  string(): string | undefined {
    const length = this.u32();
    if (length === undefined || length > NBD_MAX_STRING || this.at + length > this.data.length) return undefined;
    const s = this.data.toString('utf8', this.at, this.at + length);
    this.at += length;
    return s;
  }

  get done(): boolean {
    return this.at === this.data.length;
  }
}

interface InfoRequest {
  readonly name: string;
  readonly requests: readonly number[];
}

/** NBD_OPT_INFO / NBD_OPT_GO data: name, then a count and list of 16-bit info types. */
function parseInfoRequest(data: Buffer): InfoRequest | undefined {
  const r = new OptionData(data);
  const name = r.string();
  const count = r.u16();
  if (name === undefined || count === undefined) return undefined;
  const requests: number[] = [];
  for (let i = 0; i < count; i++) {
    const type = r.u16();
    if (type === undefined) return undefined;
    requests.push(type);
  }
  return r.done ? { name, requests } : undefined;
}

interface MetaContextRequest {
  readonly exportName: string;
  readonly queries: readonly string[];
}

/** NBD_OPT_{LIST,SET}_META_CONTEXT data: export name, then a count and list of queries. */
function parseMetaContextRequest(data: Buffer): MetaContextRequest | undefined {
  const r = new OptionData(data);
  const exportName = r.string();
  const count = r.u32();
  if (exportName === undefined || count === undefined) return undefined;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    const q = r.string();
    if (q === undefined) return undefined;
    queries.push(q);
  }
  return r.done ? { exportName, queries } : undefined;
}

/** Contexts a LIST query matches: `base:` lists the namespace; unknown ones match nothing. */
function listedContexts(queries: readonly string[]): string[] {
  if (queries.length === 0) return [BASE_ALLOCATION];
  return queries.some((q) => q === BASE_NAMESPACE || q === BASE_ALLOCATION) ? [BASE_ALLOCATION] : [];
}

// ---------------------------------------------------------------------------------------
// Requests

interface Request {
  readonly flags: number;
  readonly type: number;
  readonly handle: bigint;
  /** u64 on the wire; checked against the export size before it becomes a number */
  readonly offset: bigint;
  readonly length: number;
}

function parseRequest(header: Buffer): Request {
  const magic = header.readUInt32BE(0);
  if (magic !== NBD_REQUEST_MAGIC) throw protocolViolation(`bad request magic 0x${magic.toString(16)}`);
  return {
    flags: header.readUInt16BE(4),
    type: header.readUInt16BE(6),
    handle: header.readBigUInt64BE(8),
    offset: header.readBigUInt64BE(16),
    length: header.readUInt32BE(24),
  };
}

/** A request the server refuses: answered with `errno`, the connection goes on. */
class RequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
    this.name = 'RequestError';
  }
}

interface CommandRule {
  /** command flags the client may set (FUA is valid on every command) */
  readonly flags: number;
  /** refused with EPERM on a read-only export */
  readonly writes: boolean;
  /** error for a range past the end: ENOSPC for writes, EINVAL otherwise (per spec) */
  readonly outOfRange: number | undefined;
  /** carries (or returns) length bytes, so length is bounded by the max block size */
  readonly transfersData: boolean;
}

const COMMAND_RULES: ReadonlyMap<number, CommandRule> = new Map([
  [NbdCmd.Read, { flags: CmdFlag.Fua | CmdFlag.Df, writes: false, outOfRange: NbdErrno.EINVAL, transfersData: true }],
  [NbdCmd.Write, { flags: CmdFlag.Fua, writes: true, outOfRange: NbdErrno.ENOSPC, transfersData: true }],
  [NbdCmd.Flush, { flags: CmdFlag.Fua, writes: false, outOfRange: undefined, transfersData: false }],
  [NbdCmd.Trim, { flags: CmdFlag.Fua, writes: true, outOfRange: NbdErrno.EINVAL, transfersData: false }],
  [
    NbdCmd.WriteZeroes,
    { flags: CmdFlag.Fua | CmdFlag.NoHole, writes: true, outOfRange: NbdErrno.ENOSPC, transfersData: false },
  ],
  [
    NbdCmd.BlockStatus,
    { flags: CmdFlag.Fua | CmdFlag.ReqOne, writes: false, outOfRange: NbdErrno.EINVAL, transfersData: false },
  ],
]);

/** What the session allows, fixed when the client enters transmission. */
interface Session {
  readonly exportName: string;
  readonly device: BlockDevice;
  readonly size: number;
  readonly flags: number;
  readonly structured: boolean;
  /** base:allocation was selected for this export */
  readonly blockStatus: boolean;
}

/** Throws RequestError unless the request is valid for this session. */
function checkRequest(s: Session, req: Request): void {
  const rule = COMMAND_RULES.get(req.type);
  if (!rule) throw new RequestError(NbdErrno.EINVAL, `unsupported command ${req.type}`);
  // DF only means something once structured replies are on
  const allowedFlags = s.structured ? rule.flags : rule.flags & ~CmdFlag.Df;
  if (req.flags & ~allowedFlags) {
    throw new RequestError(NbdErrno.EINVAL, `command flags 0x${req.flags.toString(16)} are not valid for this command`);
  }
  if (rule.writes && s.device.readOnly) throw new RequestError(NbdErrno.EPERM, 'the export is read-only');
  if (rule.transfersData && req.length > NBD_MAX_BLOCK_SIZE) {
    throw new RequestError(NbdErrno.EINVAL, `length ${req.length} exceeds the maximum block size ${NBD_MAX_BLOCK_SIZE}`);
  }
  if (rule.outOfRange !== undefined && req.offset + BigInt(req.length) > BigInt(s.size)) {
    throw new RequestError(rule.outOfRange, `range ${req.offset}+${req.length} lies beyond the export size ${s.size}`);
  }
  if (req.type === NbdCmd.BlockStatus) {
    if (!s.blockStatus) throw new RequestError(NbdErrno.EINVAL, 'no metadata context was negotiated');
    if (req.length === 0) throw new RequestError(NbdErrno.EINVAL, 'block status of an empty range');
  }
}

/** Bytes a request keeps in memory while it runs: its payload or its reply data. */
function requestFootprint(req: Request): number {
  return req.type === NbdCmd.Read || req.type === NbdCmd.Write ? req.length : 0;
}

/**
 * base:allocation descriptors for [start, start+length) from the device's extents.
 * Walks them in order, merges neighbours with equal flags, stops at a gap (nothing beyond
 * it can be vouched for) and, for REQ_ONE, after one descriptor. An empty answer becomes a
 * single "allocated, contents unknown" descriptor, which the spec says is always safe.
 */
function allocationDescriptors(
  extents: readonly Extent[],
  start: number,
  length: number,
  reqOne: boolean,
): StatusDescriptor[] {
  const end = start + length;
  const out: StatusDescriptor[] = [];
  let pos = start;
  for (const e of extents) {
    if (pos >= end) break;
    const extentEnd = e.offset + e.length;
    if (!(e.length > 0) || !(extentEnd > pos)) continue;
    if (!(e.offset <= pos)) break;
    const flags = (e.hole ? AllocationState.Hole : 0) | (e.zero ? AllocationState.Zero : 0);
    const stop = Math.min(extentEnd, end);
    const last = out[out.length - 1];
    if (last && last.flags === flags) {
      last.length += stop - pos;
    } else {
      if (out.length === (reqOne ? 1 : MAX_STATUS_DESCRIPTORS)) break;
      out.push({ length: stop - pos, flags });
    }
    pos = stop;
  }
  return out.length > 0 ? out : [{ length, flags: 0 }];
}

/** NBD error for a failure thrown by the device. */
function errnoForDeviceError(e: unknown): number {
  if (isOsrError(e)) {
    if (e.code === 'INVALID_ARGUMENT') return NbdErrno.EINVAL;
    if (e.code === 'REPLICA_DISK_FULL') return NbdErrno.ENOSPC;
    if (e.code === 'INVALID_STATE' || e.code === 'EPOCH_STALE') return NbdErrno.EPERM;
  }
  switch ((e as NodeJS.ErrnoException | undefined)?.code) {
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NbdErrno.ENOSPC;
    case 'EPERM':
    case 'EACCES':
    case 'EROFS':
      return NbdErrno.EPERM;
    case 'EINVAL':
      return NbdErrno.EINVAL;
    default:
      // EIO also stands in for ENOMEM, which the spec asks servers not to return
      return NbdErrno.EIO;
  }
}

type CommandResult =
  | { readonly kind: 'done' }
  | { readonly kind: 'data'; readonly offset: number; readonly data: Buffer }
  | { readonly kind: 'status'; readonly descriptors: StatusDescriptor[] }
  | { readonly kind: 'error'; readonly errno: number; readonly message: string };

const DONE: CommandResult = { kind: 'done' };

// ---------------------------------------------------------------------------------------
// Connection

interface ConnectionEnv {
  readonly resolver: NbdExportResolver;
  readonly logger: NbdLogger;
  readonly handshakeTimeoutMs: number;
}

/** Option-haggling state that carries over into transmission. */
interface Negotiation {
  noZeroes: boolean;
  structured: boolean;
  /** export for which base:allocation is selected, if any */
  metaContextExport: string | undefined;
}

/** What handling one option decided. */
type OptionOutcome =
  | { readonly next: 'continue' }
  | { readonly next: 'abort' }
  | { readonly next: 'transmit'; readonly session: Session };

const CONTINUE: OptionOutcome = { next: 'continue' };

let nextConnectionId = 1;

class NbdConnection {
  readonly id = nextConnectionId++;
  /** resolves when the socket has closed */
  readonly closed: Promise<void>;
  private readonly reader: SocketReader;
  private readonly context: Record<string, unknown>;
  private phase: 'handshake' | 'transmission' = 'handshake';
  private inFlight = 0;
  private inFlightBytes = 0;
  private wakeUp: (() => void) | undefined;
  /** the export served, once the handshake chose one */
  exportName: string | undefined;

  constructor(
    private readonly socket: net.Socket,
    private readonly env: ConnectionEnv,
    peer: string,
  ) {
    this.context = { conn: this.id, peer };
    this.reader = new SocketReader(socket);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('drain', () => this.wake());
    socket.on('close', () => this.wake());
  }

  async run(): Promise<void> {
    const timer = setTimeout(
      () => this.stop(protocolViolation(`handshake not completed within ${this.env.handshakeTimeoutMs} ms`)),
      this.env.handshakeTimeoutMs,
    );
    timer.unref();
    try {
      const session = await this.negotiate();
      clearTimeout(timer);
      if (session) await this.transmit(session);
      await this.finish();
    } catch (e) {
      clearTimeout(timer);
      await this.end(e);
    }
  }

  /**
   * Server shutdown: no new requests are read; during transmission, in-flight requests
   * finish and are answered before the socket closes.
   */
  shutdown(): void {
    this.stop(new ConnectionEnd('server is shutting down', 'info', this.phase === 'transmission'));
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Reads no more input; whatever the connection awaits fails with `reason`. */
  private stop(reason: ConnectionEnd): void {
    this.reader.stop(reason);
    this.wake();
  }

  private async end(e: unknown): Promise<void> {
    if (e instanceof ConnectionEnd) {
      this.log(e.level, e.message);
      if (e.graceful) return this.finish();
    } else {
      this.log('warn', `connection failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.hangUp();
  }

  /** Waits for in-flight requests to be answered, then closes once output is flushed. */
  private async finish(): Promise<void> {
    while (this.inFlight > 0 && !this.socket.destroyed) await this.nextWake();
    this.socket.destroySoon();
  }

  /**
   * Closes without waiting for in-flight requests. Output already queued (such as the
   * error reply to an oversized write) still goes out, unless the client does not read it.
   */
  private hangUp(): void {
    this.reader.stop(new ConnectionEnd('connection closed', 'info', false));
    this.socket.destroySoon();
    setTimeout(() => this.socket.destroy(), HANG_UP_GRACE_MS).unref();
  }

  // -- handshake ------------------------------------------------------------------------

  private async negotiate(): Promise<Session | undefined> {
    this.send([GREETING]);
    const clientFlags = (await this.reader.read(WireSize.ClientFlags)).readUInt32BE(0);
    const known = ClientFlag.FixedNewstyle | ClientFlag.NoZeroes;
    if (clientFlags & ~known) throw protocolViolation(`unknown client flags 0x${clientFlags.toString(16)}`);
    const state: Negotiation = {
      noZeroes: (clientFlags & ClientFlag.NoZeroes) !== 0,
      structured: false,
      metaContextExport: undefined,
    };
    for (;;) {
      // a client that sends options without reading the replies must not grow our output
      await this.waitForCapacity();
      const header = await this.reader.read(WireSize.OptionHeader);
      if (header.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) throw protocolViolation('bad option magic');
      const option = header.readUInt32BE(8);
      const length = header.readUInt32BE(12);
      if (length > MAX_OPTION_DATA) {
        const name = constantName(NbdOpt, option, 'NBD_OPT_');
        throw protocolViolation(`option ${name} carries ${length} bytes (limit ${MAX_OPTION_DATA})`);
      }
      const data = await this.reader.read(length);
      const outcome = this.handleOption(option, data, state);
      if (outcome.next === 'abort') return undefined;
      if (outcome.next === 'transmit') return outcome.session;
    }
  }

  private handleOption(option: number, data: Buffer, state: Negotiation): OptionOutcome {
    switch (option) {
      case NbdOpt.ExportName:
        return this.optExportName(data, state);
      case NbdOpt.Abort:
        this.sendOption(optionReply(option, NbdRep.Ack));
        this.log('info', 'client aborted the handshake');
        return { next: 'abort' };
      case NbdOpt.List:
        return this.optList(option, data);
      case NbdOpt.StartTls:
        this.sendOption(optionError(option, NbdRep.ErrPolicy, 'TLS is not offered by this server'));
        return CONTINUE;
      case NbdOpt.Info:
      case NbdOpt.Go:
        return this.optInfoOrGo(option, data, state);
      case NbdOpt.StructuredReply:
        if (data.length !== 0) return this.optionInvalid(option, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        state.structured = true;
        this.sendOption(optionReply(option, NbdRep.Ack));
        return CONTINUE;
      case NbdOpt.ListMetaContext:
      case NbdOpt.SetMetaContext:
        return this.optMetaContext(option, data, state);
      default:
        this.sendOption(optionError(option, NbdRep.ErrUnsup, `option ${option} is not supported`));
        return CONTINUE;
    }
  }

  private optionInvalid(option: number, message: string): OptionOutcome {
    this.sendOption(optionError(option, NbdRep.ErrInvalid, message));
    return CONTINUE;
  }

  private optExportName(data: Buffer, state: Negotiation): OptionOutcome {
    const name = data.toString('utf8');
    const session = this.openSession(name, state);
    // this option cannot report errors: the spec's only answer is to hang up
    if (!session) throw protocolViolation(`NBD_OPT_EXPORT_NAME for unknown export "${name}"`);
    this.sendOption(exportNameReply(session.size, session.flags, state.noZeroes));
    return { next: 'transmit', session };
  }

  private optList(option: number, data: Buffer): OptionOutcome {
    if (data.length !== 0) return this.optionInvalid(option, 'NBD_OPT_LIST takes no data');
    let names: string[];
    try {
      names = this.env.resolver.list();
    } catch (e) {
      this.log('warn', `listing exports failed: ${(e as Error).message}`);
      this.sendOption(optionError(option, NbdRep.ErrPlatform, 'exports cannot be listed'));
      return CONTINUE;
    }
    for (const name of names) this.sendOption(optionReply(option, NbdRep.Server, serverEntry(name, this.describe(name))));
    this.sendOption(optionReply(option, NbdRep.Ack));
    return CONTINUE;
  }

  private optInfoOrGo(option: number, data: Buffer, state: Negotiation): OptionOutcome {
    const request = parseInfoRequest(data);
    if (!request) return this.optionInvalid(option, 'malformed NBD_OPT_INFO/NBD_OPT_GO data');
    const session = this.openSession(request.name, state);
    if (!session) {
      this.sendOption(optionError(option, NbdRep.ErrUnknown, `export "${request.name}" does not exist`));
      return CONTINUE;
    }
    // block sizes and description go out unrequested too: the spec lets clients ignore them
    this.sendOption(optionReply(option, NbdRep.Info, infoExport(session.size, session.flags)));
    this.sendOption(optionReply(option, NbdRep.Info, infoBlockSize()));
    if (request.requests.includes(NbdInfo.Name)) {
      this.sendOption(optionReply(option, NbdRep.Info, infoString(NbdInfo.Name, request.name)));
    }
    const description = this.describe(request.name);
    if (description) this.sendOption(optionReply(option, NbdRep.Info, infoString(NbdInfo.Description, description)));
    this.sendOption(optionReply(option, NbdRep.Ack));
    return option === NbdOpt.Go ? { next: 'transmit', session } : CONTINUE;
  }

  private optMetaContext(option: number, data: Buffer, state: Negotiation): OptionOutcome {
    const setting = option === NbdOpt.SetMetaContext;
    // SET replaces the selection even when it fails
    if (setting) state.metaContextExport = undefined;
    if (!state.structured) return this.optionInvalid(option, 'structured replies must be negotiated first');
    const request = parseMetaContextRequest(data);
    if (!request) return this.optionInvalid(option, 'malformed metadata context request');
    if (!this.lookup(request.exportName)) {
      this.sendOption(optionError(option, NbdRep.ErrUnknown, `export "${request.exportName}" does not exist`));
      return CONTINUE;
    }
    if (setting) {
      // `base:` alone selects nothing; only the full context name does
      if (request.queries.includes(BASE_ALLOCATION)) {
        state.metaContextExport = request.exportName;
        this.sendOption(optionReply(option, NbdRep.MetaContext, metaContextEntry(BASE_ALLOCATION_ID, BASE_ALLOCATION)));
      }
    } else {
      for (const name of listedContexts(request.queries)) {
        this.sendOption(optionReply(option, NbdRep.MetaContext, metaContextEntry(0, name)));
      }
    }
    this.sendOption(optionReply(option, NbdRep.Ack));
    return CONTINUE;
  }

  private lookup(name: string): BlockDevice | undefined {
    try {
      return this.env.resolver.get(name);
    } catch (e) {
      this.log('warn', `looking up export "${name}" failed: ${(e as Error).message}`);
      return undefined;
    }
  }

  private describe(name: string): string | undefined {
    try {
      return this.env.resolver.description?.(name);
    } catch {
      return undefined;
    }
  }

  private openSession(name: string, state: Negotiation): Session | undefined {
    const device = this.lookup(name);
    if (!device) return undefined;
    if (!Number.isSafeInteger(device.size) || device.size < 0) {
      this.log('warn', `export "${name}" reports an invalid size ${device.size}`);
      return undefined;
    }
    let flags =
      TransmissionFlag.HasFlags |
      TransmissionFlag.SendFlush |
      TransmissionFlag.SendFua |
      TransmissionFlag.SendTrim |
      TransmissionFlag.SendWriteZeroes |
      // every connection to an export shares the one BlockDevice, so a flush on one
      // connection covers writes made on the others
      TransmissionFlag.CanMultiConn;
    if (device.readOnly) flags |= TransmissionFlag.ReadOnly;
    // reads are always answered with a single data chunk, so "don't fragment" holds
    if (state.structured) flags |= TransmissionFlag.SendDf;
    return {
      exportName: name,
      device,
      size: device.size,
      flags,
      structured: state.structured,
      blockStatus: state.structured && state.metaContextExport === name,
    };
  }

  // -- transmission ---------------------------------------------------------------------

  private async transmit(s: Session): Promise<void> {
    this.phase = 'transmission';
    this.exportName = s.exportName;
    this.log('info', `serving export "${s.exportName}"`, { size: s.size, readOnly: s.device.readOnly, structured: s.structured });
    for (;;) {
      await this.waitForCapacity();
      const req = parseRequest(await this.reader.read(WireSize.RequestHeader));
      if (req.type === NbdCmd.Disc) {
        this.log('info', 'client disconnected');
        return;
      }
      const payload = req.type === NbdCmd.Write ? await this.readWritePayload(s, req) : undefined;
      this.dispatch(s, req, payload);
    }
  }

  private async readWritePayload(s: Session, req: Request): Promise<Buffer> {
    if (req.length > NBD_MAX_BLOCK_SIZE) {
      // the payload cannot be skipped cheaply and no real client sends it: refuse and hang up
      void this.sendResult(s, req, { kind: 'error', errno: NbdErrno.EINVAL, message: 'write exceeds the maximum block size' });
      throw protocolViolation(`write of ${req.length} bytes exceeds the maximum block size ${NBD_MAX_BLOCK_SIZE}`);
    }
    return this.reader.read(req.length);
  }

  /**
   * Starts a request without waiting for it. Flow control counts it until its reply has
   * left for the kernel, so queued replies to a client that does not read are bounded too.
   */
  private dispatch(s: Session, req: Request, payload: Buffer | undefined): void {
    const footprint = requestFootprint(req);
    this.inFlight++;
    this.inFlightBytes += footprint;
    void this.execute(s, req, payload)
      .then((result) => this.sendResult(s, req, result))
      .catch((e: unknown) => {
        this.log('warn', `replying to ${constantName(NbdCmd, req.type, 'NBD_CMD_')} failed: ${(e as Error).message}`);
        this.socket.destroy();
      })
      .finally(() => {
        this.inFlight--;
        this.inFlightBytes -= footprint;
        this.wake();
      });
  }

  private async execute(s: Session, req: Request, payload: Buffer | undefined): Promise<CommandResult> {
    try {
      checkRequest(s, req);
      return await this.runCommand(s, req, payload ?? EMPTY);
    } catch (e) {
      if (e instanceof RequestError) return { kind: 'error', errno: e.errno, message: e.message };
      const errno = errnoForDeviceError(e);
      const message = e instanceof Error ? e.message : String(e);
      this.log('warn', `${constantName(NbdCmd, req.type, 'NBD_CMD_')} failed on export "${s.exportName}": ${message}`, {
        offset: req.offset.toString(),
        length: req.length,
        errno: constantName(NbdErrno, errno),
      });
      return { kind: 'error', errno, message };
    }
  }

  /** Runs a checked request against the device. */
  private async runCommand(s: Session, req: Request, payload: Buffer): Promise<CommandResult> {
    const device = s.device;
    const offset = Number(req.offset);
    const fua = (req.flags & CmdFlag.Fua) !== 0;
    switch (req.type) {
      case NbdCmd.Read: {
        if (req.length === 0) return DONE;
        const data = await device.read(offset, req.length);
        if (data.length !== req.length) {
          throw new OsrError('INTERNAL', `device returned ${data.length} bytes for a read of ${req.length}`);
        }
        return { kind: 'data', offset, data };
      }
      case NbdCmd.Write:
        if (req.length > 0) await device.write(offset, payload, { fua });
        return DONE;
      case NbdCmd.Flush:
        await device.flush();
        return DONE;
      case NbdCmd.Trim:
        if (req.length > 0) await device.trim(offset, req.length, { fua });
        return DONE;
      case NbdCmd.WriteZeroes:
        if (req.length > 0) {
          await device.writeZeroes(offset, req.length, { fua, mayTrim: (req.flags & CmdFlag.NoHole) === 0 });
        }
        return DONE;
      case NbdCmd.BlockStatus: {
        const extents = await device.blockStatus(offset, req.length);
        const reqOne = (req.flags & CmdFlag.ReqOne) !== 0;
        return { kind: 'status', descriptors: allocationDescriptors(extents, offset, req.length, reqOne) };
      }
      default:
        throw new RequestError(NbdErrno.EINVAL, `unsupported command ${req.type}`);
    }
  }

  /**
   * Writes one complete reply in a single synchronous call, so the bytes of two replies
   * never interleave. Resolves once the reply has been handed to the kernel.
   */
  private sendResult(s: Session, req: Request, result: CommandResult): Promise<void> {
    const h = req.handle;
    switch (result.kind) {
      case 'done':
        // a simple reply is allowed for payload-less success even with structured replies,
        // except for READ, which must always answer with chunks then
        return this.sendReply(s.structured && req.type === NbdCmd.Read ? doneChunk(h) : simpleReply(h, 0));
      case 'data':
        return s.structured
          ? this.sendReply(dataChunkHeader(h, result.offset, result.data.length), result.data)
          : this.sendReply(simpleReply(h, 0), result.data);
      case 'status':
        return this.sendReply(blockStatusChunk(h, BASE_ALLOCATION_ID, result.descriptors));
      case 'error':
        return this.sendReply(s.structured ? errorChunk(h, result.errno, result.message) : simpleReply(h, result.errno));
    }
  }

  // -- plumbing -------------------------------------------------------------------------

  /** Queues parts back to back; onWritten runs once the last has left (or failed to). */
  private send(parts: readonly Buffer[], onWritten?: () => void): void {
    if (this.socket.destroyed || !this.socket.writable) {
      onWritten?.();
      return;
    }
    // cork so header and data leave in one writev instead of separate segments
    const corked = parts.length > 1;
    if (corked) this.socket.cork();
    for (let i = 0; i < parts.length - 1; i++) this.socket.write(parts[i]);
    this.socket.write(parts[parts.length - 1], () => onWritten?.());
    if (corked) this.socket.uncork();
  }

  /** Handshake replies: small, and the client waits for each before sending more. */
  private sendOption(reply: Buffer): void {
    this.send([reply]);
  }

  private sendReply(...parts: Buffer[]): Promise<void> {
    return new Promise((resolve) => this.send(parts, resolve));
  }

  private hasCapacity(): boolean {
    return (
      this.inFlight < MAX_IN_FLIGHT_REQUESTS &&
      this.inFlightBytes < MAX_IN_FLIGHT_BYTES &&
      this.socket.writableLength < MAX_QUEUED_OUTPUT
    );
  }

  private async waitForCapacity(): Promise<void> {
    while (!this.reader.stopped && !this.socket.destroyed && !this.hasCapacity()) await this.nextWake();
  }

  private nextWake(): Promise<void> {
    return new Promise((resolve) => {
      const previous = this.wakeUp;
      this.wakeUp = () => {
        previous?.();
        resolve();
      };
    });
  }

  private wake(): void {
    const wakeUp = this.wakeUp;
    this.wakeUp = undefined;
    wakeUp?.();
  }

  private log(level: LogLevel, message: string, extra?: Record<string, unknown>): void {
    safeLog(this.env.logger, level, { ...this.context, ...extra }, message);
  }
}

// ---------------------------------------------------------------------------------------
// Server

const defaultLogger: NbdLogger = {
  info: () => {},
  warn: (context: unknown, message: unknown) => console.warn(String(message), context),
};

/** Logs without letting a failing logger break a connection or the server. */
function safeLog(logger: NbdLogger, level: LogLevel, context: Record<string, unknown>, message: string): void {
  try {
    logger[level](context, `nbd: ${message}`);
  } catch {
    // nothing sensible left to do with the message
  }
}

export class NbdServer {
  private readonly listeners = new Set<net.Server>();
  private readonly connections = new Set<NbdConnection>();
  private readonly env: ConnectionEnv;
  private readonly closeTimeoutMs: number;
  private closing: Promise<void> | undefined;

  constructor(resolver: NbdExportResolver, opts: NbdServerOptions = {}) {
    this.env = {
      resolver,
      logger: opts.logger ?? defaultLogger,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
    };
    this.closeTimeoutMs = opts.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Listens on a Unix socket; a stale socket file left by a dead process is replaced. */
  async listenUnix(socketPath: string): Promise<void> {
    try {
      await this.listen({ path: socketPath });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE' || !(await isStaleSocket(socketPath))) {
        throw listenError(e, `unix:${socketPath}`);
      }
      fs.unlinkSync(socketPath);
      await this.listen({ path: socketPath }).catch((e2: unknown) => {
        throw listenError(e2, `unix:${socketPath}`);
      });
    }
  }

  /** Listens on TCP (loopback unless told otherwise); port 0 picks a free port. */
  async listenTcp(port: number, host = '127.0.0.1'): Promise<{ port: number }> {
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new OsrError('INVALID_ARGUMENT', `NBD port ${port} is not a valid TCP port`);
    }
    const server = await this.listen({ port, host }).catch((e: unknown) => {
      throw listenError(e, `${host}:${port}`);
    });
    return { port: (server.address() as net.AddressInfo).port };
  }

  /**
   * Close the connections serving the exports `match` picks (their VM stopped), letting
   * in-flight requests finish first; resolves when they are closed.
   */
  async disconnect(match: (exportName: string) => boolean): Promise<void> {
    const chosen = [...this.connections].filter((c) => c.exportName !== undefined && match(c.exportName));
    for (const c of chosen) c.shutdown();
    const deadline = setTimeout(() => {
      for (const c of chosen) c.destroy();
    }, this.closeTimeoutMs);
    try {
      await Promise.all(chosen.map((c) => c.closed));
    } finally {
      clearTimeout(deadline);
    }
  }

  /** Stops listening and closes every connection, letting in-flight requests finish first. */
  close(): Promise<void> {
    this.closing ??= this.closeAll();
    return this.closing;
  }

  private async closeAll(): Promise<void> {
    const listenersClosed = [...this.listeners].map((l) => new Promise<void>((resolve) => l.close(() => resolve())));
    const connections = [...this.connections];
    for (const c of connections) c.shutdown();
    const deadline = setTimeout(() => {
      for (const c of connections) c.destroy();
    }, this.closeTimeoutMs);
    try {
      await Promise.all([...listenersClosed, ...connections.map((c) => c.closed)]);
    } finally {
      clearTimeout(deadline);
    }
  }

  private listen(options: net.ListenOptions): Promise<net.Server> {
    if (this.closing) return Promise.reject(new OsrError('INVALID_STATE', 'the NBD server is closed'));
    const server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(options, () => {
        server.off('error', reject);
        server.on('error', (e) => safeLog(this.env.logger, 'warn', { err: e.message }, 'listener error'));
        this.listeners.add(server);
        server.once('close', () => this.listeners.delete(server));
        resolve(server);
      });
    });
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    if (socket.remoteAddress) socket.setKeepAlive(true, 60_000);
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    const conn = new NbdConnection(socket, this.env, peer);
    this.connections.add(conn);
    void conn.closed.then(() => this.connections.delete(conn));
    void conn.run();
  }
}

/** True when path is a socket nobody accepts on (the owner died without removing it). */
async function isStaleSocket(socketPath: string): Promise<boolean> {
  try {
    if (!fs.lstatSync(socketPath).isSocket()) return false;
  } catch {
    return false;
  }
  return new Promise((resolve) => {
    const probe = net.connect({ path: socketPath });
    probe.once('connect', () => {
      probe.destroy();
      resolve(false);
    });
    probe.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });
}

function listenError(e: unknown, address: string): OsrError {
  const err = e as NodeJS.ErrnoException;
  const reason = err.code === 'EADDRINUSE' ? 'the address is in use' : (err.message ?? String(e));
  return new OsrError('CONFIG_INVALID', `cannot listen for NBD on ${address}: ${reason}`, { address, code: err.code }, {
    cause: e,
  });
}
