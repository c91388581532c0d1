/**
 * The replication wire protocol: length-prefixed frames over one TLS 1.3 connection.
 * Described in docs/design/replication-protocol.md.
 *
 *   frame   = length u32be (bytes after this field) | type u8 | payload
 *   CONTROL = type 1, payload UTF-8 JSON (handshake, requests, replies, notices)
 *   DATA    = type 2, payload = flags u8 (bit 0: zstd) | 3 reserved | rawLength u32be |
 *             offset u64be | xxh128(raw bytes) 16 | body (raw or zstd-compressed)
 */
import type { Duplex } from 'node:stream';
import { compress } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import { OsrError } from '../../domain/errors.js';
import { ByteQueue } from '../io/byte-queue.js';
import { digest, digestOff } from '../io/checksum.js';

export const PROTOCOL_NAME = 'osr-replication';
export const PROTOCOL_VERSIONS = [1] as const;
export { DEFAULT_REPLICATION_PORT } from './port.js';
export const FrameType = { Control: 1, Data: 2 } as const;
export const DATA_HEADER_BYTES = 32;
/** the largest raw DATA body a sender may send */
export const MAX_DATA_BYTES = 8 * 1024 * 1024;
/** Bytes a FrameWriter lets queue in its stream before a write waits for it to drain. */
const WRITE_QUEUE_BYTES = 4 * 1024 * 1024;
const MAX_FRAME_BYTES = MAX_DATA_BYTES + DATA_HEADER_BYTES + 1 + 1024;

export interface DataFrame {
  offset: number;
  /** the raw bytes, as the received chunks that hold them (not copied into one buffer) */
  parts: Buffer[];
  length: number;
  /** bytes that crossed the wire for this frame's body */
  wireBytes: number;
}

export type ControlMessage = { type: string; [k: string]: unknown };

/**
 * A reply that carries bytes: they go first, as one DATA frame (offset 0), and the reply
 * says `binary: <bytes>`, so that large binary results (block checksums) travel raw and
 * checksummed instead of as base64 in JSON. Only requests that ask for it (`binary: true`)
 * get one.
 */
export class BinaryReply {
  constructor(
    readonly result: Record<string, unknown>,
    readonly data: Buffer,
  ) {}
}

export function encodeControl(msg: ControlMessage): Buffer {
  const body = Buffer.from(JSON.stringify(msg), 'utf8');
  const head = Buffer.allocUnsafe(5);
  head.writeUInt32BE(body.length + 1, 0);
  head.writeUInt8(FrameType.Control, 4);
  return Buffer.concat([head, body]);
}

/** Encode a DATA frame as [header, body] (the body is not copied unless compressed). */
export function encodeData(offset: number, data: Buffer, useZstd: boolean): [Buffer, Buffer] {
  if (data.length > MAX_DATA_BYTES) throw new OsrError('INVALID_ARGUMENT', `data frame of ${data.length} bytes exceeds ${MAX_DATA_BYTES}`);
  let body = data;
  let flags = 0;
  if (useZstd) {
    const c = compress(data, { compressionLevel: 1 });
    if (c.length < data.length) {
      body = c;
      flags = 1;
    }
  }
  const head = Buffer.allocUnsafe(5 + DATA_HEADER_BYTES);
  head.writeUInt32BE(1 + DATA_HEADER_BYTES + body.length, 0);
  head.writeUInt8(FrameType.Data, 4);
  head.writeUInt8(flags, 5);
  head.writeUIntBE(0, 6, 3);
  head.writeUInt32BE(data.length, 9);
  head.writeBigUInt64BE(BigInt(offset), 13);
  digest(data).copy(head, 21);
  return [head, body];
}

/** Bytes before a DATA frame's body: the frame's length and type, then its header. */
export const DATA_FRAME_HEAD_BYTES = 5 + DATA_HEADER_BYTES;

/**
 * A raw (uncompressed) DATA frame built in place: `frame` holds DATA_FRAME_HEAD_BYTES of
 * room, then the body; the head is written into that room. The frame is then one buffer,
 * which a TLS socket encrypts where it lies (several buffers written together are first
 * copied into one). `sum`: the body's xxh128, when the caller has it already.
 */
