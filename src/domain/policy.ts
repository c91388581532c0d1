/**
 * Replication policies and the rules they must keep (ASR's, DESIGN.md §5): a copy every
 * 30 s, 5 min or 15 min; recovery points kept for at most 24 hours; app-consistent points
 * every 1 to 12 hours and fewer of them than the points kept; certificate authentication
 * on a port (Kerberos is not offered); initial replication now, scheduled at most 24 hours
 * ahead, or offline through an export and an import path. Beyond ASR: continuous
 * replication, where writes ship as they are made and a point is kept every 1 to 60 s
 * (the copy frequency then waits for a switch back to cycles). Pure: the caller gives the time.
 */
import { OsrError } from './errors.js';

export const COPY_FREQUENCIES_SECONDS = [30, 300, 900] as const;
/** How changes are copied: in cycles (a copy every copyFrequencySeconds) or continuously (writes ship as they are made, a point every pointIntervalSeconds). */
export const COPY_MODES = ['cycles', 'continuous'] as const;
export type CopyMode = (typeof COPY_MODES)[number];
/** continuous mode: the default and the bounds of the seconds between recovery points */
export const DEFAULT_POINT_INTERVAL_SECONDS = 5;
export const MIN_POINT_INTERVAL_SECONDS = 1;
export const MAX_POINT_INTERVAL_SECONDS = 60;
/**
 * continuous mode: a host closes its change logs and ships what they hold at most this
 * often (a crash-consistent cut of every disk of the VM); the replica keeps one cut per
 * point interval as a recovery point and folds the others into it
 */
export const CONTINUOUS_CUT_MS = 1000;
export const MAX_RETENTION_HOURS = 24;
export const MAX_APP_CONSISTENT_HOURS = 12;
export const MAX_SCHEDULE_AHEAD_MS = 24 * 3600_000;
export const DEFAULT_REPLICATION_PORT = 8084;

export type InitialReplication =
  | { method: 'now' }
  | { method: 'scheduled'; startAt: string }
  | { method: 'offline'; exportPath: string; importPath: string };

export interface PolicySettings {
  /** cycles mode: seconds between copies (30, 300 or 900) */
  copyFrequencySeconds: number;
  /**
   * 'continuous': the hosts ship writes as they are made and a crash-consistent point is
   * kept every pointIntervalSeconds; absent (a policy from before the mode existed) or
   * 'cycles': a copy every copyFrequencySeconds
   */
  copyMode?: CopyMode;
  /** continuous mode: seconds between the recovery points kept (1 to 60, default 5) */
  pointIntervalSeconds?: number;
  /** hours of recovery points kept; 0 keeps only the latest */
  retentionHours: number;
  /** 0: no app-consistent points */
  appConsistentFrequencyHours: number;
  authentication: 'certificate';
  port: number;
  compression: boolean;
  initialReplication: InitialReplication;
  /** disabling protection deletes the replica (true) or keeps it as a VM of its own (false) */
  deleteReplicaOnDisable: boolean;
  /** the host OS version this policy covers: one per policy */
  hostOsVersion: string;
}

export interface PolicyInput {
  copyFrequencySeconds?: number;
  copyMode?: string;
  pointIntervalSeconds?: number;
  retentionHours?: number;
  appConsistentFrequencyHours?: number;
  authentication?: string;
  port?: number;
  compression?: boolean;
  initialReplication?: { method: string; startAt?: string; exportPath?: string; importPath?: string };
  deleteReplicaOnDisable?: boolean;
  hostOsVersion?: string;
}

const invalid = (field: string, message: string, extra: Record<string, unknown> = {}) => new OsrError('POLICY_INVALID', message, { field, ...extra });

