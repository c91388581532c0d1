/**
 * The commands the vault sends a fabric's provider, defined once for both ends: each
 * command's kind, the body the vault sends, what the provider answers, and (for the long
 * ones) what its progress reports carry. The vault's jobs send them (`JobContext.command`,
 * src/jobs/engine.ts, typed by kind) and the provider's handlers answer them
 * (src/provider/runtime.ts, typed by kind); docs/design/provider.md lists what each does.
 *
 * Ids in bodies and answers are the vault's (`<fabric id>.<local id>`).
 */
import type { Placement } from './placement.js';
import type { InitialReplication, PolicySettings } from './policy.js';
import type { VmProperties } from './resources.js';
import type { NicConnection, RecoveryPointInfo, ReplicaVm, TestNetwork, TestVm } from './replicas.js';
import type { PlanActionContext } from './runs.js';

/** A source VM as the vault's inventory holds it (vault ids). */
export interface CommandVm extends VmProperties {
  id: string;
  name: string;
}

/** An answer with nothing in it. */
export type NoResult = Record<string, never>;

// ---- replica and replication ------------------------------------------------------------

/** replica.prepare, to the recovery fabric: the replica VM where placement says. */
export interface PrepareReplicaBody {
  item: string;
  vm: CommandVm;
  /** the name of the source host's agent, the only one that may replicate into the replica */
  sourceAgent?: string;
  placement: Placement;
  policy: PolicySettings;
}

/** Where replication goes: the recovery site's replica, as replica.prepare or failover.demote answered it. */
export interface ReplicationTarget extends ReplicaVm {
  fabricId: string;
}

/** replication.enable, to the primary fabric: track the VM and replicate it to the target's agent. */
export interface EnableReplicationBody {
  item: string;
  /** the VM acted on at the primary site when it is not the item's own (after a reverse) */
  vmId?: string;
  vm?: CommandVm;
  policy: PolicySettings;
  target: ReplicationTarget;
}

/** replication.initial, to the primary fabric: follow the first copy until its point is at the replica. */
export interface InitialReplicationBody {
  item: string;
  vmId?: string;
  method: InitialReplication;
}

export interface InitialReplicationProgress {
  fraction: number;
  bytesDone: number;
  bytesTotal: number;
  rateBytesPerSec: number;
  etaSeconds: number | null;
  currentDisk: string | null;
  /** the state the host reports (InitialReplication, Resynchronizing, …) */
  state: string;
}

export interface InitialReplicationResult {
  recoveryPoint: RecoveryPointInfo;
}

/** replication.resync, to the primary fabric: resynchronize now, and follow it until its point is at the replica. */
export interface ResyncBody {
  item: string;
  vmId?: string;
  /** when the vault asked: a resync begun since then is the one asked for (the command delivered again) */
  requestedAt: string;
}

export interface ResyncProgress extends InitialReplicationProgress {
  /** found different and sent so far */
  differingBytes: number;
}

export interface ResyncResult {
  resync: { id: string; reason: string; bytesTotal: number; differingBytes: number; startedAt: string; completedAt: string };
  recoveryPoint: RecoveryPointInfo | null;
}

/** replication.disable, to the primary fabric. */
export interface DisableReplicationBody {
  item: string;
  vmId?: string;
}

/** replica.remove, to the recovery fabric: delete the replica with its data, or keep it as a VM of its own. */
export interface RemoveReplicaBody {
  item: string;
  /** null: the replica the provider knows for the item, if any */
  replicaVmId: string | null;
  /** default true */
  delete?: boolean;
}

export interface RemoveReplicaResult {
  replicaVmId: string | null;
  deleted: boolean;
}

/** replica.connect-nics, to the recovery fabric: NIC id → VM network (null: disconnected). */
export interface ConnectNicsBody {
  item: string;
  replicaVmId: string;
  networks: Record<string, string | null>;
}

export interface ConnectNicsResult {
  nics: NicConnection[];
}

// ---- test failover ----------------------------------------------------------------------

export interface StartTestFailoverBody {
  item: string;
  replicaVmId: string;
  point: string;
  network: TestNetwork;
}

export interface CleanupTestFailoverBody {
  item: string;
  testVmId: string;
}

/** A recovery plan's drill network, made once per name. */
export interface CreateTestNetworkBody {
  name: string;
}

export interface CreateTestNetworkResult {
  vmNetwork: string;
}

export interface RemoveTestNetworkBody {
  vmNetwork: string;
}

// ---- failover ---------------------------------------------------------------------------

