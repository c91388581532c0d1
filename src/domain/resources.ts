/**
 * The vault's resources, as the API shows them (times are ISO 8601 strings). ASR's model
 * in osr's words: a fabric is a registered management server with its providers; its
 * inventory holds clouds, host groups, hosts, networks and storage, and the VMs on them;
 * policies, cloud pairings and mappings are the configuration; protected items are VMs
 * under protection.
 */
import type { RecoveryVmChoice } from './capabilities.js';
import type { FabricCapabilities } from './capabilities.js';
import type { MachineSpec } from './machine.js';
import type { Placement } from './placement.js';
import type { PolicySettings } from './policy.js';
import type { NicConnection, RecoveryPointInfo, ReplicaEndpoint, TestVm } from './replicas.js';
import type { ItemDrill } from './runs.js';

export const INVENTORY_KINDS = ['cloud', 'host-group', 'host', 'logical-network', 'vm-network', 'ip-pool', 'storage-classification', 'storage-location', 'vm'] as const;
export type InventoryKind = (typeof INVENTORY_KINDS)[number];

/** What a provider reports of its fabric; ids are the provider's own (the vault prefixes them with the fabric id). */
export interface InventoryDocument {
  clouds: { id: string; name: string; hostGroups: string[] }[];
  hostGroups: { id: string; name: string; hosts: string[] }[];
  hosts: {
    id: string;
    /** the host's name: its agent's certificate carries it as common name */
    name: string;
    osVersion: string;
    logicalNetworks: string[];
    storageLocations: string[];
    agent?: { address: string; replicationPort: number };
    /** DNS names and IP addresses its agent is reached at: its certificate names these and no others */
    addresses?: string[];
  }[];
  logicalNetworks: { id: string; name: string }[];
  vmNetworks: { id: string; name: string; logicalNetwork: string; subnets: { name: string; cidr: string }[] }[];
  ipPools: { id: string; name: string; vmNetwork: string; subnet: string; start: string; end: string }[];
  storageClassifications: { id: string; name: string }[];
  storageLocations: { id: string; name: string; classification: string; kind: 'share' | 'volume'; path: string; freeBytes?: number }[];
  vms: {
    id: string;
    name: string;
    cloud: string;
    host: string;
    powerState: string;
    /** `format`: the disk image's format where the fabric knows it (`raw`, `qcow2`); a raw disk is refused at a fabric without capability rawDisks */
    disks: { id: string; name: string; sizeBytes: number; storageLocation?: string; format?: string }[];
    nics: { id: string; vmNetwork?: string; subnet?: string; ip?: string }[];
    /** a replica VM: the protected item (the vault's id of its source VM) it holds the replica of */
    replicaOf?: string | undefined;
    /** a test failover's VM: the protected item whose drill it is */
    testFailoverOf?: string | undefined;
    /** the id the host's agent replicates this VM under: its replica is found by it, and the vault names the VM's source for it at the replica before the first copy */
    replicationId?: string | undefined;
    /** the VM's machine (vCPUs, memory, firmware, boot, NICs in the order of `nics`), where the fabric defines VMs from it (libvirt); its NICs name the source host's networks */
    machine?: MachineSpec | undefined;
  }[];
}

/**
 * A VM's properties in the vault's inventory (store/inventory.ts writes them from the
 * provider's document): references are vault ids.
 */
export interface VmProperties {
  cloud: string;
  host: string;
  powerState: string;
  disks: { id: string; name: string; sizeBytes: number; storageLocation?: string; format?: string }[];
  nics: { id: string; vmNetwork?: string; ip?: string }[];
  replicaOf?: string;
  testFailoverOf?: string;
  replicationId?: string;
  machine?: MachineSpec;
}

export interface InventoryObject {
  id: string;
  fabricId: string;
  kind: InventoryKind;
  name: string;
  /** the containing object: a host group's cloud, a host's host group, a VM's cloud */
  parentId: string | null;
  updatedAt: string;
  /** the kind's own fields, references as vault ids */
  properties: Record<string, unknown>;
}

