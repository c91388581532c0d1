/**
 * The primary end of one VM's replication: initial replication, then a delta every copy
 * cycle. Runs as a loop that converges: on every (re)connection it asks the replica what
 * it already holds and continues from there, so a broken connection or an agent restart
 * costs at most the unacknowledged part of a copy or delta.
 */
import type { Duplex } from 'node:stream';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import type { Clock } from '../../domain/clock.js';
import { OsrError, toOsrError } from '../../domain/errors.js';
import { MAX_DISK_BYTES, safeInteger, safeName } from '../../domain/names.js';
import type { TlsMaterial } from '../../pki/index.js';
import { Consistency, type ChangeSource, type DeltaStream, type DiskReader, type PreparedSwap } from '../ports/change-source.js';
import type { CyclePhases } from './cycle-phases.js';
import { readAt, type IoPiece } from '../io/io.js';
import { ReplicaClient } from './replica-client.js';
import type { Logger } from '../io/logger.js';
import { ReplicationState, type InitialProgress, type OpenRequest, type OpenResult, type ReplicationHealth, type ReplicationSpec, type AzurePeer, type DeltaTimings, type ResyncProgress, type ReplicaChannel } from '../wire/replication-types.js';
import { DIGEST_BYTES, differingRuns } from '../io/checksum.js';
import { retryDelayMs, type RetryPolicy } from '../io/retry.js';
import type { Pacer } from '../io/throttle.js';
import { inTimeWindow, msUntilMinute, parseTimeWindow } from '../io/time-window.js';
import { finishedExport, writeExport } from '../wire/offline-seed.js';
import { alignRanges, totalBytes as rangeBytes, unionDiskRanges, type DiskRanges, type Range } from '../io/ranges.js';
import { isZero } from '../io/sparse.js';
import { describeDiskChange, diskChangeEmpty, diskChangeNeedsConfirmation, diskChangeOf } from '../ports/target-rules.js';
import type { DiskChange, ReplicaDiskSpec } from '../ports/replica-target.js';
import { DATA_FRAME_HEAD_BYTES, MAX_DATA_BYTES } from '../wire/wire.js';
import type { QuiesceHook } from './quiesce-hook.js';

const COPY_CHUNK = 4 * 1024 * 1024;
/** bytes of data sent between two durable checkpoints of the initial copy */
export const CHECKPOINT_BYTES = 256 * 1024 * 1024;
const HOUR = 3600_000;
/** default block size of a resync's comparison (docs/benchmarks.md, resync) */
export const DEFAULT_RESYNC_BLOCK_SIZE = 4096;
export const DEFAULT_RESYNC_WINDOW = '18:00-06:00';
/** a resync compares this much of a disk per request, at most */
const RESYNC_WINDOW_BYTES = 64 * 1024 * 1024;
/** staged blocks are made durable at the replica at least this often (compared bytes) */
const RESYNC_CHECKPOINT_BYTES = 512 * 1024 * 1024;
/** Windows of block checksums the replica is asked for ahead of the one being compared. */
const RESYNC_WINDOWS_AHEAD = 2;
/** Bytes of differing blocks read at once before they are sent. */
const RESYNC_READ_BATCH = 16 * 1024 * 1024;
/** pending change logs of a disk at this share of its size make a resync necessary */
export const LOG_GROWTH_RESYNC_SHARE = 0.5;
/** a consistency group's member looks for closed logs to ship at least this often (a cut wakes it at once) */
const GROUP_IDLE_MS = 60_000;
/** while waiting to retry, the growth of pending logs is checked this often */
const GROWTH_CHECK_MS = 60_000;
/** while a disk change waits for confirmation: how often the VM's disks are looked at again (put back as they were, replication goes on) */
const DISK_CHANGE_LOOK_MS = 10_000;

export interface ReplicationDeps {
  /** the agent's TLS material now (it is reloaded when its files change) */
  tls: () => TlsMaterial;
  agentName: string;
  clock: Clock;
  log: Logger;
  /** when to retry after a recoverable error */
  retry: RetryPolicy;
  /** the agent's bandwidth limit, shared by its replications */
  agentPacer?: Pacer | undefined;
  /** this replication's own bandwidth limit */
  pacer?: Pacer | undefined;
  hookTimeoutMs: number;
  /** the VM's quiesce hook from the agent's configuration (quiesce-hook.ts); none = nothing to quiesce */
  quiesceHook?: ((vm: string) => QuiesceHook | undefined) | undefined;
  /** the agent's spread of copy cycles over the copy frequency */
  phases: CyclePhases;
  /** a stream to a replication session in this agent, for a replica it writes itself (Azure) */
  inProcess: (peer: AzurePeer, vmId: string) => Duplex;
}

export class PrimaryReplication {
  private state: ReplicationState = ReplicationState.Scheduled;
  private readonly stopper = new AbortController();
  private waker = new AbortController();
  /** someone asked for something (a retry, a cycle, a resync, a confirmation) since the loop last waited: its next wait ends at once */
  private woken = false;
  private client: ReplicaClient | undefined;
  /** what the latest connection carried its frames over */
  private channel: ReplicaChannel | undefined;
  private loop: Promise<void> | undefined;
  private latestSeq: number | null = null;
  private latest: ReplicationHealth['latestPoint'] = null;
  private lastSuccessMs: number | null = null;
  private lastError: ReplicationHealth['lastError'] = null;
  private initial: InitialProgress | null = null;
  private cycles: { atMs: number; ok: boolean }[] = [];
  /** the deltas of the last hour: change-log bytes and the span of guest time they cover */
  private deltas: { timeMs: number; bytes: number; spanMs: number }[] = [];
  private nextCycleMs = 0;
  private lastAppMs: number;
  private bytesShipped = 0;
  private lastDelta: DeltaTimings | null = null;
  private resyncProgress: ResyncProgress | null = null;
  /** an operator asked for a resync: it runs at once, whatever the window */
  private resyncAsked = false;
  private resyncWaiting = false;
  /** failures since the last success: the n-th retry waits the policy's n-th delay */
  private failures = 0;
  private nextRetryMs: number | null = null;
  private waitingForAction = false;
  /** a group cut closed logs since the loop last looked: no idle sleep before shipping them */
  private cutToShip = false;
  /** the replica held a copy of the VM when this replication began: the first step is a resync */
  private onboarding = false;
  /** the replica was made from an old primary's disks: the ranges where it may differ */
  private divergent: OpenResult['divergent'] = null;
  /** the disks the replica was last opened with: a change of the VM's goes to it only between deltas */
  private agreed: ReplicaDiskSpec[] | undefined;
  /** the shrink or removal the user confirmed (its summary): the next open may make it */
  private confirmedChange: string | undefined;
  /** the closed deltas after a disk change are sent as ranges (their disks are not the replica's) */
  private rangesOwed = false;
  /** the disks the next open gives the replica, a change it takes (it may drop or shrink disks when confirmed) */
  private applyingChange: { disks: ReplicaDiskSpec[]; confirmed: boolean } | undefined;

  constructor(
    readonly spec: ReplicationSpec,
    private readonly vm: ChangeSource,
    private readonly deps: ReplicationDeps,
  ) {
    this.lastAppMs = deps.clock.now();
  }

  start(): void {
    this.loop ??= this.run().catch((e) => this.deps.log.error({ err: String(e) }, `replication ${this.spec.id} stopped on an unexpected error`));
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    this.waker.abort();
    this.client?.close();
    await this.loop;
    this.deps.phases.delete(this.spec.id);
    this.state = ReplicationState.Stopped;
  }

  /** How the VM's disks differ from the replica's now (empty: they do not; undefined: not connected yet). */
  private diskChange(): DiskChange | undefined {
    if (!this.agreed) return undefined;
    return diskChangeOf(this.vm.name, this.agreed, this.liveDisks());
  }

  /** The hypervisor's disks looked at again (libvirt): a change the host cannot follow stops replication with why. */
  private async refreshDisks(): Promise<void> {
    const why = await this.vm.refreshDisks?.();
    if (why !== undefined) throw new OsrError('DISK_CHANGE_UNSUPPORTED', why);
  }

  /** Whether the VM's disks differ from the replica's (a disk replaced under its name counts). */
  private diskChangePending(): boolean {
    try {
      const change = this.diskChange();
      return change !== undefined && !diskChangeEmpty(change);
    } catch {
      return true;
    }
  }

  private liveDisks(): ReplicaDiskSpec[] {
    return this.vm.disks.map((d) => ({ id: d.id, name: d.name, size: d.size }));
  }

  /**
   * The user confirms a shrink or a removal of the VM's disks: the replica's next points
   * have the disks as they are now (older points keep theirs). Refused when nothing waits
   * for confirmation.
   */
  confirmDiskChange(): { summary: string } {
    const change = this.diskChange();
    if (!change || !diskChangeNeedsConfirmation(change)) throw new OsrError('INVALID_STATE', `no disk change of ${this.vm.name} waits for confirmation`);
    this.confirmedChange = describeDiskChange(change);
    this.deps.log.info({ replication: this.spec.id }, `disk change of ${this.vm.name} confirmed: ${this.confirmedChange}`);
    this.wake();
    return { summary: this.confirmedChange };
  }

