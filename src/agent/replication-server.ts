/**
 * The replica end of replication: accepts mutual-TLS connections from primary agents,
 * writes initial copies and applies deltas into replica stores. One connection serves one
 * VM at a time; a newer connection for the same VM replaces an older one (the sender
 * reconnected after a broken link).
 */
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { OsrError, toOsrError } from '../domain/errors.js';
import { onTlsClientError, peerIdentity, serverTlsOptions, type TlsMaterial } from '../pki/index.js';
import { writeAllAt } from './io.js';
import { readJson, writeJsonDurable } from './durable-file.js';
import { importExport, readExport, type ExportManifest } from './offline-seed.js';
import type { DiskRanges } from './ranges.js';
import { ReplicaStore, type DeltaDiskFile, type DivergentRanges, type RecoveryPoint } from './replica-store.js';
import type { ReplicaTarget } from './ports.js';
import type { OpenRequest, OpenResult } from './replication-types.js';
import { BinaryReply, FrameReader, FrameWriter, PROTOCOL_NAME, PROTOCOL_VERSIONS, type ControlMessage, type DataFrame } from './wire.js';

export interface Logger {
  info(obj: object | string, msg?: string): void;
  warn(obj: object | string, msg?: string): void;
  error(obj: object | string, msg?: string): void;
}

function sameDisks(a: readonly { id: string; name: string; size: number }[], b: readonly { id: string; name: string; size: number }[]): boolean {
  return a.length === b.length && a.every((d, i) => d.id === b[i].id && d.name === b[i].name && d.size === b[i].size);
}

function describeDisks(disks: readonly { name: string; size: number }[]): string {
  return disks.map((d) => `${d.name}:${d.size}`).join(',');
}

/** Kept beside the stores once a replica was promoted here: older primaries are refused. */
export interface FenceRecord {
  epoch: number;
  at: string;
  /** what a promotion chose, kept before its commit so a promotion cut short can finish */
  promotion?: Promotion | undefined;
}

/**
 * A promotion as the fence record keeps it. Until it is committed (`pending`) the VM runs
 * from an overlay on the chosen point, and another point may still be chosen.
 */
export interface Promotion {
  point: RecoveryPoint;
  /** ranges that differ from the old primary's last state beyond its own logs: later points rolled back, and once committed, what the VM wrote before */
  rolledBack: DiskRanges;
  /** not committed yet: the VM runs from overlay `overlayId` */
  pending?: boolean | undefined;
  overlayId?: string | undefined;
  /** the commit has begun: `rolledBack` holds the overlay's writes, which no longer change */
  committing?: boolean | undefined;
  /** whether the uncommitted VM is served (started) */
  running?: boolean | undefined;
  promotedAt?: string | undefined;
}

/** Owns the replica stores of an agent: opened once, shared by connections and the API. */
export class ReplicaRegistry {
  private readonly stores = new Map<string, ReplicaStore>();
  private readonly owners = new Map<string, Session>();
  /** VMs of this host whose disks are a promoted replica's images: never opened as replicas */
  private readonly runHere = new Set<string>();
  constructor(
    readonly dir: string,
    private readonly now: () => number,
  ) {
    fs.mkdirSync(dir, { recursive: true });
  }

  async open(req: OpenRequest): Promise<ReplicaStore> {
    if (this.runHere.has(req.vmId)) throw new OsrError('INVALID_STATE', `${req.vmName} runs on this host (it was promoted here); demote it before replicating to this agent`);
    const fence = this.fenceOf(req.vmId);
    if (fence !== undefined && req.epoch < fence) {
      throw new OsrError('EPOCH_STALE', `${req.vmName} was promoted at this site with epoch ${fence}; a primary with epoch ${req.epoch} may no longer replicate`, { epoch: req.epoch, current: fence });
    }
    let s = this.stores.get(req.vmId);
    if (s && !sameDisks(s.disks, req.disks)) {
      throw new OsrError('INVALID_STATE', `the replica of ${req.vmName} here has disks ${describeDisks(s.disks)}, the primary has ${describeDisks(req.disks)}; remove the replica or protect the VM anew`);
    }
    if (!s) {
      s = await ReplicaStore.open(path.join(this.dir, req.vmId), { vmId: req.vmId, vmName: req.vmName, disks: req.disks, retention: req.retention }, this.now);
      this.stores.set(req.vmId, s);
    } else {
      s.setRetention(req.retention);
    }
    return s;
  }

