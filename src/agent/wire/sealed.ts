/**
 * The sealed channel: the replication protocol's frames over a second, plain TCP
 * connection, in records sealed with AES-256-GCM under keys that both ends export from
 * their mutual-TLS session (RFC 8446 §7.5). TLS authenticates the peer and agrees the keys
 * as before; the records are TLS's own construction (a per-direction key, a counter nonce,
 * an authentication tag on every record) but up to 16 MiB long instead of 16 KiB, sealed
 * and opened on the thread pool, and a record's body is received where a direct write
 * can take it. Described in docs/design/replication-protocol.md, "Sealed channel".
 *
 *   attach  = "OSRSEAL1" | token 32                     (client to server, once)
 *   record  = length u32be (ciphertext bytes, tag included) | ciphertext | tag 16
 *   nonce   = 0 u32 | record index u64be, per direction from 0
 *   key     = HKDF-SHA256(master, info "osr sealed <c2s|s2c> <epoch>"), epoch = index >> 12
 *   master  = TLS exporter, label "EXPORTER-osr-replication-sealed", context "osr-replication 1", 32 bytes
 *   token   = HKDF-SHA256(master, info "osr sealed token")
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { Duplex } from 'node:stream';
import type tls from 'node:tls';
import { OsrError } from '../../domain/errors.js';
import { DIRECT_ALIGN } from '../io/direct-io.js';
import { addon } from '../io/native.js';

/** Offered in the hello and answered in the welcome: the frames move to a sealed channel. */
export const SEALED_FEATURE = 'sealed';
/** The first bytes of a sealed channel's connection, then its token. */
export const SEALED_MAGIC = Buffer.from('OSRSEAL1', 'latin1');
const SEALED_TOKEN_BYTES = 32;
const SEALED_ATTACH_BYTES = SEALED_MAGIC.length + SEALED_TOKEN_BYTES;
const EXPORTER_LABEL = 'EXPORTER-osr-replication-sealed';
const EXPORTER_CONTEXT = Buffer.from('osr-replication 1', 'latin1');
const TAG_BYTES = 16;
/** The largest plaintext of one record; a longer write is sealed in several. */
const MAX_RECORD_PLAIN_BYTES = 16 * 1024 * 1024;
/** Records sealed under one key: at most 64 GiB, far inside AES-GCM's limits per key. */
const RECORDS_PER_KEY = 4096;
/** Records at least this long are sealed and opened on the thread pool, and received at an aligned address. */
const LARGE_RECORD_BYTES = 64 * 1024;
/** Records up to this long (with their length field and tag: a DATA body of MAX_DATA_BYTES fits) are sealed into, and received into, buffers reused across records and connections. */
const POOLED_RECORD_BYTES = 8 * 1024 * 1024;
/** Buffers each pool keeps when none is in use. */
const POOL_KEEP = 8;
/** Received bytes queued before the socket is paused. */
const MAX_QUEUED_BYTES = 2 * (MAX_RECORD_PLAIN_BYTES + TAG_BYTES + 4);

export interface SealedSecrets {
  master: Buffer;
  token: Buffer;
}

/** The channel's master secret and token, the same at both ends of one TLS session. */
export function sealedSecrets(socket: tls.TLSSocket): SealedSecrets {
  const master = socket.exportKeyingMaterial(32, EXPORTER_LABEL, EXPORTER_CONTEXT);
  return { master, token: hkdf(master, 'osr sealed token') };
}

function hkdf(master: Buffer, info: string): Buffer {
  return Buffer.from(crypto.hkdfSync('sha256', master, Buffer.alloc(0), info, 32));
}

function nonceFor(index: number): Buffer {
  const n = Buffer.alloc(12);
  n.writeBigUInt64BE(BigInt(index), 4);
  return n;
}

/** The keys of one direction, derived epoch by epoch as the records go. */
class DirectionKeys {
  private epoch = -1;
  private key: Buffer = Buffer.alloc(0);
  constructor(
    private readonly master: Buffer,
    private readonly direction: 'c2s' | 's2c',
  ) {}

  for(index: number): Buffer {
    const epoch = Math.floor(index / RECORDS_PER_KEY);
    if (epoch !== this.epoch) {
      this.key.fill(0);
      this.key = hkdf(this.master, `osr sealed ${this.direction} ${epoch}`);
      this.epoch = epoch;
    }
    return this.key;
  }

