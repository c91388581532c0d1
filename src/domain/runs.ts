/**
 * What drills and recovery plan runs record: the shapes of a plan run's output, of a plan's
 * drill and of an item's drill. The vault writes them (src/workflows), the API returns them,
 * and the CLI and the portal read them.
 */
import type { RecoveryPlanAction } from './resources.js';

export type RunDirection = 'primary-to-recovery' | 'recovery-to-primary';

/** The most of a test VM's console a drill keeps. */
export const DRILL_CONSOLE_BYTES = 4096;

/**
 * What a drill's test VM showed just before its cleanup removed it, where its fabric can
 * tell (libvirt: the serial console and the guest agent): proof the VM booted, kept with
 * the drill.
 */
export interface DrillEvidence {
  /** when it was read */
  at: string;
  running: boolean;
  /** the last DRILL_CONSOLE_BYTES of the test VM's serial console */
  console: string;
  /** the guest agent answered a ping */
  guestAgentAnswered: boolean;
}

/**
 * A provider's evidence as the vault keeps it: the fields it knows, the console cut to its
 * last DRILL_CONSOLE_BYTES with every control character but newline and tab shown as '?'
 * (a guest writes what it likes to its console; a terminal that prints it must not obey
 * it); anything else (an older provider's answer) is none.
 */
export function drillEvidence(v: unknown): DrillEvidence | null {
  if (typeof v !== 'object' || v === null) return null;
  const e = v as Record<string, unknown>;
  if (typeof e.at !== 'string' || Number.isNaN(Date.parse(e.at)) || typeof e.console !== 'string') return null;
  // eslint-disable-next-line no-control-regex
  const text = e.console.slice(-DRILL_CONSOLE_BYTES).replace(/\r\n/g, '\n').replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, '?');
  return { at: new Date(Date.parse(e.at)).toISOString(), running: e.running === true, console: text, guestAgentAnswered: e.guestAgentAnswered === true };
}

/** A test failover of one item and its cleanup, kept with the item (newest first). */
export interface ItemDrill {
  testFailoverJob: string;
  cleanupJob: string;
  point: { id: string; at: string; consistency: string };
  network: string;
  rtoSeconds: number;
  startedAt: string;
  cleanedUpAt: string;
  notes: string | null;
  succeeded: boolean;
  /** what the test VM showed before it was removed (null: its fabric cannot tell, or it could not be read) */
  evidence?: DrillEvidence | null;
}

/**
 * A plan or a protected item should be proven by a drill (a test failover and its cleanup,
 * both succeeded) at least every DRILL_INTERVAL_DAYS. An item's drills include those its
 * plans ran (a plan's cleanup records the drill on each of its items).
 */
export const DRILL_INTERVAL_DAYS = 30;
const DRILL_INTERVAL_MS = DRILL_INTERVAL_DAYS * 86400_000;

/** The newest succeeded drill's time (ms), or null. */
export function lastDrillAt(drills: readonly { cleanedUpAt: string; succeeded: boolean }[] | undefined): number | null {
  let t: number | null = null;
  for (const d of drills ?? []) if (d.succeeded) t = Math.max(t ?? 0, Date.parse(d.cleanedUpAt));
  return t;
}

/** Whether a drill is due after the last one (ms, or null: never drilled). */
export function isDrillDue(last: number | null, now: number): boolean {
  return last === null || now - last > DRILL_INTERVAL_MS;
}

/** Drills are due for items whose last drill is before this (or that were never drilled). */
export function drillDueBefore(now: number): number {
  return now - DRILL_INTERVAL_MS;
}

/** The JSON context a recovery plan's script or webhook receives. */
export interface PlanActionContext {
  plan: { id: string; name: string };
  job: string;
  failoverType: 'test' | 'planned' | 'unplanned';
  direction: RunDirection;
  group: { name: string; index: number };
  action: { name: string; phase: 'pre' | 'post' };
  vms: Record<string, { name: string; state: string; vmId: string | null; recoveryPoint: PlanVmResult['point'] | null; testVmId: string | null }>;
}

/** One VM's part in a run. */
export interface PlanVmResult {
  item: string;
  name: string;
  group: string;
  /** Skipped: with an error, not started because what it depends on failed; without, nothing to do */
  state: 'Succeeded' | 'Failed' | 'Cancelled' | 'Skipped';
  job: string | null;
  error?: { code: string; message: string };
  note?: string;
  point?: { id: string; at: string; consistency: string };
  /** the VM's own job, from its start until the VM ran */
  rtoSeconds?: number;
  /** from the start of the run until the VM ran */
  upAfterSeconds?: number;
  testVmId?: string;
}

export interface PlanActionResult {
  group: string;
  phase: 'pre' | 'post';
  name: string;
  kind: RecoveryPlanAction['kind'];
  attempts: number;
  at: string;
  comment?: string;
  by?: string;
  exitCode?: number;
  status?: number;
  /** a script's output or a webhook's answer (at most 4 KiB of it): shown to the roles that configure plans only */
  output?: string;
  /** the webhook answered more than was kept */
  outputTruncated?: boolean;
}

/** What a plan's drill (a test failover and its cleanup) records, in the cleanup run's output. */
export interface PlanDrill {
  plan: string;
  testFailoverJob: string | null;
  cleanupJob: string;
  startedAt: string | null;
  cleanedUpAt: string;
  rtoSeconds: number | null;
  vms: { item: string; name: string; point: PlanVmResult['point'] | null; rtoSeconds: number | null }[];
  notes: string | null;
  succeeded: boolean;
}

/** A plan run's output: per VM and per action, with the plan's RTO. */
export interface PlanRunOutput {
  plan: string;
  planId: string;
  /** the item operation the run applied to every VM (test-failover, planned-failover, …) */
  operation: string;
  direction: RunDirection;
  startedAt: string;
  endedAt: string;
  /** from the start of the run until the last VM ran (failovers) */
  rtoSeconds: number | null;
  failed: number;
  vms: PlanVmResult[];
  actions: PlanActionResult[];
  /** a test failover's isolated network, made for the drill (removed by its cleanup) */
  testNetwork?: string;
  drill?: PlanDrill;
}
