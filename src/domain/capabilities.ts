/** What a fabric can do, as its driver declares it (src/fabric/driver.ts). */
import type { InitialReplication } from './policy.js';

export const INITIAL_REPLICATION_METHODS = ['now', 'scheduled', 'offline'] as const satisfies readonly InitialReplication['method'][];
export type InitialReplicationMethod = (typeof INITIAL_REPLICATION_METHODS)[number];

export interface FabricCapabilities {
  /** the initial replication methods its hosts can do (offline: an export at the source and an import at the target) */
  initialReplication: InitialReplicationMethod[];
  /** recovery points with the guest quiesced (a policy's appConsistentFrequencyHours > 0) */
  appConsistentPoints: boolean;
  /** the copy frequencies (seconds) its hosts sustain, of the policy's 30, 300 and 900 */
  copyFrequenciesSeconds: number[];
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
}
