/**
 * What Azure as a recovery site can do, as the vault sees it (it refuses the rest before a
 * job starts): ASR's rules for Azure. The initial copy goes to the storage account online,
 * now or at a scheduled time; an offline export cannot be imported into a storage account,
 * so `offline` is refused. Copies every 30 s, 5 min or 15 min; points with the guest
 * quiesced are the source's to take and are kept as any other. Test failover makes a VM in
 * an isolated network. Azure has no hosts of osr's: nothing is served over NBD from it, and
 * it is never a source.
 */
import type { FabricCapabilities } from '../../domain/capabilities.js';
import { DISK_TYPES } from './inventory.js';
import { VM_SIZES } from './vm-sizes.js';

export const AZURE_CAPABILITIES: Readonly<FabricCapabilities> = {
  initialReplication: ['now', 'scheduled'],
  appConsistentPoints: true,
  copyFrequenciesSeconds: [30, 300, 900],
  testFailover: true,
  rawDisks: false,
  changedBlockTracking: false,
  nbdExport: false,
  resyncOnRequest: true,
  // a replica VM's size and disk type may be chosen at enable (by default: the source's vCPUs and memory, the storage mapping's type)
  recoveryVmSizes: VM_SIZES.map((s) => s.name),
  recoveryDiskTypes: DISK_TYPES.map((t) => t.id),
};