  /**
   * Between deltas: when the VM's disks changed, the replica is opened again with the new
   * ones (it grows or adds images and names the new ranges divergent, which the loop then
   * resynchronizes alone). A shrink or a removal waits for the user's confirmation.
   * True when the connection was closed to reopen with the new disks.
   */
  private takeDiskChange(): boolean {
    const change = this.diskChange();
    const tracker = this.vm.tracking;
    if (!change) return false;
    if (diskChangeEmpty(change)) {
      // the disks are as the replica has them (put back as they were): nothing to take
      tracker.shapeChangesTaken?.();
      return false;
    }
    const summary = describeDiskChange(change);
    if (this.state === ReplicationState.InitialReplication) {
      // no point holds the old disks yet: the copy starts over with the new ones
      this.restartInitialCopy(`the disks changed (${summary})`);
      return true;
    }
    // the deltas from before the change ship first, with the disks they have
    const boundary = tracker.firstShapeChange?.();
    if (boundary !== undefined && [...tracker.closedDeltas(this.latestSeq ?? 0).keys()].some((seq) => seq <= boundary)) return false;
    const confirm = diskChangeNeedsConfirmation(change);
    if (confirm && this.confirmedChange !== summary) {
      throw new OsrError('DISK_CHANGE_UNCONFIRMED', `the disks of ${this.vm.name} changed (${summary}); its replica keeps the older points with the disks as they were, and replication waits until the change is confirmed (osr replication confirm-disks ${this.spec.id} on this agent)`);
    }
    this.deps.log.info({ replication: this.spec.id }, `the disks of ${this.vm.name} changed (${summary}): the replica takes the change, and only what is new is copied`);
    this.applyingChange = { disks: this.liveDisks(), confirmed: confirm };
    // deltas closed after the change (a second change came before the replica took the
    // first) have other disks than the replica's next ones: their ranges are resynchronized
    this.rangesOwed = tracker.closedDeltas(this.latestSeq ?? 0).size > 0;
    this.client?.close();
    this.client = undefined;
    return true;
  }

  /** The initial copy starts over, with the disks as they are now (no point holds the old ones yet). */
  private restartInitialCopy(why: string): void {
    this.deps.log.warn({ replication: this.spec.id }, `the initial copy of ${this.vm.name} starts over: ${why}`);
    this.vm.tracking.stop();
    this.applyingChange = { disks: this.liveDisks(), confirmed: false };
    this.client?.close();
    this.client = undefined;
  }

  /** Resynchronize now: compare every block with the replica and send those that differ. */
  requestResync(): void {
    if (this.state === ReplicationState.InitialReplication) throw new OsrError('INVALID_STATE', `${this.vm.name} is still in initial replication; a resync needs a replica to compare with`);
    this.resyncAsked = true;
    this.wake();
  }

  /**
   * Planned failover, first step: the caller has stopped the VM. Ship its final delta and
   * resolve once the replica has applied it and nothing is pending: the replica's latest
   * point is then the VM's last state, and a promotion loses nothing.
   */
  async prepareFailover(timeoutMs: number): Promise<{ point: ReplicationHealth['latestPoint']; pendingLogBytes: number }> {
    if (this.state !== ReplicationState.Replicating) {
      throw new OsrError('INVALID_STATE', `${this.vm.name} is ${this.state}; a failover can be prepared only while it replicates`);
    }
    const { clock } = this.deps;
    const deadline = clock.now() + timeoutMs;
    // writes a tracker does not log as they happen (a hypervisor's bitmap) are known only once its delta closes: that one must be shipped
    const mustShip = this.vm.tracking.activeUnlogged ? this.vm.tracking.activeSeq : undefined;
    for (let first = true; ; first = false) {
      const tracker = this.vm.tracking;
      const pending = this.latestSeq === null ? -1 : tracker.pendingBytes(this.latestSeq);
      if (this.latestSeq !== null && this.latestSeq >= tracker.activeSeq - 1 && pending === 0 && (mustShip === undefined || this.latestSeq >= mustShip)) return { point: this.latest, pendingLogBytes: 0 };
      // something to ship: a cycle now (asked again, as by a shutdown group first, nothing is left and none runs)
      if (first) this.triggerCycle();
      if (this.state !== ReplicationState.Replicating && this.lastError) {
        throw new OsrError('INVALID_STATE', `the final delta of ${this.vm.name} could not be shipped: ${this.lastError.code} ${this.lastError.message}`);
      }
      if (clock.now() > deadline) throw new OsrError('NETWORK_ERROR', `the final delta of ${this.vm.name} did not reach the replica within ${timeoutMs} ms (${pending} bytes pending)`);
      await clock.sleep(50);
    }
  }

  /** Retry now, after an error of either class, instead of waiting. */
  retryNow(): void {
    this.failures = 0;
    this.wake();
  }

  /** A consistency group's cut, first step (group-cuts.ts): prepare the swap, before the writes are held. */
  async cutPrepare(): Promise<PreparedSwap> {
    if (this.spec.group === undefined) throw new OsrError('INVALID_STATE', `${this.vm.name} is not in a consistency group`);
    const tracker = this.vm.tracking;
    if (this.state !== ReplicationState.Replicating || tracker.resync !== undefined || tracker.resyncRequired) {
      throw new OsrError('INVALID_STATE', `${this.vm.name} is ${tracker.resync || tracker.resyncRequired ? 'resynchronizing' : this.state}; the group's cut waits until it replicates`);
    }
    if (!tracker.prepareHeldSwap) throw new OsrError('NOT_SUPPORTED', `the host of ${this.vm.name} cannot close its logs at once; it cannot be in a consistency group`);
    return tracker.prepareHeldSwap();
  }

  /** The cut, while the agent holds the VM's write gate: close the logs of every disk now, as a point of cut `cut`; `shipCut` ships it. */
  cutSwap(p: PreparedSwap, cut: string): { seq: number; durable: Promise<void> } {
    const tracker = this.vm.tracking;
    if (!tracker.swapPrepared) throw new OsrError('NOT_SUPPORTED', `the host of ${this.vm.name} cannot close its logs at once; it cannot be in a consistency group`);
    if (this.state !== ReplicationState.Replicating || tracker.resync !== undefined || tracker.resyncRequired) {
      tracker.dropPrepared?.(p);
      throw new OsrError('INVALID_STATE', `${this.vm.name} began to resynchronize; the group's cut waits until it replicates`);
    }
    return tracker.swapPrepared(p, Consistency.Crash, cut);
  }

  /** A prepared cut that will not be made. */
  cutDrop(p: PreparedSwap): void {
    this.vm.tracking.dropPrepared?.(p);
  }

  /** Ship what a cut closed, now. */
  shipCut(): void {
    this.cutToShip = true;
    this.wake();
  }

  /** Run a cycle now instead of waiting for the copy frequency. */
  triggerCycle(): void {
    this.nextCycleMs = 0;
    this.wake();
  }

  private get stopped(): boolean {
    return this.stopper.signal.aborted;
  }

  /** Wake the loop: now if it waits, else at its next wait (a request made while it works is not lost). */
  private wake(): void {
    this.woken = true;
    this.waker.abort();
  }

  /** Whether someone asked since the last wait (then the wait is skipped); arms the waker for the next wait. */
  private takeWake(): boolean {
    const woken = this.woken;
    this.woken = false;
    if (this.waker.signal.aborted) this.waker = new AbortController();
    return woken;
  }

  private async sleep(ms: number): Promise<void> {
    if (this.takeWake()) return;
    await this.deps.clock.sleep(ms, AbortSignal.any([this.stopper.signal, this.waker.signal]));
    this.woken = false;
  }

