/**
 * The FabricDriver port: what a provider needs of the management server it runs at (a
 * fabric), in two parts.
 *
 * - FabricManagement: what differs between fabrics, their management server's objects —
 *   hosts enrolled, started and stopped, the inventory, power, NICs, replica VMs and test
 *   VMs as VM definitions, drill networks.
 * - FabricReplication: the data path — replication, its status and resync, recovery
 *   points, failover (prepare, promote, change of point, commit, fence, demote). Every
 *   fabric osr drives delegates it to osr host agents on its hosts; the one implementation,
 *   src/drivers/agent-replication.ts, asks the management part where each VM is.
 *
 * A FabricDriver is the two parts with the fabric's kind and capabilities. The provider
 * turns the vault's commands into calls on one part or the other, and reports the
 * capabilities to the vault, which refuses what a fabric cannot do before a job starts.
 *
 * Ids here are the fabric's own (the provider strips and adds the vault's fabric prefix).
 * Workflows branch on `capabilities`, never on a driver's kind.
 */
import type { FabricCapabilities, RecoveryVmChoice } from '../domain/capabilities.js';
import type { MachineSpec } from '../domain/machine.js';
import type { PolicySettings } from '../domain/policy.js';
import type { RecoveryPointInfo, ReplicaAccess, ReplicaEndpoint, ReplicaVm, TestNetwork, TestVm } from '../domain/replicas.js';
import type { InventoryDocument } from '../domain/resources.js';
import type { DrillEvidence } from '../domain/runs.js';
import type { EnrolmentProof } from '../domain/enrolment.js';

/** The shapes a driver answers, shared with the vault's commands (src/domain/replicas.ts); ids here are the fabric's own. */
export type { AgentEndpoint, AzureContainerEndpoint, NicConnection, RecoveryPointInfo, ReplicaAccess, ReplicaEndpoint, ReplicaVm, TestNetwork, TestVm } from '../domain/replicas.js';
export type { FabricCapabilities, InitialReplicationMethod } from '../domain/capabilities.js';

export const PowerAction = { Start: 'start', Shutdown: 'shutdown', Stop: 'stop' } as const;
export type PowerAction = (typeof PowerAction)[keyof typeof PowerAction];

/** What a driver may ask of its provider while it runs. */
export interface DriverContext {
  /**
   * Enrol a host agent: the vault's CA certifies a public key the host made. The private
   * key never leaves the host. A host that holds a valid certificate from the vault's CA
   * hands `proof` of it (its key's signature over the new key), without which the vault
   * refuses it a new one.
   */
  enrolAgent(name: string, publicKeyPem: string, proof?: EnrolmentProof): Promise<{ certificate: string; caCertificate: string; notAfter: string }>;
  /** the vault's CA (PEM): hosts trust it, and certificates from another CA are replaced */
  vaultCa: string;
  /** the inventory changed (a VM started, a replica was created): report it soon */
  inventoryChanged(): void;
  /** the provider's clock: when a host's certificate is due for renewal */
  clock: { now(): number };
  log: { info(o: object, msg?: string): void; warn(o: object, msg?: string): void; error(o: object, msg?: string): void };
}

/** A replica VM to create at the recovery site, where placement put it. */
export interface ReplicaVmSpec {
  /** the protected item (the vault's id of the source VM) */
  itemId: string;
  /** the source VM; its NICs' subnets pick the replica NICs' subnets (the same name, else the network's first) */
  source: {
    name: string;
    disks: { id: string; name: string; sizeBytes: number }[];
    /** `ip`: the source NIC's address, kept at the replica where its subnet has it */
    nics: { id: string; subnet?: string; ip?: string }[];
    /** the id the source host's agent replicates the VM under, and that agent's name (its certificate's): only it may replicate into the replica */
    replicationId?: string | undefined;
    agent?: string | undefined;
    /** the vault's signed replication grant naming that agent and the replica's host */
    grant?: string | undefined;
    /** the source VM's machine, as its fabric reported it (its NICs on the source host's networks); the recovery site maps them to its own */
    machine?: MachineSpec | undefined;
  };
  /** host that runs the replica */
  hostId: string;
  /** disk id → storage location */
  storage: Record<string, string>;
  /** NIC id → VM network, or null (not connected) */
  networks: Record<string, string | null>;
  /** the size and disk type chosen at enable (only where the capabilities offer them) */
  recoveryVm?: RecoveryVmChoice | undefined;
}

export interface TestVmSpec {
  itemId: string;
  replicaVmId: string;
  /** the recovery point's id */
  pointId: string;
  /** the latest point was asked for: when `pointId` was folded into a newer cut, start the newest point */
  latest?: boolean | undefined;
  network: TestNetwork;
}