/** Fill in the defaults and check every rule; throws POLICY_INVALID or NOT_SUPPORTED naming the field. */
export function validatePolicy(input: PolicyInput, now: number): PolicySettings {
  const copyMode = COPY_MODES.find((m) => m === (input.copyMode ?? 'cycles'));
  if (copyMode === undefined) throw invalid('copyMode', `copy mode "${input.copyMode}" is unknown: choose cycles or continuous`, { allowed: COPY_MODES });
  const continuous = copyMode === 'continuous';
  const copyFrequencySeconds = input.copyFrequencySeconds ?? 300;
  const pointIntervalSeconds = input.pointIntervalSeconds ?? DEFAULT_POINT_INTERVAL_SECONDS;
  if (!continuous && input.pointIntervalSeconds !== undefined) {
    throw invalid('pointIntervalSeconds', 'pointIntervalSeconds is for continuous replication: in cycles mode every copy makes a point (set copyMode to continuous, or remove pointIntervalSeconds)');
  }
  if (continuous && (!Number.isInteger(pointIntervalSeconds) || pointIntervalSeconds < MIN_POINT_INTERVAL_SECONDS || pointIntervalSeconds > MAX_POINT_INTERVAL_SECONDS)) {
    throw invalid('pointIntervalSeconds', `continuous replication keeps a point every ${MIN_POINT_INTERVAL_SECONDS} to ${MAX_POINT_INTERVAL_SECONDS} whole seconds, not ${pointIntervalSeconds}`);
  }
  if (!(COPY_FREQUENCIES_SECONDS as readonly number[]).includes(copyFrequencySeconds)) {
    throw invalid('copyFrequencySeconds', `copy frequency ${copyFrequencySeconds} s is not offered: choose 30, 300 or 900 s`, { allowed: COPY_FREQUENCIES_SECONDS });
  }
  const retentionHours = input.retentionHours ?? 0;
  if (!Number.isInteger(retentionHours) || retentionHours < 0 || retentionHours > MAX_RETENTION_HOURS) {
    throw invalid('retentionHours', `recovery points can be kept for 0 to ${MAX_RETENTION_HOURS} whole hours, not ${retentionHours}`);
  }
  const appConsistentFrequencyHours = input.appConsistentFrequencyHours ?? 0;
  if (!Number.isInteger(appConsistentFrequencyHours) || appConsistentFrequencyHours < 0 || appConsistentFrequencyHours > MAX_APP_CONSISTENT_HOURS) {
    throw invalid('appConsistentFrequencyHours', `app-consistent points come every 1 to ${MAX_APP_CONSISTENT_HOURS} hours (0 for none), not ${appConsistentFrequencyHours}`);
  }
  if (appConsistentFrequencyHours > 0 && appConsistentFrequencyHours >= retentionHours) {
    throw invalid(
      'appConsistentFrequencyHours',
      `an app-consistent point every ${appConsistentFrequencyHours} h needs more than ${appConsistentFrequencyHours} h of recovery points kept (retention is ${retentionHours} h)`,
    );
  }
  const authentication = input.authentication ?? 'certificate';
  if (authentication === 'kerberos') {
    throw new OsrError('NOT_SUPPORTED', 'Kerberos authentication is not supported: osr replicates over mutual TLS with certificates from the vault\'s CA; use "certificate"', { field: 'authentication' });
  }
  if (authentication !== 'certificate') throw invalid('authentication', `authentication "${authentication}" is unknown: use "certificate"`);
  const port = input.port ?? DEFAULT_REPLICATION_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalid('port', `port ${port} is not a TCP port (1 to 65535)`);
  const initialReplication = validateInitial(input.initialReplication ?? { method: 'now' }, now);
  const hostOsVersion = input.hostOsVersion ?? 'any';
  if (hostOsVersion.trim() === '') throw invalid('hostOsVersion', 'the host OS version must not be empty');
  return {
    copyFrequencySeconds,
    copyMode,
    ...(continuous ? { pointIntervalSeconds } : {}),
    retentionHours,
    appConsistentFrequencyHours,
    authentication,
    port,
    compression: input.compression ?? true,
    initialReplication,
    deleteReplicaOnDisable: input.deleteReplicaOnDisable ?? true,
    hostOsVersion,
  };
}

/** Whether the policy replicates continuously. */
export function isContinuous(p: Pick<PolicySettings, 'copyMode'>): boolean {
  return p.copyMode === 'continuous';
}

/** Seconds between the recovery points a policy makes: its point interval (continuous) or its copy frequency (cycles). */
export function pointSpacingSeconds(p: Pick<PolicySettings, 'copyMode' | 'pointIntervalSeconds' | 'copyFrequencySeconds'>): number {
  return isContinuous(p) ? (p.pointIntervalSeconds ?? DEFAULT_POINT_INTERVAL_SECONDS) : p.copyFrequencySeconds;
}

/** Seconds between two copies: a continuous policy's cut, or the copy frequency. */
export function copyCycleSeconds(p: Pick<PolicySettings, 'copyMode' | 'copyFrequencySeconds'>): number {
  return isContinuous(p) ? CONTINUOUS_CUT_MS / 1000 : p.copyFrequencySeconds;
}

function validateInitial(i: NonNullable<PolicyInput['initialReplication']>, now: number): InitialReplication {
  switch (i.method) {
    case 'now':
      return { method: 'now' };
    case 'scheduled': {
      const at = i.startAt === undefined ? NaN : Date.parse(i.startAt);
      if (Number.isNaN(at)) throw invalid('initialReplication.startAt', 'scheduled initial replication needs startAt, an ISO 8601 time');
      if (at < now) throw invalid('initialReplication.startAt', `the start time ${i.startAt} has passed`);
      if (at - now > MAX_SCHEDULE_AHEAD_MS) throw invalid('initialReplication.startAt', `initial replication can be scheduled at most 24 h ahead; ${i.startAt} is later`);
      return { method: 'scheduled', startAt: new Date(at).toISOString() };
    }
    case 'offline': {
      if (!i.exportPath) throw invalid('initialReplication.exportPath', 'offline initial replication needs the export path at the source');
      if (!i.importPath) throw invalid('initialReplication.importPath', 'offline initial replication needs the import path at the target');
      return { method: 'offline', exportPath: i.exportPath, importPath: i.importPath };
    }
    default:
      throw invalid('initialReplication.method', `initial replication "${i.method}" is unknown: use now, scheduled or offline`);
  }
}

/** Does a host of this OS version fall under the policy? */
export function policyCoversHost(p: Pick<PolicySettings, 'hostOsVersion'>, hostOsVersion: string): boolean {
  return p.hostOsVersion === 'any' || p.hostOsVersion === hostOsVersion;
}
