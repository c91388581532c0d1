/**
 * The agent's failover primitives, for one VM at a time:
 *
 * - **prepare** (primary site, in replication.ts): the VM is stopped, its final delta
 *   shipped and applied; zero pending bytes.
 * - **promote** (replica site): a recovery point becomes a writable VM here. The replica's
 *   epoch goes up, and from then on this agent refuses primaries holding an older epoch.
 *   A provisional promotion runs the VM from an overlay on the point; until its **commit**
 *   the point may be **changed** (what the VM wrote is then discarded).
 * - **demote** (old primary site): the VM's disks become the replica of its promoted copy.
 *   Its change logs say which ranges it wrote that the replica may lack (also writes made
 *   after the last shipped point, in an unplanned failover): those ranges are resent from
 *   the new primary, which discards them here.
 *
 * Reverse replication is then an ordinary replication from the promoted VM to the old
 * primary's agent; it begins with a resync of only the ranges that differ from the last
 * common point (replication.ts, `reverseResync`).
 */
import { OsrError } from '../../domain/errors.js';
import type { ReplicationGrant } from '../../pki/index.js';
import { crashPoint } from '../io/crash-point.js';
import type { Host, HostPromotions, HostVm, PromotionRun, VmDiskSpec } from '../ports/host.js';
import type { MachineSpec } from '../../domain/machine.js';
import { diskRangesBytes, unionDiskRanges, type DiskRanges } from '../io/ranges.js';
import type { Promotion, ReplicaRegistry } from './replication-server.js';
import { PointView, type Overlay, type ReplicaStore } from './replica-store.js';
import type { RecoveryPoint } from '../ports/replica-target.js';

export interface PromoteOptions {
  /** recovery point (default: the latest) */
  point?: number | undefined;
  /** the new epoch (default: the replica's + 1) */
  epoch?: number | undefined;
  /** serve the VM's disks at once (default true) */
  start?: boolean | undefined;
  /**
   * commit at once (default true); false: the VM runs from an overlay on the point until
   * `commitPromotion`, and `changePromotedPoint` may choose another point meanwhile
   */
  commit?: boolean | undefined;
  /** the machine a host that runs promoted VMs itself defines the VM with (ports/host.ts HostPromotions) */
  machine?: MachineSpec | undefined;
}

export interface PromoteResult {
  vm: string;
  point: RecoveryPoint;
  epoch: number;
  /** bytes of later points that promoting an older point rolled back */
  rolledBackBytes: number;
  /** not committed yet: the VM runs from an overlay on the point */
  pending: boolean;
}

const result = (store: ReplicaStore, epoch: number, p: Promotion): PromoteResult => ({ vm: store.vmName, point: p.point, epoch, rolledBackBytes: diskRangesBytes(p.rolledBack), pending: p.pending === true });

/**
 * Promote a replica: the chosen point becomes a VM on this host with change tracking on
 * from the first write. Later points are dropped; the ranges they wrote are kept with the
 * VM for reverse replication.
 *
 * With `commit: false` the promotion is provisional: the VM runs from a copy-on-write
 * overlay on the point (its writes kept apart, durable, served again after a restart), the
 * other points stay, and the point may be changed until `commitPromotion`.
 */
