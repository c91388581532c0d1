/**
 * Replication policies and the rules they must keep (ASR's, DESIGN.md §5): a copy every
 * 30 s, 5 min or 15 min; recovery points kept for at most 24 hours; app-consistent points
 * every 1 to 12 hours and fewer of them than the points kept; certificate authentication
 * on a port (Kerberos is not offered); initial replication now, scheduled at most 24 hours
 * ahead, or offline through an export and an import path. Pure: the caller gives the time.
 */
import { OsrError } from './errors.js';

export const COPY_FREQUENCIES_SECONDS = [30, 300, 900] as const;
export const MAX_RETENTION_HOURS = 24;
export const MAX_APP_CONSISTENT_HOURS = 12;
export const MAX_SCHEDULE_AHEAD_MS = 24 * 3600_000;
export const DEFAULT_REPLICATION_PORT = 8084;

export type InitialReplication =
  | { method: 'now' }
  | { method: 'scheduled'; startAt: string }
  | { method: 'offline'; exportPath: string; importPath: string };

export interface PolicySettings {
  copyFrequencySeconds: number;
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
  const copyFrequencySeconds = input.copyFrequencySeconds ?? 300;
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
