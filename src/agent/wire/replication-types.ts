/** Shapes shared by the two ends of a replication and the agent's local API. */
import type { Consistency } from '../ports/change-source.js';
import type { RecoveryPoint, ReplicaOpenRequest, RetentionSpec } from '../ports/replica-target.js';

export const ReplicationState = {
  Scheduled: 'Scheduled',
  InitialReplication: 'InitialReplication',
  /** offline initial replication: the export is written; waiting for the replica to import it */
  WaitingForImport: 'WaitingForImport',
  Resynchronizing: 'Resynchronizing',
  Replicating: 'Replicating',
  Paused: 'Paused',
  ResyncRequired: 'ResyncRequired',
  /** a newer epoch was promoted elsewhere: the VM refuses writes until it is demoted */
  Fenced: 'Fenced',
  Error: 'Error',
  Stopped: 'Stopped',
} as const;
export type ReplicationState = (typeof ReplicationState)[keyof typeof ReplicationState];

/** A replica agent's address. */
export interface AgentPeer {
  kind?: undefined;
  host: string;
  port: number;
  servername?: string | undefined;
  /** the replica agent's name (its certificate's common name) */
  name?: string | undefined;
  /** the replica agent's fabric (its certificate's), as the vault's replication grant named it */
  fabricId?: string | undefined;
}

/**
 * An Azure storage container holding the replica (azure.md): this agent writes to it
 * itself. The SAS that grants access is kept apart from the spec (it is a secret).
 */
export interface AzurePeer {
  kind: 'azure';
  /** the container's URL, with no query (https, or http to a loopback address: a storage emulator) */
  containerUrl: string;
}

export interface ReplicationSpec {
  id: string;
  vm: string;
  /** where the replica lives: a replica agent, or an Azure storage container */
  peer: AgentPeer | AzurePeer;
  /** when the vault's replication grant for it was signed (ISO time), if one was given */
  grantIssuedAt?: string | undefined;
  /** ms between two cuts: the copy frequency, or CONTINUOUS_CUT_MS in continuous replication */
  copyFrequencyMs: number;
  /** continuous replication: writes ship a cut at a time, and the replica keeps a point every pointIntervalMs (retention.minSpacingMs) */
  continuous?: { pointIntervalMs: number } | undefined;
  /**
   * the consistency group it belongs to: it makes no points of its own, only the group's
   * cuts (group-cuts.ts), which its coordinator makes for all members at once
   */
  group?: string | undefined;
  retention: RetentionSpec;
  compression: boolean;
  /** ISO time; absent = now */
  startAt?: string | undefined;
  /** app-consistent point every N ms (0 = never); the quiesce hook is the agent's (quiesce-hook.ts) */
  appConsistentEveryMs: number;
  epoch: number;
  /** block size of a resynchronization's comparison, bytes (a power of two) */
  resyncBlockSize?: number | undefined;
  /**
   * when a resync that became necessary on its own may start, local time "HH:MM-HH:MM"
   * (default 18:00-06:00), "always" or "never"; a resync asked for starts at once
   */
  resyncWindow?: string | undefined;
  /** bandwidth schedule of this replication (throttle.ts), e.g. "10MB/s@08:00-18:00" */
  bandwidth?: string | undefined;
  /** offline: the initial copy is written to `exportDir` and imported at the replica (offline-seed.ts) */
  initialReplication?: 'online' | 'offline' | undefined;
  exportDir?: string | undefined;
}

export interface ResyncProgress {
  id: string;
  /** why it runs */
  reason: string;
  totalBytes: number;
  /** compared so far */
  doneBytes: number;
  percent: number;
  /** bytes found different and sent */
  differingBytes: number;
  /** bytes on the wire to the replica (blocks, framing) and back (block checksums) */
  wireBytesSent: number;
  wireBytesReceived: number;
  rateBytesPerSec: number;
  etaSeconds: number | null;
  currentDisk: string | null;
  startedAt: string;
  /** compared before this attempt (a resumed resync) */
  resumedFromBytes: number;
  completedAt: string | null;
}