  wipe(): void {
    this.key.fill(0);
  }
}

/** Seal `plain` into `out` (4 + plain.length + 16 bytes): the record, length first. */
export async function sealRecord(key: Buffer, index: number, plain: Buffer, out: Buffer): Promise<void> {
  out.writeUInt32BE(plain.length + TAG_BYTES, 0);
  const aad = out.subarray(0, 4);
  const nonce = nonceFor(index);
  if (addon && plain.length >= LARGE_RECORD_BYTES) {
    await addon.sealRecord(key, nonce, aad, plain, out.subarray(4));
    return;
  }
  const c = crypto.createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const body = c.update(plain);
  body.copy(out, 4);
  c.final();
  c.getAuthTag().copy(out, 4 + body.length);
}

/** Open a record's ciphertext and tag (`sealed`) in place; false when its tag does not match. */
export async function openRecord(key: Buffer, index: number, lengthField: Buffer, sealed: Buffer): Promise<boolean> {
  const nonce = nonceFor(index);
  if (addon && sealed.length >= LARGE_RECORD_BYTES) return addon.openRecord(key, nonce, lengthField, sealed);
  const d = crypto.createDecipheriv('aes-256-gcm', key, nonce);
  d.setAAD(lengthField);
  d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  const plain = d.update(sealed.subarray(0, sealed.length - TAG_BYTES));
  try {
    d.final();
  } catch {
    sealed.fill(0);
    return false;
  }
  plain.copy(sealed);
  return true;
}

/**
 * Buffers for records, in size classes (powers of two from 64 KiB to POOLED_RECORD_BYTES,
 * each with room for the length field and tag), each starting at an address aligned for
 * direct I/O where the addon can tell, and reused: a bulk transfer then neither allocates
 * nor faults in fresh memory for each record, nor makes the garbage collector chase the
 * gigabytes it passed through. A record gets the smallest class that holds it, so a buffer
 * is never more than twice its record. Whoever takes a buffer gives it back only when
 * nothing reads it any more; one never given back is simply collected.
 */
class RecordPool {
  private readonly free = new Map<number, Buffer[]>();

  /** A buffer of the smallest class that holds `length` bytes (LARGE_RECORD_BYTES ≤ length ≤ 2 × POOLED_RECORD_BYTES). */
  take(length: number): Buffer {
    let size = LARGE_RECORD_BYTES;
    while (size < length) size *= 2;
    const b = this.free.get(size)?.pop();
    if (b) return b;
    if (!addon) return Buffer.allocUnsafeSlow(size);
    const raw = Buffer.allocUnsafeSlow(size + DIRECT_ALIGN);
    const skip = addon.alignOffset(raw, DIRECT_ALIGN);
    return raw.subarray(skip, skip + size);
  }

  give(b: Buffer): void {
    const list = this.free.get(b.length) ?? [];
    if (list.length < POOL_KEEP) list.push(b);
    this.free.set(b.length, list);
  }
}

const sendPool = new RecordPool();
const receivePool = new RecordPool();

/** A received record's plaintext that lies in a pooled buffer, lent to the stream's reader. */
interface Lease {
  pooled: Buffer;
  plain: Buffer;
}

/** A record being received: its length field read, its ciphertext and tag landing in `sealed`. */
interface Incoming {
  lengthField: Buffer;
  sealed: Buffer;
  pooled: Buffer | undefined;
  fill: number;
}

/** How a SealedStream gets its socket: made with the `onread` it is given. */
export type SealedSocketFactory = (onread: net.OnReadOpts) => net.Socket;

/**
 * Frames in, sealed records out, and back: a Duplex over the channel's TCP socket that the
 * protocol's FrameReader and FrameWriter use as they use a TLS socket. Each write is sealed
 * as one record (or several past MAX_RECORD_PLAIN_BYTES). The socket reads each record
 * straight into the memory it is opened in (`onread`): a large record into a pooled buffer
 * aligned for direct I/O, lent to the reader (see release); nothing is copied on the way.
 * Records are opened in order on the thread pool and each is pushed as one chunk.
 * 'confirmed' is emitted when the first record from the peer opened: the peer holds the keys.
 */