  /** The epoch a replica was promoted with here (older primaries are refused), if any. */
  fenceOf(vmId: string): number | undefined {
    return this.fenceRecord(vmId)?.epoch;
  }

  fenceRecord(vmId: string): FenceRecord | undefined {
    return readJson<FenceRecord>(path.join(this.dir, `${vmId}.fence.json`));
  }

  /** Refuse primaries older than `epoch` for this VM from now on (durable), and drop any connected one. */
  fence(vmId: string, epoch: number, promotion?: FenceRecord['promotion']): void {
    const record: FenceRecord = { epoch, at: new Date(this.now()).toISOString(), promotion };
    writeJsonDurable(path.join(this.dir, `${vmId}.fence.json`), record);
    const owner = this.owners.get(vmId);
    if (owner) owner.destroy(new OsrError('EPOCH_STALE', `${vmId} was promoted at this site with epoch ${epoch}`));
    this.owners.delete(vmId);
  }

  /** Rewrite the promotion kept with a VM's fence (durable before it returns); the epoch stays. */
  setPromotion(vmId: string, promotion: Promotion): void {
    const record = this.fenceRecord(vmId);
    if (!record) throw new OsrError('INVALID_STATE', `${vmId} was not promoted here`);
    writeJsonDurable(path.join(this.dir, `${vmId}.fence.json`), { ...record, promotion });
  }

  /** Replicas promoted here whose promotion is not committed yet: they run from an overlay. */
  provisional(): { store: ReplicaStore; epoch: number; promotion: Promotion }[] {
    const out = [];
    for (const store of this.stores.values()) {
      const r = this.fenceRecord(store.vmId);
      if (r?.promotion?.pending) out.push({ store, epoch: r.epoch, promotion: r.promotion });
    }
    return out;
  }

  /**
   * Import an offline export as a VM's initial copy (offline-seed.ts). A replica of that VM
   * that holds nothing yet (made when its primary first connected) is used; one with data
   * is refused. A failed import leaves the replica empty again.
   */
  async importOffline(dir: string, expect: { vm?: string | undefined }): Promise<{ store: ReplicaStore; manifest: ExportManifest }> {
    const manifest = readExport(dir, expect);
    const fence = this.fenceOf(manifest.vmId);
    if (fence !== undefined && manifest.epoch < fence) throw new OsrError('EPOCH_STALE', `${manifest.vmName} was promoted here with epoch ${fence}; the export is of epoch ${manifest.epoch}`);
    const disks = manifest.disks.map((d) => ({ id: d.id, name: d.name, size: d.size }));
    // the replica its primary made on first contact, or a new one (one with other disks is refused)
    const s = await this.open({ vmId: manifest.vmId, vmName: manifest.vmName, disks, retention: { hours: 24, maxPoints: 24 }, epoch: manifest.epoch });
    if (s.points().length > 0 || s.finishedInitialDisks().length > 0 || Object.values(s.initialProgress()).some((n) => n > 0)) {
      throw new OsrError('ALREADY_EXISTS', `this agent already holds a replica of ${manifest.vmName} with data; an import only seeds an empty one`);
    }
    s.setEpoch(manifest.epoch);
    try {
      await importExport(dir, manifest, s);
      s.setSeed(manifest.seq);
    } catch (e) {
      s.resetInitial();
      throw e;
    }
    return { store: s, manifest };
  }

  /** Stop serving a store as a replica (promoted: its images now belong to a VM). */
  detach(vmId: string, promoted = false): void {
    if (promoted) this.runHere.add(vmId);
    const s = this.stores.get(vmId);
    s?.close();
    this.stores.delete(vmId);
  }

