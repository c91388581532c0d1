/**
 * The replica end of replication: accepts mutual-TLS connections from primary agents,
 * writes initial copies and applies deltas into replica stores. One connection serves one
 * VM at a time; a newer connection for the same VM replaces an older one (the sender
 * reconnected after a broken link).
 *
 * A session speaks the protocol over any stream: a TLS socket here, or an in-process
 * stream when the replica target is reached from the sending agent itself (Azure). What
 * opens its replica target is a ReplicaOpener: the registry of replica stores here.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { OsrError, toOsrError } from '../../domain/errors.js';
import type { MachineSpec } from '../../domain/machine.js';
import { MAX_DISK_BYTES, isSafeName, safeInteger, safeName, safeRange, safeSeq } from '../../domain/names.js';
import { onTlsClientError, peerIdentity, serverTlsOptions, type PeerIdentity, type ReplicationGrant, type TlsMaterial } from '../../pki/index.js';
import { writeAllAt } from '../io/io.js';
import { readJson, writeJsonDurable } from '../io/durable-file.js';
import { importExport, readExport, type ExportManifest } from '../wire/offline-seed.js';
import type { DiskRanges } from '../io/ranges.js';
import type { Logger } from '../io/logger.js';
import { ReplicaStore, type ReceivedDeltaFile } from './replica-store.js';
import type { DivergentRanges, PreparedUndo, RecoveryPoint, ReplicaOpener, ReplicaTarget, SourceAgent } from '../ports/replica-target.js';
import { LogStreamVerifier, RecordWalker } from '../tracking/change-log.js';
import { ReplicaHolders } from '../ports/target-rules.js';
import { parseDiskRanges, parseOpen, parsePoint, parseResyncBegin } from './replication-requests.js';
import type { OpenRequest, OpenResult } from '../wire/replication-types.js';
import { routeConnection, SealedAttachments, SealedStream, SEALED_FEATURE } from '../wire/sealed.js';
import { BinaryReply, FrameReader, FrameWriter, KEEPALIVE_FEATURE, Liveness, PROTOCOL_NAME, PROTOCOL_VERSIONS, type ControlMessage, type DataFrame } from '../wire/wire.js';

function sameDisks(a: readonly { id: string; name: string; size: number }[], b: readonly { id: string; name: string; size: number }[]): boolean {
  return a.length === b.length && a.every((d, i) => d.id === b[i].id && d.name === b[i].name && d.size === b[i].size);
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
  /** the host runs the uncommitted VM itself, from a layer over the images (ports/host.ts HostPromotions), not from an overlay */
  hosted?: boolean | undefined;
  /** the machine a hosted VM is defined with (kept for a restart that must define it again) */
  machine?: MachineSpec | undefined;
  /** whether the uncommitted VM is served (started) */
  running?: boolean | undefined;
  promotedAt?: string | undefined;
}

/**
 * Who may replicate a VM to this agent: the common name of the source agent's certificate.
 * Recorded at the first `open` of a VM (or set by the vault: `authorize`, a demote for
 * reverse replication), kept beside the store, and removed with it.
 */
export interface OwnerRecord {
  source: string;
  /** how it was set: the first connection, or the vault through the agent's API */
  by: 'first-open' | 'vault';
  at: string;
  /** the source agent's fabric, when the vault's replication grant named it: its certificate must name it too */
  sourceFabric?: string | undefined;
  /** when that grant was signed: an older grant for this VM is refused */
  grantIssuedAt?: string | undefined;
  /** the replica was deleted (on an agent where only the vault names sources): no source until the vault names one again */
  removedAt?: string | undefined;
}

/** The agent that opens a replica: its certificate's common name and fabric. */
export type { SourceAgent } from '../ports/replica-target.js';

/** The stream a session speaks over, and who is at its other end. */
export interface SessionConnection {
  stream: Duplex;
  /** for logs: the peer's address */
  remote: string | undefined;
  /** the peer's verified identity (its certificate's) */
  identify(): PeerIdentity;
  setKeepAlive?(enable: boolean, delayMs: number): unknown;
  /**
   * The connection's sealed channel, where the peer opens one (sealed.ts): resolves with it
   * once attached, or rejects after a while. Absent where none can be had (in process).
   */
  sealed?(): Promise<Duplex>;
}

/** Owns the replica stores of an agent: opened once, shared by connections and the API. */
export class ReplicaRegistry implements ReplicaOpener {
  private readonly stores = new Map<string, ReplicaStore>();
  private readonly owners = new ReplicaHolders<Session>();
  /** VMs of this host whose disks are a promoted replica's images: never opened as replicas */
  private readonly runHere = new Set<string>();
  constructor(
    readonly dir: string,
    private readonly now: () => number,
    /**
     * whether only the vault may give a replica its source: an agent the vault enrolled into
     * a fabric (its certificate names one) takes no replica by a first connection, and a
     * deleted replica keeps its owner record (agent-channel.md, Replication grants)
     */
    private readonly vaultOwnersOnly: () => boolean = () => false,
  ) {
    fs.mkdirSync(dir, { recursive: true });
  }