export class SealedStream extends Duplex {
  readonly socket: net.Socket;
  private readonly sendKeys: DirectionKeys;
  private readonly receiveKeys: DirectionKeys;
  private sent = 0;
  private received = 0;
  private readonly head = Buffer.alloc(4);
  private headFill = 0;
  private incoming: Incoming | undefined;
  /** records received whole and waiting to be opened, in order */
  private readonly complete: Incoming[] = [];
  private completeBytes = 0;
  private opening = false;
  private wanted = true;
  private reading = true;
  private ended = false;
  private endPushed = false;
  /** received records lent out in pooled buffers, by the memory they lie in */
  private readonly leases = new WeakMap<ArrayBufferLike, Lease>();

  constructor(
    makeSocket: SealedSocketFactory,
    private readonly secrets: SealedSecrets,
    isClient: boolean,
  ) {
    super({ allowHalfOpen: false, writableHighWaterMark: 4 * 1024 * 1024 });
    this.sendKeys = new DirectionKeys(secrets.master, isClient ? 'c2s' : 's2c');
    this.receiveKeys = new DirectionKeys(secrets.master, isClient ? 's2c' : 'c2s');
    const socket = makeSocket({ buffer: () => this.nextRegion(), callback: (n) => this.onBytes(n) });
    this.socket = socket;
    socket.on('end', () => {
      // a record cut short is not data: what was opened stands, the rest is refused
      if (this.incoming || this.headFill > 0) this.destroy(new OsrError('NETWORK_ERROR', 'the sealed channel ended inside a record'));
      else this.ended = true;
      void this.pump();
    });
    socket.on('error', (e) => this.destroy(new OsrError('NETWORK_ERROR', `sealed channel: ${e.message}`, undefined, { cause: e })));
    socket.on('close', (hadError) => {
      // after an orderly end the records received whole are still opened and read (a
      // peer's last words, such as the error it closed with); the stream then ends by itself
      if (this.destroyed || (this.ended && !hadError)) return;
      this.destroy();
    });
  }

  /** bytes read from the socket, records' framing and tags included */
  get bytesRead(): number {
    return this.socket.bytesRead;
  }

  /**
   * The reader is done with `chunk`, one whole record's plaintext, the very Buffer pushed (a
   * DATA frame's body): its buffer goes back to the pool for the next record. Anything else
   * (a part of a record, which other frames may still hold) is left to the garbage collector.
   */
  release(chunk: Buffer): void {
    // the very chunk pushed: a stale one of an earlier record in the same buffer matches nothing
    const lease = this.leases.get(chunk.buffer);
    if (lease?.plain !== chunk) return;
    this.leases.delete(chunk.buffer);
    receivePool.give(lease.pooled);
  }

  setKeepAlive(enable: boolean, delayMs: number): this {
    this.socket.setKeepAlive(enable, delayMs);
    return this;
  }

  /** Where the socket's next read lands: the rest of a length field, or of a record (never empty). */
  private nextRegion(): Buffer {
    return this.incoming ? this.incoming.sealed.subarray(this.incoming.fill) : this.head.subarray(this.headFill);
  }

  /** `n` bytes landed where nextRegion said; false pauses the socket. */
  private onBytes(n: number): boolean {
    try {
      return this.landed(n);
    } catch (e) {
      // (a buffer that cannot be had): this channel ends, the process goes on
      this.destroy(new OsrError('NETWORK_ERROR', `sealed channel: ${(e as Error).message}`, undefined, { cause: e }));
      return false;
    }
  }

  private landed(n: number): boolean {
    if (this.destroyed) return false;
    const r = this.incoming;
    if (r) {
      r.fill += n;
      if (r.fill === r.sealed.length) {
        this.incoming = undefined;
        this.complete.push(r);
        // what it holds, not what it carries: a hostile peer's small records cannot pin big buffers
        this.completeBytes += r.pooled?.length ?? r.sealed.length;
        void this.pump();
      }
    } else {
      this.headFill += n;
      if (this.headFill === 4) {
        this.headFill = 0;
        const length = this.head.readUInt32BE(0);
        if (length < TAG_BYTES || length > MAX_RECORD_PLAIN_BYTES + TAG_BYTES) {
          this.destroy(new OsrError('PROTOCOL_ERROR', `sealed record of ${length} bytes is out of bounds`));
          return false;
        }
        const pooled = length >= LARGE_RECORD_BYTES && length <= POOLED_RECORD_BYTES * 2 ? receivePool.take(length) : undefined;
        this.incoming = { lengthField: Buffer.from(this.head), sealed: pooled ? pooled.subarray(0, length) : Buffer.allocUnsafe(length), pooled, fill: 0 };
      }
    }
    this.reading = this.completeBytes <= MAX_QUEUED_BYTES;
    return this.reading;
  }