  private async run(): Promise<void> {
    const { clock } = this.deps;
    const startAt = this.spec.startAt ? Date.parse(this.spec.startAt) : 0;
    while (!this.stopped && startAt > clock.now() && !this.vm.tracking.enabled) {
      this.state = ReplicationState.Scheduled;
      await this.sleep(startAt - clock.now());
    }
    while (!this.stopped) {
      try {
        const tracker = this.vm.tracking;
        this.resyncWaiting = false;
        let client = await this.ensureConnected();
        await this.refreshDisks();
        if (this.takeDiskChange()) client = await this.ensureConnected();
        const required = tracker.resyncRequired;
        if (this.state === ReplicationState.InitialReplication && !(await this.initialCopy(client))) continue;
        else if (this.divergent === 'all' && !required) await this.resync(client, 'reverse replication: the old primary\'s changes are unknown, every block is compared');
        else if (this.vm.divergesEverywhere?.() === true && !required) await this.resync(client, 'reverse replication: what this VM wrote where it ran is unknown (a failback from Azure), every block is compared');
        else if (this.divergent && this.divergent !== 'all' && !required) await this.reverseResync(client, this.divergent);
        else if (this.rangesOwed && !required) await this.reverseResync(client, {});
        else if (required || this.resyncAsked || (tracker.resync && tracker.activeSeq === tracker.resync.seq)) {
          if (required && !this.resyncAsked && !this.inResyncWindow()) {
            this.state = ReplicationState.ResyncRequired;
            this.resyncWaiting = true;
            throw new OsrError('RESYNC_REQUIRED', `disk changes of ${this.vm.name} cannot be trusted: ${required.reason}; the resync waits for its window (${this.spec.resyncWindow ?? DEFAULT_RESYNC_WINDOW}) or for a request`);
          }
          await this.resync(client, required?.reason);
        }
        await this.shipPending(client);
        // the deltas from before a change of the VM's disks are out: the replica takes the change
        if (this.diskChangePending()) continue;
        this.state = ReplicationState.Replicating;
        // a group's member ships the cuts its coordinator makes (cutSwap wakes it); it cycles only when asked
        if (this.spec.group !== undefined && this.nextCycleMs !== 0) {
          // a cut made while the last was shipping is shipped at once
          if (!this.cutToShip) await this.sleep(GROUP_IDLE_MS);
          this.cutToShip = false;
          continue;
        }
        const wait = this.nextCycleMs - clock.now();
        if (wait > 0) await this.sleep(wait);
        if (this.stopped) break;
        if (clock.now() < this.nextCycleMs) continue;
        this.scheduleNextCycle();
        await this.swapAndShip(client);
      } catch (e) {
        if (this.stopped) break;
        await this.onFailure(toOsrError(e, 'NETWORK_ERROR'));
      }
    }
    this.client?.close();
    this.client = undefined;
  }

  private inResyncWindow(): boolean {
    return this.untilResyncWindow() === 0;
  }

  /**
   * Resynchronize every disk with the replica's latest point: the replica sends the
   * checksums of its blocks, a window at a time; this side reads the same blocks, and sends
   * those that differ (zero blocks as zero ranges). The guest goes on writing: the change
   * log opened when the resync began holds every write since, and is shipped right after,
   * so the resync ends in one crash-consistent point. The replica stages what it receives
   * and touches neither its images nor its points until then (resync-stage.ts). An
   * interrupted resync resumes from the replica's last checkpoint.
   */
  private async resync(client: ReplicaClient, reason: string | undefined, only?: DiskRanges): Promise<void> {
    const tracker = this.vm.tracking;
    if (this.latestSeq === null) throw new OsrError('INTERNAL', `resync of ${this.vm.name} without a recovery point at the replica`);
    const asked = this.resyncAsked;
    this.resyncAsked = false;
    this.state = ReplicationState.Resynchronizing;
    // a resync of known ranges keeps the open log: its writes go out at the end, while those
    // of the closed logs are among the ranges
    // a replica numbered ahead of this VM (stale after a failback, its points of the VM's earlier life): the resync's point comes after them
    const r = await tracker.beginResync(only ? { keepActive: true } : { after: this.latestSeq });
    const blockSize = this.spec.resyncBlockSize ?? DEFAULT_RESYNC_BLOCK_SIZE;
    const begun = await client.request<{ disks: Record<string, { offset: number; finished: boolean }> }>('resync-begin', { id: r.id, seq: r.seq, blockSize });
    const ranges = new Map(this.vm.disks.map((d) => [d.name, only ? alignRanges(only[d.name] ?? [], blockSize, d.size) : ([[0, d.size]] as Range[])]));
    const totalBytes = this.vm.disks.reduce((n, d) => n + rangeBytes(ranges.get(d.name)!), 0);
    const doneBytes = this.vm.disks.reduce((n, d) => n + bytesBelow(ranges.get(d.name)!, begun.disks[d.name]?.finished ? d.size : (begun.disks[d.name]?.offset ?? 0)), 0);
    const previous = this.resyncProgress?.id === r.id ? this.resyncProgress : null;
    this.resyncProgress = {
      id: r.id,
      reason: previous?.reason ?? reason ?? (this.onboarding ? 'onboarding: the replica already held a copy of the VM' : asked ? 'asked for' : 'interrupted resync resumed'),
      totalBytes,
      doneBytes,
      percent: totalBytes > 0 ? Math.floor((doneBytes / totalBytes) * 1000) / 10 : 100,
      differingBytes: previous?.differingBytes ?? 0,
      wireBytesSent: previous?.wireBytesSent ?? 0,
      wireBytesReceived: previous?.wireBytesReceived ?? 0,
      rateBytesPerSec: 0,
      etaSeconds: null,
      currentDisk: null,
      startedAt: new Date(this.deps.clock.now()).toISOString(),
      resumedFromBytes: doneBytes,
      completedAt: null,
    };
    this.deps.log.info({ replication: this.spec.id, resync: r.id, resumedFromBytes: doneBytes }, `resync of ${this.vm.name} ${doneBytes > 0 ? 'resumed' : 'started'}: ${this.resyncProgress.reason}`);
    for (const disk of this.vm.disks) {
      const at = begun.disks[disk.name];
      if (at?.finished) continue;
      this.resyncProgress.currentDisk = disk.name;
      if (only) await this.resyncRanges(client, disk.name, disk.reader, disk.size, ranges.get(disk.name)!, at?.offset ?? 0);
      else await this.resyncDisk(client, disk.name, disk.reader, disk.size, at?.offset ?? 0, blockSize);
    }
    this.resyncProgress.currentDisk = null;
    // the resync's point: its log closes now and goes out with the staged blocks
    const seq = await this.swap();
    if (seq !== r.seq) throw new OsrError('INTERNAL', `resync of ${this.vm.name} tracked log ${r.seq} but closed ${seq}`);
    this.rangesOwed = false;
    this.state = ReplicationState.Replicating;
    this.nextCycleMs = this.deps.phases.place(this.spec.id, this.deps.clock.now(), this.spec.copyFrequencyMs);
  }

  /**
   * Reverse replication begins here: the replica is the old primary's disks, which differ
   * from this VM only where either side wrote since the last point they had in common. The
   * replica knows its side's ranges (its change logs, kept when it was demoted); this side
   * adds its own (its closed change logs, and the points its promotion rolled back), made
   * durable there before the logs that hold them go. Then only those ranges are sent.
   */
  private async reverseResync(client: ReplicaClient, known: DiskRanges): Promise<void> {
    const tracker = this.vm.tracking;
    let ranges = known;
    const resuming = tracker.resync !== undefined && tracker.activeSeq === tracker.resync.seq;
    if (!resuming) {
      // a swap (a group's cut) while the replica answers closes a log whose ranges were not
      // sent: they are sent again until no swap came between (the replica unions them)
      for (;;) {
        const at = tracker.activeSeq;
        // within the disks as they are now (a log of a disk shrunk since may hold writes past its end)
        const mine = clipRanges(unionDiskRanges(tracker.loggedRanges('closed'), this.vm.divergence?.()), this.vm.disks);
        const reply = await client.request<{ divergent: OpenResult['divergent'] }>('resync-ranges', { ranges: mine });
        if (!reply.divergent || reply.divergent === 'all') throw new OsrError('PROTOCOL_ERROR', `the replica of ${this.vm.name} answered no ranges to resynchronize`);
        ranges = reply.divergent;
        if (tracker.activeSeq === at) break;
      }
    }
    await this.resync(client, 'reverse replication: the ranges either site wrote since their last common point', ranges);
  }

  /** The staged blocks below `offset` of `disk` are made durable at the replica: a resync resumes from there. */
  private async resyncCheckpoint(client: ReplicaClient, disk: string, offset: number): Promise<void> {
    await client.request('resync-checkpoint', { disk, offset, finished: false });
    this.failures = 0;
  }

  /** Percent, rate and ETA of the running resync, from the work done since `startMs`. */
  private updateResyncRate(startMs: number, startDone: number): void {
    const progress = this.resyncProgress!;
    const elapsed = (this.deps.clock.now() - startMs) / 1000;
    progress.percent = progress.totalBytes > 0 ? Math.floor((progress.doneBytes / progress.totalBytes) * 1000) / 10 : 100;
    progress.rateBytesPerSec = elapsed > 0 ? Math.round((progress.doneBytes - startDone) / elapsed) : 0;
    progress.etaSeconds = progress.rateBytesPerSec > 0 ? Math.round((progress.totalBytes - progress.doneBytes) / progress.rateBytesPerSec) : null;
  }