export function encodeDataInPlace(offset: number, frame: Buffer, sum?: Buffer): Buffer {
  const body = frame.subarray(DATA_FRAME_HEAD_BYTES);
  if (body.length > MAX_DATA_BYTES) throw new OsrError('INVALID_ARGUMENT', `data frame of ${body.length} bytes exceeds ${MAX_DATA_BYTES}`);
  frame.writeUInt32BE(1 + DATA_HEADER_BYTES + body.length, 0);
  frame.writeUInt8(FrameType.Data, 4);
  frame.writeUInt8(0, 5);
  frame.writeUIntBE(0, 6, 3);
  frame.writeUInt32BE(body.length, 9);
  frame.writeBigUInt64BE(BigInt(offset), 13);
  (sum ?? digest(body)).copy(frame, 21);
  return frame;
}

let dctx: zstdBinding.DCtx | undefined;

/**
 * Decompress a DATA body into exactly `rawLength` bytes (already checked against the frame
 * limit), never more: a body whose zstd header declares another size is refused before
 * anything is decompressed, and one that would decompress past `rawLength` fails inside
 * the fixed-size output buffer. A small frame cannot make the receiver allocate gigabytes.
 */
function decompressBounded(body: Buffer, rawLength: number, offset: number): Buffer {
  let declared: number | null;
  try {
    declared = zstdBinding.getFrameContentSize(body);
  } catch (e) {
    throw new OsrError('PROTOCOL_ERROR', `DATA frame at offset ${offset} is not a zstd frame`, undefined, { cause: e });
  }
  if (declared !== null && declared !== rawLength) {
    throw new OsrError('PROTOCOL_ERROR', `DATA frame at offset ${offset} declares ${declared} bytes compressed, its header ${rawLength}: refused before decompressing`);
  }
  const out = Buffer.allocUnsafe(rawLength);
  let n: number;
  try {
    dctx ??= new zstdBinding.DCtx();
    n = dctx.decompress(out, body);
  } catch (e) {
    // a fresh context after a failure: the old one may hold half a frame
    dctx = undefined;
    throw new OsrError('CHECKSUM_MISMATCH', `DATA frame at offset ${offset} does not decompress into its ${rawLength} bytes`, undefined, { cause: e });
  }
  return n === rawLength ? out : out.subarray(0, n);
}

async function decodeData(header: Buffer, body: Buffer[], bodyLength: number): Promise<DataFrame> {
  const flags = header.readUInt8(0);
  const rawLength = header.readUInt32BE(4);
  const offset = Number(header.readBigUInt64BE(8));
  const sum = header.subarray(16, 32);
  if (rawLength > MAX_DATA_BYTES) throw new OsrError('PROTOCOL_ERROR', `DATA frame claims ${rawLength} bytes`);
  let parts = body;
  if (flags & 1) parts = [decompressBounded(Buffer.concat(body, bodyLength), rawLength, offset)];
  const length = parts.reduce((n, p) => n + p.length, 0);
  if (length !== rawLength) throw new OsrError('CHECKSUM_MISMATCH', `DATA frame at offset ${offset} has ${length} bytes, header says ${rawLength}`);
  if (!(await digestOff(parts)).equals(sum)) throw new OsrError('CHECKSUM_MISMATCH', `DATA frame at offset ${offset} failed its checksum`);
  return { offset, parts, length, wireBytes: bodyLength };
}

/**
 * Reads frames from a stream, handing them to a handler one at a time: the next frame is
 * not delivered until the handler's promise settles, and the socket is paused while a
 * backlog builds, so memory stays bounded.
 */
export class FrameReader {
  private readonly queue = new ByteQueue();
  private running = false;
  private ended = false;
  private failed = false;

  constructor(
    private readonly stream: Duplex,
    private readonly onControl: (m: ControlMessage) => Promise<void> | void,
    private readonly onData: (f: DataFrame) => Promise<void> | void,
    private readonly onError: (e: OsrError) => void,
  ) {
    stream.on('data', this.onChunk);
    stream.on('end', () => {
      this.ended = true;
    });
  }

  private readonly onChunk = (chunk: Buffer): void => {
    this.queue.push(chunk);
    if (this.queue.length > 2 * MAX_FRAME_BYTES) this.stream.pause();
    void this.pump();
  };