  /**
   * Open (or create) the replica of `req.vmId` for a source agent. A replica belongs to the
   * source that created it or that the vault named: any other certificate is refused
   * (AUTH_FAILED) before anything is read or written. `source` is undefined only for an
   * operator's own action through the local API (an offline import).
   */
  async open(req: OpenRequest, source?: SourceAgent, opts: { reshape?: boolean } = {}): Promise<ReplicaStore> {
    safeName(req.vmId, 'VM id');
    if (source !== undefined) this.checkSource(req.vmId, source);
    // a stale primary learns it is one (and fences itself) also once the promoted copy runs here
    const fence = this.fenceOf(req.vmId);
    if (fence !== undefined && req.epoch < fence) {
      throw new OsrError('EPOCH_STALE', `${req.vmName} was promoted at this site with epoch ${fence}; a primary with epoch ${req.epoch} may no longer replicate`, { epoch: req.epoch, current: fence });
    }
    if (this.runHere.has(req.vmId) || this.fenceRecord(req.vmId)?.promotion?.pending) throw new OsrError('INVALID_STATE', `${req.vmName} runs on this host (it was promoted here); demote it before replicating to this agent`);
    let s = this.stores.get(req.vmId);
    if (!s) {
      s = await ReplicaStore.open(this.storeDir(req.vmId), { vmId: req.vmId, vmName: req.vmName, disks: req.disks, retention: req.retention }, this.now);
      this.stores.set(req.vmId, s);
    } else {
      s.setRetention(req.retention);
    }
    // the VM's disks changed under protection: the session reshapes the replica once the epoch and the source are checked
    if (opts.reshape === false && !sameDisks(s.disks, req.disks)) {
      throw new OsrError('INVALID_STATE', `the replica of ${req.vmName} here has disks ${s.disks.map((d) => `${d.name}:${d.size}`).join(',')}, not ${req.disks.map((d) => `${d.name}:${d.size}`).join(',')}; remove the replica first`);
    }
    if (source !== undefined) {
      // the vault may have given the replica to another source while the store opened
      this.checkSource(req.vmId, source);
      if (this.owner(req.vmId) === undefined) this.writeOwner(req.vmId, { source: source.name, by: 'first-open', at: new Date(this.now()).toISOString() });
    }
    return s;
  }

  /** checkOwner, and on an agent where only the vault gives replicas their source, a source it named. */
  private checkSource(vmId: string, source: SourceAgent): void {
    this.checkOwner(vmId, source);
    const owner = this.owner(vmId);
    if (this.vaultOwnersOnly() && (owner === undefined || owner.by !== 'vault' || owner.removedAt !== undefined)) {
      throw new OsrError('AUTH_FAILED', `the vault has not given the replica of VM ${vmId} here to ${source.name}${owner?.removedAt !== undefined ? ` since it was deleted (${owner.removedAt})` : ''}: this agent takes a replica only from the source the vault names (enable protection, or reprotect)`, { vmId, source: source.name });
    }
  }

  private storeDir(vmId: string): string {
    return path.join(this.dir, safeName(vmId, 'VM id'));
  }

  private ownerFile(vmId: string): string {
    return path.join(this.dir, `${safeName(vmId, 'VM id')}.owner.json`);
  }

  /** The source agent a VM's replica belongs to, if one was recorded. */
  owner(vmId: string): OwnerRecord | undefined {
    return readJson<OwnerRecord>(this.ownerFile(vmId));
  }

  private writeOwner(vmId: string, record: OwnerRecord): void {
    writeJsonDurable(this.ownerFile(vmId), record);
  }

  /** Refuse `source` unless it is the VM's recorded source, of the fabric the vault's grant named (or none is recorded yet). */
  checkOwner(vmId: string, source: SourceAgent): void {
    const owner = this.owner(vmId);
    if (owner !== undefined && owner.source !== source.name) {
      throw new OsrError('AUTH_FAILED', `the replica of VM ${vmId} here belongs to source agent ${owner.source}; ${source.name} may not replicate it`, { vmId, source: source.name, owner: owner.source });
    }
    if (owner?.sourceFabric !== undefined && owner.sourceFabric !== source.fabricId) {
      throw new OsrError('AUTH_FAILED', `the replica of VM ${vmId} here belongs to source agent ${owner.source} of fabric ${owner.sourceFabric}; the ${source.name} connected has a certificate of fabric ${source.fabricId ?? '(none)'}`, { vmId, source: source.name, fabric: source.fabricId ?? null, owner: owner.source, ownerFabric: owner.sourceFabric });
    }
  }