export interface Provider {
  id: string;
  fabricId: string;
  name: string;
  version: string;
  certificateSerial: string;
  certificateFingerprint: string;
  /** a renewed certificate the provider has not used yet (the current one is accepted until it does) */
  nextCertificateFingerprint: string | null;
  proxy: { url: string; bypass?: string[] } | null;
  registeredAt: string;
  lastHeartbeatAt: string | null;
}

export interface Fabric {
  id: string;
  name: string;
  kind: string;
  version: string;
  inventoryScope: 'all' | string[];
  lastHeartbeatAt: string | null;
  heartbeatLost: boolean;
  inventoryAt: string | null;
  createdAt: string;
  /** what the fabric can do, as its provider last reported with a heartbeat (null: not reported yet, nothing is refused for it) */
  capabilities: FabricCapabilities | null;
  providers: Provider[];
}

export interface Policy {
  id: string;
  name: string;
  settings: PolicySettings;
  createdAt: string;
  updatedAt: string;
}

export interface CloudPairing {
  id: string;
  policyId: string;
  sourceCloudId: string;
  targetCloudId: string;
  createdAt: string;
}

export interface Mapping {
  id: string;
  sourceId: string;
  targetId: string;
  createdAt: string;
}

export const ProtectionState = {
  EnablingProtection: 'EnablingProtection',
  InitialReplication: 'InitialReplication',
  FinalizingProtection: 'FinalizingProtection',
  Protected: 'Protected',
  ResyncRequired: 'ResyncRequired',
  Resynchronizing: 'Resynchronizing',
  DisablingProtection: 'DisablingProtection',
  /** a drill: a recovery point started at the recovery site in isolation; replication goes on */
  TestFailoverInProgress: 'TestFailoverInProgress',
  /** the drill's VM runs; clean it up to finish the drill */
  TestFailoverComplete: 'TestFailoverComplete',
  CleaningUpTestFailover: 'CleaningUpTestFailover',
  FailoverInProgress: 'FailoverInProgress',
  /** the VM runs at the other site; commit (or, where the fabric allows, change the point) next */
  FailedOver: 'FailedOver',
  /** the failover is final; reprotect (reverse replication) next */
  Committed: 'Committed',
  /** reverse replication: the old primary's disks become the replica and are brought in step */
  Reprotecting: 'Reprotecting',
  ProtectionFailed: 'ProtectionFailed',
} as const;
export type ProtectionState = (typeof ProtectionState)[keyof typeof ProtectionState];

export const Health = { Healthy: 'Healthy', Warning: 'Warning', Critical: 'Critical', NotApplicable: 'NotApplicable' } as const;
export type Health = (typeof Health)[keyof typeof Health];

export interface HealthReason {
  code: string;
  message: string;
}

/**
 * Whether an item can fail over now: only with a crash-consistent recovery point at the
 * recovery site and no other operation in its way. `reason` says what is missing.
 */
export interface FailoverReadiness {
  ready: boolean;
  reason: string | null;
}

export function failoverReadiness(state: ProtectionState, lastRecoveryPointAt: string | null): FailoverReadiness {
  if (state === ProtectionState.Protected) return lastRecoveryPointAt ? { ready: true, reason: null } : { ready: false, reason: 'no recovery point has reached the recovery site yet' };
  const why: Partial<Record<ProtectionState, string>> = {
    [ProtectionState.EnablingProtection]: 'protection is being enabled',
    [ProtectionState.InitialReplication]: 'the first copy is not finished',
    [ProtectionState.FinalizingProtection]: 'protection is being finalized',
    [ProtectionState.ProtectionFailed]: 'enabling protection failed; restart its job',
    [ProtectionState.DisablingProtection]: 'protection is being disabled',
    [ProtectionState.TestFailoverInProgress]: 'a test failover is starting',
    [ProtectionState.TestFailoverComplete]: 'a test failover runs; clean it up first',
    [ProtectionState.CleaningUpTestFailover]: 'a test failover is being cleaned up',
    [ProtectionState.FailoverInProgress]: 'a failover is in progress',
    [ProtectionState.FailedOver]: 'it is failed over; commit and reprotect first',
    [ProtectionState.Committed]: 'it is failed over; reprotect first',
    [ProtectionState.Reprotecting]: 'reverse replication has not reached its first point',
  };
  return { ready: false, reason: why[state] ?? `it is ${state}` };
}