/** failover.prepare, to the primary fabric: shut the VM down and ship its final delta. */
export interface PrepareFailoverBody {
  item: string;
  vmId?: string;
}

/** failover.prepare, failover.change-point, failover.commit: the point the VM is at. */
export interface PointResult {
  point: RecoveryPointInfo;
}

/** failover.promote, to the recovery fabric: the point (null: the newest there) runs as the VM. */
export interface PromoteBody {
  item: string;
  replicaVmId: string;
  point: string | null;
}

export interface PromoteResult {
  vmId: string;
  epoch: number;
  point: RecoveryPointInfo;
  /** the points the VM can change to before the commit */
  points?: RecoveryPointInfo[];
}

export interface ChangePointBody {
  item: string;
  vmId: string;
  point: string;
}

export interface CommitFailoverBody {
  item: string;
  vmId: string;
}

/** failover.fence, to the old primary's fabric: kept off until it is demoted. */
export interface FenceBody {
  item: string;
  vmId: string;
  epoch: number;
}

/** failover.demote, to the old primary's fabric: its disks become the replica of the copy promoted with `epoch`. */
export interface DemoteBody {
  item: string;
  vmId: string;
  epoch: number;
  /** the name of the host that runs the promoted copy, the only one that may replicate into the demoted disks */
  source?: string;
}

// ---- recovery plans ---------------------------------------------------------------------

/** plan.script, to the recovery fabric: a script under the provider's scripts directory, with the run's context. */
export interface RunScriptBody {
  script: string;
  context: PlanActionContext;
  timeoutSeconds: number;
}

export interface ScriptResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
}

/** Every command: its body, its answer, and its progress reports (only the long ones report). */
export interface CommandMap {
  'replica.prepare': { body: PrepareReplicaBody; result: ReplicaVm };
  'replication.enable': { body: EnableReplicationBody; result: NoResult };
  'replication.initial': { body: InitialReplicationBody; result: InitialReplicationResult; progress: InitialReplicationProgress };
  'replication.resync': { body: ResyncBody; result: ResyncResult; progress: ResyncProgress };
  'replication.disable': { body: DisableReplicationBody; result: NoResult };
  'replica.remove': { body: RemoveReplicaBody; result: RemoveReplicaResult };
  'replica.connect-nics': { body: ConnectNicsBody; result: ConnectNicsResult };
  'testfailover.start': { body: StartTestFailoverBody; result: TestVm };
  'testfailover.cleanup': { body: CleanupTestFailoverBody; result: NoResult };
  'testfailover.network.create': { body: CreateTestNetworkBody; result: CreateTestNetworkResult };
  'testfailover.network.remove': { body: RemoveTestNetworkBody; result: NoResult };
  'failover.prepare': { body: PrepareFailoverBody; result: PointResult };
  'failover.promote': { body: PromoteBody; result: PromoteResult };
  'failover.change-point': { body: ChangePointBody; result: PointResult };
  'failover.commit': { body: CommitFailoverBody; result: PointResult };
  'failover.fence': { body: FenceBody; result: NoResult };
  'failover.demote': { body: DemoteBody; result: ReplicaVm };
  'plan.script': { body: RunScriptBody; result: ScriptResult };
}

export type CommandKind = keyof CommandMap;
export type CommandBody<K extends CommandKind> = CommandMap[K]['body'];
export type CommandResult<K extends CommandKind> = CommandMap[K]['result'];
/** What a command's progress reports carry (never: it reports none). */
export type CommandProgress<K extends CommandKind> = CommandMap[K] extends { progress: infer P extends object } ? P : never;

/** The kinds, by name. */
export const Commands = {
  PrepareReplica: 'replica.prepare',
  EnableReplication: 'replication.enable',
  InitialReplication: 'replication.initial',
  Resync: 'replication.resync',
  DisableReplication: 'replication.disable',
  RemoveReplica: 'replica.remove',
  ConnectNics: 'replica.connect-nics',
  StartTestFailover: 'testfailover.start',
  CleanupTestFailover: 'testfailover.cleanup',
  CreateTestNetwork: 'testfailover.network.create',
  RemoveTestNetwork: 'testfailover.network.remove',
  PrepareFailover: 'failover.prepare',
  Promote: 'failover.promote',
  ChangePoint: 'failover.change-point',
  CommitFailover: 'failover.commit',
  Fence: 'failover.fence',
  Demote: 'failover.demote',
  RunScript: 'plan.script',
} as const satisfies Record<string, CommandKind>;
