/**
 * A small NBD client (fixed newstyle, NBD_OPT_GO, simple replies): enough to be a lab
 * guest's workload, a test's writer and a benchmark's load generator. Requests may be in
 * flight together; replies are matched by handle.
 */
import net from 'node:net';
import { OsrError } from '../../domain/errors.js';
import { ClientFlag, CmdFlag, NBD_INIT_MAGIC, NBD_OPTS_MAGIC, NBD_REP_MAGIC, NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC, NbdCmd, NbdInfo, NbdOpt, NbdRep } from './protocol.js';

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
}

export class NbdClient {
  size = 0;
  private buf: Buffer = Buffer.alloc(0);
  private nextHandle = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private handshake: ((b: Buffer) => boolean) | undefined;
  private error: Error | undefined;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
      this.pump();
    });
    const fail = (e: Error) => {
      this.error ??= e;
      for (const p of this.pending.values()) p.reject(this.error);
      this.pending.clear();
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new OsrError('NETWORK_ERROR', 'NBD connection closed')));
  }

  static async connect(target: NbdTarget | string): Promise<NbdClient> {
    const t = typeof target === 'string' ? parseNbdUri(target) : target;
    const socket = 'socketPath' in t ? net.connect(t.socketPath) : net.connect(t.port, t.host);
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const c = new NbdClient(socket);
    await c.negotiate(t.exportName);
    return c;
  }

  private pump(): void {
    if (this.handshake) {
      if (this.handshake(this.buf)) this.handshake = undefined;
      return;
    }
    while (this.buf.length >= 16) {
      if (this.buf.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) {
        this.socket.destroy(new OsrError('PROTOCOL_ERROR', 'NBD server sent an unexpected reply'));
        return;
      }
      const handle = this.buf.readBigUInt64BE(8);
      const p = this.pending.get(handle);
      const errno = this.buf.readUInt32BE(4);
      const dataLen = errno === 0 && p ? p.readLength : 0;
      if (this.buf.length < 16 + dataLen) return;
      const data = Buffer.from(this.buf.subarray(16, 16 + dataLen));
      this.buf = this.buf.subarray(16 + dataLen);
      if (!p) continue;
      this.pending.delete(handle);
      if (errno !== 0) p.reject(new OsrError('DISK_IO_ERROR', `NBD request failed with errno ${errno}`, { errno }));
      else p.resolve(data);
    }
  }

  /** Wait until `want(buffer)` returns how many bytes it consumed (or -1 to keep waiting). */
  private expect<T>(parse: (b: Buffer) => { used: number; value: T } | undefined): Promise<T> {
    return new Promise((resolve, reject) => {
      const tryParse = (b: Buffer): boolean => {
        try {
          const r = parse(b);
          if (!r) return false;
          this.buf = b.subarray(r.used);
          resolve(r.value);
          return true;
        } catch (e) {
          reject(e);
          return true;
        }
      };
      if (!tryParse(this.buf)) this.handshake = tryParse;
    });
  }

  private async negotiate(exportName: string): Promise<void> {
    const flags = await this.expect((b) => {
      if (b.length < 18) return undefined;
      if (b.readBigUInt64BE(0) !== NBD_INIT_MAGIC || b.readBigUInt64BE(8) !== NBD_OPTS_MAGIC) throw new OsrError('PROTOCOL_ERROR', 'not a newstyle NBD server');
      return { used: 18, value: b.readUInt16BE(16) };
    });
    const cf = Buffer.alloc(4);
    cf.writeUInt32BE(ClientFlag.FixedNewstyle | (flags & ClientFlag.NoZeroes), 0);
    const name = Buffer.from(exportName, 'utf8');
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(0, 4 + name.length);
    const opt = Buffer.alloc(16);
    opt.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
    opt.writeUInt32BE(NbdOpt.Go, 8);
    opt.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([cf, opt, data]));
    for (;;) {
      const rep = await this.expect((b) => {
        if (b.length < 20) return undefined;
        const len = b.readUInt32BE(16);
        if (b.length < 20 + len) return undefined;
        if (b.readBigUInt64BE(0) !== NBD_REP_MAGIC) throw new OsrError('PROTOCOL_ERROR', 'bad NBD option reply');
        return { used: 20 + len, value: { type: b.readUInt32BE(12), data: Buffer.from(b.subarray(20, 20 + len)) } };
      });
      if (rep.type === NbdRep.Ack) return;
      if (rep.type === NbdRep.Info && rep.data.readUInt16BE(0) === NbdInfo.Export) this.size = Number(rep.data.readBigUInt64BE(2));
      else if (rep.type >= 0x80000000) throw new OsrError('NOT_FOUND', `NBD server refused export "${exportName}" (reply ${rep.type.toString(16)})`);
    }
  }

  private request(cmd: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<Buffer> {
    if (this.error) return Promise.reject(this.error);
    const handle = this.nextHandle++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(cmd, 6);
    h.writeBigUInt64BE(handle, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    const p = new Promise<Buffer>((resolve, reject) => this.pending.set(handle, { resolve, reject, readLength: cmd === NbdCmd.Read ? length : 0 }));
    this.socket.cork();
    this.socket.write(h);
    if (payload) this.socket.write(payload);
    this.socket.uncork();
    return p;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request(NbdCmd.Read, 0, offset, length);
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
