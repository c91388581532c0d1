/**
 * What a fabric can do, as its driver declares it and its provider reports it to the vault
 * (with every heartbeat; the vault keeps the latest on the fabric). The vault refuses an
 * option a fabric cannot do when it is asked for, before any job starts: the check is
 * here, pure, and the callers (enable protection, test failover, resync) name the fabric.
 */
import { isContinuous, type InitialReplication, type PolicySettings } from './policy.js';

export const INITIAL_REPLICATION_METHODS = ['now', 'scheduled', 'offline'] as const satisfies readonly InitialReplication['method'][];
export type InitialReplicationMethod = (typeof INITIAL_REPLICATION_METHODS)[number];

export interface FabricCapabilities {
  /** the initial replication methods its hosts can do (offline: an export at the source and an import at the target) */
  initialReplication: InitialReplicationMethod[];
  /** recovery points with the guest quiesced (a policy's appConsistentFrequencyHours > 0) */
  appConsistentPoints: boolean;
  /** the copy frequencies (seconds) its hosts sustain, of the policy's 30, 300 and 900 */
  copyFrequenciesSeconds: number[];
  /**
   * the roles in which it does continuous replication (a policy's copyMode 'continuous'):
   * as a source, its hosts track writes in the data path and ship them as they are made;
   * as a target, it takes a cut every second and keeps a point every few seconds. Absent:
   * neither (a provider from before the mode existed).
   */
  continuousReplication?: FabricRole[];
  /**
   * the roles in which it takes part in replication groups (an item's `group`): as a
   * source, its hosts hold a VM's writes for a moment at their write gates, so the group's
   * points are cut at one instant across VMs on one host or several; as a target, its
   * replicas keep the cut each point belongs to. Absent: neither (a provider from before
   * groups existed).
   */
  consistencyGroups?: FabricRole[];
  /** a recovery point started as a VM beside the replica while replication goes on */
  testFailover: boolean;
  /** disks that carry no change tracking of their own (raw images) can be protected */
  rawDisks: boolean;
  /** hosts track guest writes, so deltas ship only changed blocks */
  changedBlockTracking: boolean;
  /** a running VM's disks can be served over NBD to outside tools */
  nbdExport: boolean;
  /** a resynchronization can be started on request, whatever the resync window */
  resyncOnRequest: boolean;
  /** as a recovery site: the VM sizes a replica VM may be given at enable (none: the fabric sizes it as its source) */
  recoveryVmSizes?: string[];
  /** as a recovery site: the disk types a replica VM's disks may be given at enable (none: as its storage mapping places them) */
  recoveryDiskTypes?: string[];
}

/** What a replica VM is made as at the recovery site, chosen at enable (recovery sites that offer it: recoveryVmSizes, recoveryDiskTypes). */
export interface RecoveryVmChoice {
  size?: string | undefined;
  diskType?: string | undefined;
}

/** The parts of a choice a recovery site does not offer (empty: it takes all). */
export function unsupportedRecoveryVm(caps: FabricCapabilities, c: RecoveryVmChoice): UnsupportedOption[] {
  const out: UnsupportedOption[] = [];
  if (c.size !== undefined && !(caps.recoveryVmSizes ?? []).includes(c.size)) out.push({ option: 'recoveryVm.size', message: `VM size ${c.size} (it offers ${caps.recoveryVmSizes?.join(', ') || 'none: it sizes a replica as its source'})` });
  if (c.diskType !== undefined && !(caps.recoveryDiskTypes ?? []).includes(c.diskType)) out.push({ option: 'recoveryVm.diskType', message: `disk type ${c.diskType} (it offers ${caps.recoveryDiskTypes?.join(', ') || 'none: its storage mapping places disks'})` });
  return out;
}

/** What the policy asks of a fabric in one role: the source (the primary site) or the target (the recovery site). */
export type FabricRole = 'source' | 'target';

/** One option a fabric cannot do: the field it comes from and why. */
export interface UnsupportedOption {
  /** the policy field (`initialReplication.method`, `copyFrequencySeconds`, …) or `disks.<id>` of the VM */
  option: string;
  message: string;
}

/**
 * The options of a policy (and of the VM's disks, at the source) that a fabric cannot do
 * in that role. Empty: nothing to refuse. The initial replication method and the copy
 * frequency concern both ends (an offline copy is exported at one and imported at the
 * other; every copy is made at one and applied at the other); app-consistent points and
 * raw disks concern the source, whose hosts quiesce guests and track their disks. A
 * replication group (`group`) concerns both: its cuts are made at one and kept at the other.
 */
export function unsupportedOptions(caps: FabricCapabilities, role: FabricRole, policy: PolicySettings, vm?: { disks: { id: string; name: string; format?: string | undefined }[] }, group?: string): UnsupportedOption[] {
  const out: UnsupportedOption[] = [];
  const method = policy.initialReplication.method;
  if (!caps.initialReplication.includes(method)) {
    out.push({ option: 'initialReplication.method', message: `${method} initial replication (it does ${caps.initialReplication.join(' or ') || 'none'})` });
  }
  if (isContinuous(policy)) {
    if (!caps.continuousReplication?.includes(role)) {
      const shortest = caps.copyFrequenciesSeconds.length > 0 ? Math.min(...caps.copyFrequenciesSeconds) : undefined;
      out.push({
        option: 'copyMode',
        message: `continuous replication (${role === 'source' ? 'its hosts track writes by checkpoints, not in the data path' : 'it does not keep points seconds apart'}; ${shortest !== undefined ? `the shortest cycle it sustains is ${shortest} s: set copyMode to cycles with copyFrequencySeconds ${shortest}` : 'it sustains no copy cycle'})`,
      });
    }
  } else if (!caps.copyFrequenciesSeconds.includes(policy.copyFrequencySeconds)) {
    out.push({ option: 'copyFrequencySeconds', message: `a copy every ${policy.copyFrequencySeconds} s (it sustains ${caps.copyFrequenciesSeconds.map((s) => `${s} s`).join(', ') || 'none'})` });
  }
  if (group !== undefined) {
    if (!caps.consistencyGroups?.includes(role)) {
      out.push({ option: 'group', message: `replication group ${group} (${role === 'source' ? 'its hosts cannot hold a VM\'s writes for a moment to cut the group at one instant' : 'its replicas do not keep a group\'s cuts'}; protect the VM without a group)` });
    } else if (isContinuous(policy)) {
      out.push({ option: 'group', message: `replication group ${group} under continuous replication (a group is cut at its policy's copy frequency: choose a policy with copyMode cycles)` });
    }
  }
  if (role === 'source' && policy.appConsistentFrequencyHours > 0 && !caps.appConsistentPoints) {
    out.push({ option: 'appConsistentFrequencyHours', message: 'app-consistent recovery points (set appConsistentFrequencyHours to 0 for crash-consistent points only)' });
  }
  if (role === 'source' && !caps.rawDisks) {
    for (const d of vm?.disks ?? []) {
      if (d.format === 'raw') out.push({ option: `disks.${d.id}`, message: `raw disk ${d.name} (convert it to qcow2 v3: qemu-img convert -O qcow2 -o compat=1.1)` });
    }
  }
  return out;
}