  /**
   * The vault's word: from now on only `source` may replicate this VM here (a failover's
   * new primary, or the host the vault placed it on). A connected session of another source
   * is dropped. Durable before it returns.
   *
   * `claim` is a new protection's word, given before its first copy: a replica of this VM
   * that another source opened first, and that holds data, is not this protection's. It is
   * refused (AUTH_FAILED) rather than handed over with what that source wrote into it.
   *
   * `grant`, the vault's replication grant the caller checked (it names this VM, this
   * agent and `source`), ties the source to its fabric; a grant older than the one that
   * set the current owner is refused (AUTH_FAILED): it cannot take the replica back.
   */
  authorize(vmId: string, source: string, o: { claim?: boolean; grant?: ReplicationGrant | undefined } = {}): OwnerRecord {
    safeName(vmId, 'VM id', 'INVALID_ARGUMENT');
    safeName(source, 'source agent', 'INVALID_ARGUMENT');
    const current = this.owner(vmId);
    const g = o.grant;
    if (g !== undefined && current?.grantIssuedAt !== undefined && Date.parse(g.issuedAt) < Date.parse(current.grantIssuedAt)) {
      throw new OsrError('AUTH_FAILED', `the replication grant for VM ${vmId} was signed at ${g.issuedAt}, before the one that gave the replica to ${current.source} (${current.grantIssuedAt}): an older grant is refused`, { vmId, source, issuedAt: g.issuedAt, current: current.grantIssuedAt });
    }
    if (g !== undefined && current?.removedAt !== undefined && current.grantIssuedAt !== undefined && Date.parse(g.issuedAt) <= Date.parse(current.grantIssuedAt)) {
      throw new OsrError('AUTH_FAILED', `the replica of VM ${vmId} here was deleted (${current.removedAt}); only a grant newer than the one it had (${current.grantIssuedAt}) gives it a source again`, { vmId, source, issuedAt: g.issuedAt });
    }
    const granted = g !== undefined ? { sourceFabric: g.source.fabricId, grantIssuedAt: g.issuedAt } : {};
    if (o.claim && current) {
      // said already (the command delivered twice): nothing to write
      if (current.source === source && current.by === 'vault' && current.sourceFabric === granted.sourceFabric && current.grantIssuedAt === granted.grantIssuedAt) return current;
      if (current.source !== source && this.holds(vmId)) {
        throw new OsrError('AUTH_FAILED', `a replica of VM ${vmId} here was opened by source agent ${current.source}, not by ${source}, the host the vault protects it from; remove that replica (osr agent: DELETE /v1/replicas/${vmId}) and enable protection again`, { vmId, source, owner: current.source });
      }
    }
    const record: OwnerRecord = { source, by: 'vault', at: new Date(this.now()).toISOString(), ...granted };
    this.writeOwner(vmId, record);
    const session = this.owners.get(vmId);
    if (session && (session.peerName !== source || (g !== undefined && session.peerFabric !== g.source.fabricId))) {
      this.owners.drop(vmId, new OsrError('AUTH_FAILED', `the vault gave the replica of ${vmId} to source agent ${source}`));
    }
    return record;
  }

  /** The epoch a replica was promoted with here (older primaries are refused), if any. */
  fenceOf(vmId: string): number | undefined {
    return this.fenceRecord(vmId)?.epoch;
  }

  fenceRecord(vmId: string): FenceRecord | undefined {
    return readJson<FenceRecord>(path.join(this.dir, `${safeName(vmId, 'VM id')}.fence.json`));
  }

  /** Refuse primaries older than `epoch` for this VM from now on (durable), and drop any connected one. */
  fence(vmId: string, epoch: number, promotion?: FenceRecord['promotion']): void {
    const record: FenceRecord = { epoch, at: new Date(this.now()).toISOString(), promotion };
    writeJsonDurable(path.join(this.dir, `${safeName(vmId, 'VM id')}.fence.json`), record);
    this.owners.drop(vmId, new OsrError('EPOCH_STALE', `${vmId} was promoted at this site with epoch ${epoch}`));
  }

