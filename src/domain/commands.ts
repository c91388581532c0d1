/**
 * The commands the vault sends a fabric's provider, defined once for both ends: each
 * command's kind, the body the vault sends, what the provider answers, and (for the long
 * ones) what its progress reports carry. The vault's jobs send them (`JobContext.command`,
 * src/jobs/engine.ts, typed by kind) and the provider's handlers answer them
 * (src/provider/runtime.ts, typed by kind); docs/design/provider.md lists what each does.
 *
 * Ids in bodies and answers are the vault's (`<fabric id>.<local id>`). A command crosses
 * the network, so the provider checks its body before a handler sees it
 * (checkCommandBody): a body without a field it needs is refused with INVALID_ARGUMENT
 * naming the field. Answers and progress are the provider's, which the vault authenticated.
 */
import type { RecoveryVmChoice } from './capabilities.js';
import { OsrError } from './errors.js';
import { checkMachine, type MachineSpec } from './machine.js';
import { isSafeName } from './names.js';
import type { Placement } from './placement.js';
import type { InitialReplication, PolicySettings } from './policy.js';
import type { VmProperties } from './resources.js';
import type { AgentEndpoint, AzureContainerEndpoint, NicConnection, RecoveryPointInfo, ReplicaAccess, ReplicaEndpoint, ReplicaVm, TestNetwork, TestVm } from './replicas.js';
import { isContainerUrl } from './azure-layout.js';
import type { DrillEvidence, PlanActionContext } from './runs.js';

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
  /** the vault's signed replication grant (src/pki/grant.ts) that names the source and this replica's host */
  grant?: string;
  placement: Placement;
  policy: PolicySettings;
  /** the replica VM's size and disk type, chosen at enable (a recovery site that offers no choice refuses one) */
  recoveryVm?: RecoveryVmChoice;
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
  /** the vault's signed replication grant that names this VM's host and the target's */
  grant?: string;
  /** the replication group the VM is in: its points are the group's cuts, made by the provider at the policy's frequency */
  group?: string;
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

/**
 * replication.confirm-disks, to the primary fabric: the VM's disks shrank or one was
 * removed, and its replication waits; the user confirms, and the replica's next points
 * have the disks as they are now.
 */
export interface ConfirmDisksBody {
  item: string;
  vmId?: string;
}

export interface ConfirmDisksResult {
  /** what changed, as the host saw it */
  summary: string;
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
  /**
   * the drill asked for the latest point: when the replica has folded `point` into a newer
   * cut since (continuous replication), the newest point it holds is started instead, and
   * the answer says which
   */
  latest?: boolean | undefined;
  network: TestNetwork;
}

export interface CleanupTestFailoverBody {
  item: string;
  testVmId: string;
}

/** What testfailover.cleanup answers: the test VM's evidence, read before it was removed (the vault bounds it: drillEvidence). */
export interface CleanupTestFailoverResult {
  evidence?: DrillEvidence | null;
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
  /** the vault's signed replication grant that names that host and the demoted VM's */
  grant?: string;
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
  'replication.confirm-disks': { body: ConfirmDisksBody; result: ConfirmDisksResult };
  'replication.disable': { body: DisableReplicationBody; result: NoResult };
  'replica.remove': { body: RemoveReplicaBody; result: RemoveReplicaResult };
  'replica.connect-nics': { body: ConnectNicsBody; result: ConnectNicsResult };
  'testfailover.start': { body: StartTestFailoverBody; result: TestVm };
  'testfailover.cleanup': { body: CleanupTestFailoverBody; result: CleanupTestFailoverResult };
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
  ConfirmDisks: 'replication.confirm-disks',
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

// ---- checking a body that came over the network -----------------------------------------

/** A field that is not what its command needs: where, and what it should be. */
class Malformed extends Error {
  constructor(
    readonly field: string,
    readonly expected: string,
    value: unknown,
  ) {
    super(`${field || 'the body'} must be ${expected}, not ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`);
  }
}

/** Checks one value: answers it typed, or throws Malformed naming the field. */
type Check<T> = (v: unknown, field: string) => T;
/** A check for each field of T (an optional field's check may let undefined through). */
type FieldChecks<T> = { [P in keyof T]-?: Check<T[P]> };

const at = (field: string, key: string | number) => (typeof key === 'number' ? `${field}[${key}]` : field ? `${field}.${key}` : key);
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

const text: Check<string> = (v, field) => {
  if (typeof v !== 'string') throw new Malformed(field, 'a string', v);
  return v;
};
/** an id or a name: a string that is not empty */
const id: Check<string> = (v, field) => {
  if (typeof v !== 'string' || v === '') throw new Malformed(field, 'a non-empty string', v);
  return v;
};
/** a replication group's name: a safe name (names.ts), as hosts take it */
const groupName: Check<string> = (v, field) => {
  if (!isSafeName(v)) throw new Malformed(field, 'a group name (1 to 128 of A-Z a-z 0-9 . _ -, not starting with a dot)', v);
  return v;
};
const num: Check<number> = (v, field) => {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Malformed(field, 'a number', v);
  return v;
};
const bool: Check<boolean> = (v, field) => {
  if (typeof v !== 'boolean') throw new Malformed(field, 'true or false', v);
  return v;
};
const optional =
  <T>(check: Check<T>): Check<T | undefined> =>
  (v, field) =>
    v === undefined ? undefined : check(v, field);
const nullable =
  <T>(check: Check<T>): Check<T | null> =>
  (v, field) =>
    v === null ? null : check(v, field);
const oneOf =
  <T extends string>(...values: T[]): Check<T> =>
  (v, field) => {
    const found = values.find((x) => x === v);
    if (found === undefined) throw new Malformed(field, `one of ${values.join(', ')}`, v);
    return found;
  };
const list =
  <T>(check: Check<T>): Check<T[]> =>
  (v, field) => {
    if (!Array.isArray(v)) throw new Malformed(field, 'a list', v);
    return v.map((x, i) => check(x, at(field, i)));
  };
const record =
  <T>(check: Check<T>): Check<Record<string, T>> =>
  (v, field) => {
    if (!isRecord(v)) throw new Malformed(field, 'an object', v);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, check(x, at(field, k))]));
  };