export interface ProtectedItem {
  id: string;
  name: string;
  fabricId: string;
  pairingId: string;
  state: ProtectionState;
  health: Health;
  healthReasons: HealthReason[];
  rpoSeconds: number | null;
  lastRecoveryPointAt: string | null;
  /** 0..1 while initial replication runs */
  progress: number | null;
  replication: ItemReplication;
  activeJobId: string | null;
  /** ready for failover: a crash-consistent point at the recovery site, nothing in the way */
  readiness: FailoverReadiness;
  createdAt: string;
  updatedAt: string;
}

/** Which way an item replicates: from its own site to the recovery site, or back after a reprotect. */
export const Direction = { PrimaryToRecovery: 'primary-to-recovery', RecoveryToPrimary: 'recovery-to-primary' } as const;
export type Direction = (typeof Direction)[keyof typeof Direction];

/** The replica an item replicates into, as the recovery site answered it (replica.prepare, failover.demote). */
export interface ItemReplica {
  replicaVmId: string;
  hostId: string;
  agent: ReplicaEndpoint;
  /** as replica.prepare answered them (a demoted replica records none) */
  nics?: NicConnection[];
  reused?: boolean;
}

/** A failover of an item, from the first task of its job to its reprotect. */
export interface FailoverRecord {
  kind: 'planned' | 'unplanned';
  /** the job that ran it; for a failover made at a host without the vault (`outsideVault`), `outside-EPOCH` */
  jobId: string;
  /** made at the recovery host by hand (`osr replica promote`, when no vault could be had); the vault learnt it from the host's provider */
  outsideVault?: boolean;
  direction: Direction;
  fromFabricId: string;
  toFabricId: string;
  /** the VM that ran before, and the one that runs now */
  oldPrimaryVmId: string;
  newPrimaryVmId: string;
  /**
   * the host the old primary ran on, and the id its agents knew it by, as the inventory said
   * when the failover ran: the reprotect's grant names them (not what a provider reports later)
   */
  oldPrimaryHostId?: string;
  replicationId?: string;
  point: RecoveryPointInfo;
  epoch: number;
  startedAt: string;
  failedOverAt: string;
  /** from the job's start until the VM ran at the other site */
  rtoSeconds: number;
  /** unplanned: whether the source was shut down (and synchronized) first, and whether the old primary is fenced yet */
  sourceShutDown?: boolean;
  fencePending?: boolean;
  /** the points the VM ran from before `point`, changed before the commit */
  pointChanges?: { from: RecoveryPointInfo; to: RecoveryPointInfo; at: string; jobId: string }[];
  committedAt?: string;
  /** the commit's job, and the reprotect's: a task run again finds its record made */
  commitJobId?: string;
  reprotectedAt?: string;
  reprotectJobId?: string;
}

/** What an item records of its running drill (replication.testFailover). */
export interface TestFailoverRecord {
  jobId: string;
  point: { id: string; at: string; consistency: string };
  network: string;
  testVm: TestVm;
  startedAt: string;
  rtoSeconds: number;
}

/**
 * A protected item's replication record: where it replicates and into what, and the
 * history its jobs keep (src/workflows). Enabling protection fills it in a step at a time,
 * so every field may be missing.
 */
/** Every protected item at a glance, as the vault counts them (GET /protected-items/summary). */
export interface ItemSummary {
  total: number;
  byHealth: Record<string, number>;
  byState: Record<string, number>;
  /** the item with the highest RPO now, or null when none reports one */
  worstRpo: { id: string; name: string; rpoSeconds: number } | null;
  /** Protected items never drilled, or not in DRILL_INTERVAL_DAYS (runs.ts): how many, and the first by name */
  drillsDue: { count: number; items: { id: string; name: string; lastDrillAt: string | null }[] };
}

