/**
 * A replication peer that says whatever a test tells it to: real mutual TLS with a
 * certificate from the test CA, then raw frames. Used to play a hostile or broken agent
 * against a live replica.
 */
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { FrameReader, FrameWriter, PROTOCOL_NAME, type ControlMessage, type DataFrame } from '../../src/agent/wire/wire.js';
import { clientTlsOptions } from '../../src/pki/index.js';

export interface Reply {
  ok: boolean;
  result?: unknown;
  error?: { code: string; message: string };
}

export class RawPeer {
  private readonly writer: FrameWriter;
  private readonly waiting: ((m: ControlMessage) => void)[] = [];
  private readonly backlog: ControlMessage[] = [];
  /** why the replica ended the connection, if it did (its `error` notice) */
  closedWith: { code: string; message: string } | undefined;
  closed: Promise<void>;
  private nextId = 1;

  private constructor(readonly socket: tls.TLSSocket) {
    this.writer = new FrameWriter(socket);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    new FrameReader(
      socket,
      (m) => {
        if (m.type === 'error') this.closedWith = { code: String(m.code), message: String(m.message) };
        const w = this.waiting.shift();
        if (w) w(m);
        else this.backlog.push(m);
      },
      (_f: DataFrame) => undefined,
      () => socket.destroy(),
    );
    socket.on('error', () => undefined);
  }

  /** Connect to 127.0.0.1:port as `name` (its certificate and key are NAME.crt/.key in pkiDir). */
  static async connect(port: number, pkiDir: string, name: string, servername = 'localhost'): Promise<RawPeer> {
    const material = { cert: fs.readFileSync(path.join(pkiDir, `${name}.crt`), 'utf8'), key: fs.readFileSync(path.join(pkiDir, `${name}.key`), 'utf8'), ca: fs.readFileSync(path.join(pkiDir, 'ca.crt'), 'utf8') };
    const socket = tls.connect({ host: '127.0.0.1', port, ...clientTlsOptions(material, { servername }) });
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', () => resolve());
      socket.once('error', reject);
    });
    return new RawPeer(socket);
  }

  /** The next control message, or undefined when the connection closed first. */
  next(timeoutMs = 10_000): Promise<ControlMessage | undefined> {
    const queued = this.backlog.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(undefined), timeoutMs);
      const done = (m: ControlMessage | undefined) => {
        clearTimeout(t);
        resolve(m);
      };
      this.waiting.push(done);
      void this.closed.then(() => done(undefined));
    });
  }

  async hello(): Promise<ControlMessage | undefined> {
    await this.send({ type: 'hello', protocol: PROTOCOL_NAME, versions: [1] });
    return this.next();
  }

  send(m: ControlMessage): Promise<void> {
    return this.writer.sendControl(m);
  }

  sendData(offset: number, data: Buffer): Promise<number> {
    return this.writer.sendData(offset, data, false);
  }

  /** A request and its reply (undefined when the replica closed the connection instead). */
  async request(op: string, args: Record<string, unknown>): Promise<Reply | undefined> {
    const id = this.nextId++;
    await this.send({ type: 'request', id, op, args });
    for (;;) {
      const m = await this.next();
      if (!m) return undefined;
      if (m.type === 'reply' && m.id === id) return m as unknown as Reply;
      if (m.type === 'error') return { ok: false, error: { code: String(m.code), message: String(m.message) } };
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
