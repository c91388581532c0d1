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
  /** the consistency group's cut the point belongs to (src/domain/groups.ts): one instant across the group's VMs */
  cut?: string | undefined;
}

/** A host agent's replication endpoint; `name` is its certificate's common name (the host's name). */
export interface AgentEndpoint {
  kind?: 'agent';
  address: string;
  port: number;
  name?: string;
}

/** A replica in an Azure storage container, written by the source host's own agent (docs/design/azure.md). */
export interface AzureContainerEndpoint {
  kind: 'azure';
  /** https://ACCOUNT.blob.core.windows.net/CONTAINER (src/domain/azure-layout.ts, parseContainerUrl) */
  containerUrl: string;
}

/** Where a source host's agent sends replication: a recovery host's agent, or an Azure container. */
export type ReplicaEndpoint = AgentEndpoint | AzureContainerEndpoint;

export function isAzureEndpoint(e: ReplicaEndpoint): e is AzureContainerEndpoint {
  return e.kind === 'azure';
}

/**
 * What lets the source's agent write into an Azure container: a SAS for that container
 * only, and when it expires. A secret: it travels in the replication's commands to the
 * source site's provider only, and is never kept in an item's record, a job's data or a log.
 */
export interface ReplicaAccess {
  sas: string;
  expiresAt: string;
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
  /** where the source's host agent sends replication: the recovery host's agent (with its certificate's name), or an Azure container */
  agent: ReplicaEndpoint;
  /** an Azure container's access for the source's agent, answered by replica.prepare only (never recorded) */
  access?: ReplicaAccess | undefined;
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
  /** the point it runs, when the fabric started a newer one than asked (StartTestFailoverBody.latest) */
  point?: RecoveryPointInfo | undefined;
}

/** the largest replication epoch an agent takes (one per failover: far beyond any VM's life) */
export const MAX_REPLICATION_EPOCH = 2 ** 31;
