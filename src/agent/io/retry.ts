/**
 * When a failed replication tries again. Recoverable failures (network, low disk space,
 * low memory) are retried after 1, 2, 4, 8 and 10 minutes, then every 30 minutes, until
 * one succeeds; the durations are settings so that tests can shrink them. Non-recoverable
 * failures are not retried: the replication waits until someone acts (a retry, a resync
 * or a cycle asked for through the API).
 */
import { OsrError } from '../../domain/errors.js';
import { parseDuration } from './time-window.js';

export interface RetryPolicy {
  /** the waits before the first retries, in order */
  backoffMs: readonly number[];
  /** the wait before every retry after those */
  thenEveryMs: number;
}

const MINUTE = 60_000;
export const DEFAULT_RETRY_POLICY: RetryPolicy = { backoffMs: [1, 2, 4, 8, 10].map((m) => m * MINUTE), thenEveryMs: 30 * MINUTE };

/** The wait before retry number `attempt` (1 = the first retry after a failure). */
export function retryDelayMs(policy: RetryPolicy, attempt: number): number {
  const i = Math.max(1, Math.floor(attempt)) - 1;
  return i < policy.backoffMs.length ? policy.backoffMs[i] : policy.thenEveryMs;
}

/** Parse a comma-separated list of durations ("1m,2m,4m,8m,10m"). */
export function parseBackoff(text: string): number[] {
  const parts = text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (parts.length === 0) throw new OsrError('CONFIG_INVALID', `retry back-off "${text}" lists no durations (example: 1m,2m,4m,8m,10m)`);
  return parts.map((p) => {
    const ms = parseDuration(p);
    if (ms <= 0) throw new OsrError('CONFIG_INVALID', `retry back-off "${text}": every wait must be longer than zero`);
    return ms;
  });
}