  /** Rewrite the promotion kept with a VM's fence (durable before it returns); the epoch stays. */
  setPromotion(vmId: string, promotion: Promotion): void {
    const record = this.fenceRecord(vmId);
    if (!record) throw new OsrError('INVALID_STATE', `${vmId} was not promoted here`);
    writeJsonDurable(path.join(this.dir, `${safeName(vmId, 'VM id')}.fence.json`), { ...record, promotion });
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
    const s = await this.open({ vmId: manifest.vmId, vmName: manifest.vmName, disks, retention: { hours: 24, maxPoints: 24 }, epoch: manifest.epoch }, undefined, { reshape: false });
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

  /**
   * A store made from existing images (reverse replication); replaces any store of that VM.
   * `source`, when the vault names it, is the promoted copy's agent: the only one that may
   * replicate into the store from now on.
   */
  async adopt(spec: Parameters<typeof ReplicaStore.adopt>[1], images: Record<string, string>, divergent: DivergentRanges, source?: string, grant?: ReplicationGrant): Promise<ReplicaStore> {
    if (source !== undefined) this.authorize(spec.vmId, source, { grant });
    this.detach(spec.vmId);
    this.runHere.delete(spec.vmId);
    const s = await ReplicaStore.adopt(this.storeDir(spec.vmId), spec, images, divergent, this.now);
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
      if (!m || !isSafeName(m[1])) continue;
      const outcome = ReplicaStore.recoverAdoption(path.join(this.dir, m[1]!));
      if (outcome) out.push({ vmId: m[1]!, outcome });
    }
    return out;
  }

  /**
   * Whether a replica store of this VM id is on disk that is still a replica (a demote's
   * included); a committed promotion's store holds the images of a VM that runs here.
   */
  holdsReplica(vmId: string): boolean {
    if (!isSafeName(vmId)) return false;
    const m = readJson<{ committed?: boolean }>(path.join(this.dir, vmId, 'manifest.json'));
    return m !== undefined && m.committed !== true;
  }

  /** Whether a replica store of this VM id is on disk (an adopted VM's images live there). */
  holds(vmId: string): boolean {
    return isSafeName(vmId) && fs.existsSync(path.join(this.dir, vmId, 'manifest.json'));
  }

  /**
   * Open every store found on disk (at agent start), so points and overlays are served.
   * Stores whose images a host VM uses now (promoted) are skipped. A store that cannot be
   * opened is reported (`unopened`) and skipped: the others are served.
   */
  async openAll(skip: ReadonlySet<string> = new Set()): Promise<{ vmId: string; code: string; message: string }[]> {
    const unopened: { vmId: string; code: string; message: string }[] = [];
    for (const id of skip) this.runHere.add(id);
    for (const vmId of fs.readdirSync(this.dir)) {
      if (!isSafeName(vmId) || vmId.endsWith('.adopting') || skip.has(vmId) || this.stores.has(vmId) || !fs.existsSync(path.join(this.dir, vmId, 'manifest.json'))) continue;
      try {
        const s = await ReplicaStore.open(path.join(this.dir, vmId), { vmId, disks: [] }, this.now);
        this.stores.set(vmId, s);
      } catch (e) {
        const err = toOsrError(e, 'REPLICA_STORE_CORRUPT');
        this.failed.set(vmId, { code: err.code, message: err.message });
        unopened.push({ vmId, code: err.code, message: err.message });
      }
    }
    return unopened;
  }

  /** Stores found on disk that could not be opened, with why (served again once fixed and the agent restarted). */
  readonly failed = new Map<string, { code: string; message: string }>();

  /**
   * Delete a replica: its connection is dropped, its store closed and its directory
   * removed (the fence record stays, so an older primary is still refused). Refused while
   * an overlay of it is open.
   */
  remove(vm: string): { vmId: string; vmName: string } {
    const promoted = this.provisional().find((p) => p.store.vmName === vm || p.store.vmId === vm);
    if (promoted) throw new OsrError('INVALID_STATE', `${promoted.store.vmName} was promoted here and runs from this replica until the failover is committed; commit it or change its point, not delete it`);
    const s = this.get(vm);
    const open = s.listOverlays();
    if (open.length > 0) throw new OsrError('OVERLAY_IN_USE', `the replica of ${s.vmName} has ${open.length} open overlay(s); commit or discard them before deleting it`, { overlays: open.map((o) => o.id) });
    this.owners.drop(s.vmId, new OsrError('INVALID_STATE', `the replica of ${s.vmName} was deleted`));
    s.close();
    this.stores.delete(s.vmId);
    const record = this.owner(s.vmId);
    if (this.vaultOwnersOnly() && record !== undefined) {
      // kept as a tombstone: no source takes the VM's replica here again until the vault
      // names one with a newer grant (an older grant stays refused)
      this.writeOwner(s.vmId, { ...record, removedAt: new Date(this.now()).toISOString() });
      fs.rmSync(this.storeDir(s.vmId), { recursive: true, force: true });
    } else {
      fs.rmSync(this.storeDir(s.vmId), { recursive: true, force: true });
      // a deleted replica belongs to no one: the next protection of the VM records its source anew
      fs.rmSync(this.ownerFile(s.vmId), { force: true });
    }
    return { vmId: s.vmId, vmName: s.vmName };
  }