  /** Send the current content of known ranges of one disk (no comparison), from a checkpoint. */
  private async resyncRanges(client: ReplicaClient, disk: string, reader: DiskReader, size: number, ranges: readonly Range[], from: number): Promise<void> {
    const progress = this.resyncProgress!;
    const startMs = this.deps.clock.now();
    const startDone = progress.doneBytes;
    const account = wireAccounting(client, progress);
    await client.notice({ type: 'resync-disk', disk });
    // the ranges from the checkpoint on, in pieces of at most COPY_CHUNK, sent a batch at a time
    let sinceCheckpoint = 0;
    let batch: Range[] = [];
    let bytes = 0;
    const send = async (upTo: number) => {
      if (this.stopped) throw new OsrError('NETWORK_ERROR', 'replication stopped');
      await this.sendCurrent(client, disk, reader, 0, batch);
      progress.doneBytes += bytes;
      sinceCheckpoint += bytes;
      batch = [];
      bytes = 0;
      if (sinceCheckpoint >= RESYNC_CHECKPOINT_BYTES && upTo < size) {
        await this.resyncCheckpoint(client, disk, upTo);
        sinceCheckpoint = 0;
      }
      account();
      this.updateResyncRate(startMs, startDone);
    };
    for (const [off, len] of ranges) {
      for (let pos = Math.max(off, from); pos < off + len; ) {
        const n = Math.min(COPY_CHUNK, off + len - pos);
        batch.push([pos, n]);
        bytes += n;
        pos += n;
        if (bytes >= RESYNC_READ_BATCH) await send(pos);
      }
    }
    if (batch.length > 0) await send(size);
    await client.request('resync-checkpoint', { disk, offset: size, finished: true });
    account();
  }

  private async resyncDisk(client: ReplicaClient, disk: string, reader: DiskReader, size: number, from: number, blockSize: number): Promise<void> {
    const progress = this.resyncProgress!;
    const startMs = this.deps.clock.now();
    const startDone = progress.doneBytes;
    const window = Math.min(RESYNC_WINDOW_BYTES, 65536 * blockSize);
    const account = wireAccounting(client, progress);
    // the checksums come back raw (a replica that predates binary replies sends base64)
    const ask = (offset: number) => client.request<{ data?: Buffer; hashes?: string }>('resync-hashes', { disk, offset, length: Math.min(window, size - offset), blockSize, binary: true });
    await client.notice({ type: 'resync-disk', disk });
    let sinceCheckpoint = 0;
    // the replica hashes the next windows while this one is compared and sent
    const theirs: Promise<{ data?: Buffer; hashes?: string }>[] = [];
    const askAhead = (pos: number) => {
      for (let next = pos + theirs.length * window; theirs.length < RESYNC_WINDOWS_AHEAD && next < size; next += window) {
        const reply = ask(next);
        // a broken connection rejects every pending ask; only the one awaited reports it
        reply.catch(() => undefined);
        theirs.push(reply);
      }
    };
    askAhead(from);
    for (let pos = from; pos < size; pos += window) {
      if (this.stopped) throw new OsrError('NETWORK_ERROR', 'replication stopped');
      const length = Math.min(window, size - pos);
      const ours = await reader.blockDigests(pos, length, blockSize);
      const reply = await theirs.shift()!;
      askAhead(pos + window);
      const hashes = reply.data ?? Buffer.from(reply.hashes ?? '', 'base64');
      if (hashes.length !== ours.length) throw new OsrError('PROTOCOL_ERROR', `replica sent ${hashes.length / DIGEST_BYTES} block checksums for ${ours.length / DIGEST_BYTES} blocks`);
      const runs = differingRuns(ours, hashes, blockSize, length, MAX_DATA_BYTES);
      await this.sendCurrent(client, disk, reader, pos, runs);
      progress.doneBytes += length;
      sinceCheckpoint += length;
      if (sinceCheckpoint >= RESYNC_CHECKPOINT_BYTES && pos + length < size) {
        await this.resyncCheckpoint(client, disk, pos + length);
        sinceCheckpoint = 0;
      }
      account();
      this.updateResyncRate(startMs, startDone);
    }
    await client.request('resync-checkpoint', { disk, offset: size, finished: true });
    account();
  }

  /**
   * Send the current content of `runs` (offsets relative to `base`) of a disk: each run's
   * bytes as data, or as a zero range when they are all zeroes. The runs are read a batch
   * of at most RESYNC_READ_BATCH bytes at a time, in one gathered read, and sent in order.
   */
  private async sendCurrent(client: ReplicaClient, disk: string, reader: DiskReader, base: number, runs: readonly Range[]): Promise<void> {
    const progress = this.resyncProgress!;
    for (let i = 0; i < runs.length; ) {
      const pieces: IoPiece[] = [];
      let bytes = 0;
      for (; i < runs.length && (pieces.length === 0 || bytes + runs[i]![1] <= RESYNC_READ_BATCH); i++) {
        pieces.push([base + runs[i]![0], bytes, runs[i]![1]]);
        bytes += runs[i]![1];
      }
      // a batch's buffer is its own: frames go out without waiting for each to be flushed
      const buf = await reader.readPieces(Buffer.allocUnsafe(bytes), pieces);
      for (const [offset, at, length] of pieces) {
        const run = buf.subarray(at, at + length);
        if (isZero(run)) await client.notice({ type: 'resync-zero', disk, offset, length });
        else for (let o = 0; o < length; o += MAX_DATA_BYTES) await client.sendData(offset + o, run.subarray(o, Math.min(length, o + MAX_DATA_BYTES)), false);
        progress.differingBytes += length;
      }
    }
  }

  private async onFailure(err: OsrError): Promise<void> {
    const { clock, log } = this.deps;
    this.lastError = { code: err.code, message: err.message, at: new Date(clock.now()).toISOString() };
    this.client?.close();
    this.client = undefined;
    if (err.code === 'CHANGE_LOG_CORRUPT') this.vm.tracking.markResyncRequired(err.message);
    if (err.code === 'EPOCH_STALE') {
      // another site was promoted: this copy must not take writes any more
      // the peer's word for the epoch: a number above ours, else ours + 1
      const said = Number(err.details?.current);
      const current = Number.isSafeInteger(said) && said > this.spec.epoch ? said : this.spec.epoch + 1;
      this.vm.fence?.(`replication epoch ${this.spec.epoch} is stale: ${this.vm.name} was promoted elsewhere with epoch ${current}; demote this copy to reverse replication`, current);
    }
    if (this.state === ReplicationState.Replicating) this.recordCycle(false);
    this.failures++;
    if (err.code === 'RESYNC_REQUIRED' || err.code === 'CHANGE_LOG_CORRUPT') {
      this.state = ReplicationState.ResyncRequired;
    } else if (err.code === 'EPOCH_STALE') {
      this.state = ReplicationState.Fenced;
    } else if (!err.recoverable) {
      this.state = ReplicationState.Error;
    }
    this.checkLogGrowth();
    let waitMs: number | null;
    if (err.code === 'DISK_CHANGE_UNCONFIRMED' || err.code === 'DISK_CHANGE_UNSUPPORTED') waitMs = DISK_CHANGE_LOOK_MS; // confirmed, or the disk put back as it was
    else if (err.recoverable) waitMs = retryDelayMs(this.deps.retry, this.failures);
    else if (this.state === ReplicationState.ResyncRequired) waitMs = this.untilResyncWindow();
    else waitMs = null;
    log.warn({ replication: this.spec.id, code: err.code, recoverable: err.recoverable, attempt: this.failures, retryInMs: waitMs }, err.message);
    await this.waitToRetry(waitMs);
  }

  /**
   * Wait `ms` (null: until someone acts: a retry, a resync or a cycle asked for, or a stop),
   * checking meanwhile whether the pending logs have grown past the resync threshold.
   */
  private async waitToRetry(ms: number | null): Promise<void> {
    const { clock } = this.deps;
    const until = ms === null ? null : clock.now() + ms;
    this.nextRetryMs = until;
    this.waitingForAction = until === null;
    try {
      if (this.takeWake()) return;
      const signal = AbortSignal.any([this.stopper.signal, this.waker.signal]);
      while (!signal.aborted) {
        const left = until === null ? GROWTH_CHECK_MS : until - clock.now();
        if (left <= 0) break;
        await clock.sleep(Math.min(left, GROWTH_CHECK_MS), signal);
        this.checkLogGrowth();
      }
    } finally {
      this.woken = false;
      this.nextRetryMs = null;
      this.waitingForAction = false;
    }
  }

  /** ms until a resync that became necessary may start (null: never on its own) */
  private untilResyncWindow(): number | null {
    const w = this.spec.resyncWindow ?? DEFAULT_RESYNC_WINDOW;
    if (w === 'never') return null;
    if (w === 'always') return 0;
    const tw = parseTimeWindow(w);
    const now = this.deps.clock.now();
    return inTimeWindow(tw, now) ? 0 : msUntilMinute(tw.startMinute, now);
  }

