/**
 * The primary end's connection to a replica agent: mutual TLS 1.3, the versioned hello,
 * then requests (matched to replies by id), notices and DATA frames in one ordered stream.
 * The same protocol runs over an in-process stream to a replica target the sending agent
 * reaches itself (Azure storage): `ReplicaClient.over`.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { OsrError, toOsrError, type ErrorCode } from '../../domain/errors.js';
import { classifyTlsError, clientTlsOptions, peerIdentity, type TlsMaterial } from '../../pki/index.js';
import type { AgentPeer, ReplicaChannel } from '../wire/replication-types.js';
import { openSealed, SEALED_FEATURE } from '../wire/sealed.js';
import { DATA_FRAME_HEAD_BYTES, FrameReader, FrameWriter, KEEPALIVE_FEATURE, Liveness, PROTOCOL_NAME, PROTOCOL_VERSIONS, type ControlMessage } from '../wire/wire.js';

/** When a sealed channel to host:port last failed to open: until SEALED_RETRY_MS later, connections there do not offer one. */
const sealedFailedAt = new Map<string, number>();
const SEALED_RETRY_MS = 10 * 60_000;

type PeerStream = Duplex & { bytesRead?: number; setKeepAlive?(enable: boolean, delayMs: number): unknown };

export class ReplicaClient {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: OsrError) => void }>();
  private failure: OsrError | undefined;
  private writer: FrameWriter;
  private reader: FrameReader | undefined;
  private welcome: ((m: ControlMessage) => void) | undefined;
  wireBytesSent = 0;
  /** DATA frames received ahead of the binary replies they belong to */
  private readonly replyData: Buffer[] = [];
  /** waits before each DATA frame (bandwidth limits) */
  pace: ((bytes: number) => Promise<void>) | undefined;

  /** what the frames go over */
  channel: ReplicaChannel = 'in-process';

  /** who answers, as errors name it */
  private speaker = 'replica agent';

  private constructor(
    private socket: PeerStream,
    readonly useZstd: boolean,
    private readonly peer: string,
  ) {
    this.writer = this.speakOver(socket, { keepsBuffers: !(socket instanceof tls.TLSSocket) });
    if (socket instanceof tls.TLSSocket) {
      socket.on('error', (e) => this.fail(classifyTlsError(e, 'client', { socket, peer })));
      socket.on('close', () => {
        // a replica that refuses our certificate closes right after the handshake, silently
        const refused = socket.authorized && socket.bytesRead === 0;
        this.fail(refused ? classifyTlsError(undefined, 'client', { socket, peer }) : new OsrError('NETWORK_ERROR', `connection to the replica agent at ${peer} closed`));
      });
    } else {
      socket.on('error', (e) => this.fail(toOsrError(e, 'NETWORK_ERROR')));
      socket.on('close', () => this.fail(new OsrError('NETWORK_ERROR', `connection to the replica at ${peer} closed`)));
    }
  }

  /** Read frames from `stream`, and return a writer of frames to it. */
  private speakOver(stream: PeerStream, o: { keepsBuffers?: boolean; separateBodies?: boolean }): FrameWriter {
    this.reader = new FrameReader(
      stream,
      (m) => this.onControl(m),
      (f) => {
        // the bytes of a binary reply, which follows
        this.replyData.push(f.parts.length === 1 ? f.parts[0]! : Buffer.concat(f.parts, f.length));
      },
      (e) => this.fail(e),
    );
    return new FrameWriter(stream, o);
  }

  /** Move every frame to the sealed channel the replica agreed to (sealed.ts). */
  private async moveToSealed(first: tls.TLSSocket, host: string, port: number, timeoutMs: number): Promise<void> {
    // nothing more is read from TLS: a frame there after the welcome ends the connection
    if ((this.reader?.detach() ?? 0) > 0) throw new OsrError('PROTOCOL_ERROR', `the replica agent at ${this.peer} sent a frame over TLS after agreeing on the sealed channel`);
    first.on('data', () => this.fail(new OsrError('PROTOCOL_ERROR', `the replica agent at ${this.peer} sent a frame over TLS after agreeing on the sealed channel`)));
    const sealed = await openSealed(first, (onread) => net.connect({ host, port, onread }), timeoutMs);
    first.setKeepAlive(true, 10_000);
    sealed.on('error', (e) => this.fail(toOsrError(e, 'NETWORK_ERROR')));
    sealed.on('close', () => this.fail(new OsrError('NETWORK_ERROR', `sealed channel to the replica agent at ${this.peer} closed`)));
    this.socket = sealed;
    this.writer = this.speakOver(sealed, { separateBodies: true });
    this.channel = 'sealed';
  }

  /**
   * Speak the protocol over a stream whose other end is a session in this process (a
   * replica target the agent reaches itself): no TLS, the same hello and requests.
   */
  static async over(stream: Duplex, label: string, agentName: string, useZstd: boolean, timeoutMs = 15000): Promise<ReplicaClient> {
    const client = new ReplicaClient(stream, useZstd, label);
    client.speaker = `replica ${label}`;
    const timer = setTimeout(() => client.fail(new OsrError('NETWORK_ERROR', `no answer from the replica at ${label} within ${timeoutMs} ms`)), timeoutMs);
    try {
      client.watch(await client.hello(agentName, []));
      return client;
    } catch (e) {
      stream.destroy();
      throw toOsrError(e, 'NETWORK_ERROR');
    } finally {
      clearTimeout(timer);
    }
  }

  /** Connect, verify the replica's certificate against the CA, and agree on a protocol version. */
  static async connect(peer: AgentPeer, material: TlsMaterial, agentName: string, useZstd: boolean, timeoutMs = 15000): Promise<ReplicaClient> {
    // the replica's certificate must name the address used (or the name given for it)
    const socket = tls.connect({ ...clientTlsOptions(material, { servername: peer.servername ?? peer.host }), host: peer.host, port: peer.port });
    socket.setNoDelay(true);
    const client = new ReplicaClient(socket, useZstd, `${peer.host}:${peer.port}`);
    client.channel = 'tls';
    const timer = setTimeout(() => client.fail(new OsrError('NETWORK_ERROR', `no answer from the replica agent at ${peer.host}:${peer.port} within ${timeoutMs} ms`)), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('secureConnect', () => resolve());
        socket.once('error', (e) => reject(classifyTlsError(e, 'client', { socket, peer: `${peer.host}:${peer.port}` })));
        socket.once('close', () => reject(client.failure ?? new OsrError('NETWORK_ERROR', `connection to ${peer.host}:${peer.port} closed during the handshake`)));
      });
      // agents talk only to agents, and to the one they meant
      const them = peerIdentity(socket);
      if (them.role !== 'agent') throw new OsrError('AUTH_FAILED', `the server at ${peer.host}:${peer.port} has a ${them.role ?? 'role-less'} certificate (${them.commonName}), not an agent's; refusing to replicate to it`, { peer: them.commonName, role: them.role ?? null });
      if (peer.name !== undefined && them.commonName !== peer.name) {
        throw new OsrError('AUTH_FAILED', `the agent at ${peer.host}:${peer.port} is ${them.commonName}, not the replica host ${peer.name}; refusing to replicate to it`, { expected: peer.name, peer: them.commonName });
      }
      if (peer.fabricId !== undefined && them.fabricId !== peer.fabricId) {
        throw new OsrError('AUTH_FAILED', `the agent at ${peer.host}:${peer.port} (${them.commonName}) belongs to fabric ${them.fabricId ?? '(none)'}, not to fabric ${peer.fabricId} that the vault's grant names; refusing to replicate to it`, { expected: peer.fabricId, peer: them.commonName, fabric: them.fabricId ?? null });
      }
      const where = `${peer.host}:${peer.port}`;
      const offerSealed = (sealedFailedAt.get(where) ?? -Infinity) < Date.now() - SEALED_RETRY_MS;
      const features = await client.hello(agentName, offerSealed ? [SEALED_FEATURE] : []);
      if (features.includes(SEALED_FEATURE)) {
        try {
          await client.moveToSealed(socket, peer.host, peer.port, timeoutMs);
          sealedFailedAt.delete(where);
        } catch (e) {
          // something between the agents passes TLS but not a second connection: TLS alone, for a while
          sealedFailedAt.set(where, Date.now());
          const err = toOsrError(e, 'NETWORK_ERROR');
          throw new OsrError(err.code, `the sealed channel to ${where} did not open (${err.message}); the next connections keep the frames on TLS for ${SEALED_RETRY_MS / 60_000} minutes`, err.details, { cause: e });
        }
      }
      client.watch(features);
      return client;
    } catch (e) {
      socket.destroy();
      throw toOsrError(e, 'NETWORK_ERROR');
    } finally {
      clearTimeout(timer);
    }
  }

  /** The versioned hello and the replica's welcome: resolves with the features it accepted. */
  private async hello(agentName: string, offered: string[]): Promise<string[]> {
    const welcome = new Promise<ControlMessage>((resolve, reject) => {
      this.welcome = resolve;
      this.waiting.set(0, { resolve: () => undefined, reject });
    });
    // a hello that cannot be sent leaves the welcome unawaited: its rejection must not go unhandled
    welcome.catch(() => undefined);
    await this.writer.sendControl({ type: 'hello', protocol: PROTOCOL_NAME, versions: [...PROTOCOL_VERSIONS], agent: agentName, features: [...(this.useZstd ? ['zstd'] : []), KEEPALIVE_FEATURE, ...offered] });
    const w = await welcome;
    this.waiting.delete(0);
    if (!(PROTOCOL_VERSIONS as readonly number[]).includes(Number(w.version))) {
      throw new OsrError('PROTOCOL_VERSION_UNSUPPORTED', `replica chose protocol version ${String(w.version)}`);
    }
    const features = Array.isArray(w.features) ? w.features.filter((f): f is string => typeof f === 'string') : [];
    // only what was offered: a replica cannot move the frames somewhere this end did not propose
    if (features.includes(SEALED_FEATURE) && !offered.includes(SEALED_FEATURE)) throw new OsrError('PROTOCOL_ERROR', `the ${this.speaker} accepted a sealed channel that was not offered`);
    return features;
  }

  /** A frozen or unreachable replica is noticed within IDLE_TIMEOUT_MS, and replication reconnects. */
  private watch(features: string[]): void {
    const socket = this.socket;
    if (features.includes(KEEPALIVE_FEATURE)) new Liveness(socket, () => this.writer.sendControl({ type: 'ping' }), (e) => this.fail(e));
    else socket.setKeepAlive?.(true, 10_000);
  }

  private onControl(m: ControlMessage): void {
    if (m.type === 'ping') return;
    if (m.type === 'welcome' && this.welcome) {
      const w = this.welcome;
      this.welcome = undefined;
      w(m);
      return;
    }
    if (m.type === 'error') {
      this.fail(new OsrError((m.code as ErrorCode) ?? 'PROTOCOL_ERROR', `${this.speaker}: ${String(m.message)}`));
      return;
    }
    if (m.type === 'reply') {
      const w = this.waiting.get(Number(m.id));
      if (!w) return;
      this.waiting.delete(Number(m.id));
      const result = m.result as Record<string, unknown> | null;
      if (m.ok && typeof result?.binary === 'number') {
        const data = this.replyData.shift();
        if (data?.length !== result.binary) {
          this.fail(new OsrError('PROTOCOL_ERROR', `replica sent a reply of ${result.binary} bytes with ${data ? `a DATA frame of ${data.length}` : 'no DATA frame'}`));
          return;
        }
        w.resolve({ ...result, data });
      } else if (m.ok) w.resolve(m.result);
      else {
        const err = m.error as { code: ErrorCode; message: string; details?: Record<string, unknown> };
        w.reject(new OsrError(err.code, `${this.speaker}: ${err.message}`, err.details));
      }
    }
  }

  private fail(e: OsrError): void {
    if (!this.failure) this.failure = e;
    for (const w of this.waiting.values()) w.reject(this.failure);
    this.waiting.clear();
    if (!this.socket.destroyed) this.socket.destroy();
  }

  get closed(): boolean {
    return this.failure !== undefined;
  }

  /** Send a request; resolves with the reply. Requests are answered in order. */
  async request<T>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    const { reply } = await this.requestLater<T>(op, args);
    return reply;
  }

  /**
   * Send a request without waiting for its reply; resolves once sent, with the reply to
   * await later. The reply's rejection is marked handled: a caller that has not awaited it
   * yet when the connection fails must not take the process down with it.
   */
  async requestLater<T>(op: string, args: Record<string, unknown> = {}): Promise<{ reply: Promise<T> }> {
    if (this.failure) throw this.failure;
    const id = this.nextId++;
    const reply = new Promise<unknown>((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    reply.catch(() => undefined);
    try {
      await this.writer.sendControl({ type: 'request', id, op, args });
    } catch (e) {
      this.waiting.delete(id);
      throw e;
    }
    return { reply: reply as Promise<T> };
  }

  async notice(msg: ControlMessage): Promise<void> {
    if (this.failure) throw this.failure;
    await this.writer.sendControl(msg);
  }

  /** Send a DATA frame (see FrameWriter.sendData for `reused`), paced by the bandwidth limits. */
  async sendData(offset: number, data: Buffer, reused = true): Promise<number> {
    if (this.failure) throw this.failure;
    if (this.pace) {
      await this.pace(data.length);
      if (this.failure) throw this.failure;
    }
    const n = await this.writer.sendData(offset, data, this.useZstd, reused);
    this.wireBytesSent += n;
    return n;
  }

  /** Send a DATA frame built in place (FrameWriter.sendDataInPlace), paced as sendData. */
  async sendDataInPlace(offset: number, frame: Buffer, reused = true): Promise<number> {
    if (this.failure) throw this.failure;
    if (this.pace) {
      await this.pace(frame.length - DATA_FRAME_HEAD_BYTES);
      if (this.failure) throw this.failure;
    }
    const n = await this.writer.sendDataInPlace(offset, frame, this.useZstd, reused);
    this.wireBytesSent += n;
    return n;
  }

  /** bytes read from the replica so far (TLS records included) */
  get wireBytesReceived(): number {
    return this.socket.bytesRead ?? 0;
  }

  close(): void {
    this.fail(new OsrError('NETWORK_ERROR', 'connection closed by this agent'));
  }
}