  /** A store made from existing images (reverse replication); replaces any store of that VM. */
  async adopt(spec: Parameters<typeof ReplicaStore.adopt>[1], images: Record<string, string>, divergent: DivergentRanges): Promise<ReplicaStore> {
    this.detach(spec.vmId);
    this.runHere.delete(spec.vmId);
    const s = await ReplicaStore.adopt(path.join(this.dir, spec.vmId), spec, images, divergent, this.now);
    this.stores.set(spec.vmId, s);
    return s;
  }

  /**
   * Finish or undo every adoption (demote) cut short, before the host loads its VMs: a
   * finished one took the VM's images, an undone one gave them back.
   */
  recoverAdoptions(): { vmId: string; outcome: 'finished' | 'undone' }[] {
    const out: { vmId: string; outcome: 'finished' | 'undone' }[] = [];
    for (const name of fs.readdirSync(this.dir)) {
      const m = /^(.+)\.adopting$/.exec(name);
      if (!m) continue;
      const outcome = ReplicaStore.recoverAdoption(path.join(this.dir, m[1]!));
      if (outcome) out.push({ vmId: m[1]!, outcome });
    }
    return out;
  }

  /** Whether a replica store of this VM id is on disk (an adopted VM's images live there). */
  holds(vmId: string): boolean {
    return fs.existsSync(path.join(this.dir, vmId, 'manifest.json'));
  }

  /**
   * Open every store found on disk (at agent start), so points and overlays are served.
   * Stores whose images a host VM uses now (promoted) are skipped.
   */
  async openAll(skip: ReadonlySet<string> = new Set()): Promise<void> {
    for (const id of skip) this.runHere.add(id);
    for (const vmId of fs.readdirSync(this.dir)) {
      if (vmId.endsWith('.adopting') || skip.has(vmId) || this.stores.has(vmId) || !fs.existsSync(path.join(this.dir, vmId, 'manifest.json'))) continue;
      const s = await ReplicaStore.open(path.join(this.dir, vmId), { vmId, disks: [] }, this.now);
      this.stores.set(vmId, s);
    }
  }

  /**
   * Delete a replica: its connection is dropped, its store closed and its directory
   * removed (the fence record stays, so an older primary is still refused). Refused while
   * an overlay of it is open.
   */
  remove(vm: string): { vmId: string; vmName: string } {
    const s = this.get(vm);
    const open = s.listOverlays();
    if (open.length > 0) throw new OsrError('OVERLAY_IN_USE', `the replica of ${s.vmName} has ${open.length} open overlay(s); commit or discard them before deleting it`, { overlays: open.map((o) => o.id) });
    const owner = this.owners.get(s.vmId);
    owner?.destroy(new OsrError('INVALID_STATE', `the replica of ${s.vmName} was deleted`));
    this.owners.delete(s.vmId);
    s.close();
    this.stores.delete(s.vmId);
    fs.rmSync(path.join(this.dir, s.vmId), { recursive: true, force: true });
    return { vmId: s.vmId, vmName: s.vmName };
  }

  /** A replica by VM id or VM name. */
  get(vm: string): ReplicaStore {
    const s = this.stores.get(vm) ?? [...this.stores.values()].find((x) => x.vmName === vm);
    if (!s) throw new OsrError('NOT_FOUND', `this agent holds no replica of ${vm}`, { replicas: [...this.stores.values()].map((x) => x.vmName) });
    return s;
  }

  list(): ReplicaStore[] {
    return [...this.stores.values()];
  }

  claim(vmId: string, session: Session): void {
    const old = this.owners.get(vmId);
    if (old && old !== session) old.destroy(new OsrError('NETWORK_ERROR', `replaced by a newer connection for ${vmId}`));
    this.owners.set(vmId, session);
  }

  release(vmId: string, session: Session): void {
    if (this.owners.get(vmId) === session) this.owners.delete(vmId);
  }