export interface ReplicationRequest {
  vmId: string;
  policy: PolicySettings;
  /** the recovery host's agent (`name` is its certificate's common name, the host's name, checked when given), or an Azure container */
  peer: ReplicaEndpoint;
  /** an Azure container's SAS for the source's agent (a secret: kept by the agent in an owner-only file, never logged) */
  access?: ReplicaAccess | undefined;
  /** the vault's signed replication grant (src/pki/grant.ts): agents on the provider channel refuse replication without it */
  grant?: string | undefined;
  /**
   * the replication group the VM is in (capability consistencyGroups): its host makes no
   * points of its own; the provider cuts the group (cutGroup) at the policy's frequency
   */
  group?: string | undefined;
}

/** What a consistency group's cut made (FabricReplication.cutGroup). */
export interface GroupCut {
  cut: string;
  /** VM id → its point of the cut */
  points: Record<string, string>;
  /** the longest the guests' writes were held, on any host (ms) */
  heldMs: number;
  /** members left out of this cut: not replicating yet (their first copy or a resync runs), or gone from this site */
  skipped: string[];
  /** members left out because their host replicates them outside the group (they make points of their own): enable their replication again */
  notInGroup: string[];
}

/** The running or latest resynchronization of a VM's disks with its replica. */
export interface ResyncInfo {
  /** the host's id of this resync (an interrupted one resumes under the same id) */
  id: string;
  /** why it runs (asked for, change logs not trusted, …) */
  reason: string;
  fraction: number;
  /** compared so far, of bytesTotal */
  bytesDone: number;
  bytesTotal: number;
  /** found different and sent */
  differingBytes: number;
  rateBytesPerSec: number;
  etaSeconds: number | null;
  currentDisk: string | null;
  startedAt: string;
  /** set once the resync's point is at the replica */
  completedAt: string | null;
}

/** What replication of one VM looks like now, at the primary. */
export interface ReplicationStatus {
  health: 'Healthy' | 'Warning' | 'Critical';
  healthReasons: { code: string; message: string }[];
  rpoSeconds: number | null;
  /** the state the host reports (InitialReplication, Resynchronizing, Replicating, …) */
  state: string;
  /** the first copy (or the resync that replaces it for a reused replica) */
  initial: { fraction: number; bytesDone: number; bytesTotal: number; rateBytesPerSec: number; etaSeconds: number | null; currentDisk: string | null; done: boolean } | null;
  latestPoint: RecoveryPointInfo | null;
  lastError: { code: string; message: string } | null;
  /** a non-recoverable error stopped replication: nothing happens until someone acts */
  waitingForAction: boolean;
  /** change-log bytes per second of guest time (last hour) and of the busiest delta; null until measured */
  churn?: { bytesPerSec: number; peakBytesPerSec: number } | null;
  /** change-log bytes written and not yet applied at the replica */
  pendingLogBytes?: number | null;
  /** the running or latest resynchronization (null: none since replication began) */
  resync?: ResyncInfo | null;
}

/** What differs between fabrics: their management server's objects. */
export interface FabricManagement {
  /** bring the fabric up (hosts enrolled and reachable); called once the provider is registered */
  start(ctx: DriverContext): Promise<void>;
  stop(): Promise<void>;
  inventory(): Promise<InventoryDocument>;
  setPower(vmId: string, action: PowerAction): Promise<{ powerState: string }>;

  /**
   * the vault's certificate revocation list (PEM), fetched at start and every inventory
   * interval: the driver enrols again the hosts whose certificates it names (or that are
   * due for renewal) and hands it to its hosts' agents, which refuse the certificates it
   * names (optional: a fabric without agents of osr's has nothing to hand it to)
   */
  revocationList?(pem: string): Promise<void>;