  /**
   * Change logs that cannot reach the replica pile up. Once a disk's pending logs reach half
   * its size, they cost more space than they are worth: a resync becomes necessary (and
   * drops the logs when it starts). Checked while a failure keeps the logs from shipping;
   * logs that ship do not pile up, however much one cycle wrote.
   */
  private checkLogGrowth(): void {
    const tracker = this.vm.tracking;
    if (!tracker.enabled || tracker.resyncRequired || this.state === ReplicationState.InitialReplication || this.latestSeq === null) return;
    const pending = tracker.pendingBytesByDisk(this.latestSeq);
    for (const disk of this.vm.disks) {
      const bytes = pending.get(disk.name) ?? 0;
      if (bytes >= disk.size * LOG_GROWTH_RESYNC_SHARE) {
        const reason = `pending change logs of disk ${disk.name} (${bytes} bytes) reached ${LOG_GROWTH_RESYNC_SHARE * 100}% of its size (${disk.size} bytes)`;
        tracker.markResyncRequired(reason);
        this.state = ReplicationState.ResyncRequired;
        this.deps.log.warn({ replication: this.spec.id, disk: disk.name, pendingBytes: bytes }, `resync of ${this.vm.name} required: ${reason}`);
        return;
      }
    }
  }

  /** Wait until `bytes` may be sent under this replication's and the agent's limits. */
  private async pace(bytes: number): Promise<void> {
    await this.deps.pacer?.take(bytes, this.stopper.signal);
    await this.deps.agentPacer?.take(bytes, this.stopper.signal);
  }

  /** the tighter of the limits in force now, bytes per second (null: unlimited) */
  private bandwidthLimit(): number | null {
    const rates = [this.deps.pacer?.rate, this.deps.agentPacer?.rate].filter((r): r is number => typeof r === 'number');
    return rates.length > 0 ? Math.min(...rates) : null;
  }

  private recordChurn(timeMs: number, bytes: number, spanMs: number): void {
    if (spanMs <= 0) return;
    this.deltas.push({ timeMs, bytes, spanMs });
    this.deltas = this.deltas.filter((d) => d.timeMs > timeMs - HOUR);
  }

  /** Change-log bytes per second over the last hour's deltas, and the busiest delta's rate. */
  churn(): ReplicationHealth['churn'] {
    const now = this.deps.clock.now();
    const recent = this.deltas.filter((d) => d.timeMs > now - HOUR);
    if (recent.length === 0) return null;
    const span = recent.reduce((n, d) => n + d.spanMs, 0);
    const bytes = recent.reduce((n, d) => n + d.bytes, 0);
    const peak = Math.max(...recent.filter((d) => d.spanMs >= 1000).map((d) => d.bytes / (d.spanMs / 1000)), 0);
    return { bytesPerSec: Math.round(bytes / (span / 1000)), peakBytesPerSec: Math.round(Math.max(peak, bytes / (span / 1000))), windowSeconds: Math.round(span / 1000), deltas: recent.length };
  }

  private recordCycle(ok: boolean): void {
    const now = this.deps.clock.now();
    this.cycles.push({ atMs: now, ok });
    this.cycles = this.cycles.filter((c) => c.atMs > now - HOUR);
  }

  private openArgs(): Omit<OpenRequest, 'reset'> {
    const disks = this.applyingChange?.disks ?? this.agreed ?? this.liveDisks();
    return { vmId: this.vm.id, vmName: this.vm.name, disks, retention: this.spec.retention, epoch: this.spec.epoch, ...(this.applyingChange?.confirmed ? { confirmedShrink: true } : {}) };
  }

  private async ensureConnected(): Promise<ReplicaClient> {
    if (this.client && !this.client.closed) return this.client;
    let fresh = !this.vm.tracking.enabled;
    const peer = this.spec.peer;
    // a replica in Azure storage is written by this agent itself: the session runs in process
    const client =
      peer.kind === 'azure'
        ? await ReplicaClient.over(this.deps.inProcess(peer, this.vm.id), peer.containerUrl, this.deps.agentName, false)
        : await ReplicaClient.connect(peer, this.deps.tls(), this.deps.agentName, this.spec.compression);
    this.channel = client.channel;
    let openArgs = this.openArgs();
    let open: OpenResult;
    try {
      try {
        open = await client.request<OpenResult>('open', { ...openArgs, reset: false });
      } catch (e) {
        // a change the replica did not take: the next open is with the disks it has
        this.applyingChange = undefined;
        // disks shrunk or removed (this agent restarted since): the replica's disks are
        // those agreed until the user confirms the change (takeDiskChange)
        const theirs = (e as OsrError).details?.disks;
        if (!(e instanceof OsrError) || e.code !== 'DISK_CHANGE_UNCONFIRMED' || !Array.isArray(theirs) || theirs.length > 64) throw e;
        this.agreed = theirs.map((d: { id?: unknown; name?: unknown; size?: unknown }) => ({ id: safeName(d.id, 'disk id'), name: safeName(d.name, 'disk name'), size: safeInteger(d.size, 'disk size', 0, MAX_DISK_BYTES) }));
        openArgs = this.openArgs();
        open = await client.request<OpenResult>('open', { ...openArgs, reset: false });
      }
    } catch (e) {
      client.close();
      throw e;
    }
    if (fresh && open.initialDone && open.points.some((p) => !p.unverified) && !open.divergent) {
      // onboarding: the replica already holds a copy of this VM (an earlier protection), so
      // its blocks are compared instead of copied. Tracking starts now; the resync drops
      // nothing it needs and ends in a point equal to the disks.
      this.deps.log.info({ replication: this.spec.id }, `the replica agent already holds a copy of ${this.vm.name}: resynchronizing instead of a full initial copy`);
      await this.vm.tracking.start();
      this.resyncAsked = true;
      this.onboarding = true;
      fresh = false;
    } else if (fresh) {
      open = await client.request<OpenResult>('open', { ...openArgs, reset: true });
    }
    if (!open.initialDone && !fresh && this.vm.tracking.resyncRequired) {
      // the logs of an unfinished initial copy cannot be trusted, and there is no point to
      // resynchronize with: the copy starts over
      this.deps.log.warn({ replication: this.spec.id }, `initial replication of ${this.vm.name} starts over: ${this.vm.tracking.resyncRequired.reason}`);
      this.vm.tracking.stop();
      fresh = true;
      open = await client.request<OpenResult>('open', { ...openArgs, reset: true });
    }
    client.pace = (bytes) => this.pace(bytes);
    this.client = client;
    this.agreed = openArgs.disks;
    if (this.applyingChange) {
      this.applyingChange = undefined;
      this.confirmedChange = undefined;
      this.vm.tracking.shapeChangesTaken?.();
    }
    this.latestSeq = open.latestSeq;
    this.divergent = open.divergent ?? null;
    // the base of a replica made from an old primary's disks is not a point of this VM
    const last = open.points.filter((p) => !p.unverified).at(-1);
    if (last) this.latest = { seq: last.seq, time: new Date(last.timeMs).toISOString(), consistency: last.consistency };
    if (!open.initialDone) {
      this.state = ReplicationState.InitialReplication;
      await this.beginInitial(open, fresh);
    } else if (this.latestSeq !== null) {
      this.vm.tracking.releaseThrough(this.latestSeq);
    }
    return client;
  }

  /**
   * Tracking starts before the copy (that instant is the snapshot): every write made
   * while the copy runs lands in the change log and is shipped after it, so the first
   * recovery point is exactly the VM at the first swap after the copy. A fresh copy drops
   * older closed logs, which the copy itself contains.
   */
  private async beginInitial(open: OpenResult, fresh: boolean): Promise<void> {
    const tracker = this.vm.tracking;
    if (fresh) await tracker.start();
    else if (Object.keys(open.copied).length === 0 && open.finishedDisks.length === 0) tracker.releaseThrough(tracker.activeSeq - 1);
    const totalBytes = this.vm.disks.reduce((n, d) => n + d.size, 0);
    const doneBytes = this.vm.disks.reduce((n, d) => n + (open.finishedDisks.includes(d.name) ? d.size : (open.copied[d.name] ?? 0)), 0);
    this.initial = {
      totalBytes,
      doneBytes,
      sentBytes: 0,
      wireBytes: 0,
      rateBytesPerSec: 0,
      etaSeconds: null,
      currentDisk: null,
      startedAt: new Date(this.deps.clock.now()).toISOString(),
      resumedFromBytes: doneBytes,
      durableBytes: doneBytes,
      completedAt: null,
    };
    this.initialOpen = open;
  }

  private initialOpen: OpenResult | undefined;
  private readonly copyBuffers = [Buffer.allocUnsafe(COPY_CHUNK), Buffer.allocUnsafe(COPY_CHUNK)];

  private updateRate(): void {
    const p = this.initial;
    if (!p) return;
    const elapsed = (this.deps.clock.now() - Date.parse(p.startedAt)) / 1000;
    const done = p.doneBytes - p.resumedFromBytes;
    p.rateBytesPerSec = elapsed > 0 ? Math.round(done / elapsed) : 0;
    p.etaSeconds = p.rateBytesPerSec > 0 ? Math.round((p.totalBytes - p.doneBytes) / p.rateBytesPerSec) : null;
  }