export async function promoteReplica(host: Host, registry: ReplicaRegistry, vmName: string, opts: PromoteOptions): Promise<PromoteResult> {
  const store = registry.get(vmName);
  const record = registry.fenceRecord(store.vmId);
  const earlier = record?.promotion;
  if (earlier?.pending && !store.isCommitted) {
    // promoted already and not committed (the command again, or a restart): the same VM,
    // with the machine the call gives now if it gives one (a first attempt's may have been refused)
    if (earlier.hosted && opts.machine) {
      await promotionsOf(host, store).check({ vmId: store.vmId, vmName: store.vmName, machine: opts.machine });
      earlier.machine = opts.machine;
      registry.setPromotion(store.vmId, earlier);
    }
    await ensureRunning(host, store, registry, earlier);
    return opts.commit === false ? result(store, record!.epoch, earlier) : commitPromotion(host, registry, vmName);
  }
  // a delta in flight lands first; nothing below waits until the fence, after which no
  // other begins, so the point chosen is the newest this replica will have
  await store.whenIdle(60_000);
  if (store.divergent) throw new OsrError('INVALID_STATE', `the replica of ${store.vmName} is not yet in step with its primary (reverse replication has not resynchronized it); it has no point to promote`);
  if (host.has(store.vmName)) throw new OsrError('ALREADY_EXISTS', `VM ${store.vmName} already exists on this host`);
  if (store.listOverlays().length > 0) throw new OsrError('OVERLAY_IN_USE', `close the overlays on ${store.vmName} (test failovers) before promoting it`);
  const current = Math.max(store.epoch, registry.fenceOf(store.vmId) ?? 0);
  const epoch = opts.epoch ?? current + 1;
  if (!Number.isSafeInteger(epoch) || epoch <= current) throw new OsrError('INVALID_ARGUMENT', `the new epoch must be above the replica's ${current}, not ${epoch}`);
  if (store.isCommitted && earlier) {
    // a promotion cut short after its commit: the images hold the committed point
    registry.fence(store.vmId, epoch, earlier);
    return adopt(host, registry, store, epoch, earlier, opts.start !== false);
  }
  if (store.isCommitted) throw new OsrError('INVALID_STATE', `the replica of ${store.vmName} was committed outside a promotion; its rolled-back ranges are unknown`);
  const seq = opts.point ?? store.latestPoint()?.seq;
  if (seq === undefined || !store.hasPoint(seq)) throw new OsrError('POINT_NOT_FOUND', `recovery point ${String(opts.point ?? 'latest')} of ${store.vmName} does not exist`, { points: store.points().map((p) => p.seq) });
  const point = store.points().find((p) => p.seq === seq)!;
  // a host that runs the VM itself says now whether it can: nothing is fenced for a promotion it would refuse
  await host.promotions?.check({ vmId: store.vmId, vmName: store.vmName, machine: opts.machine });
  // from here on the old primary is refused, so nothing lands after the chosen point
  const promotion: Promotion = {
    point,
    rolledBack: store.rangesChangedAfter(seq),
    pending: true,
    running: opts.start !== false,
    promotedAt: new Date().toISOString(),
    ...(host.promotions ? { hosted: true, ...(opts.machine ? { machine: opts.machine } : {}) } : {}),
  };
  registry.fence(store.vmId, epoch, promotion);
  crashPoint('promote:fenced');
  await ensureRunning(host, store, registry, promotion);
  return opts.commit === false ? result(store, epoch, promotion) : commitPromotion(host, registry, vmName);
}

/** The VM of a provisional promotion runs: from the host's own layer (hosted), else from an overlay the agent serves. */
async function ensureRunning(host: Host, store: ReplicaStore, registry: ReplicaRegistry, p: Promotion): Promise<void> {
  if (p.hosted) await hostedRun(host, store, p);
  else ensureOverlay(store, registry, p);
}

function promotionsOf(host: Host, store: ReplicaStore): HostPromotions {
  if (!host.promotions) throw new OsrError('INVALID_STATE', `${store.vmName} was promoted to run on its host's hypervisor, which this host does not have`);
  return host.promotions;
}

/** Run the promotion's point on the host: the point's rolled-back ranges are read from the replica's undo. */
async function hostedRun(host: Host, store: ReplicaStore, p: Promotion): Promise<void> {
  const views = new Map<string, PointView>();
  const run: PromotionRun = {
    vmId: store.vmId,
    vmName: store.vmName,
    // the point's own disks (a disk added or grown after it is not the VM's at that point)
    disks: store.pointDisks(p.point.seq).map((d) => ({ id: d.id, name: d.name, size: d.size, image: store.imagePath(d.name) })),
    pointSeq: p.point.seq,
    rollback: (disk) => {
      let v = views.get(disk);
      if (!v) views.set(disk, (v = new PointView(store, disk, p.point.seq)));
      const view = v;
      return { ranges: view.layerEntries().map((e) => [e.start, e.end] as const), read: (offset, length) => view.read(offset, length) };
    },
    machine: p.machine,
    start: p.running !== false,
  };
  try {
    await promotionsOf(host, store).run(run);
  } finally {
    for (const v of views.values()) v.close();
  }
}