  // ---- recovery site
  /** create the replica VM (or take up the one this item already has) and connect its NICs */
  ensureReplicaVm(spec: ReplicaVmSpec): Promise<ReplicaVm>;
  /** delete the replica VM and its data, or keep it as a VM of its own */
  removeReplicaVm(replicaVmId: string, o: { deleteData: boolean }): Promise<void>;
  /** connect a NIC to a VM network (an IP from its static pool), or disconnect it (null) */
  connectNic(vmId: string, nicId: string, vmNetwork: string | null): Promise<{ ip: string | null }>;
  /** a test failover: the point opened writable beside the replica (replication goes on) and started as a VM */
  startTestVm(spec: TestVmSpec): Promise<TestVm>;
  /** remove a test failover's VM, its writes and any network made for it (idempotent) */
  removeTestVm(testVmId: string): Promise<void>;
  /**
   * what a test VM shows now — its console's tail, whether its guest agent answers — for
   * the drill's record (VM_NOT_FOUND when there is none); a fabric that cannot tell has no
   * such method, and its drills keep no evidence
   */
  testVmEvidence?(testVmId: string): Promise<DrillEvidence>;
  /** an isolated VM network for a drill of several VMs (a recovery plan's), made once per name (idempotent) */
  createTestNetwork(name: string): Promise<{ vmNetwork: string }>;
  /** remove a drill's network once no test VM is on it (idempotent) */
  removeTestNetwork(vmNetwork: string): Promise<void>;
}

/** The data path, which every fabric delegates to osr host agents (src/drivers/agent-replication.ts). */
export interface FabricReplication {
  // ---- primary site
  /** start tracking and replicating a VM to the peer (idempotent) */
  ensureReplication(req: ReplicationRequest): Promise<void>;
  replicationStatus(vmId: string): Promise<ReplicationStatus>;
  /**
   * resynchronize now, whatever the resync window (capability resyncOnRequest): every block
   * is compared with the replica and those that differ are sent; a resync that runs already
   * is not started again. `replicationStatus().resync` shows its progress.
   */
  resync(vmId: string): Promise<void>;
  /**
   * the VM's disks shrank or one was removed and its replication waits for the user: go
   * on, the replica's next points have the disks as they are now (older points keep
   * theirs). INVALID_STATE when nothing waits. Absent: the fabric's VMs never wait so.
   */
  confirmDiskChange?(vmId: string): Promise<{ summary: string }>;
  /** stop replicating (idempotent); the VM keeps running */
  stopReplication(vmId: string): Promise<void>;
  /**
   * cut a replication group's VMs at one instant (capability consistencyGroups): each
   * member replicating gets a point of the cut; a member whose first copy or resync runs is
   * left out (`skipped`). Throws when any member's host refuses: then no point is made.
   */
  cutGroup?(group: string, vmIds: readonly string[]): Promise<GroupCut>;

  // ---- recovery site
  /** the points a replica holds */
  recoveryPoints(replicaVmId: string): Promise<RecoveryPointInfo[]>;

  // ---- failover
  /** planned failover, at the primary: shut the VM down, ship its final delta; answers the point that is its last state */
  prepareFailover(vmId: string): Promise<{ point: RecoveryPointInfo }>;
  /**
   * failover, at the recovery site: a point of the replica becomes the running VM (older
   * primaries are refused from now on); the VM runs from the point, whose other points
   * stay, until the failover is committed
   */
  promoteReplica(replicaVmId: string, pointId: string | null): Promise<{ vmId: string; epoch: number; point: RecoveryPointInfo; /** the points it can change to before the commit */ points?: RecoveryPointInfo[] }>;
  /**
   * whether the replica was promoted at its host, by osr or by hand (the host's `osr replica
   * promote`, when no vault could be had): its epoch and point, and whether it still runs
   * from an overlay (not committed). Undefined: it is still a replica. A fabric without host
   * agents does not answer it.
   */
  promotionOf?(replicaVmId: string): Promise<{ epoch: number; point: RecoveryPointInfo; pending: boolean } | undefined>;
  /** before the commit: the failed-over VM starts again from another point; what it wrote is discarded */
  changeRecoveryPoint(vmId: string, pointId: string): Promise<{ point: RecoveryPointInfo }>;
  /** commit a failover: the VM keeps its point and writes, the other points are dropped (idempotent) */
  commitFailover(vmId: string): Promise<{ point: RecoveryPointInfo }>;
  /** after a failover, at the old primary: the VM stays off until it is reprotected (a start is refused, EPOCH_STALE) */
  fenceVm(vmId: string, epoch: number): Promise<void>;
  /**
   * reprotect, at the old primary: the VM's disks become the replica of the copy promoted
   * with `epoch`; `source` names the host that runs that copy, the only one that may
   * replicate into them (its certificate's name), and `grant` is the vault's signed word for it
   */
  demoteVm(vmId: string, epoch: number, itemId: string, source?: string, grant?: string): Promise<ReplicaVm>;
}

/** A fabric as its provider sees it: the two parts, its kind and what it can do. */
export interface FabricDriver {
  readonly kind: string;
  /** reported to the vault with every heartbeat; the vault refuses what the fabric cannot do */
  readonly capabilities: FabricCapabilities;
  readonly management: FabricManagement;
  readonly replication: FabricReplication;
}
