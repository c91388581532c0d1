/**
 * A failover made without the vault (break-glass, docs/deployment.md): with no vault to be
 * had, an operator at the recovery site promoted a replica at its host (`osr replica
 * promote`, which fences every older primary by its epoch). When a vault hears of it from
 * the recovery site's provider, it records what was done as an unplanned failover, and does
 * not undo it: the item is FailedOver at that point and epoch, the old primary is fenced
 * when its site is back, and commit and reprotect go on from there as after any failover.
 */
import type { Clock } from '../domain/clock.js';
import type { RecoveryPointInfo } from '../domain/replicas.js';
import { Direction, Health, ProtectionState, Severity, type FailoverRecord, type ProtectedItem } from '../domain/resources.js';
import { AlertKind } from './alerting.js';
import type { VaultStore } from '../store/index.js';
import type { Alerting } from './alerting.js';

export interface OutsidePromotion {
  epoch: number;
  point: RecoveryPointInfo;
  pending: boolean;
}

/**
 * What the vault made of a promotion its provider reported: recorded now; known (its
 * failover is not reprotected yet); done (reprotected since: the provider stops reporting
 * it); or not taken, and why.
 */
export type Adoption = { outcome: 'recorded' | 'known' | 'done' } | { outcome: 'ignored'; why: string };

const IDLE_FROM = [ProtectionState.Protected, ProtectionState.ResyncRequired] as const;
/** how many failovers the vault may have missed (made by hand, or by a vault restored from an older backup) */
const MAX_EPOCH_LEAP = 100;

export async function adoptOutsideFailover(deps: { store: VaultStore; alerting: Alerting; clock: Clock }, item: ProtectedItem, fabricId: string, p: OutsidePromotion): Promise<Adoption> {
  const { store, alerting, clock } = deps;
  const r = item.replication;
  if (r.failover && r.failover.epoch >= p.epoch) return { outcome: 'known' };
  if ((r.failovers ?? []).some((f) => f.epoch >= p.epoch)) return { outcome: 'done' };
  // an epoch grows by one per failover: one far past every epoch the item knew is not believed
  const known = Math.max(1, ...(r.failovers ?? []).map((f) => f.epoch), r.failover?.epoch ?? 1);
  if (p.epoch > known + MAX_EPOCH_LEAP) return { outcome: 'ignored', why: `epoch ${p.epoch} is far past ${item.name}'s last known epoch ${known}` };
  // only the replica's own site speaks of its promotion
  if (r.targetFabricId !== fabricId || !r.sourceFabricId || !r.replica?.replicaVmId) return { outcome: 'ignored', why: `fabric ${fabricId} does not hold ${item.name}'s replica` };
  // a job of the vault's own (a failover under way) finds the promotion made and goes on from it
  if (item.activeJobId !== null) return { outcome: 'ignored', why: `job ${item.activeJobId} holds ${item.name}` };
  if (r.failover) return { outcome: 'ignored', why: `${item.name} has a failover of epoch ${r.failover.epoch} that is not reprotected yet` };
  const oldPrimary = r.primaryVmId ?? item.id;
  const oldVm = await store.fabrics.findObject(oldPrimary);
  const now = new Date(clock.now()).toISOString();
  const record: FailoverRecord = {
    kind: 'unplanned',
    jobId: `outside-${p.epoch}`,
    outsideVault: true,
    direction: r.direction === Direction.RecoveryToPrimary ? Direction.RecoveryToPrimary : Direction.PrimaryToRecovery,
    fromFabricId: r.sourceFabricId,
    toFabricId: fabricId,
    oldPrimaryVmId: oldPrimary,
    newPrimaryVmId: r.replica.replicaVmId,
    ...(typeof oldVm?.properties.host === 'string' ? { oldPrimaryHostId: oldVm.properties.host } : {}),
    ...(typeof oldVm?.properties.replicationId === 'string' ? { replicationId: oldVm.properties.replicationId } : {}),
    point: p.point,
    epoch: p.epoch,
    // when it was made is the host's to know; the vault records when it learnt it
    startedAt: now,
    failedOverAt: now,
    rtoSeconds: 0,
    sourceShutDown: false,
    fencePending: true,
  };
  const changed = await store.items.changeIdle(item.id, IDLE_FROM, {
    state: ProtectionState.FailedOver,
    health: Health.NotApplicable,
    healthReasons: [],
    rpoSeconds: null,
    lastPointAt: null,
    replication: { ...r, failover: record },
  });
  if (!changed) return { outcome: 'ignored', why: `${item.name} is ${item.state}, or a job took it meanwhile` };
  const message = `${item.name} was failed over at ${fabricId} without this vault knowing (its replica was promoted at the host from point ${p.point.id} of ${p.point.at}, epoch ${p.epoch}${p.pending ? ', not committed yet' : ''}: by hand when no vault could be had, or by the vault before this one was restored from an older backup): the vault recorded it as an unplanned failover and does not undo it; the old primary is fenced when its site is back; commit it, then reprotect`;
  await alerting.event({ target: item.id, kind: 'failover.outside-vault', severity: Severity.Warning, message, details: { epoch: p.epoch, point: p.point, fabricId } });
  await alerting.raise({ key: `failover-outside:${item.id}:${p.epoch}`, kind: AlertKind.FailedOverOutsideVault, severity: Severity.Warning, target: item.id, message });
  return { outcome: 'recorded' };
}