  /**
   * Offline initial replication: write the export (once), then wait for the replica to
   * import it, looking again every first-retry interval (or at once when asked). Resolves
   * true once the replica holds every disk.
   */
  private async offlineSeed(client: ReplicaClient, open: OpenResult): Promise<boolean> {
    const seq = this.vm.tracking.activeSeq;
    if (open.finishedDisks.length === this.vm.disks.length) {
      if (open.seedSeq === null || open.seedSeq === seq) return true;
      // an export from before change tracking last started over: its writes since are lost
      this.deps.log.warn({ replication: this.spec.id, imported: open.seedSeq, current: seq }, `the replica of ${this.vm.name} imported an outdated offline export; it is dropped and a new export written`);
      await client.request<OpenResult>('open', { ...this.openArgs(), reset: true });
    }
    const dir = this.spec.exportDir!;
    const progress = this.initial!;
    progress.offline ??= { exportDir: dir, exportedAt: null };
    const done = finishedExport(dir, this.vm.id, seq);
    if (done) progress.offline.exportedAt = done.createdAt;
    else {
      this.deps.log.info({ replication: this.spec.id, dir }, `offline initial replication of ${this.vm.name}: writing the export`);
      const m = await writeExport(dir, this.vm, this.spec.epoch, seq, this.deps.clock.now(), (n) => {
        progress.doneBytes += n;
        this.updateRate();
      }, () => this.stopped);
      progress.offline.exportedAt = m.createdAt;
      this.deps.log.info({ replication: this.spec.id, dir }, `offline export of ${this.vm.name} written; import it at the replica (osr replica import --dir ...)`);
    }
    this.state = ReplicationState.WaitingForImport;
    this.client?.close();
    this.client = undefined;
    await this.sleep(retryDelayMs(this.deps.retry, 1));
    return false;
  }

  /** Copy every disk, one after another, from where the replica's checkpoints say. False: not yet (offline). */
  private async initialCopy(client: ReplicaClient): Promise<boolean> {
    const open = this.initialOpen!;
    if (this.spec.initialReplication === 'offline' && !(await this.offlineSeed(client, open))) return false;
    for (const disk of this.vm.disks) {
      if (open.finishedDisks.includes(disk.name)) continue;
      this.initial!.currentDisk = disk.name;
      await this.copyDisk(client, disk.name, disk.reader, disk.size, open.copied[disk.name] ?? 0);
    }
    this.initial!.currentDisk = null;
    this.updateRate();
    // a disk changed while the copy ran: the copy is no longer of one instant
    if (this.diskChangePending() || this.vm.tracking.firstShapeChange?.() !== undefined) {
      this.restartInitialCopy('a disk changed while it ran');
      return false;
    }
    await this.swap();
    this.state = ReplicationState.Replicating;
    if (this.initial?.offline) this.deps.log.info({ replication: this.spec.id }, `the replica of ${this.vm.name} imported the offline export; delta replication goes on from it`);
    // VMs whose copies end together (a fresh site, empty disks) would otherwise swap and
    // ship together every cycle, all competing: the first cycle goes where the agent has room
    this.nextCycleMs = this.deps.phases.place(this.spec.id, this.deps.clock.now(), this.spec.copyFrequencyMs);
    return true;
  }

  /**
   * The cycle due now starts: the next one is one copy frequency after it, keeping the
   * replication's phase. A cycle run on request, the first after a restart, or one that
   * started more than a frequency late has no phase to keep and is placed afresh.
   */
  private scheduleNextCycle(): void {
    const now = this.deps.clock.now();
    const f = this.spec.copyFrequencyMs;
    const due = this.nextCycleMs;
    if (due > 0 && now - due < f) {
      this.nextCycleMs = due + f;
      this.deps.phases.set(this.spec.id, this.nextCycleMs);
    } else {
      this.nextCycleMs = this.deps.phases.place(this.spec.id, now, f);
    }
  }

  private async copyDisk(client: ReplicaClient, disk: string, reader: DiskReader, size: number, from: number): Promise<void> {
    const progress = this.initial!;
    await client.notice({ type: 'copy-begin', disk });
    // the checkpoint in flight: its reply is awaited at the next checkpoint, while copying
    // goes on; a refusal is kept (never left as a rejected promise nobody awaits yet) and
    // ends the copy at the next chunk, so the loop retries from the last durable checkpoint
    let checkpoint: Promise<void> | undefined;
    let refused: unknown;
    const throwIfRefused = () => {
      if (refused !== undefined) throw refused;
    };
    let sinceCheckpoint = 0;
    let cursor = from;
    const zero = async (offset: number, length: number) => {
      if (length > 0) await client.notice({ type: 'copy-zero', disk, offset, length });
    };
    let durable = from;
    const markCheckpoint = async (offset: number, finished: boolean) => {
      if (checkpoint) await checkpoint;
      throwIfRefused();
      const { reply } = await client.requestLater('copy-checkpoint', { disk, offset, finished });
      checkpoint = reply.then(
        () => {
          this.failures = 0;
          progress.durableBytes += offset - durable;
          durable = offset;
        },
        (e: unknown) => {
          refused ??= e;
        },
      );
      sinceCheckpoint = 0;
    };
    // without allocation facts every range is data: all-zero chunks are still skipped below
    const ranges = this.vm.capabilities.sparseRanges ? await reader.dataRanges(from, size) : [{ offset: from, length: size - from }];
    for (const r of ranges) {
      if (this.stopped) throw new OsrError('NETWORK_ERROR', 'replication stopped');
      await zero(cursor, r.offset - cursor);
      progress.doneBytes += r.offset - cursor;
      const end = r.offset + r.length;
      let pos = r.offset;
      // buffers are reused (a sent frame's buffer is free once sendData resolves), so the
      // copy does not churn the garbage collector with a new 4 MiB buffer per chunk
      let turn = 0;
      let next: Promise<Buffer> | undefined = reader.read(pos, Math.min(COPY_CHUNK, end - pos), this.copyBuffers[turn]);
      while (next) {
        const buf = await next;
        const at = pos;
        pos += buf.length;
        turn = (turn + 1) % this.copyBuffers.length;
        next = pos < end ? reader.read(pos, Math.min(COPY_CHUNK, end - pos), this.copyBuffers[turn]) : undefined;
        if (isZero(buf)) {
          await zero(at, buf.length);
        } else {
          for (let o = 0; o < buf.length; o += MAX_DATA_BYTES) {
            const part = buf.subarray(o, Math.min(buf.length, o + MAX_DATA_BYTES));
            progress.wireBytes += await client.sendData(at + o, part);
          }
          progress.sentBytes += buf.length;
          sinceCheckpoint += buf.length;
        }
        progress.doneBytes += buf.length;
        throwIfRefused();
        if (sinceCheckpoint >= CHECKPOINT_BYTES) await markCheckpoint(pos, false);
        this.updateRate();
      }
      cursor = end;
    }
    await zero(cursor, size - cursor);
    progress.doneBytes += size - cursor;
    await markCheckpoint(size, true);
    await checkpoint;
    throwIfRefused();
  }

  /** Close the change logs of all disks at one instant; app-consistent when due and quiesced. */
  private async swap(stream?: DeltaStream): Promise<number> {
    const { clock } = this.deps;
    let consistency: Consistency = Consistency.Crash;
    const appDue = this.spec.appConsistentEveryMs > 0 && clock.now() - this.lastAppMs >= this.spec.appConsistentEveryMs;
    if (appDue) {
      this.lastAppMs = clock.now();
      const frozen = await this.runHook('freeze');
      if (frozen) consistency = Consistency.App;
    }
    const seq = await this.vm.tracking.swap(consistency, stream);
    if (consistency === Consistency.App) await this.runHook('thaw');
    return seq;
  }

  /** Run the VM's quiesce hook; no hook means nothing to quiesce (a lab guest has no applications). */
  private async runHook(phase: 'freeze' | 'thaw'): Promise<boolean> {
    const hook = this.deps.quiesceHook?.(this.vm.name);
    if (!hook) return true;
    return new Promise((resolve) => {
      if ('refused' in hook) {
        this.lastError = { code: 'HOOK_FAILED', message: `quiesce hook ${phase} for ${this.vm.name}: ${hook.refused}`, at: new Date(this.deps.clock.now()).toISOString() };
        this.deps.log.warn({ replication: this.spec.id, code: 'HOOK_FAILED' }, this.lastError.message);
        return resolve(false);
      }
      const child = spawn(hook.path, [phase, this.vm.name], { stdio: 'ignore', env: { ...process.env, OSR_VM: this.vm.name, OSR_PHASE: phase } });
      const timer = setTimeout(() => child.kill('SIGKILL'), this.deps.hookTimeoutMs);
      const fail = (why: string) => {
        clearTimeout(timer);
        this.lastError = { code: 'HOOK_FAILED', message: `quiesce hook ${phase} for ${this.vm.name}: ${why}`, at: new Date(this.deps.clock.now()).toISOString() };
        this.deps.log.warn({ replication: this.spec.id, code: 'HOOK_FAILED' }, this.lastError.message);
        resolve(false);
      };
      child.on('error', (e) => fail(e.message));
      child.on('exit', (code, signal) => {
        if (code === 0) {
          clearTimeout(timer);
          resolve(true);
        } else fail(signal ? `killed by ${signal} (timeout ${this.deps.hookTimeoutMs} ms)` : `exit code ${code}`);
      });
    });
  }