/**
 * The overlay a provisional promotion runs from. One cut short before its overlay was
 * recorded gets a new one; any other overlay is a stray of that step and is discarded.
 */
function ensureOverlay(store: ReplicaStore, registry: ReplicaRegistry, p: Promotion): Overlay {
  const have = p.overlayId ? store.listOverlays().find((o) => o.id === p.overlayId) : undefined;
  if (have) return have;
  for (const o of store.listOverlays()) store.discardOverlay(o.id);
  const o = store.openOverlay(p.point.seq);
  p.overlayId = o.id;
  registry.setPromotion(store.vmId, p);
  return o;
}

function provisionalOf(registry: ReplicaRegistry, vmName: string): { store: ReplicaStore; epoch: number; promotion: Promotion } {
  const found = registry.provisional().find((x) => x.store.vmName === vmName || x.store.vmId === vmName);
  if (!found) throw new OsrError('INVALID_STATE', `${vmName} has no promotion waiting for its commit here (it was never promoted, or it is committed)`);
  return found;
}

/** The overlay a provisional VM's disks are served from (undefined once committed). */
export function provisionalOverlay(registry: ReplicaRegistry, vmName: string): Overlay | undefined {
  const found = registry.provisional().find((x) => x.store.vmName === vmName);
  if (!found || found.promotion.committing || !found.promotion.overlayId) return undefined;
  return found.store.listOverlays().find((o) => o.id === found.promotion.overlayId);
}

/**
 * Change the point of a provisional promotion: what the VM wrote is discarded and it runs
 * from `seq` instead. The caller has disconnected its disks' clients.
 */
export async function changePromotedPoint(host: Host, registry: ReplicaRegistry, vmName: string, seq: number): Promise<PromoteResult> {
  const { store, epoch, promotion } = provisionalOf(registry, vmName);
  if (promotion.committing) throw new OsrError('INVALID_STATE', `the promotion of ${store.vmName} is being committed; its point can no longer change`);
  const point = store.points().find((p) => p.seq === seq);
  if (!point) throw new OsrError('POINT_NOT_FOUND', `recovery point ${seq} of ${store.vmName} does not exist`, { points: store.points().map((p) => p.seq) });
  const old = promotion.overlayId;
  // the new point is durable first: a restart then opens the overlay on it, and the old one is a stray
  const next: Promotion = { ...promotion, point, rolledBack: store.rangesChangedAfter(seq), overlayId: undefined };
  registry.setPromotion(store.vmId, next);
  crashPoint('change-point:recorded');
  if (next.hosted) {
    // the VM's layer goes with what it wrote; the run from the new point makes a new one
    await promotionsOf(host, store).discard(store.vmId);
    await hostedRun(host, store, next);
    return result(store, epoch, next);
  }
  if (old && store.listOverlays().some((o) => o.id === old)) store.discardOverlay(old);
  ensureOverlay(store, registry, next);
  return result(store, epoch, next);
}

/**
 * Commit a provisional promotion: the overlay's point and writes go into the images, the
 * other points are dropped, and the VM runs from the images with change tracking on. What
 * it wrote before is kept as divergence, so reverse replication resends it. The caller has
 * disconnected its disks' clients.
 */
