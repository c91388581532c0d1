/**
 * The agent's failover primitives, for one VM at a time:
 *
 * - **prepare** (primary site, in replication.ts): the VM is stopped, its final delta
 *   shipped and applied; zero pending bytes.
 * - **promote** (replica site): a recovery point becomes a writable VM here. The replica's
 *   epoch goes up, and from then on this agent refuses primaries holding an older epoch.
 * - **demote** (old primary site): the VM's disks become the replica of its promoted copy.
 *   Its change logs say which ranges it wrote that the replica may lack (also writes made
 *   after the last shipped point, in an unplanned failover): those ranges are resent from
 *   the new primary, which discards them here.
 *
 * Reverse replication is then an ordinary replication from the promoted VM to the old
 * primary's agent; it begins with a resync of only the ranges that differ from the last
 * common point (replication.ts, `reverseResync`).
 */
import { OsrError } from '../domain/errors.js';
import { crashPoint } from './crash-point.js';
import type { LabHost, LabVm, VmDiskSpec } from './lab-host.js';
import { diskRangesBytes, type DiskRanges } from './ranges.js';
import type { ReplicaRegistry } from './replication-server.js';
import type { RecoveryPoint } from './replica-store.js';

export interface PromoteOptions {
  /** recovery point (default: the latest) */
  point?: number | undefined;
  /** the new epoch (default: the replica's + 1) */
  epoch?: number | undefined;
  /** serve the VM's disks at once (default true) */
  start?: boolean | undefined;
}

export interface PromoteResult {
  vm: string;
  point: RecoveryPoint;
  epoch: number;
  /** bytes of later points that promoting an older point rolled back */
  rolledBackBytes: number;
}

/**
 * Promote a replica: the chosen point is committed into its images, which become the disks
 * of a VM on this host with change tracking on from the first write. Later points are
 * dropped; the ranges they wrote are kept with the VM for reverse replication.
 */
export async function promoteReplica(host: LabHost, registry: ReplicaRegistry, vmName: string, opts: PromoteOptions): Promise<PromoteResult> {
  const store = registry.get(vmName);
  // a delta in flight lands first; nothing below waits until the fence, after which no
  // other begins, so the point chosen is the newest this replica will have
  await store.whenIdle(60_000);
  if (store.divergent) throw new OsrError('INVALID_STATE', `the replica of ${store.vmName} is not yet in step with its primary (reverse replication has not resynchronized it); it has no point to promote`);
  if (host.has(store.vmName)) throw new OsrError('ALREADY_EXISTS', `VM ${store.vmName} already exists on this host`);
  if (store.listOverlays().length > 0) throw new OsrError('OVERLAY_IN_USE', `close the overlays on ${store.vmName} (test failovers) before promoting it`);
  const current = Math.max(store.epoch, registry.fenceOf(store.vmId) ?? 0);
  const epoch = opts.epoch ?? current + 1;
  if (!Number.isSafeInteger(epoch) || epoch <= current) throw new OsrError('INVALID_ARGUMENT', `the new epoch must be above the replica's ${current}, not ${epoch}`);
  let point: RecoveryPoint;
  let rolledBack: DiskRanges;
  const earlier = registry.fenceRecord(store.vmId)?.promotion;
  if (store.isCommitted && earlier) {
    // a promotion cut short after its commit: the images hold the committed point
    ({ point, rolledBack } = earlier);
    registry.fence(store.vmId, epoch, earlier);
  } else if (store.isCommitted) {
    throw new OsrError('INVALID_STATE', `the replica of ${store.vmName} was committed outside a promotion; its rolled-back ranges are unknown`);
  } else {
    const seq = opts.point ?? store.latestPoint()?.seq;
    if (seq === undefined || !store.hasPoint(seq)) throw new OsrError('POINT_NOT_FOUND', `recovery point ${String(opts.point ?? 'latest')} of ${store.vmName} does not exist`, { points: store.points().map((p) => p.seq) });
    point = store.points().find((p) => p.seq === seq)!;
    rolledBack = store.rangesChangedAfter(seq);
    // from here on the old primary is refused, so nothing lands after the chosen point; the
    // ranges the commit rolls back are durable before it deletes the undo that holds them
    registry.fence(store.vmId, epoch, { point, rolledBack });
    crashPoint('promote:fenced');
    const overlay = store.openOverlay(seq);
    await store.commitOverlay(overlay.id);
    crashPoint('promote:committed');
  }
  const disks: VmDiskSpec[] = store.disks.map((d) => ({ id: d.id, name: d.name, size: d.size, image: store.imagePath(d.name) }));
  const vmId = store.vmId;
  registry.detach(vmId, true);
  host.adoptVm(store.vmName, vmId, disks, { epoch, point: { seq: point.seq, timeMs: point.timeMs }, promotedAt: new Date().toISOString(), divergence: rolledBack }, opts.start !== false);
  return { vm: store.vmName, point, epoch, rolledBackBytes: diskRangesBytes(rolledBack) };
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
export async function demoteVm(host: LabHost, registry: ReplicaRegistry, vm: LabVm, epoch: number): Promise<DemoteResult> {
  if (!Number.isSafeInteger(epoch) || epoch < 1) throw new OsrError('INVALID_ARGUMENT', `epoch ${epoch} is not a positive integer`);
  for (const d of vm.disks) await d.flush();
  const tracker = vm.tracker;
  const divergent: DiskRanges | 'all' = !tracker.enabled || tracker.resyncRequired ? 'all' : tracker.loggedRanges('all');
  const images: Record<string, string> = {};
  for (const d of vm.spec.disks) images[d.name] = d.image;
  await registry.adopt(
    { vmId: vm.id, vmName: vm.name, disks: vm.spec.disks.map((d) => ({ id: d.id, name: d.name, size: d.size })), epoch },
    images,
    divergent,
  );
  crashPoint('demote:adopted');
  host.removeVm(vm.name);
  return { vm: vm.name, epoch, divergentBytes: divergent === 'all' ? null : diskRangesBytes(divergent) };
}