  /**
   * A replica by VM id, or by VM name where exactly one replica has that name (a name is
   * chosen by the source, so two sources could both claim it: then the id is needed).
   */
  get(vm: string): ReplicaStore {
    const byId = this.stores.get(vm);
    if (byId) return byId;
    const named = [...this.stores.values()].filter((x) => x.vmName === vm);
    if (named.length > 1) throw new OsrError('INVALID_STATE', `${named.length} replicas here are named ${vm}; name the one meant by its VM id`, { vmIds: named.map((x) => x.vmId) });
    if (named.length === 0) throw new OsrError('NOT_FOUND', `this agent holds no replica of ${vm}`, { replicas: [...this.stores.values()].map((x) => x.vmName) });
    return named[0]!;
  }

  list(): ReplicaStore[] {
    return [...this.stores.values()];
  }

  claim(vmId: string, session: Session): void {
    this.owners.claim(vmId, session);
  }

  release(vmId: string, session: Session): void {
    this.owners.release(vmId, session);
  }

  close(): void {
    for (const s of this.stores.values()) s.close();
    this.stores.clear();
  }
}

/** Where DATA frames go, with the bound on where they may land. */
type Target = { kind: 'copy'; disk: string; size: number } | { kind: 'delta'; disk: string; fd: number } | { kind: 'resync'; disk: string; size: number } | undefined;

/**
 * How far into a delta's change log a DATA frame may write. A log holds every write of a
 * cycle (the same block may be written many times), so it is not bounded by its disk; this
 * bounds it by what a file system takes.
 */
const MAX_DELTA_LOG_BYTES = 4 * MAX_DISK_BYTES;

interface DeltaInProgress {
  point: RecoveryPoint;
  /** per disk: the received log, and the undo written as its records arrive (when the store can) */
  files: Map<string, { file: string; fd: number; undo?: PreparedUndo | undefined; walker?: RecordWalker | undefined; verifier: LogStreamVerifier }>;
}

const MAX_PENDING_WRITE_BYTES = 64 * 1024 * 1024;
/** How often a refused replication connection is logged at most. */
const REFUSAL_LOG_MS = 10_000;

export class Session {
  private store: ReplicaTarget | undefined;
  private target: Target;
  private delta: DeltaInProgress | undefined;
  private writer: FrameWriter;
  private reader: FrameReader | undefined;
  private helloDone = false;
  /** the verified certificate of the peer (set by the hello) */
  private peer: PeerIdentity | undefined;
  private pending = new Set<Promise<void>>();
  private pendingBytes = 0;
  private writeError: unknown;
  bytesReceived = 0;

  private socket: Duplex;

  constructor(
    private readonly conn: SessionConnection,
    private readonly registry: ReplicaOpener,
    private readonly agentName: string,
    private readonly log: Logger,
  ) {
    const socket = conn.stream;
    this.socket = socket;
    this.writer = this.speakOver(socket);
    socket.on('close', () => {
      if (this.store) this.registry.release(this.store.vmId, this);
      // the delta's files close only once no write of this connection is left to land: a
      // descriptor closed under a queued write could be another file's by then
      void Promise.allSettled([...this.pending]).then(() => this.abortDelta());
    });
  }

  /** Read frames from `stream` and return a writer of frames to it. */
  private speakOver(stream: Duplex): FrameWriter {
    this.reader = new FrameReader(
      stream,
      (m) => this.onControl(m),
      (f) => this.onData(f),
      (e) => this.destroy(e),
    );
    return new FrameWriter(stream);
  }

  /**
   * After a welcome that accepted the sealed channel, every frame comes and goes there:
   * anything more on the first connection is a protocol error. The two connections close
   * together.
   */
  private async moveToSealed(sealed: Promise<Duplex>): Promise<void> {
    const first = this.socket;
    // the first connection's reader stops here: a frame it still holds, or any that comes,
    // was sent over TLS after the move and ends the session
    const leftover = this.reader?.detach() ?? 0;
    if (leftover > 0) throw new OsrError('PROTOCOL_ERROR', 'a frame came over TLS after the sealed channel was agreed');
    first.on('data', () => this.destroy(new OsrError('PROTOCOL_ERROR', 'a frame came over TLS after the sealed channel was agreed')));
    const stream = await sealed;
    stream.on('error', (e) => this.log.warn({ code: toOsrError(e).code, peer: this.conn.remote }, `sealed replication channel error: ${e.message}`));
    if (stream.destroyed) throw new OsrError('NETWORK_ERROR', 'the sealed channel closed as it opened');
    stream.once('close', () => first.destroy());
    first.once('close', () => stream.destroy());
    // both connections are watched: a middlebox that drops an idle flow takes the other down too
    this.conn.setKeepAlive?.(true, 10_000);
    this.socket = stream;
    this.writer = this.speakOver(stream);
  }

  /** the common name of the peer's certificate, once the hello was accepted */
  get peerName(): string | undefined {
    return this.peer?.commonName;
  }

