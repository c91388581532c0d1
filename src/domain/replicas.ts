/**
 * What a fabric says of the copies of a VM: its recovery points, its replica VM, a test
 * failover's VM and the network a drill runs on. The shapes are the same on both sides of
 * a provider: with the fabric's own ids between the provider and its driver
 * (src/fabric/driver.ts), with the vault's ids (`<fabric id>.<local id>`) in the commands
 * and their answers (commands.ts) and in a protected item's record (resources.ts).
 */

export interface RecoveryPointInfo {
  id: string;
  at: string;
  consistency: 'crash' | 'app';
}

/** A host agent's replication endpoint; `name` is its certificate's common name (the host's name). */
export interface AgentEndpoint {
  address: string;
  port: number;
  name?: string;
}

/** A VM's NIC and the VM network it is connected to (null: none), with its address. */
export interface NicConnection {
  id: string;
  vmNetwork: string | null;
  ip: string | null;
}

export interface ReplicaVm {
  replicaVmId: string;
  hostId: string;
  /** where the source's host agent sends replication, and the agent's name (its certificate's) */
  agent: AgentEndpoint;
  nics: NicConnection[];
  /** an existing replica of this item was taken up again (its data is resynchronized, not copied) */
  reused: boolean;
}

/** Where a test failover's VM connects: nowhere, an existing (isolated) VM network, or one made for the drill. */
export type TestNetwork = { mode: 'none' } | { mode: 'existing'; vmNetwork: string } | { mode: 'temporary' };

export interface TestVm {
  testVmId: string;
  hostId: string;
  /** the VM network made for the drill (removed with the test VM) */
  temporaryNetwork: string | null;
  nics: NicConnection[];
  /** where the test VM's disks are served (any NBD client can be its guest) */
  disks: { name: string; nbd: string }[];
  startedAt: string;
}