export interface ItemReplication {
  /** the primary site's fabric and the recovery site's (they swap after a reprotect) */
  sourceFabricId?: string;
  targetFabricId?: string;
  /** the cloud the item was protected to (the pairing's target) */
  targetCloudId?: string;
  policyId?: string;
  /** where the replica went (network mappings changed since update its networks) */
  placement?: Placement;
  /** the replica VM's size and disk type chosen at enable (a recovery site that offers the choice) */
  recoveryVm?: RecoveryVmChoice;
  /**
   * the replication group (a consistency group) the item's VM is in: its points are cut at
   * one instant with the other members', and a failover of several members uses one group
   * point (src/domain/groups.ts)
   */
  group?: string;
  replica?: ItemReplica;
  /** the VM that runs now (default: the item's own VM) */
  primaryVmId?: string;
  /** default primary-to-recovery */
  direction?: Direction;
  /** a failover not reprotected yet */
  failover?: FailoverRecord;
  /** finished failovers, newest first (a few; all are in the events) */
  failovers?: FailoverRecord[];
  /** a drill whose test VM runs */
  testFailover?: TestFailoverRecord;
  /** finished drills, newest first */
  drills?: ItemDrill[];
}

export interface RecoveryPoint {
  id: string;
  at: string;
  consistency: 'crash' | 'app';
  /** the replication group's cut it belongs to (src/domain/groups.ts) */
  cut?: string | undefined;
}

export interface RecoveryPlanAction {
  name: string;
  kind: 'script' | 'manual' | 'webhook';
  /** script path at the fabric, the instruction for a person, or the URL */
  target: string;
  failoverTypes?: ('test' | 'planned' | 'unplanned')[];
  directions?: ('primary-to-recovery' | 'recovery-to-primary')[];
  timeoutSeconds?: number;
  retries?: number;
}

export interface RecoveryPlanGroup {
  name: string;
  items: string[];
  pre?: RecoveryPlanAction[];
  post?: RecoveryPlanAction[];
}

export interface RecoveryPlanSpec {
  name: string;
  description?: string;
  shutdownGroup?: boolean;
  groups: RecoveryPlanGroup[];
  /** item → items it waits for */
  dependencies?: Record<string, string[]>;
}

export interface RecoveryPlan extends RecoveryPlanSpec {
  id: string;
  createdAt: string;
  updatedAt: string;
}

export const Severity = { Info: 'Info', Warning: 'Warning', Critical: 'Critical' } as const;
export type Severity = (typeof Severity)[keyof typeof Severity];

export interface VaultEvent {
  id: string;
  at: string;
  target: string | null;
  kind: string;
  severity: Severity;
  message: string;
  details: Record<string, unknown> | null;
}

export interface Alert {
  id: string;
  at: string;
  kind: string;
  severity: Severity;
  target: string | null;
  message: string;
  state: 'Active' | 'Resolved';
  resolvedAt: string | null;
  deliveries: { channel: string; to: string; ok: boolean; at: string; error?: string }[];
}

export interface AlertSettings {
  webhooks: string[];
  emails: string[];
  smtp: { host: string; port: number; secure: boolean; from: string; user?: string; password?: string } | null;
}

/** Whether the vault admitted a host of a fabric: it certifies an agent only for an admitted host (docs/security.md). */
export type AdmissionState = 'admitted' | 'pending';

export interface HostAdmission {
  fabricId: string;
  /** the host's name in the fabric's inventory (its agent certificate's common name) */
  host: string;
  state: AdmissionState;
  /** ISO times */
  firstSeenAt: string;
  decidedAt: string | null;
  /** 'first-inventory', 'upgrade' (certified before admission existed), or the Owner's token that approved it */
  decidedBy: string | null;
}