  /** Ship every closed set of logs the replica has not applied, oldest first. */
  private async shipPending(client: ReplicaClient): Promise<void> {
    const tracker = this.vm.tracking;
    await tracker.closedSynced();
    const syncedMs = this.deps.clock.now();
    const closed = [...tracker.closedDeltas(this.latestSeq ?? 0).entries()].sort((a, b) => a[0] - b[0]);
    // the disks the replica has: every delta shipped has a log of each (a log of a disk the
    // replica never had, added and removed again before it took the change, is not shipped)
    const disks = this.agreed ?? this.liveDisks();
    for (const [seq, logs] of closed) {
      // the VM's disks changed: the deltas from before ship with the disks they have, then the loop gives the replica the change
      if (this.diskChangePending() && !(seq <= (tracker.firstShapeChange?.() ?? -1))) return;
      const beginMs = this.deps.clock.now();
      if (!disks.every((d) => logs.some((l) => l.disk === d.name))) {
        throw new OsrError('CHANGE_LOG_CORRUPT', `delta ${seq} of ${this.vm.name} has logs of ${logs.map((l) => l.disk).join(', ') || 'no disk'}, not of its disks ${disks.map((d) => d.name).join(', ')}`);
      }
      const meta = tracker.pointMetaOf(seq, logs[0].closedMs);
      const deltaBytes = logs.reduce((n, l) => n + (disks.some((d) => d.name === l.disk) ? l.bytes : 0), 0);
      const resync = tracker.resync?.seq === seq ? tracker.resync.id : undefined;
      await client.request('delta-begin', { point: { seq, timeMs: meta.timeMs, consistency: meta.consistency, deltaBytes, ...(meta.cut !== undefined ? { cut: meta.cut } : {}) }, resync });
      for (const disk of disks) {
        const log = logs.find((l) => l.disk === disk.name)!;
        await client.notice({ type: 'delta-disk', disk: disk.name });
        const fd = fs.openSync(log.file, 'r');
        // the next chunk is read while this one is sent (each chunk a buffer of its own)
        const readChunk = (pos: number) => {
          const r = readAt(fd, Math.min(COPY_CHUNK, log.bytes - pos), pos);
          r.catch(() => undefined);
          return r;
        };
        let next: Promise<Buffer> | undefined = log.bytes > 0 ? readChunk(0) : undefined;
        try {
          for (let pos = 0; pos < log.bytes; pos += COPY_CHUNK) {
            const buf = await next!;
            next = pos + COPY_CHUNK < log.bytes ? readChunk(pos + COPY_CHUNK) : undefined;
            this.bytesShipped += await client.sendData(pos, buf, false);
          }
        } finally {
          // no read may be left running on the descriptor
          await next?.catch(() => undefined);
          fs.closeSync(fd);
        }
      }
      const sentMs = this.deps.clock.now();
      const res = await client.request<{ latestSeq: number | null; applyMs?: number; applySteps?: DeltaTimings['replicaApplySteps'] }>('delta-end', { seq });
      this.delivered(seq, meta, deltaBytes, res, { syncedMs, beginMs, sentMs }, resync);
    }
  }

  /**
   * One cycle of the steady state: close the active delta and ship it. A host that reads
   * the delta in the swap (libvirt) hands the log's bytes over as it lays them out, and
   * they go to the replica at once (the read and the send overlap). Such a host keeps no
   * log file of a streamed delta (ChangeTracking.settle): its source stays open until the
   * replica has answered `delta-end` (the delta verified, applied and durable there); only
   * then is the delta closed here. If the stream or the replica fails, the host reads the
   * delta again from that source into synced log files and it is shipped from them, as is
   * whatever did not go out that way (earlier deltas still pending, a resync, a host that
   * writes its logs as it streams).
   */
  private async swapAndShip(client: ReplicaClient): Promise<void> {
    const tracker = this.vm.tracking;
    // a disk resized on the hypervisor since the loop looked: the replica takes it before this delta
    await this.refreshDisks();
    if (this.diskChangePending()) return;
    const streamable = tracker.activeUnlogged === true && !tracker.resync && this.latestSeq !== null && tracker.closedDeltas(this.latestSeq).size === 0;
    if (!streamable) {
      await this.swap();
      return this.shipPending(client);
    }
    const stream = new StreamedDelta(client, this.vm.disks.length, () => this.deps.clock.now());
    let seq: number;
    try {
      seq = await this.swap(stream);
    } catch (e) {
      // nothing of this stream may follow on the connection
      await stream.abandon();
      throw e;
    }
    const syncedMs = this.deps.clock.now();
    type EndReply = { latestSeq: number | null; applyMs?: number; applySteps?: DeltaTimings['replicaApplySteps'] };
    let answered: { res: EndReply; deltaBytes: number; sentMs: number; appliedMs: number } | undefined;
    let failure: unknown;
    try {
      const sent = await stream.finish(seq);
      if (sent) {
        const sentMs = this.deps.clock.now();
        this.bytesShipped += sent.wireBytes;
        const res = await client.request<EndReply>('delta-end', { seq, deltaBytes: sent.deltaBytes });
        answered = { res, deltaBytes: sent.deltaBytes, sentMs, appliedMs: this.deps.clock.now() };
      }
    } catch (e) {
      failure = e;
    }
    // a host that kept no log of the streamed delta closes it now, or writes it to be shipped from its files
    await tracker.settle?.(seq, answered !== undefined);
    if (answered) {
      const meta = tracker.pointMetaOf(seq, syncedMs);
      this.delivered(seq, meta, answered.deltaBytes, answered.res, { syncedMs, beginMs: stream.beginMs ?? syncedMs, sentMs: answered.sentMs, appliedMs: answered.appliedMs }, undefined);
    }
    if (failure !== undefined) throw failure;
    await this.shipPending(client);
  }

  /** The replica applied delta `seq`: release its logs and record the point. */
  private delivered(seq: number, meta: { timeMs: number; consistency: Consistency }, deltaBytes: number, res: { latestSeq: number | null; applyMs?: number; applySteps?: DeltaTimings['replicaApplySteps'] }, t: { syncedMs: number; beginMs: number; sentMs: number; appliedMs?: number }, resync: string | undefined): void {
    const tracker = this.vm.tracking;
    const appliedMs = t.appliedMs ?? this.deps.clock.now();
    this.lastDelta = {
      seq,
      bytes: deltaBytes,
      syncMs: Math.max(0, t.syncedMs - meta.timeMs),
      waitMs: Math.max(0, t.beginMs - Math.max(t.syncedMs, meta.timeMs)),
      sendMs: Math.max(0, t.sentMs - Math.max(t.beginMs, t.syncedMs)),
      applyMs: appliedMs - t.sentMs,
      replicaApplyMs: typeof res.applyMs === 'number' ? res.applyMs : null,
    };
    const sw = tracker.lastSwap;
    if (sw?.seq === seq) this.lastDelta.swap = { backupMs: sw.backupMs, readMs: sw.readMs, logSyncMs: sw.logSyncMs, endMs: sw.endMs };
    if (res.applySteps && typeof res.applySteps === 'object') this.lastDelta.replicaApplySteps = res.applySteps;
    this.latestSeq = res.latestSeq;
    tracker.releaseThrough(seq);
    if (resync) {
      tracker.endResync();
      if (this.divergent || this.vm.divergesEverywhere?.() === true) {
        // reverse replication is in step: the replica is now this VM at point `seq`
        this.divergent = null;
        this.vm.clearDivergence?.();
      }
      if (this.resyncProgress) {
        this.resyncProgress.completedAt = new Date(this.deps.clock.now()).toISOString();
        this.onboarding = false;
        this.resyncProgress.wireBytesSent += deltaBytes;
      }
      this.deps.log.info({ replication: this.spec.id, resync }, `resync of ${this.vm.name} completed in point ${seq}`);
    }
    if (!resync && this.latest) this.recordChurn(meta.timeMs, deltaBytes, meta.timeMs - Date.parse(this.latest.time));
    this.latest = { seq, time: new Date(meta.timeMs).toISOString(), consistency: meta.consistency };
    this.lastSuccessMs = this.deps.clock.now();
    this.failures = 0;
    if (this.state === ReplicationState.Replicating) this.recordCycle(true);
    if (this.lastError && this.lastError.code !== 'HOOK_FAILED') this.lastError = null;
    if (this.initial && !this.initial.completedAt) {
      this.updateRate();
      this.initial.completedAt = new Date(this.deps.clock.now()).toISOString();
    }
  }

