/**
 * What the libvirt fabric's provider keeps across restarts (DIR/libvirt-state.json,
 * written whole, atomically, and synced): replica and test VM records, NIC leases from
 * the IP pools, drill networks, the peer each VM replicates to, and what failovers changed.
 */
import type { MachineSpec } from '../../domain/machine.js';
import type { RecoveryPointInfo, ReplicaEndpoint } from '../../domain/replicas.js';
import { loadRecords, RecordsWriter } from '../records-file.js';

export interface ReplicaRecord {
  id: string;
  itemId: string;
  /** the source VM's name: the replica store's name at the host's agent */
  name: string;
  hostId: string;
  /** the id the source's agent replicates the VM under (the source domain's UUID) */
  replicationId?: string | undefined;
  disks: { id: string; name: string; sizeBytes: number; storageLocation?: string }[];
  nicIds: string[];
  /** NIC id → the source NIC's subnet name */
  nicSubnets: Record<string, string | null>;
  /** the source VM's machine (its NICs on the source host's networks) */
  machine?: MachineSpec | undefined;
  protecting: boolean;
  createdAt: string;
}

export interface TestVmRecord {
  id: string;
  itemId: string;
  replicaId: string;
  replicaName: string;
  hostId: string;
  overlayId: string;
  pointId: string;
  /** the point opened, when a newer one than asked (TestVmSpec.latest) */
  point?: RecoveryPointInfo | undefined;
  nicIds: string[];
  /** the VM network the drill's NICs are on (a drill network), or null */
  network: string | null;
  /** the drill network made for this test VM alone (removed with it) */
  temporaryNetwork: string | null;
  disks: { name: string; nbd: string }[];
  startedAt: string;
}

/** A VM network made for drills: an isolated libvirt network at each host a test VM runs on. */
export interface DrillNetwork {
  id: string;
  name: string;
  cidr: string;
  pool: { start: string; end: string };
}

export interface NicLease {
  vmNetwork: string | null;
  subnet?: string | null;
  ip: string | null;
}

export interface LibvirtState {
  replicas: Record<string, ReplicaRecord>;
  /** "vmId/nicId" → lease */
  nics: Record<string, NicLease>;
  replications: Record<string, ReplicaEndpoint>;
  testVms: Record<string, TestVmRecord>;
  drillNetworks: Record<string, DrillNetwork>;
  promoted: Record<string, { epoch: number; at: string }>;
  demoted: Record<string, { epoch: number; itemId: string; at: string }>;
  fenced: Record<string, { epoch: number; at: string }>;
  /**
   * hosts whose agent presented its certificate from the vault's CA over the provider
   * channel, with the site file's bootstrap fingerprint then: that bootstrap certificate is
   * spent, and is not taken again (a new fingerprint in the site file is a new enrolment)
   */
  enrolled: Record<string, { agentFingerprint: string | null; at: string }>;
  /** the serials the vault's revocation list named when the provider last had it: kept so that a restart trusts no revoked agent before the next list */
  revoked: string[];
}

const FILE = 'libvirt-state.json';

export function loadState(dir: string): LibvirtState {
  return loadRecords<LibvirtState>(dir, FILE, { replicas: {}, nics: {}, replications: {}, testVms: {}, drillNetworks: {}, promoted: {}, demoted: {}, fenced: {}, enrolled: {}, revoked: [] });
}

/** Saves run one after another; each writes the whole state as it is then. */
export class StateWriter extends RecordsWriter<LibvirtState> {
  constructor(dir: string) {
    super(dir, FILE);
  }
}