  /**
   * Stop reading: no frame is delivered after the one being handled. Returns the bytes
   * received and not delivered (the frames moved to another stream: there should be none).
   */
  detach(): number {
    this.failed = true;
    this.stream.off('data', this.onChunk);
    return this.queue.length;
  }

  private async pump(): Promise<void> {
    if (this.running || this.failed) return;
    this.running = true;
    try {
      for (let len = this.queue.peekUInt32BE(); len !== undefined && !this.failed; len = this.queue.peekUInt32BE()) {
        if (len < 1 || len > MAX_FRAME_BYTES) throw new OsrError('PROTOCOL_ERROR', `frame of ${len} bytes is out of bounds`);
        if (this.queue.length < 4 + len) break;
        this.queue.take(4);
        const type = this.queue.take(1)!.readUInt8(0);
        if (type === FrameType.Data) {
          if (len - 1 < DATA_HEADER_BYTES) throw new OsrError('PROTOCOL_ERROR', 'DATA frame shorter than its header');
          const header = this.queue.take(DATA_HEADER_BYTES)!;
          const bodyLength = len - 1 - DATA_HEADER_BYTES;
          await this.onData(await decodeData(header, this.queue.takeParts(bodyLength)!, bodyLength));
        } else if (type === FrameType.Control) {
          const payload = this.queue.take(len - 1)!;
          let msg: ControlMessage;
          try {
            msg = JSON.parse(payload.toString('utf8')) as ControlMessage;
          } catch {
            throw new OsrError('PROTOCOL_ERROR', 'CONTROL frame is not JSON');
          }
          if (typeof msg?.type !== 'string') throw new OsrError('PROTOCOL_ERROR', 'CONTROL frame has no type');
          await this.onControl(msg);
        } else {
          throw new OsrError('PROTOCOL_ERROR', `unknown frame type ${type}`);
        }
        if (this.queue.length <= MAX_FRAME_BYTES && this.stream.isPaused() && !this.ended) this.stream.resume();
      }
    } catch (e) {
      this.failed = true;
      this.onError(e instanceof OsrError ? e : new OsrError('PROTOCOL_ERROR', String((e as Error)?.message ?? e), undefined, { cause: e }));
      return;
    } finally {
      this.running = false;
    }
    if (this.stream.isPaused() && !this.ended && this.queue.length <= MAX_FRAME_BYTES) this.stream.resume();
  }
}

/** Writes frames with backpressure: resolves when the stream can take more. */
export class FrameWriter {
  private closed = false;
  /**
   * `keepsBuffers`: the stream hands the buffers written to its reader as they are (an
   * in-process stream, not a socket), so a buffer its writer will reuse is copied first.
   * `separateBodies`: a DATA frame's body is written apart from its head (a sealed channel
   * then seals it as a record of its own, which the receiver lays out for direct I/O).
   */
  constructor(
    private readonly stream: Duplex,
    private readonly o: { keepsBuffers?: boolean; separateBodies?: boolean } = {},
  ) {
    stream.on('close', () => {
      this.closed = true;
    });
  }

  /**
   * Queue frames. With `flushed`, resolve only when the last buffer has been handed to the
   * socket (the caller may then reuse its buffers); otherwise when the stream can take more.
   */
  private async write(bufs: Buffer[], flushed = false): Promise<void> {
    if (this.closed || this.stream.destroyed) throw new OsrError('NETWORK_ERROR', 'connection to the peer agent is closed');
    let ok = true;
    let written: Promise<void> | undefined;
    if (flushed && this.o.keepsBuffers === true) bufs = bufs.map((b) => Buffer.from(b));
    this.stream.cork();
    bufs.forEach((b, i) => {
      if (flushed && i === bufs.length - 1) {
        written = new Promise((resolve, reject) => {
          ok = this.stream.write(b, (e) => (e ? reject(new OsrError('NETWORK_ERROR', `sending to the peer agent failed: ${e.message}`)) : resolve())) && ok;
        });
      } else ok = this.stream.write(b) && ok;
    });
    this.stream.uncork();
    if (written) await written;
    // past the stream's own mark, up to WRITE_QUEUE_BYTES may wait in it: many small
    // frames then go out without a wait for each
    else if (!ok && this.stream.writableLength > WRITE_QUEUE_BYTES) await this.drained();
  }