  private resumeReading(): void {
    if (!this.reading && !this.destroyed && this.completeBytes <= MAX_QUEUED_BYTES) {
      this.reading = true;
      this.socket.resume();
    }
  }

  override _read(): void {
    this.wanted = true;
    void this.pump();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.sealAndSend([chunk]).then(() => cb(), cb);
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (e?: Error | null) => void): void {
    this.sealAndSend(chunks.map((c) => c.chunk)).then(() => cb(), cb);
  }

  override _final(cb: (e?: Error | null) => void): void {
    if (this.socket.destroyed) return cb();
    this.socket.end(() => cb());
  }

  override _destroy(e: Error | null, cb: (e?: Error | null) => void): void {
    this.sendKeys.wipe();
    this.receiveKeys.wipe();
    this.secrets.master.fill(0);
    this.socket.destroy();
    cb(e);
  }

  /** Seal and send an empty record: the first one tells the peer this end holds the keys. */
  confirm(): Promise<void> {
    return this.sealAndSend([Buffer.alloc(0)]);
  }

  /** Records are sealed and handed to the socket one after another, in the order asked. */
  private sealAndSend(chunks: Buffer[]): Promise<void> {
    const done = this.sending.then(() => this.sealAndSendNow(chunks));
    this.sending = done.catch(() => undefined);
    return done;
  }

  private sending: Promise<void> = Promise.resolve();

  /** Each chunk in records of at most MAX_RECORD_PLAIN_BYTES; an empty chunk is one empty record. */
  private async sealAndSendNow(chunks: Buffer[]): Promise<void> {
    for (const chunk of chunks) {
      let at = 0;
      do {
        const plain = chunk.subarray(at, Math.min(chunk.length, at + MAX_RECORD_PLAIN_BYTES));
        const index = this.sent++;
        const pooled = plain.length >= LARGE_RECORD_BYTES && plain.length <= POOLED_RECORD_BYTES ? sendPool.take(4 + plain.length + TAG_BYTES) : undefined;
        const out = pooled ? pooled.subarray(0, 4 + plain.length + TAG_BYTES) : Buffer.allocUnsafe(4 + plain.length + TAG_BYTES);
        await sealRecord(this.sendKeys.for(index), index, plain, out);
        if (this.socket.destroyed) throw new OsrError('NETWORK_ERROR', 'the sealed channel is closed');
        // the socket holds the record until the kernel took all of it
        const ok = this.socket.write(out, pooled ? () => sendPool.give(pooled) : undefined);
        if (!ok) await this.socketDrained();
        at += MAX_RECORD_PLAIN_BYTES;
      } while (at < chunk.length);
    }
  }

  private socketDrained(): Promise<void> {
    return new Promise((resolve, reject) => {
      const done = (e?: Error) => {
        this.socket.off('drain', onDrain);
        this.socket.off('close', onClose);
        if (e) reject(e);
        else resolve();
      };
      const onDrain = () => done();
      const onClose = () => done(new OsrError('NETWORK_ERROR', 'the sealed channel closed while sending'));
      this.socket.on('drain', onDrain);
      this.socket.on('close', onClose);
    });
  }

  /** Open the records received whole, in order, one at a time, while the reader wants more. */
  private async pump(): Promise<void> {
    if (this.opening || this.destroyed) return;
    this.opening = true;
    try {
      while (this.wanted && !this.destroyed && this.complete.length > 0) {
        const r = this.complete.shift()!;
        this.completeBytes -= r.pooled?.length ?? r.sealed.length;
        const index = this.received++;
        if (!(await openRecord(this.receiveKeys.for(index), index, r.lengthField, r.sealed))) {
          throw new OsrError('PROTOCOL_ERROR', `sealed record ${index} failed its authentication tag: the channel was altered or corrupted on the way`);
        }
        if (this.destroyed) return;
        if (index === 0) this.emit('confirmed');
        if (r.sealed.length > TAG_BYTES) {
          const plain = r.sealed.subarray(0, r.sealed.length - TAG_BYTES);
          if (r.pooled) this.leases.set(plain.buffer, { pooled: r.pooled, plain });
          this.wanted = this.push(plain);
        } else if (r.pooled) receivePool.give(r.pooled);
        this.resumeReading();
      }
      if (this.ended && this.complete.length === 0 && !this.destroyed && !this.endPushed) {
        this.endPushed = true;
        this.push(null);
      }
    } catch (e) {
      this.destroy(e instanceof OsrError ? e : new OsrError('PROTOCOL_ERROR', String((e as Error)?.message ?? e), undefined, { cause: e }));
    } finally {
      this.opening = false;
    }
  }
}