export interface InitialProgress {
  totalBytes: number;
  doneBytes: number;
  sentBytes: number;
  wireBytes: number;
  rateBytesPerSec: number;
  etaSeconds: number | null;
  currentDisk: string | null;
  startedAt: string;
  /** bytes already durable at the replica when this attempt started (a resumed copy) */
  resumedFromBytes: number;
  /** bytes durable at the replica now: a copy interrupted now resumes from here */
  durableBytes: number;
  /** set once the first recovery point is at the replica */
  completedAt: string | null;
  /** offline initial replication: where the export goes and when it was finished */
  offline?: { exportDir: string; exportedAt: string | null } | undefined;
}

/**
 * How frames reach a replica: the sealed channel beside a TLS session, the TLS connection
 * itself (a replica agent without the native addon, or a path that did not let the sealed
 * channel through), or a stream in this process (a replica in Azure storage).
 */
export type ReplicaChannel = 'sealed' | 'tls' | 'in-process';

export interface ReplicationHealth {
  id: string;
  vm: string;
  /** the consistency group the VM is in (its points are the group's cuts), or null */
  group: string | null;
  state: ReplicationState;
  /** Healthy | Warning | Critical from the facts below */
  health: 'Healthy' | 'Warning' | 'Critical';
  lastSuccessfulCycleAt: string | null;
  latestPoint: { seq: number; time: string; consistency: Consistency } | null;
  rpoSeconds: number | null;
  pendingLogBytes: number;
  cyclesLastHour: number;
  missedCyclesLastHour: number;
  lastError: { code: string; message: string; at: string } | null;
  initial: InitialProgress | null;
  /** the running or latest resynchronization */
  resync: ResyncProgress | null;
  /** set while a resync is needed but waits for its window (resyncWindow) */
  resyncWaitingForWindow: boolean;
  /** set after a failure until the next success */
  retry: {
    /** failures in a row */
    failures: number;
    /** when the next attempt starts (null: not scheduled) */
    nextAt: string | null;
    /** a non-recoverable error: nothing happens until someone acts */
    waitingForAction: boolean;
  } | null;
  /** the bandwidth limit in force now, bytes per second (null: unlimited) */
  bandwidthLimitBytesPerSec: number | null;
  /** what the latest connection to the replica carried its frames over (null: none yet) */
  channel: ReplicaChannel | null;
  bytesShipped: number;
  /** where the time of the latest shipped delta went, from the point's instant to applied */
  lastDelta: DeltaTimings | null;
  /**
   * measured churn: change-log bytes per second of guest time over the last hour's deltas,
   * and the rate of the busiest delta (null until a delta after the first copy)
   */
  churn: { bytesPerSec: number; peakBytesPerSec: number; windowSeconds: number; deltas: number } | null;
  /**
   * the VM's disks changed under protection and the replica does not have the change yet:
   * what changed, and whether it waits for the user's confirmation (a shrink or a removal)
   */
  diskChange: { summary: string; needsConfirmation: boolean; confirmed: boolean } | null;
}

export interface DeltaTimings {
  seq: number;
  /** change-log bytes shipped */
  bytes: number;
  /** from the point's instant until its closed logs were durable on the primary */
  syncMs: number;
  /** from then until the replica was ready to receive (earlier deltas, connecting) */
  waitMs: number;
  /** sending the logs */
  sendMs: number;
  /** from the last byte sent until the replica answered that the point is applied */
  applyMs: number;
  /** of applyMs, the time the replica spent applying (verifying, undo, image, sync) */
  replicaApplyMs: number | null;
  /**
   * a host that reads the delta in the swap (libvirt): where the swap's time went, in ms —
   * the backup begun, the extents read and logged (and streamed), the rest of the logs'
   * writes and their sync, the backup ended and the old checkpoint deleted
   */
  swap?: { backupMs: number; readMs: number; logSyncMs: number; endMs: number } | undefined;
  /** of replicaApplyMs, where the replica's time went (ms), when it says */
  replicaApplySteps?: { verifyMs: number; undoMs: number; imageMs: number; syncMs: number; finishMs: number } | undefined;
}

export type OpenRequest = ReplicaOpenRequest;

export interface OpenResult {
  initialDone: boolean;
  copied: Record<string, number>;
  finishedDisks: string[];
  latestSeq: number | null;
  points: RecoveryPoint[];
  /** the replica was made from an old primary's disks: where they may differ ('all': unknown) */
  divergent: Record<string, [number, number][]> | 'all' | null;
  /** the initial copy was imported from an offline export that began with log `seedSeq` */
  seedSeq: number | null;
}