  /** the fabric the peer's certificate names, once the hello was accepted */
  get peerFabric(): string | undefined {
    return this.peer?.fabricId;
  }

  destroy(e: OsrError): void {
    this.log.warn({ code: e.code, peer: this.conn.remote, agent: this.peer?.commonName }, `replication connection closed: ${e.message}`);
    void this.writer.sendControl({ type: 'error', code: e.code, message: e.message }).catch(() => undefined);
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  private async onControl(m: ControlMessage): Promise<void> {
    if (!this.helloDone) return this.onHello(m);
    if (m.type === 'ping') return;
    if (m.type === 'request') return this.onRequest(m);
    if (m.type === 'copy-begin') {
      const disk = this.disk(m.disk);
      this.target = { kind: 'copy', disk: disk.name, size: disk.size };
      return;
    }
    if (m.type === 'copy-zero') {
      const disk = this.disk(m.disk);
      const [offset, length] = safeRange(m.offset, m.length, disk.size, `zero range of ${disk.name}`);
      await this.drainWrites(0);
      await this.requireStore().zeroInitial(disk.name, offset, length);
      return;
    }
    if (m.type === 'resync-disk') {
      const disk = this.disk(m.disk);
      this.target = { kind: 'resync', disk: disk.name, size: disk.size };
      return;
    }
    if (m.type === 'resync-zero') {
      const disk = this.disk(m.disk);
      const [offset, length] = safeRange(m.offset, m.length, disk.size, `zero range of ${disk.name}`);
      await this.drainWrites(0);
      await this.requireStore().stageResyncZero(disk.name, offset, length);
      return;
    }
    if (m.type === 'delta-disk') {
      const f = typeof m.disk === 'string' ? this.delta?.files.get(m.disk) : undefined;
      if (!f) throw new OsrError('PROTOCOL_ERROR', 'delta-disk names no disk of an open delta');
      this.target = { kind: 'delta', disk: m.disk as string, fd: f.fd };
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
    const peer = this.conn.identify();
    if (peer.role !== 'agent') throw new OsrError('AUTH_FAILED', `a certificate with role ${peer.role ?? '(none)'} may not replicate; an agent certificate is needed`, { peer: peer.commonName, role: peer.role ?? null });
    this.peer = peer;
    this.helloDone = true;
    const keepalive = Array.isArray(m.features) && m.features.includes(KEEPALIVE_FEATURE);
    // the channel's token is listened for before the welcome that lets the peer attach
    const sealed = Array.isArray(m.features) && m.features.includes(SEALED_FEATURE) ? this.conn.sealed?.() : undefined;
    await this.writer.sendControl({ type: 'welcome', version, agent: this.agentName, features: ['zstd', ...(keepalive ? [KEEPALIVE_FEATURE] : []), ...(sealed ? [SEALED_FEATURE] : [])] });
    if (sealed) await this.moveToSealed(sealed);
    // an older primary sends no pings: then only TCP keepalive watches the connection
    if (keepalive) new Liveness(this.socket, () => this.writer.sendControl({ type: 'ping' }), (e) => this.destroy(e));
    else this.conn.setKeepAlive?.(true, 10_000);
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

  /** A disk of the open replica, named by the peer. */
  private disk(name: unknown): { name: string; size: number } {
    const store = this.requireStore();
    const disk = store.disks.find((d) => d.name === name);
    if (!disk) throw new OsrError('PROTOCOL_ERROR', `the replica of ${store.vmId} has no disk ${typeof name === 'string' ? JSON.stringify(name.slice(0, 80)) : typeof name}`);
    return disk;
  }

  private async handle(op: string, args: Record<string, unknown>): Promise<unknown> {
    switch (op) {
      case 'open': {
        const req = parseOpen(args);
        if (this.store && this.store.vmId !== req.vmId) throw new OsrError('PROTOCOL_ERROR', `this connection replicates ${this.store.vmId}; open ${req.vmId} on a connection of its own`);
        const store = await this.registry.open(req, { name: this.peer!.commonName, fabricId: this.peer!.fabricId });
        await store.setEpoch(req.epoch);
        this.registry.claim(req.vmId, this);
        // the VM's disks changed under protection: the replica takes the new ones for its next points
        if (!sameDisks(store.disks, req.disks)) {
          if (!store.reshape) throw new OsrError('DISK_CHANGE_UNSUPPORTED', `the replica of ${req.vmName} cannot change its disks under protection`);
          await store.reshape(req.disks, req.confirmedShrink === true);
        }
        if (req.reset) await store.resetInitial();
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
        await store.addDivergence(parseDiskRanges(args.ranges, new Map(store.disks.map((d) => [d.name, d.size]))));
        return { divergent: store.divergent ?? null };
      }
      case 'copy-checkpoint': {
        const disk = this.disk(args.disk);
        const offset = safeInteger(args.offset, `checkpoint of ${disk.name}`, 0, disk.size);
        await this.requireStore().checkpointInitial(disk.name, offset, args.finished === true);
        return { disk: disk.name, offset };
      }
      case 'resync-begin': {
        const r = parseResyncBegin(args);
        const state = await this.requireStore().beginResync(r.id, r.seq, r.blockSize);
        return { disks: state.disks };
      }
      case 'resync-hashes': {
        const disk = this.disk(args.disk);
        const blockSize = safeInteger(args.blockSize, 'block size', 512, 16 * 1024 * 1024);
        const [offset, length] = safeRange(args.offset, args.length, disk.size, `compared range of ${disk.name}`);
        const hashes = await this.requireStore().blockHashes(disk.name, offset, length, blockSize);
        return args.binary === true ? new BinaryReply({}, hashes) : { hashes: hashes.toString('base64') };
      }
      case 'resync-checkpoint': {
        const disk = this.disk(args.disk);
        const offset = safeInteger(args.offset, `checkpoint of ${disk.name}`, 0, disk.size);
        await this.drainWrites(0);
        const state = await this.requireStore().checkpointResync(disk.name, offset, args.finished === true);
        return { disk: disk.name, offset: state.disks[disk.name]?.offset };
      }
      case 'delta-begin': {
        const store = this.requireStore();
        // the writes of a delta begun before (a stream the primary gave up) end before its files close
        await this.drainWrites(0).catch(() => undefined);
        await Promise.all([...(this.delta?.files.values() ?? [])].map((f) => f.undo?.abandon().catch(() => undefined)));
        this.abortDelta();
        const point = parsePoint(args.point);
        // the files of a delta being applied are read by that apply: never cleared under it
        const applying = store.applyingSeq;
        if (applying !== undefined) throw new OsrError('INVALID_STATE', `delta ${applying} of ${store.vmName} is being applied; begin delta ${point.seq} when it is done`, { applying });
        const dir = store.incomingDir(point.seq);
        fs.rmSync(dir, { recursive: true, force: true });
        fs.mkdirSync(dir, { recursive: true });
        const files: DeltaInProgress['files'] = new Map();
        for (const d of store.disks) {
          const file = path.join(dir, `${d.name}.osrlog`);
          // the undo is written while the log arrives: the apply then only syncs it
          const undo = store.prepareUndo?.(point.seq, d.name);
          // the last delta's file overwritten in place where the store keeps it (the log's
          // length is what the verifier saw: an older log's bytes may follow it)
          const fd = fs.openSync(file, store.reuseLog?.(d.name, file) ? 'r+' : 'w', 0o600);
          files.set(d.name, { file, fd, undo, walker: undo ? new RecordWalker((offset, length) => undo.add(offset, length)) : undefined, verifier: new LogStreamVerifier(file) });
        }
        this.delta = { point, files };
        return null;
      }
      case 'delta-end': {
        const store = this.requireStore();
        const delta = this.delta;
        const seq = safeSeq(args.seq);
        if (!delta || delta.point.seq !== seq) throw new OsrError('PROTOCOL_ERROR', `delta-end ${seq} without its delta-begin`);
        await this.drainWrites(0);
        const files: ReceivedDeltaFile[] = [];
        for (const [diskName, f] of delta.files) {
          fs.closeSync(f.fd);
          files.push({ diskName, file: f.file, undo: f.undo, verified: f.verifier.result() });
        }
        this.delta = undefined;
        this.target = undefined;
        // a delta shipped while it was read learns its size only at the end
        if (args.deltaBytes !== undefined) delta.point.deltaBytes = safeInteger(args.deltaBytes, 'point delta bytes');
        const started = Date.now();
        const outcome = await store.applyDelta(delta.point, files).finally(() => Promise.all(files.map((f) => f.undo?.abandon().catch(() => undefined))));
        return { seq: delta.point.seq, outcome, latestSeq: store.latestPoint()?.seq ?? null, applyMs: Date.now() - started, ...(outcome === 'applied' && store.applySteps ? { applySteps: store.applySteps } : {}) };
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
    safeRange(f.offset, f.length, t.kind === 'delta' ? MAX_DELTA_LOG_BYTES : t.size, `DATA frame for ${t.disk}`);
    if (t.kind === 'resync') {
      // staged in the order they came; a target that finishes them later is waited for
      // before a zero range or a checkpoint of the resync
      const staged = this.requireStore().stageResync(t.disk, f.offset, f.parts);
      return staged ? this.track(staged, f.length) : undefined;
    }
    const d = t.kind === 'delta' ? this.delta?.files.get(t.disk) : undefined;
    // a delta's frame goes only into the file of the delta open now, never through a descriptor of one closed
    if (t.kind === 'delta' && (!d || d.fd !== t.fd)) throw new OsrError('PROTOCOL_ERROR', `DATA frame for disk ${t.disk} outside an open delta`);
    let p = t.kind === 'copy' ? this.requireStore().writeInitial(t.disk, f.offset, f.parts) : writeAllAt(t.fd, f.parts, f.offset);
    // an initial copy's body is written from where the sealed channel received it, and then lent back
    const sealed = this.socket instanceof SealedStream ? this.socket : undefined;
    if (sealed && t.kind === 'copy' && f.parts.length === 1) {
      const body = f.parts[0]!;
      p = p.finally(() => sealed.release(body));
    }
    if (d) {
      // verified as it arrives: the apply need not read the log back to verify it
      d.verifier.push(f.offset, f.parts);
      if (d.walker) {
        d.walker.push(f.offset, f.parts);
        if (!d.walker.ok) d.undo?.invalidate();
      }
    }
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
    if (this.target?.kind === 'delta') this.target = undefined;
    if (!this.delta) return;
    for (const f of this.delta.files.values()) {
      void f.undo?.abandon().catch(() => undefined);
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
  private listener: net.Server | undefined;
  private readonly attachments = new SealedAttachments();
  /** refused connections: anyone can open them, so at most one is logged every REFUSAL_LOG_MS */
  private readonly refusals = { loggedAt: -Infinity, unlogged: 0 };

  private logRefusal(peer: string | undefined, reason: string): void {
    const now = Date.now();
    if (now - this.refusals.loggedAt < REFUSAL_LOG_MS) {
      this.refusals.unlogged++;
      return;
    }
    const more = this.refusals.unlogged;
    this.refusals.loggedAt = now;
    this.refusals.unlogged = 0;
    this.log.warn({ code: 'PROTOCOL_ERROR', peer, ...(more > 0 ? { refusedSinceLast: more } : {}) }, `replication connection refused: ${reason}${more > 0 ? ` (${more} more refused since the last of these)` : ''}`);
  }
  private readonly sessions = new Set<tls.TLSSocket>();

  constructor(
    private readonly registry: ReplicaRegistry,
    private tlsMaterial: TlsMaterial,
    private readonly agentName: string,
    private readonly log: Logger,
  ) {}

  /**
   * New certificate, CA or revocation list: new connections are checked with them; an open
   * connection whose peer's certificate the list now names (`revoked`: serials, lower-case
   * hex) is closed, the others keep going.
   */
  setTlsMaterial(m: TlsMaterial, revoked: ReadonlySet<string> = new Set()): void {
    this.tlsMaterial = m;
    this.server?.setSecureContext(serverTlsOptions(m));
    for (const socket of this.sessions) {
      const serial = socket.getPeerX509Certificate()?.serialNumber.toLowerCase();
      if (serial !== undefined && revoked.has(serial)) {
        this.log.warn({ peer: socket.remoteAddress, serial }, 'closed a replication connection: its peer\'s certificate was revoked');
        socket.destroy();
      }
    }
  }

  /**
   * Listen for primaries: TLS connections, and the sealed channels that follow them on the
   * same port (told apart by their first byte).
   */
  listen(port: number, host = '127.0.0.1'): Promise<number> {
    const tlsServer = tls.createServer(serverTlsOptions(this.tlsMaterial), (socket) => {
      this.sessions.add(socket);
      socket.setNoDelay(true);
      socket.on('close', () => this.sessions.delete(socket));
      socket.on('error', (e) => this.log.warn({ code: toOsrError(e).code }, `replication connection error: ${e.message}`));
      const sealed = SealedAttachments.available ? this.attachments.expect(socket) : undefined;
      new Session({ stream: socket, remote: socket.remoteAddress, identify: () => peerIdentity(socket), setKeepAlive: (on, ms) => socket.setKeepAlive(on, ms), ...(sealed ? { sealed } : {}) }, this.registry, this.agentName, this.log);
    });
    onTlsClientError(tlsServer, (err) => this.log.warn({ code: err.code, ...err.details }, err.message));
    this.server = tlsServer;
    const server = net.createServer({ pauseOnConnect: true }, (socket) =>
      routeConnection(socket, {
        onTls: (s) => tlsServer.emit('connection', s),
        onSealed: (s, token) => this.attachments.accept(s, token),
        onRefused: (reason) => this.logRefusal(socket.remoteAddress, reason),
      }),
    );
    this.listener = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        // an accept that fails later (out of descriptors) is logged; the listener goes on
        server.on('error', (e) => this.log.warn({ code: toOsrError(e).code }, `replication listener: ${e.message}`));
        const addr = server.address();
        resolve(typeof addr === 'object' && addr ? addr.port : port);
      });
    });
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.destroy();
    await new Promise<void>((resolve) => (this.listener ? this.listener.close(() => resolve()) : resolve()));
  }
}