/** How long a TLS session waits for its peer's sealed channel after agreeing on it. */
const ATTACH_TIMEOUT_MS = 15_000;
/** How long a new connection may take to show whether it is TLS or a sealed channel. */
const ROUTE_TIMEOUT_MS = 10_000;

interface Waiting {
  secrets: SealedSecrets;
  attached?: SealedStream;
  waiter?: { resolve: (s: SealedStream) => void; reject: (e: OsrError) => void };
}

/** The server's TLS sessions, by the token of the sealed channel each may receive (once). */
export class SealedAttachments {
  private readonly waiting = new Map<string, Waiting>();

  /** Whether this process can receive sealed channels (it needs the native addon: see adoptSocket). */
  static get available(): boolean {
    return addon !== undefined;
  }

  /**
   * A TLS session that may be followed by a sealed channel: returns the function a session
   * calls, once it agreed on one, to get it (within ATTACH_TIMEOUT_MS).
   */
  expect(socket: tls.TLSSocket): () => Promise<Duplex> {
    // the token is listened for only once the session agreed on the channel (after its
    // hello and role were checked), and only until the channel attached or 15 s passed
    let waiting: Promise<Duplex> | undefined;
    return () => (waiting ??= this.register(socket));
  }

  private register(socket: tls.TLSSocket): Promise<Duplex> {
    const secrets = sealedSecrets(socket);
    const key = secrets.token.toString('hex');
    const entry: Waiting = { secrets };
    this.waiting.set(key, entry);
    const attached = new Promise<Duplex>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(key);
        reject(new OsrError('NETWORK_ERROR', `the peer did not open its sealed channel within ${ATTACH_TIMEOUT_MS / 1000} s`));
      }, ATTACH_TIMEOUT_MS);
      timer.unref();
      entry.waiter = {
        resolve: (s) => {
          clearTimeout(timer);
          resolve(s);
        },
        reject: (e) => {
          clearTimeout(timer);
          this.waiting.delete(key);
          reject(e);
        },
      };
    });
    socket.once('close', () => {
      this.waiting.delete(key);
      entry.waiter?.reject(new OsrError('NETWORK_ERROR', 'the TLS connection closed before its sealed channel opened'));
      entry.attached?.destroy();
      secrets.master.fill(0);
    });
    // awaited by the session once its welcome is sent; a failure before then is not unhandled
    attached.catch(() => undefined);
    return attached;
  }

  /**
   * A connection that sent the magic and `token`: attached to its TLS session and confirmed
   * with an empty record, or false (unknown or used token, or nothing to read it with).
   */
  accept(socket: net.Socket, token: Buffer): boolean {
    const key = token.toString('hex');
    const entry = this.waiting.get(key);
    if (!entry || entry.attached) return false;
    const makeSocket = adoptSocket(socket);
    if (!makeSocket) return false;
    this.waiting.delete(key);
    let stream: SealedStream;
    try {
      stream = new SealedStream(makeSocket, entry.secrets, false);
    } catch {
      entry.waiter?.reject(new OsrError('NETWORK_ERROR', 'the sealed channel could not be set up'));
      return true; // its socket is gone already: nothing is left to close
    }
    // its session learns of a failure from 'close' and logs its errors; one never taken up is just closed
    stream.on('error', () => undefined);
    entry.attached = stream;
    stream.confirm().catch((e: unknown) => stream.destroy(e as Error));
    entry.waiter?.resolve(stream);
    return true;
  }
}

/**
 * A factory of the sealed channel's server socket: the accepted connection's descriptor,
 * duplicated into a socket that reads into the channel's own memory (Node's `onread`, which
 * only a socket made from a descriptor or by connect() can have), and the accepted socket
 * closed (the connection lives on in the duplicate). Undefined where the descriptor cannot
 * be had (no native addon), or when the peer sent more than the attach before it was
 * confirmed: it is then refused.
 */
