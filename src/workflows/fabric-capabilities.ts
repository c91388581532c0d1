/**
 * The vault's refusals of what a fabric cannot do, from the capabilities its provider
 * reports with each heartbeat (src/domain/capabilities.ts): checked when an operation is
 * asked for, so the request is answered NOT_SUPPORTED at once and no job starts. A fabric
 * whose provider has not reported capabilities (an older provider) refuses nothing here:
 * its provider refuses what it cannot do when the command reaches it.
 */
import { unsupportedOptions, unsupportedRecoveryVm, type FabricCapabilities, type FabricRole, type RecoveryVmChoice } from '../domain/capabilities.js';
import { OsrError } from '../domain/errors.js';
import type { PolicySettings } from '../domain/policy.js';
import { ProtectionState, type Fabric, type InventoryObject, type Policy, type ProtectedItem, type VmProperties } from '../domain/resources.js';
import type { VaultStore } from '../store/index.js';

const SITE: Record<FabricRole, string> = { source: 'primary site', target: 'recovery site' };

/**
 * Enabling protection of `vm` under `policy`, replicating to `targetFabricId`: every option
 * of the policy (and every disk of the VM) both fabrics can do, or NOT_SUPPORTED naming the
 * fabric and the options (`details.fabric`, `details.option`, `details.options`).
 */
export async function checkProtectionOptions(store: VaultStore, o: { vm: InventoryObject; policy: Policy; targetFabricId: string; recoveryVm?: RecoveryVmChoice | undefined; group?: string | undefined }): Promise<void> {
  const disks = (o.vm.properties as Partial<VmProperties>).disks ?? [];
  const ends: [FabricRole, string][] = [
    ['source', o.vm.fabricId],
    ['target', o.targetFabricId],
  ];
  for (const [role, fabricId] of ends) {
    const fabric = await store.fabrics.get(fabricId);
    if (!fabric.capabilities) continue;
    const gaps = unsupportedOptions(fabric.capabilities, role, o.policy.settings, { disks }, o.group);
    if (role === 'target' && o.recoveryVm) gaps.push(...unsupportedRecoveryVm(fabric.capabilities, o.recoveryVm));
    if (gaps.length === 0) continue;
    throw new OsrError('NOT_SUPPORTED', `fabric ${fabric.name} (${fabric.kind}), the ${SITE[role]} of ${o.vm.name}, cannot do ${gaps.map((g) => g.message).join('; ')} (policy ${o.policy.name})`, {
      fabric: fabric.id,
      role,
      option: gaps[0]!.option,
      options: gaps.map((g) => g.option),
    });
  }
}

/**
 * A replication group is cut by the provider of its primary site, so its members replicate
 * from one site to one recovery site: a VM of another pair of sites is refused
 * (INVALID_STATE, naming a member that replicates elsewhere).
 */
export async function checkGroupSite(store: VaultStore, group: string, vm: InventoryObject, targetFabricId: string): Promise<void> {
  for await (const m of groupMembers(store, group)) {
    const from = m.replication.sourceFabricId ?? m.fabricId;
    const to = m.replication.targetFabricId;
    if (from !== vm.fabricId || (to !== undefined && to !== targetFabricId)) {
      throw new OsrError('INVALID_STATE', `replication group ${group} replicates from fabric ${from}${to !== undefined ? ` to ${to}` : ''} (member ${m.name}); ${vm.name} replicates from ${vm.fabricId} to ${targetFabricId}: a group's members replicate between one pair of sites`, { group, member: m.id });
    }
  }
}

/** Every member of a replication group, a page at a time. */
async function* groupMembers(store: VaultStore, group: string): AsyncGenerator<ProtectedItem> {
  let after: string | undefined;
  for (;;) {
    const members = await store.items.list({ group, limit: 500, ...(after !== undefined ? { after } : {}) });
    yield* members;
    if (members.length < 500) return;
    after = members.at(-1)!.id;
  }
}

/**
 * Why item `itemId` cannot go on in replication group `group` replicating from
 * `sourceFabricId` to `targetFabricId` under `policy` (a reprotect's new direction), or
 * undefined when it can: a site that does not take part in groups (or has not said what it
 * can do), or another member that replicates between another pair of sites now (its
 * cuts are made by another provider: no cut would be common to both).
 */
export async function whyGroupStops(store: VaultStore, group: string, itemId: string, policy: PolicySettings, sourceFabricId: string, targetFabricId: string): Promise<string | undefined> {
  for (const [role, fabricId] of [['source', sourceFabricId], ['target', targetFabricId]] as const) {
    const fabric = await store.fabrics.get(fabricId);
    if (!fabric.capabilities) return `fabric ${fabric.name} has not reported what it can do`;
    const gap = unsupportedOptions(fabric.capabilities, role, policy, undefined, group).find((g) => g.option === 'group');
    if (gap) return `fabric ${fabric.name} cannot do ${gap.message}`;
  }
  for await (const m of groupMembers(store, group)) {
    if (m.id === itemId || !REPLICATING.has(m.state)) continue;
    const from = m.replication.sourceFabricId ?? m.fabricId;
    if (from !== sourceFabricId || m.replication.targetFabricId !== targetFabricId) return `member ${m.name} replicates from ${from} to ${m.replication.targetFabricId ?? 'its recovery site'}`;
  }
  return undefined;
}

/** The states in which an item replicates (its source's provider cuts its group); one being reprotected has not switched its ends yet. */
const REPLICATING: ReadonlySet<string> = new Set<string>([ProtectionState.InitialReplication, ProtectionState.Protected, ProtectionState.ResyncRequired, ProtectionState.Resynchronizing, ProtectionState.TestFailoverInProgress, ProtectionState.TestFailoverComplete, ProtectionState.CleaningUpTestFailover]);

/** One operation a fabric must be able to do (a test failover at the recovery site, a resync on request at the primary site). */
export async function checkFabricCan(store: VaultStore, fabricId: string, capability: 'testFailover' | 'resyncOnRequest', what: string): Promise<Fabric> {
  const fabric = await store.fabrics.get(fabricId);
  const caps: FabricCapabilities | null = fabric.capabilities;
  if (caps && !caps[capability]) throw new OsrError('NOT_SUPPORTED', `fabric ${fabric.name} (${fabric.kind}) cannot ${what}`, { fabric: fabric.id, option: capability });
  return fabric;
}