export async function commitPromotion(host: Host, registry: ReplicaRegistry, vmName: string): Promise<PromoteResult> {
  const { store, epoch, promotion } = provisionalOf(registry, vmName);
  let p = promotion;
  if (p.hosted && !store.isCommitted) {
    const promotions = promotionsOf(host, store);
    if (!p.committing) {
      // the rolled-back ranges are the divergence; what the VM wrote, its host's tracking holds
      p = { ...p, committing: true };
      registry.setPromotion(store.vmId, p);
      crashPoint('promote:commit-recorded');
    }
    await promotions.commit(store.vmId);
    await store.commitHosted(p.point.seq);
    crashPoint('promote:committed');
  } else if (!store.isCommitted) {
    const overlay = ensureOverlay(store, registry, p);
    if (!p.committing) {
      for (const d of overlay.disks) await d.flush();
      // the ranges the commit rolls back or the VM wrote are durable before the undo that holds them goes
      p = { ...p, rolledBack: unionDiskRanges(p.rolledBack, overlay.writtenRanges()), committing: true };
      registry.setPromotion(store.vmId, p);
      crashPoint('promote:commit-recorded');
    }
    await store.whenIdle(60_000);
    await store.commitOverlay(overlay.id);
    crashPoint('promote:committed');
  }
  return adopt(host, registry, store, epoch, p, p.running !== false);
}

/** The committed images become the disks of a host VM. */
async function adopt(host: Host, registry: ReplicaRegistry, store: ReplicaStore, epoch: number, p: Promotion, start: boolean): Promise<PromoteResult> {
  const disks: VmDiskSpec[] = store.disks.map((d) => ({ id: d.id, name: d.name, size: d.size, image: store.imagePath(d.name) }));
  const vmId = store.vmId;
  const vmName = store.vmName;
  registry.detach(vmId, true);
  await host.adoptVm(vmName, vmId, disks, { epoch, point: { seq: p.point.seq, timeMs: p.point.timeMs }, promotedAt: p.promotedAt ?? new Date().toISOString(), divergence: p.rolledBack }, start);
  // once the VM is there (a restart loads it, and leaves its images alone as a replica), the promotion is done
  registry.setPromotion(vmId, { point: p.point, rolledBack: p.rolledBack, promotedAt: p.promotedAt, ...(p.hosted ? { hosted: true } : {}) });
  return { vm: vmName, point: p.point, epoch, rolledBackBytes: diskRangesBytes(p.rolledBack), pending: false };
}

export interface DemoteResult {
  vm: string;
  epoch: number;
  /** ranges this site wrote that the promoted copy may lack; null: not known, all blocks are compared */
  divergentBytes: number | null;
}

/**
 * Demote a VM whose copy was promoted elsewhere: its disks become a replica (at `epoch`,
 * the promoted copy's) that reverse replication brings in step. The caller has stopped its
 * replication. What its change logs hold, shipped or not, is where it may differ.
 */
export async function demoteVm(host: Host, registry: ReplicaRegistry, vm: HostVm, epoch: number, source?: string, grant?: ReplicationGrant): Promise<DemoteResult> {
  if (!Number.isSafeInteger(epoch) || epoch < 1) throw new OsrError('INVALID_ARGUMENT', `epoch ${epoch} is not a positive integer`);
  await vm.flush();
  // the images first: a host that must make them (a libvirt domain's) says there whether its tracking still holds
  const images: Record<string, string> = host.demoteImages ? await host.demoteImages(vm.name) : {};
  if (!host.demoteImages) for (const d of vm.spec.disks) images[d.name] = d.image;
  const tracker = vm.tracking;
  const divergent: DiskRanges | 'all' = !tracker.enabled || tracker.resyncRequired ? 'all' : tracker.loggedRanges('all');
  await registry.adopt(
    { vmId: vm.id, vmName: vm.name, disks: vm.spec.disks.map((d) => ({ id: d.id, name: d.name, size: d.size })), epoch },
    images,
    divergent,
    source,
    grant,
  );
  crashPoint('demote:adopted');
  await host.removeVm(vm.name);
  return { vm: vm.name, epoch, divergentBytes: divergent === 'all' ? null : diskRangesBytes(divergent) };
}