  close(): void {
    for (const s of this.stores.values()) s.close();
    this.stores.clear();
  }
}

type Target = { kind: 'copy'; disk: string } | { kind: 'delta'; disk: string; fd: number } | { kind: 'resync'; disk: string } | undefined;

interface DeltaInProgress {
  point: RecoveryPoint;
  files: Map<string, { file: string; fd: number }>;
}

const MAX_PENDING_WRITE_BYTES = 64 * 1024 * 1024;

class Session {
  private store: ReplicaTarget | undefined;
  private target: Target;
  private delta: DeltaInProgress | undefined;
  private readonly writer: FrameWriter;
  private helloDone = false;
  private pending = new Set<Promise<void>>();
  private pendingBytes = 0;
  private writeError: unknown;
  bytesReceived = 0;

  constructor(
    private readonly socket: tls.TLSSocket,
    private readonly registry: ReplicaRegistry,
    private readonly agentName: string,
    private readonly log: Logger,
  ) {
    this.writer = new FrameWriter(socket);
    new FrameReader(
      socket,
      (m) => this.onControl(m),
      (f) => this.onData(f),
      (e) => this.destroy(e),
    );
    socket.on('close', () => {
      if (this.store) this.registry.release(this.store.vmId, this);
      this.abortDelta();
    });
  }