/** Every field of an object passed its check (the object is answered as it came, other fields and all). */
function hasFields<T>(v: Record<string, unknown>, checks: FieldChecks<T>, field: string): v is Record<string, unknown> & T {
  for (const [key, check] of Object.entries<Check<unknown>>(checks)) check(v[key], at(field, key));
  return true;
}
const object =
  <T>(checks: FieldChecks<T>): Check<T> =>
  (v, field) => {
    if (!isRecord(v)) throw new Malformed(field, 'an object', v);
    if (!hasFields<T>(v, checks, field)) throw new Malformed(field, 'an object', v);
    return v;
  };

/** a VM's machine: every field bounded (checkMachine), the error naming the field */
const machine: Check<MachineSpec> = (v, field) => {
  try {
    return checkMachine(v);
  } catch (e) {
    const inner = e instanceof OsrError && typeof e.details?.field === 'string' ? e.details.field.slice('machine'.length).replace(/\.$/, '') : '';
    throw new Malformed(`${field}${inner}`, 'a machine within its bounds (src/domain/machine.ts)', v);
  }
};
const agentEndpoint = object<AgentEndpoint>({ kind: optional(oneOf('agent')), address: id, port: num, name: optional(text) });
/** a recovery host's agent, or an Azure container (its URL as parseContainerUrl gives it back) */
const agent: Check<ReplicaEndpoint> = (v, field) => {
  if (isRecord(v) && v.kind === 'azure') {
    const e = object<AzureContainerEndpoint>({ kind: oneOf('azure'), containerUrl: text })(v, field);
    if (!isContainerUrl(e.containerUrl)) throw new Malformed(at(field, 'containerUrl'), 'a container URL (https://ACCOUNT.blob.core.windows.net/CONTAINER)', e.containerUrl);
    return e;
  }
  return agentEndpoint(v, field);
};
const access = object<ReplicaAccess>({ sas: text, expiresAt: text });
const nic = object<NicConnection>({ id, vmNetwork: nullable(id), ip: nullable(text) });
const placement = object<Placement>({ hostId: id, storage: record(id), networks: record(nullable(id)) });
const vm = object<CommandVm>({
  id,
  name: id,
  cloud: id,
  host: id,
  powerState: text,
  disks: list(object<CommandVm['disks'][number]>({ id, name: text, sizeBytes: num, storageLocation: optional(id), format: optional(text) })),
  nics: list(object<CommandVm['nics'][number]>({ id, vmNetwork: optional(id), ip: optional(text) })),
  replicaOf: optional(id),
  testFailoverOf: optional(id),
  replicationId: optional(id),
  machine: optional(machine),
});
const initialReplication: Check<InitialReplication> = (v, field) => {
  const { method } = object<{ method: InitialReplication['method'] }>({ method: oneOf('now', 'scheduled', 'offline') })(v, field);
  if (method === 'scheduled') return object<Extract<InitialReplication, { method: 'scheduled' }>>({ method: oneOf('scheduled'), startAt: text })(v, field);
  if (method === 'offline') return object<Extract<InitialReplication, { method: 'offline' }>>({ method: oneOf('offline'), exportPath: text, importPath: text })(v, field);
  return { method };
};
const policy = object<PolicySettings>({
  copyFrequencySeconds: num,
  copyMode: optional(oneOf('cycles', 'continuous')),
  pointIntervalSeconds: optional(num),
  retentionHours: num,
  appConsistentFrequencyHours: num,
  authentication: oneOf('certificate'),
  port: num,
  compression: bool,
  initialReplication,
  deleteReplicaOnDisable: bool,
  hostOsVersion: text,
});
const testNetwork: Check<TestNetwork> = (v, field) => {
  const { mode } = object<{ mode: TestNetwork['mode'] }>({ mode: oneOf('none', 'existing', 'temporary') })(v, field);
  if (mode === 'existing') return object<{ mode: 'existing'; vmNetwork: string }>({ mode: oneOf('existing'), vmNetwork: id })(v, field);
  return { mode };
};
const planPoint = object<{ id: string; at: string; consistency: string }>({ id, at: text, consistency: text });
const actionContext = object<PlanActionContext>({
  plan: object<PlanActionContext['plan']>({ id, name: text }),
  job: id,
  failoverType: oneOf('test', 'planned', 'unplanned'),
  direction: oneOf('primary-to-recovery', 'recovery-to-primary'),
  group: object<PlanActionContext['group']>({ name: text, index: num }),
  action: object<PlanActionContext['action']>({ name: text, phase: oneOf('pre', 'post') }),
  vms: record(object<PlanActionContext['vms'][string]>({ name: text, state: text, vmId: nullable(id), recoveryPoint: nullable(planPoint), testVmId: nullable(id) })),
});

