/**
 * A small NBD client (fixed newstyle, NBD_OPT_GO): enough to be a lab guest's workload, a
 * test's writer and a benchmark's load generator, and to read a QEMU export the way a
 * libvirt host reads a pull-mode backup: structured replies, metadata contexts
 * (`base:allocation`, `qemu:dirty-bitmap:…`) and NBD_CMD_BLOCK_STATUS. Requests may be in
 * flight together; replies are matched by handle.
 */
import net from 'node:net';
import { OsrError } from '../../domain/errors.js';
import { ByteQueue } from '../io/byte-queue.js';
import { ClientFlag, CmdFlag, NBD_INIT_MAGIC, NBD_MAX_STRING, NBD_OPTS_MAGIC, NBD_REP_MAGIC, NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC, NBD_STRUCTURED_REPLY_MAGIC, NbdCmd, NbdInfo, NbdOpt, NbdRep, ReplyFlag, ReplyType } from './protocol.js';

export type NbdTarget = { socketPath: string; exportName: string } | { host: string; port: number; exportName: string };

/** Parse nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT. */
export function parseNbdUri(uri: string): NbdTarget {
  const u = new URL(uri);
  const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (u.protocol === 'nbd+unix:') {
    const socketPath = u.searchParams.get('socket');
    if (!socketPath) throw new OsrError('INVALID_ARGUMENT', `${uri}: no socket= parameter`);
    return { socketPath, exportName };
  }
  if (u.protocol === 'nbd:') return { host: u.hostname, port: Number(u.port || 10809), exportName };
  throw new OsrError('INVALID_ARGUMENT', `${uri} is not an NBD URI`);
}

interface Pending {
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
  readLength: number;
  /** a structured read (its data arrives in chunks at absolute offsets) */
  structuredRead?: boolean;
  /** a structured read: the buffer its data chunks fill (holes stay zero), made at the first chunk */
  target?: Buffer;
  /** the caller's buffer for a read's data (`read(…, into)`) */
  into?: Buffer;
  /** the request's offset (data chunks carry absolute offsets) */
  offset: number;
  /** block status: the extents of the context asked for */
  extents?: Extent[];
  contextId?: number;
  error?: Error;
}

/** One extent of a block status reply: its length and the context's flags for it. */
export interface Extent {
  offset: number;
  length: number;
  flags: number;
}

export interface NbdConnectOptions {
  /** metadata contexts to select (structured replies are then negotiated too) */
  metaContexts?: string[];
  /** ask for structured replies even without contexts */
  structuredReplies?: boolean;
}

/** what the socket reads into at a time */
const READ_BUFFER_BYTES = 256 * 1024;

export class NbdClient {
  size = 0;
  /** the ids the server gave the metadata contexts it agreed to, by name */
  readonly contexts = new Map<string, number>();
  private structured = false;
  /** bytes received and not yet parsed: replies are copied out of the socket's chunks once */
  private readonly queue = new ByteQueue();
  private nextHandle = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private handshake: ((b: Buffer) => boolean) | undefined;
  /** fails the handshake step waiting for the server: a connection that ends in the handshake must not leave it waiting */
  private handshakeFailed: ((e: Error) => void) | undefined;
  private error: Error | undefined;
  /** a structured read's data chunk whose bytes go straight from the socket into its buffer, and how many are still to come */
  private fill: { p: Pending; handle: bigint; at: number; left: number; done: boolean } | undefined;

