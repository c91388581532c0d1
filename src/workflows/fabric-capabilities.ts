/**
 * The vault's refusals of what a fabric cannot do, from the capabilities its provider
 * reports with each heartbeat (src/domain/capabilities.ts): checked when an operation is
 * asked for, so the request is answered NOT_SUPPORTED at once and no job starts. A fabric
 * whose provider has not reported capabilities (an older provider) refuses nothing here:
 * its provider refuses what it cannot do when the command reaches it.
 */
import { unsupportedOptions, unsupportedRecoveryVm, type FabricCapabilities, type FabricRole, type RecoveryVmChoice } from '../domain/capabilities.js';
import { OsrError } from '../domain/errors.js';
import type { Fabric, InventoryObject, Policy, VmProperties } from '../domain/resources.js';
import type { VaultStore } from '../store/index.js';

const SITE: Record<FabricRole, string> = { source: 'primary site', target: 'recovery site' };

/**
 * Enabling protection of `vm` under `policy`, replicating to `targetFabricId`: every option
 * of the policy (and every disk of the VM) both fabrics can do, or NOT_SUPPORTED naming the
 * fabric and the options (`details.fabric`, `details.option`, `details.options`).
 */
export async function checkProtectionOptions(store: VaultStore, o: { vm: InventoryObject; policy: Policy; targetFabricId: string; recoveryVm?: RecoveryVmChoice | undefined }): Promise<void> {
  const disks = (o.vm.properties as Partial<VmProperties>).disks ?? [];
  const ends: [FabricRole, string][] = [
    ['source', o.vm.fabricId],
    ['target', o.targetFabricId],
  ];
  for (const [role, fabricId] of ends) {
    const fabric = await store.fabrics.get(fabricId);
    if (!fabric.capabilities) continue;
    const gaps = unsupportedOptions(fabric.capabilities, role, o.policy.settings, { disks });
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

/** One operation a fabric must be able to do (a test failover at the recovery site, a resync on request at the primary site). */
export async function checkFabricCan(store: VaultStore, fabricId: string, capability: 'testFailover' | 'resyncOnRequest', what: string): Promise<Fabric> {
  const fabric = await store.fabrics.get(fabricId);
  const caps: FabricCapabilities | null = fabric.capabilities;
  if (caps && !caps[capability]) throw new OsrError('NOT_SUPPORTED', `fabric ${fabric.name} (${fabric.kind}) cannot ${what}`, { fabric: fabric.id, option: capability });
  return fabric;
}