  health(): ReplicationHealth {
    const now = this.deps.clock.now();
    const recent = this.cycles.filter((c) => c.atMs > now - HOUR);
    const missed = recent.filter((c) => !c.ok).length;
    const rpoSeconds = this.latest ? Math.max(0, (now - Date.parse(this.latest.time)) / 1000) : null;
    let health: ReplicationHealth['health'] = 'Healthy';
    if (this.state === ReplicationState.ResyncRequired || this.state === ReplicationState.Error || this.state === ReplicationState.Fenced) health = 'Critical';
    else if (recent.length > 0 && missed / recent.length > 0.2) health = 'Warning';
    else if (this.state === ReplicationState.Replicating && this.lastSuccessMs !== null && now - this.lastSuccessMs > HOUR) health = 'Warning';
    return {
      id: this.spec.id,
      vm: this.vm.name,
      group: this.spec.group ?? null,
      state: this.state,
      health,
      lastSuccessfulCycleAt: this.lastSuccessMs ? new Date(this.lastSuccessMs).toISOString() : null,
      latestPoint: this.latest,
      rpoSeconds: rpoSeconds === null ? null : Math.round(rpoSeconds * 10) / 10,
      pendingLogBytes: this.vm.tracking.enabled ? this.vm.tracking.pendingBytes(this.latestSeq ?? 0) : 0,
      cyclesLastHour: recent.length,
      missedCyclesLastHour: missed,
      lastError: this.lastError,
      initial: this.initial ? { ...this.initial } : null,
      resync: this.resyncProgress ? { ...this.resyncProgress } : null,
      resyncWaitingForWindow: this.resyncWaiting,
      retry: this.failures > 0 ? { failures: this.failures, nextAt: this.nextRetryMs === null ? null : new Date(this.nextRetryMs).toISOString(), waitingForAction: this.waitingForAction } : null,
      bandwidthLimitBytesPerSec: this.bandwidthLimit(),
      channel: this.channel ?? null,
      bytesShipped: this.bytesShipped,
      lastDelta: this.lastDelta,
      churn: this.churn(),
      diskChange: this.diskChangeHealth(),
    };
  }

  private diskChangeHealth(): ReplicationHealth['diskChange'] {
    let change: DiskChange | undefined;
    try {
      change = this.diskChange();
    } catch (e) {
      return { summary: toOsrError(e).message, needsConfirmation: false, confirmed: false };
    }
    if (!change || diskChangeEmpty(change)) return null;
    const summary = describeDiskChange(change);
    return { summary, needsConfirmation: diskChangeNeedsConfirmation(change), confirmed: this.confirmedChange === summary };
  }
}

/** Ranges of the disks there are, cut at each disk's end. */
function clipRanges(ranges: DiskRanges, disks: readonly { name: string; size: number }[]): DiskRanges {
  const out: DiskRanges = {};
  for (const d of disks) {
    const list = ranges[d.name];
    if (!list) continue;
    out[d.name] = list.filter(([off]) => off < d.size).map(([off, len]): Range => [off, Math.min(len, d.size - off)]);
  }
  return out;
}

/** bytes of sorted ranges that lie below `offset` */
function bytesBelow(ranges: readonly Range[], offset: number): number {
  let n = 0;
  for (const [off, len] of ranges) n += Math.max(0, Math.min(off + len, offset) - off);
  return n;
}

/**
 * Adds what the connection sent and received since the last call to a resync's progress
 * (the connection's counters are shared with earlier work on it).
 */
function wireAccounting(client: ReplicaClient, progress: ResyncProgress): () => void {
  let sentAt = client.wireBytesSent;
  let receivedAt = client.wireBytesReceived;
  return () => {
    progress.wireBytesSent += client.wireBytesSent - sentAt;
    progress.wireBytesReceived += client.wireBytesReceived - receivedAt;
    sentAt = client.wireBytesSent;
    receivedAt = client.wireBytesReceived;
  };
}

/** bytes of a streamed delta buffered for the wire before it is given up (then it is shipped from its files) */
const STREAM_MAX_QUEUED = 256 * 1024 * 1024;
/** bytes of a streamed delta waiting for the wire past which a host that keeps no log of it waits before it reads on */
const STREAM_PACE_BYTES = 64 * 1024 * 1024;

/**
 * A delta shipped while the host reads it (PrimaryReplication.swapAndShip): the bytes
 * handed over are copied into DATA frames (buffers of MAX_DATA_BYTES, reused once sent, so
 * a gigabyte streamed does not churn the garbage collector) and sent in order behind
 * `delta-begin`. A host that keeps no log of the delta waits (`backlog`) while more than
 * STREAM_PACE_BYTES wait for the wire. A send that fails, or a wire that falls more than
 * STREAM_MAX_QUEUED behind, ends the stream; the delta then goes from its files.
 */
class StreamedDelta implements DeltaStream {
  beginMs: number | undefined;
  private failed: unknown;
  private sending: Promise<void> = Promise.resolve();
  private queued = 0;
  private readonly free: Buffer[] = [];
  private frame: Buffer | undefined;
  private framePos = 0;
  private frameBytes = 0;
  private disks = 0;
  private deltaBytes = 0;
  private wireBytes = 0;
  private seq: number | undefined;
  private readonly waiting: (() => void)[] = [];

  constructor(
    private readonly client: ReplicaClient,
    private readonly diskCount: number,
    private readonly now: () => number,
  ) {}

  private then(fn: () => Promise<unknown>): void {
    if (this.failed !== undefined) return;
    this.sending = this.sending
      .then(async () => {
        if (this.failed === undefined) await fn();
      })
      .catch((e: unknown) => {
        this.failed ??= e;
        this.wake();
      });
  }

  begin(seq: number, meta: { timeMs: number; consistency: Consistency }): void {
    this.seq = seq;
    this.beginMs = this.now();
    // the size is known at the end: delta-end carries it
    this.then(() => this.client.request('delta-begin', { point: { seq, timeMs: meta.timeMs, consistency: meta.consistency, deltaBytes: 0 } }));
  }

  disk(name: string): void {
    this.flushFrame();
    this.disks++;
    this.then(() => this.client.notice({ type: 'delta-disk', disk: name }));
  }

  data(pos: number, bufs: readonly Buffer[]): void {
    if (this.failed !== undefined) return;
    for (const b of bufs) this.deltaBytes += b.length;
    if (this.frameBytes > 0 && this.framePos + this.frameBytes !== pos) this.flushFrame();
    let at = pos;
    for (const b of bufs) {
      for (let o = 0; o < b.length; ) {
        if (this.frame && this.frameBytes === MAX_DATA_BYTES) this.flushFrame();
        if (!this.frame) {
          // room for the frame's head before its body: the frame goes out as one buffer
          this.frame = this.free.pop() ?? Buffer.allocUnsafe(DATA_FRAME_HEAD_BYTES + MAX_DATA_BYTES);
          this.framePos = at;
        }
        const n = b.copy(this.frame, DATA_FRAME_HEAD_BYTES + this.frameBytes, o);
        this.frameBytes += n;
        o += n;
        at += n;
      }
    }
  }

  private flushFrame(): void {
    const frame = this.frame;
    const bytes = this.frameBytes;
    const pos = this.framePos;
    this.frame = undefined;
    this.frameBytes = 0;
    if (!frame) return;
    if (bytes === 0 || this.failed !== undefined) {
      this.free.push(frame);
      return;
    }
    this.queued += bytes;
    if (this.queued > STREAM_MAX_QUEUED) {
      this.failed = new OsrError('NETWORK_ERROR', 'the replica receives slower than the delta is read: it is shipped from its files');
      this.wake();
      return;
    }
    this.then(async () => {
      // resolves once the frame's bytes are handed to the socket: its buffer is free again
      this.wireBytes += await this.client.sendDataInPlace(pos, frame.subarray(0, DATA_FRAME_HEAD_BYTES + bytes), true);
      this.queued -= bytes;
      this.free.push(frame);
      this.wake();
    });
  }

  /** A promise while more than STREAM_PACE_BYTES wait for the wire: the host reads on once it resolves. */
  backlog(): Promise<void> | undefined {
    if (this.failed !== undefined || this.queued <= STREAM_PACE_BYTES) return undefined;
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private wake(): void {
    if (this.failed === undefined && this.queued > STREAM_PACE_BYTES) return;
    for (const w of this.waiting.splice(0)) w();
  }

  /** Stop: nothing more is sent once what is being sent is out. */
  async abandon(): Promise<void> {
    this.failed ??= new OsrError('INVALID_STATE', 'the delta was not closed');
    this.wake();
    await this.sending;
  }

  /** Every log of `seq` is complete (closed, and synced where the host wrote one): send the rest; what went out, or undefined if the delta must go from its files. */
  async finish(seq: number): Promise<{ deltaBytes: number; wireBytes: number } | undefined> {
    this.flushFrame();
    await this.sending;
    if (this.failed !== undefined || this.seq !== seq || this.disks !== this.diskCount) return undefined;
    return { deltaBytes: this.deltaBytes, wireBytes: this.wireBytes };
  }
}