  private drained(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onDrain = () => {
        cleanup();
        resolve();
      };
      const onClose = () => {
        cleanup();
        reject(new OsrError('NETWORK_ERROR', 'connection to the peer agent closed while sending'));
      };
      const cleanup = () => {
        this.stream.off('drain', onDrain);
        this.stream.off('close', onClose);
      };
      this.stream.on('drain', onDrain);
      this.stream.on('close', onClose);
    });
  }

  sendControl(msg: ControlMessage): Promise<void> {
    return this.write([encodeControl(msg)]);
  }

  /**
   * Send a DATA frame; resolves with the bytes of its body on the wire once `data` may be
   * reused, or, with `reused: false` (the caller never touches `data` again), as soon as
   * the stream can take more.
   */
  async sendData(offset: number, data: Buffer, useZstd: boolean, reused = true): Promise<number> {
    const [head, body] = encodeData(offset, data, useZstd);
    await this.write([head, body], reused);
    return body.length;
  }

  /**
   * Send a DATA frame whose body follows DATA_FRAME_HEAD_BYTES of room in `frame` (see
   * encodeDataInPlace): raw, it goes as that one buffer; with zstd, as sendData sends the body.
   */
  async sendDataInPlace(offset: number, frame: Buffer, useZstd: boolean, reused = true): Promise<number> {
    if (useZstd) return this.sendData(offset, frame.subarray(DATA_FRAME_HEAD_BYTES), true, reused);
    // a large body is hashed on the thread pool while this thread goes on sending
    const encoded = encodeDataInPlace(offset, frame, await digestOff([frame.subarray(DATA_FRAME_HEAD_BYTES)]));
    await this.write(this.o.separateBodies === true ? [encoded.subarray(0, DATA_FRAME_HEAD_BYTES), encoded.subarray(DATA_FRAME_HEAD_BYTES)] : [encoded], reused);
    return frame.length - DATA_FRAME_HEAD_BYTES;
  }
}

/** Offered in the hello and answered in the welcome: both ends send `ping` notices when idle. */
export const KEEPALIVE_FEATURE = 'keepalive';
/** How often each end sends a `ping`. */
export const HEARTBEAT_MS = 5_000;
/** How long an end waits without a byte from its peer before it gives the connection up. */
export const IDLE_TIMEOUT_MS = 30_000;

/**
 * Keeps one replication connection honest about being alive. TCP keepalive finds a peer
 * whose host is gone, but not one whose process is frozen (its kernel still acknowledges),
 * nor a link that drops packets without a reset: so each end sends a `ping` notice every
 * HEARTBEAT_MS (a few bytes), and closes the connection (NETWORK_ERROR, and the
 * primary reconnects) when nothing arrived for IDLE_TIMEOUT_MS. Time the stream spends
 * paused by its own reader (this end's disk is slow) does not count against the peer.
 */
export class Liveness {
  private lastReceived = Date.now();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly socket: Duplex & { setKeepAlive?(enable: boolean, delayMs: number): unknown },
    private readonly sendPing: () => Promise<void>,
    private readonly onDead: (e: OsrError) => void,
    private readonly o: { heartbeatMs?: number; idleTimeoutMs?: number } = {},
  ) {
    socket.setKeepAlive?.(true, 10_000);
    socket.on('data', () => {
      this.lastReceived = Date.now();
    });
    this.timer = setInterval(() => this.tick(), o.heartbeatMs ?? HEARTBEAT_MS);
    this.timer.unref();
    socket.once('close', () => clearInterval(this.timer));
  }

  private tick(): void {
    const now = Date.now();
    if (this.socket.isPaused()) this.lastReceived = now;
    if (now - this.lastReceived > (this.o.idleTimeoutMs ?? IDLE_TIMEOUT_MS)) {
      clearInterval(this.timer);
      this.onDead(new OsrError('NETWORK_ERROR', `no word from the peer agent for ${Math.round((now - this.lastReceived) / 1000)} s; the connection is given up`));
      return;
    }
    this.sendPing().catch(() => undefined);
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