  private constructor(
    private readonly socket: net.Socket,
    /** the one buffer the socket reads into (net's `onread`): whatever is kept of it is copied before the next read */
    private readonly readBuffer: Buffer,
  ) {
    const fail = (e: Error) => {
      this.error ??= e;
      for (const p of this.pending.values()) p.reject(this.error);
      this.pending.clear();
      const waiting = this.handshakeFailed;
      this.handshake = undefined;
      this.handshakeFailed = undefined;
      waiting?.(this.error);
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new OsrError('NETWORK_ERROR', 'NBD connection closed')));
  }

  static async connect(target: NbdTarget | string, o: NbdConnectOptions = {}): Promise<NbdClient> {
    const t = typeof target === 'string' ? parseNbdUri(target) : target;
    // the socket reads into one buffer of the client's: no new buffer per read for the collector
    const readBuffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
    const to: { client?: NbdClient } = {};
    const early: Buffer[] = [];
    const onread = {
      buffer: readBuffer,
      callback: (n: number, buf: Uint8Array): boolean => {
        if (to.client) to.client.onBytes(Buffer.from(buf.buffer, buf.byteOffset, n));
        else early.push(Buffer.from(buf.subarray(0, n)));
        return true;
      },
    };
    const socket = 'socketPath' in t ? net.connect({ path: t.socketPath, onread }) : net.connect({ port: t.port, host: t.host, onread });
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const c = new NbdClient(socket, readBuffer);
    to.client = c;
    for (const b of early.splice(0)) c.onBytes(b);
    try {
      await c.negotiate(t.exportName, o);
    } catch (e) {
      socket.destroy();
      throw e;
    }
    return c;
  }

  /**
   * Bytes from the socket, in the read buffer until this returns: a data chunk being filled
   * takes them straight into its read's buffer; the rest is parsed from the queue, and what
   * is left of it there (a reply not yet whole) is copied out before the next read.
   */
  private onBytes(bytes: Buffer): void {
    let i = 0;
    while (i < bytes.length) {
      const f = this.fill;
      if (f) {
        const n = Math.min(f.left, bytes.length - i);
        bytes.copy(f.p.target!, f.at, i, i + n);
        f.at += n;
        f.left -= n;
        i += n;
        if (f.left === 0) {
          this.fill = undefined;
          if (f.done) this.settle(f.handle, f.p);
        }
        continue;
      }
      this.queue.push(bytes.subarray(i));
      i = bytes.length;
      this.pump();
      // a fill begun by pump took every byte queued: what follows in `bytes` is its
      if (this.fill && this.queue.length > 0) {
        this.socket.destroy(new OsrError('PROTOCOL_ERROR', 'NBD client parser out of step'));
        return;
      }
    }
    this.queue.copyBorrowed(this.readBuffer.buffer);
  }

  /** Everything received and not parsed yet, as one buffer (the handshake's small messages). */
  private received(): Buffer {
    return this.queue.length === 0 ? Buffer.alloc(0) : this.queue.peek(this.queue.length)!;
  }

  private pump(): void {
    if (this.handshake) {
      if (this.handshake(this.received())) {
        this.handshake = undefined;
        this.handshakeFailed = undefined;
      }
      return;
    }
    while (this.queue.length >= 16) {
      const head = this.queue.peek(16)!;
      const magic = head.readUInt32BE(0);
      if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
        if (!this.structuredChunk()) return;
        continue;
      }
      if (magic !== NBD_SIMPLE_REPLY_MAGIC) {
        this.socket.destroy(new OsrError('PROTOCOL_ERROR', 'NBD server sent an unexpected reply'));
        return;
      }
      const handle = head.readBigUInt64BE(8);
      const p = this.pending.get(handle);
      const errno = head.readUInt32BE(4);
      const dataLen = errno === 0 && p ? p.readLength : 0;
      if (this.queue.length < 16 + dataLen) return;
      this.queue.skip(16);
      // the data is copied out of the socket's chunks only when it spans several or lies in the read buffer
      const data = dataLen > 0 ? this.queue.take(dataLen)! : Buffer.alloc(0);
      if (!p) continue;
      this.pending.delete(handle);
      if (errno !== 0) p.reject(new OsrError('DISK_IO_ERROR', `NBD request failed with errno ${errno}`, { errno }));
      else if (p.into && dataLen > 0) {
        data.copy(p.into);
        p.resolve(p.into);
      } else p.resolve(data.buffer === this.readBuffer.buffer ? Buffer.from(data) : data); // the read buffer is reused: the caller gets bytes of its own
    }
  }

  /**
   * One chunk of a structured reply, if all of it has arrived (false: wait for more).
   * Data chunks fill the read's buffer at their offset, holes leave it zero, block status
   * chunks add extents, error chunks fail the request; the chunk flagged done ends it.
   * A data chunk is copied once, from the socket's chunks into the read's buffer.
   */
  private structuredChunk(): boolean {
    const q = this.queue;
    const h = q.peek(20);
    if (!h) return false;
    const flags = h.readUInt16BE(4);
    const type = h.readUInt16BE(6);
    const handle = h.readBigUInt64BE(8);
    const len = h.readUInt32BE(16);
    if (q.length < 20 + len) return this.beginFill(flags, type, handle, len);
    q.skip(20);
    const p = this.pending.get(handle);
    if (!p) {
      q.skip(len);
      return true;
    }
    const fail = (e: Error) => {
      p.error ??= e;
    };
    // a chunk too short for its own fields fails its request, it does not throw out of the socket's data handler
    const need = type === ReplyType.OffsetData ? 8 : type === ReplyType.OffsetHole ? 12 : type === ReplyType.BlockStatus ? 4 : type & 0x8000 ? 6 : 0;
    if (len < need) {
      q.skip(len);
      fail(new OsrError('PROTOCOL_ERROR', `NBD reply chunk of type ${type} is ${len} bytes, shorter than its fields`));
      if (flags & ReplyFlag.Done) {
        this.pending.delete(handle);
        p.reject(p.error!);
      }
      return true;
    }
    if (type === ReplyType.OffsetData) {
      const at = Number(q.take(8)!.readBigUInt64BE(0)) - p.offset;
      const dataLen = len - 8;
      if (!p.structuredRead || at < 0 || at + dataLen > p.readLength) {
        q.skip(dataLen);
        fail(new OsrError('PROTOCOL_ERROR', 'NBD data chunk outside the read'));
      } else {
        // a chunk that covers the whole read fills every byte: no need to zero the buffer first
        p.target ??= this.targetOf(p, at === 0 && dataLen === p.readLength);
        let done = at;
        for (const part of q.takeParts(dataLen)!) done += part.copy(p.target, done);
      }
    } else {
      const body = len > 0 ? q.take(len)! : Buffer.alloc(0);
      switch (type) {
        case ReplyType.None:
          break;
        case ReplyType.OffsetHole: {
          const at = Number(body.readBigUInt64BE(0)) - p.offset;
          const holeLen = body.readUInt32BE(8);
          if (!p.structuredRead || at < 0 || at + holeLen > p.readLength) fail(new OsrError('PROTOCOL_ERROR', 'NBD hole chunk outside the read'));
          else {
            p.target ??= this.targetOf(p, false);
            p.target.fill(0, at, at + holeLen);
          }
          break;
        }
        case ReplyType.BlockStatus: {
          const id = body.readUInt32BE(0);
          if (id !== p.contextId || !p.extents) break;
          let at = p.offset + p.extents.reduce((n, e) => n + e.length, 0);
          for (let i = 4; i + 8 <= body.length; i += 8) {
            const length = body.readUInt32BE(i);
            p.extents.push({ offset: at, length, flags: body.readUInt32BE(i + 4) });
            at += length;
          }
          break;
        }
        default:
          if (type & 0x8000) {
            const errno = body.readUInt32BE(0);
            const msgLen = body.readUInt16BE(4);
            const message = body.subarray(6, 6 + msgLen).toString('utf8');
            fail(new OsrError('DISK_IO_ERROR', `NBD request failed with errno ${errno}${message ? `: ${message}` : ''}`, { errno }));
          } else fail(new OsrError('PROTOCOL_ERROR', `NBD reply chunk of unknown type ${type}`));
      }
    }
    if (flags & ReplyFlag.Done) this.settle(handle, p);
    return true;
  }

  /** The chunk flagged done of a structured reply has been handled: the request ends. */
  private settle(handle: bigint, p: Pending): void {
    this.pending.delete(handle);
    if (p.error) p.reject(p.error);
    else p.resolve(p.target ?? (p.structuredRead ? this.targetOf(p, false) : Buffer.alloc(0)));
  }

  /**
   * A read's data chunk not yet whole: once its head and offset are here and it lies
   * within its read, the bytes here go into the read's buffer and the rest will follow
   * straight from the socket (`fill`). Anything else waits until the chunk is whole.
   */
  private beginFill(flags: number, type: number, handle: bigint, len: number): boolean {
    const q = this.queue;
    if (type !== ReplyType.OffsetData || len < 8 || q.length < 28) return false;
    const p = this.pending.get(handle);
    if (!p?.structuredRead) return false;
    const at = Number(q.peek(28)!.readBigUInt64BE(20)) - p.offset;
    const dataLen = len - 8;
    if (at < 0 || at + dataLen > p.readLength) return false;
    q.skip(28);
    p.target ??= this.targetOf(p, at === 0 && dataLen === p.readLength);
    let done = at;
    const here = q.length;
    for (const part of q.takeParts(here)!) done += part.copy(p.target, done);
    this.fill = { p, handle, at: done, left: dataLen - here, done: (flags & ReplyFlag.Done) !== 0 };
    return false;
  }

  /** The buffer a structured read's data goes to: the caller's or a new one; zeroed unless one chunk fills all of it. */
  private targetOf(p: Pending, filledWhole: boolean): Buffer {
    if (p.into) return filledWhole ? p.into : p.into.fill(0);
    return filledWhole ? Buffer.allocUnsafe(p.readLength) : Buffer.alloc(p.readLength);
  }

  /** Wait until `want(buffer)` returns how many bytes it consumed (or -1 to keep waiting). */
  private expect<T>(parse: (b: Buffer) => { used: number; value: T } | undefined): Promise<T> {
    return new Promise((resolve, reject) => {
      const tryParse = (b: Buffer): boolean => {
        try {
          const r = parse(b);
          if (!r) return false;
          this.queue.skip(r.used);
          resolve(r.value);
          return true;
        } catch (e) {
          reject(e);
          return true;
        }
      };
      // what arrived before the connection ended is read first (a server's last error reply)
      if (tryParse(this.received())) return;
      if (this.error) return reject(this.error);
      this.handshake = tryParse;
      this.handshakeFailed = reject;
    });
  }

  /** Send one option of the handshake. */
  private option(opt: number, data: Buffer): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([h, data]));
  }

  private optionReply(): Promise<{ type: number; data: Buffer }> {
    return this.expect((b) => {
      if (b.length < 20) return undefined;
      const len = b.readUInt32BE(16);
      if (b.length < 20 + len) return undefined;
      if (b.readBigUInt64BE(0) !== NBD_REP_MAGIC) throw new OsrError('PROTOCOL_ERROR', 'bad NBD option reply');
      return { used: 20 + len, value: { type: b.readUInt32BE(12), data: Buffer.from(b.subarray(20, 20 + len)) } };
    });
  }

  /** Structured replies, then the metadata contexts wanted on this export (the server answers the ones it has). */
  private async negotiateExtensions(exportName: string, o: NbdConnectOptions): Promise<void> {
    const contexts = o.metaContexts ?? [];
    if (contexts.length === 0 && !o.structuredReplies) return;
    this.option(NbdOpt.StructuredReply, Buffer.alloc(0));
    const sr = await this.optionReply();
    if (sr.type !== NbdRep.Ack) throw new OsrError('NOT_SUPPORTED', `the NBD server does not do structured replies (reply ${sr.type.toString(16)})`);
    this.structured = true;
    if (contexts.length === 0) return;
    const name = Buffer.from(exportName, 'utf8');
    const queries = contexts.map((c) => {
      const q = Buffer.from(c, 'utf8');
      if (q.length > NBD_MAX_STRING) throw new OsrError('INVALID_ARGUMENT', `metadata context name too long: ${c.slice(0, 40)}…`);
      const out = Buffer.alloc(4 + q.length);
      out.writeUInt32BE(q.length, 0);
      q.copy(out, 4);
      return out;
    });
    const head = Buffer.alloc(4 + name.length + 4);
    head.writeUInt32BE(name.length, 0);
    name.copy(head, 4);
    head.writeUInt32BE(queries.length, 4 + name.length);
    this.option(NbdOpt.SetMetaContext, Buffer.concat([head, ...queries]));
    for (;;) {
      const rep = await this.optionReply();
      if (rep.type === NbdRep.Ack) break;
      if (rep.type === NbdRep.MetaContext) this.contexts.set(rep.data.subarray(4).toString('utf8'), rep.data.readUInt32BE(0));
      else if (rep.type >= 0x80000000) throw new OsrError('NOT_SUPPORTED', `the NBD server refused the metadata contexts ${contexts.join(', ')} on "${exportName}" (reply ${rep.type.toString(16)})`);
    }
  }

  private async negotiate(exportName: string, o: NbdConnectOptions = {}): Promise<void> {
    const flags = await this.expect((b) => {
      if (b.length < 18) return undefined;
      if (b.readBigUInt64BE(0) !== NBD_INIT_MAGIC || b.readBigUInt64BE(8) !== NBD_OPTS_MAGIC) throw new OsrError('PROTOCOL_ERROR', 'not a newstyle NBD server');
      return { used: 18, value: b.readUInt16BE(16) };
    });
    const cf = Buffer.alloc(4);
    cf.writeUInt32BE(ClientFlag.FixedNewstyle | (flags & ClientFlag.NoZeroes), 0);
    this.socket.write(cf);
    await this.negotiateExtensions(exportName, o);
    const name = Buffer.from(exportName, 'utf8');
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(0, 4 + name.length);
    this.option(NbdOpt.Go, data);
    for (;;) {
      const rep = await this.optionReply();
      if (rep.type === NbdRep.Ack) return;
      if (rep.type === NbdRep.Info && rep.data.readUInt16BE(0) === NbdInfo.Export) this.size = Number(rep.data.readBigUInt64BE(2));
      else if (rep.type >= 0x80000000) throw new OsrError('NOT_FOUND', `NBD server refused export "${exportName}" (reply ${rep.type.toString(16)})`);
    }
  }

  private request(cmd: number, flags: number, offset: number, length: number, payload?: Buffer, extra: Partial<Pending> = {}): Promise<Buffer> {
    if (this.error) return Promise.reject(this.error);
    const handle = this.nextHandle++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(cmd, 6);
    h.writeBigUInt64BE(handle, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    const p = new Promise<Buffer>((resolve, reject) => this.pending.set(handle, { resolve, reject, readLength: cmd === NbdCmd.Read ? length : 0, offset, structuredRead: this.structured && cmd === NbdCmd.Read, ...extra }));
    this.socket.cork();
    this.socket.write(h);
    if (payload) this.socket.write(payload);
    this.socket.uncork();
    return p;
  }

  /** Read `length` bytes; with `into` (at least `length` bytes), into its first `length` bytes, which the promise answers. */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (into && into.length < length) return Promise.reject(new OsrError('INVALID_ARGUMENT', `a read of ${length} bytes into a buffer of ${into.length}`));
    return this.request(NbdCmd.Read, 0, offset, length, undefined, into ? { into: into.subarray(0, length) } : {});
  }
  /**
   * The extents of [offset, offset + length) in a metadata context chosen at connect
   * (`base:allocation`: flags hole 1, zero 2; a dirty bitmap: 1 dirty). The server may
   * answer less than asked: callers go on from the end of the last extent.
   */
  async blockStatus(context: string, offset: number, length: number): Promise<Extent[]> {
    const contextId = this.contexts.get(context);
    if (contextId === undefined) throw new OsrError('INVALID_STATE', `metadata context ${context} was not agreed on this NBD connection`);
    const extents: Extent[] = [];
    await this.request(NbdCmd.BlockStatus, 0, offset, length, undefined, { extents, contextId });
    return extents;
  }

  async write(offset: number, data: Buffer, fua = false): Promise<void> {
    await this.request(NbdCmd.Write, fua ? CmdFlag.Fua : 0, offset, data.length, data);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.request(NbdCmd.WriteZeroes, 0, offset, length);
  }
  async trim(offset: number, length: number): Promise<void> {
    await this.request(NbdCmd.Trim, 0, offset, length);
  }
  async flush(): Promise<void> {
    await this.request(NbdCmd.Flush, 0, 0, 0);
  }

  async close(): Promise<void> {
    if (!this.error) {
      const h = Buffer.alloc(28);
      h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
      h.writeUInt16BE(NbdCmd.Disc, 6);
      this.socket.end(h);
    }
    await new Promise<void>((resolve) => (this.socket.closed ? resolve() : this.socket.once('close', () => resolve())));
  }
}