const BODY_CHECKS: { [K in CommandKind]: Check<CommandBody<K>> } = {
  'replica.prepare': object<PrepareReplicaBody>({ item: id, vm, sourceAgent: optional(id), grant: optional(id), placement, policy, recoveryVm: optional(object<RecoveryVmChoice>({ size: optional(id), diskType: optional(id) })) }),
  'replication.enable': object<EnableReplicationBody>({
    item: id,
    vmId: optional(id),
    vm: optional(vm),
    policy,
    target: object<ReplicationTarget>({ fabricId: id, replicaVmId: id, hostId: id, agent, access: optional(access), nics: list(nic), reused: bool }),
    grant: optional(id),
    group: optional(groupName),
  }),
  'replication.initial': object<InitialReplicationBody>({ item: id, vmId: optional(id), method: initialReplication }),
  'replication.resync': object<ResyncBody>({ item: id, vmId: optional(id), requestedAt: text }),
  'replication.confirm-disks': object<ConfirmDisksBody>({ item: id, vmId: optional(id) }),
  'replication.disable': object<DisableReplicationBody>({ item: id, vmId: optional(id) }),
  'replica.remove': object<RemoveReplicaBody>({ item: id, replicaVmId: nullable(id), delete: optional(bool) }),
  'replica.connect-nics': object<ConnectNicsBody>({ item: id, replicaVmId: id, networks: record(nullable(id)) }),
  'testfailover.start': object<StartTestFailoverBody>({ item: id, replicaVmId: id, point: id, latest: optional(bool), network: testNetwork }),
  'testfailover.cleanup': object<CleanupTestFailoverBody>({ item: id, testVmId: id }),
  'testfailover.network.create': object<CreateTestNetworkBody>({ name: id }),
  'testfailover.network.remove': object<RemoveTestNetworkBody>({ vmNetwork: id }),
  'failover.prepare': object<PrepareFailoverBody>({ item: id, vmId: optional(id) }),
  'failover.promote': object<PromoteBody>({ item: id, replicaVmId: id, point: nullable(id) }),
  'failover.change-point': object<ChangePointBody>({ item: id, vmId: id, point: id }),
  'failover.commit': object<CommitFailoverBody>({ item: id, vmId: id }),
  'failover.fence': object<FenceBody>({ item: id, vmId: id, epoch: num }),
  'failover.demote': object<DemoteBody>({ item: id, vmId: id, epoch: num, source: optional(id), grant: optional(id) }),
  'plan.script': object<RunScriptBody>({ script: text, context: actionContext, timeoutSeconds: num }),
};

export function isCommandKind(kind: string): kind is CommandKind {
  return Object.hasOwn(BODY_CHECKS, kind);
}

/**
 * A command's body as it came over the network, checked against what its kind needs:
 * answered typed (as it came), or INVALID_ARGUMENT naming the first field that is wrong.
 */
export function checkCommandBody<K extends CommandKind>(kind: K, body: unknown): CommandBody<K> {
  const check: Check<CommandBody<K>> = BODY_CHECKS[kind];
  try {
    return check(body, '');
  } catch (e) {
    if (!(e instanceof Malformed)) throw e;
    throw new OsrError('INVALID_ARGUMENT', `the vault's ${kind} command is malformed: ${e.message}`, { command: kind, field: e.field || null, expected: e.expected });
  }
}