function adoptSocket(accepted: net.Socket): SealedSocketFactory | undefined {
  // the descriptor of an accepted TCP socket, on its (internal) handle
  const fd = (accepted as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (!addon || typeof fd !== 'number' || fd < 0 || accepted.readableLength > 0) return undefined;
  let copy: number;
  try {
    copy = addon.dupFd(fd);
  } catch {
    return undefined; // out of descriptors: refused like any other
  }
  accepted.destroy();
  return (onread) => {
    try {
      const s = new net.Socket({ fd: copy, onread, readable: true, writable: true });
      s.setNoDelay(true);
      return s;
    } catch (e) {
      fs.closeSync(copy);
      throw e;
    }
  };
}

/**
 * Tell a new connection on the replication port apart by its first byte: a TLS handshake
 * goes to `onTls` with that byte put back; SEALED_MAGIC and a token to `onSealed`. A
 * connection that shows neither within ROUTE_TIMEOUT_MS, or that `onSealed` refuses, is
 * closed. The socket must arrive paused (`pauseOnConnect`).
 */
export function routeConnection(socket: net.Socket, o: { onTls(socket: net.Socket): void; onSealed(socket: net.Socket, token: Buffer): boolean; onRefused(reason: string): void }): void {
  let sealed = false;
  const timer = setTimeout(() => refuse('it sent nothing recognisable in time'), ROUTE_TIMEOUT_MS);
  timer.unref();
  const cleanup = () => {
    clearTimeout(timer);
    socket.off('readable', onReadable);
    socket.off('end', onEnd);
    socket.off('error', onEnd);
  };
  const refuse = (reason: string) => {
    cleanup();
    o.onRefused(reason);
    socket.destroy();
  };
  const onEnd = () => refuse('it closed before saying what it is');
  const onReadable = () => {
    if (!sealed) {
      const first = socket.read(1) as Buffer | null;
      if (first === null) return;
      socket.unshift(first);
      if (first[0] !== SEALED_MAGIC[0]) {
        cleanup();
        try {
          o.onTls(socket);
        } catch (e) {
          refuse(`it could not be taken: ${(e as Error).message}`);
        }
        return;
      }
      sealed = true;
    }
    const attach = socket.read(SEALED_ATTACH_BYTES) as Buffer | null;
    if (attach === null) return;
    cleanup();
    if (!attach.subarray(0, SEALED_MAGIC.length).equals(SEALED_MAGIC)) return refuse('it is neither TLS nor a sealed channel');
    let taken: boolean;
    try {
      taken = o.onSealed(socket, attach.subarray(SEALED_MAGIC.length));
    } catch {
      taken = false;
    }
    if (!taken) return refuse('its sealed channel names no TLS session waiting for one, or could not be set up');
  };
  socket.on('readable', onReadable);
  socket.on('end', onEnd);
  socket.on('error', onEnd);
}

/** The client's side: open the sealed channel of `tlsSocket` to host:port, and wait until the server confirmed it. */
export async function openSealed(tlsSocket: tls.TLSSocket, connect: (onread: net.OnReadOpts) => net.Socket, timeoutMs: number): Promise<SealedStream> {
  const secrets = sealedSecrets(tlsSocket);
  const stream = new SealedStream(connect, secrets, true);
  const socket = stream.socket;
  socket.setNoDelay(true);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new OsrError('NETWORK_ERROR', `the sealed channel was not confirmed within ${timeoutMs} ms`)), timeoutMs);
      const fail = (e: Error) => {
        clearTimeout(timer);
        stream.off('confirmed', ok);
        reject(e instanceof OsrError ? e : new OsrError('NETWORK_ERROR', `the sealed channel did not open: ${e.message}`, undefined, { cause: e }));
      };
      const ok = () => {
        clearTimeout(timer);
        stream.off('error', fail);
        stream.off('close', closed);
        resolve();
      };
      const closed = () => fail(new OsrError('NETWORK_ERROR', 'the replica closed the sealed channel before confirming it'));
      socket.once('connect', () => socket.write(Buffer.concat([SEALED_MAGIC, secrets.token])));
      stream.once('confirmed', ok);
      stream.once('error', fail);
      stream.once('close', closed);
    });
  } catch (e) {
    stream.destroy();
    throw e;
  }
  // its owner learns of a failure from 'close' (and from an 'error' listener of its own)
  stream.on('error', () => undefined);
  stream.once('close', () => tlsSocket.destroy());
  tlsSocket.once('close', () => stream.destroy());
  return stream;
}