  destroy(e: OsrError): void {
    this.log.warn({ code: e.code, peer: this.socket.remoteAddress }, `replication connection closed: ${e.message}`);
    void this.writer.sendControl({ type: 'error', code: e.code, message: e.message }).catch(() => undefined);
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  private async onControl(m: ControlMessage): Promise<void> {
    if (!this.helloDone) return this.onHello(m);
    if (m.type === 'request') return this.onRequest(m);
    if (m.type === 'copy-begin') {
      this.requireStore();
      this.target = { kind: 'copy', disk: String(m.disk) };
      return;
    }
    if (m.type === 'copy-zero') {
      await this.drainWrites(0);
      this.requireStore().zeroInitial(String(m.disk), Number(m.offset), Number(m.length));
      return;
    }
    if (m.type === 'resync-disk') {
      this.requireStore();
      this.target = { kind: 'resync', disk: String(m.disk) };
      return;
    }
    if (m.type === 'resync-zero') {
      await this.drainWrites(0);
      this.requireStore().stageResyncZero(String(m.disk), Number(m.offset), Number(m.length));
      return;
    }
    if (m.type === 'delta-disk') {
      const f = this.delta?.files.get(String(m.disk));
      if (!f) throw new OsrError('PROTOCOL_ERROR', `delta-disk ${String(m.disk)} outside a delta`);
      this.target = { kind: 'delta', disk: String(m.disk), fd: f.fd };
      return;
    }
    throw new OsrError('PROTOCOL_ERROR', `unexpected message ${m.type}`);
  }

  private async onHello(m: ControlMessage): Promise<void> {
    if (m.type !== 'hello' || m.protocol !== PROTOCOL_NAME) throw new OsrError('PROTOCOL_ERROR', 'the first message must be an osr-replication hello');
    const offered = Array.isArray(m.versions) ? (m.versions as number[]) : [];
    const version = Math.max(...offered.filter((v) => (PROTOCOL_VERSIONS as readonly number[]).includes(v)));
    if (!Number.isFinite(version)) {
      throw new OsrError('PROTOCOL_VERSION_UNSUPPORTED', `peer offers protocol versions ${offered.join(',') || 'none'}; this agent supports ${PROTOCOL_VERSIONS.join(',')}`);
    }
    const peer = peerIdentity(this.socket);
    if (peer.role && peer.role !== 'agent') throw new OsrError('AUTH_FAILED', `certificate role ${peer.role} may not replicate; an agent certificate is needed`);
    this.helloDone = true;
    await this.writer.sendControl({ type: 'welcome', version, agent: this.agentName, features: ['zstd'] });
  }

  /**
   * Requests are answered in order. A copy checkpoint (an fsync of up to 256 MiB) is
   * answered when it is durable but does not hold up the frames behind it: copying goes
   * on while the checkpoint syncs, and the next request waits for it.
   */
  private async onRequest(m: ControlMessage): Promise<void> {
    const op = String(m.op);
    const args = (m.args ?? {}) as Record<string, unknown>;
    if (op === 'copy-checkpoint') {
      await this.drainWrites(0);
      const previous = this.checkpoints;
      this.checkpoints = previous.then(() => this.answer(m.id, op, () => this.handle(op, args)));
      return;
    }
    await this.checkpoints;
    await this.answer(m.id, op, () => this.handle(op, args));
  }

  private checkpoints: Promise<void> = Promise.resolve();

  private async answer(id: unknown, op: string, run: () => Promise<unknown>): Promise<void> {
    try {
      const result = await run();
      if (result instanceof BinaryReply) {
        await this.writer.sendData(0, result.data, false, false);
        await this.writer.sendControl({ type: 'reply', id, ok: true, result: { ...result.result, binary: result.data.length } });
      } else await this.writer.sendControl({ type: 'reply', id, ok: true, result: result ?? null });
    } catch (e) {
      const err = toOsrError(e);
      this.log.warn({ op, code: err.code }, err.message);
      await this.writer.sendControl({ type: 'reply', id, ok: false, error: { code: err.code, message: err.message, details: err.details } }).catch(() => undefined);
    }
  }

  private requireStore(): ReplicaTarget {
    if (!this.store) throw new OsrError('PROTOCOL_ERROR', 'no replication opened on this connection');
    return this.store;
  }

  private async handle(op: string, args: Record<string, unknown>): Promise<unknown> {
    switch (op) {
      case 'open': {
        const req = args as unknown as OpenRequest;
        const store = await this.registry.open(req);
        store.setEpoch(req.epoch);
        this.registry.claim(req.vmId, this);
        if (args.reset === true) store.resetInitial();
        this.store = store;
        const latest = store.latestPoint();
        const result: OpenResult = {
          initialDone: store.initialDone,
          copied: store.initialProgress(),
          finishedDisks: store.finishedInitialDisks(),
          latestSeq: latest?.seq ?? null,
          points: store.points(),
          divergent: store.divergent ?? null,
          seedSeq: store.seed?.seq ?? null,
        };
        return result;
      }
      case 'resync-ranges': {
        const store = this.requireStore();
        store.addDivergence(args.ranges as DiskRanges);
        return { divergent: store.divergent ?? null };
      }
      case 'copy-checkpoint': {
        await this.requireStore().checkpointInitial(String(args.disk), Number(args.offset), args.finished === true);
        return { disk: args.disk, offset: args.offset };
      }
      case 'resync-begin': {
        const state = this.requireStore().beginResync(String(args.id), Number(args.seq), Number(args.blockSize));
        return { disks: state.disks };
      }
      case 'resync-hashes': {
        const hashes = await this.requireStore().blockHashes(String(args.disk), Number(args.offset), Number(args.length), Number(args.blockSize));
        return args.binary === true ? new BinaryReply({}, hashes) : { hashes: hashes.toString('base64') };
      }
      case 'resync-checkpoint': {
        await this.drainWrites(0);
        const state = await this.requireStore().checkpointResync(String(args.disk), Number(args.offset), args.finished === true);
        return { disk: args.disk, offset: state.disks[String(args.disk)]?.offset };
      }
      case 'delta-begin': {
        const store = this.requireStore();
        this.abortDelta();
        const point = args.point as RecoveryPoint;
        const dir = store.incomingDir(point.seq);
        fs.rmSync(dir, { recursive: true, force: true });
        fs.mkdirSync(dir, { recursive: true });
        const files = new Map<string, { file: string; fd: number }>();
        for (const d of store.disks) {
          const file = path.join(dir, `${d.name}.osrlog`);
          files.set(d.name, { file, fd: fs.openSync(file, 'w', 0o600) });
        }
        this.delta = { point, files };
        return null;
      }
      case 'delta-end': {
        const store = this.requireStore();
        const delta = this.delta;
        if (!delta || delta.point.seq !== Number(args.seq)) throw new OsrError('PROTOCOL_ERROR', `delta-end ${String(args.seq)} without its delta-begin`);
        await this.drainWrites(0);
        const files: DeltaDiskFile[] = [];
        for (const [diskName, f] of delta.files) {
          fs.closeSync(f.fd);
          files.push({ diskName, file: f.file });
        }
        this.delta = undefined;
        this.target = undefined;
        const started = Date.now();
        const outcome = await store.applyDelta(delta.point, files);
        return { seq: delta.point.seq, outcome, latestSeq: store.latestPoint()?.seq ?? null, applyMs: Date.now() - started };
      }
      case 'status': {
        const store = this.requireStore();
        return { points: store.points(), initialDone: store.initialDone };
      }
      default:
        throw new OsrError('PROTOCOL_ERROR', `unknown request ${op}`);
    }
  }

  private onData(f: DataFrame): Promise<void> | void {
    this.bytesReceived += f.wireBytes;
    const t = this.target;
    if (!t) throw new OsrError('PROTOCOL_ERROR', 'DATA frame with no target');
    if (t.kind === 'resync') {
      // staged in order with the zero ranges between them (synchronous appends)
      this.requireStore().stageResync(t.disk, f.offset, f.parts);
      return;
    }
    const p = t.kind === 'copy' ? this.requireStore().writeInitial(t.disk, f.offset, f.parts) : writeAllAt(t.fd, f.parts, f.offset);
    return this.track(p, f.length);
  }

  /** Keep writes in flight (they overlap with the network), bounded in bytes. */
  private async track(p: Promise<void>, bytes: number): Promise<void> {
    this.pendingBytes += bytes;
    const tracked = p.then(
      () => {
        this.pendingBytes -= bytes;
        this.pending.delete(tracked);
      },
      (e: unknown) => {
        this.pendingBytes -= bytes;
        this.pending.delete(tracked);
        this.writeError ??= e;
      },
    );
    this.pending.add(tracked);
    if (this.pendingBytes > MAX_PENDING_WRITE_BYTES) await this.drainWrites(MAX_PENDING_WRITE_BYTES / 2);
  }

  private async drainWrites(limit: number): Promise<void> {
    while (this.pendingBytes > limit && this.pending.size > 0) await Promise.race(this.pending);
    if (this.writeError) {
      const e = this.writeError;
      this.writeError = undefined;
      throw toOsrError(e, 'DISK_IO_ERROR');
    }
  }

  private abortDelta(): void {
    if (!this.delta) return;
    for (const f of this.delta.files.values()) {
      try {
        fs.closeSync(f.fd);
      } catch {
        // already closed
      }
    }
    this.delta = undefined;
  }
}

export class ReplicationServer {
  private server: tls.Server | undefined;
  private readonly sessions = new Set<tls.TLSSocket>();

  constructor(
    private readonly registry: ReplicaRegistry,
    private readonly tlsMaterial: TlsMaterial,
    private readonly agentName: string,
    private readonly log: Logger,
  ) {}

  listen(port: number, host = '127.0.0.1'): Promise<number> {
    const server = tls.createServer(serverTlsOptions(this.tlsMaterial), (socket) => {
      this.sessions.add(socket);
      socket.setNoDelay(true);
      socket.on('close', () => this.sessions.delete(socket));
      socket.on('error', (e) => this.log.warn({ code: toOsrError(e).code }, `replication connection error: ${e.message}`));
      new Session(socket, this.registry, this.agentName, this.log);
    });
    onTlsClientError(server, (err) => this.log.warn({ code: err.code, ...err.details }, err.message));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        const addr = server.address();
        resolve(typeof addr === 'object' && addr ? addr.port : port);
      });
    });
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
