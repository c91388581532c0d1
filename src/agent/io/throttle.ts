/**
 * Bandwidth limits: a schedule of rates by time of day, and a pacer that holds sends back
 * so that they average no more than the rate in force. A replication has its own limit and
 * shares its agent's; a send waits for both.
 *
 * A schedule is a comma-separated list of rules, the first that matches the local time
 * wins, and no match means unlimited:
 *
 *   10MB/s@08:00-18:00            10 MB/s in office hours, unlimited otherwise
 *   10MB/s@08:00-18:00,50MB/s     10 MB/s in office hours, 50 MB/s otherwise
 *   unlimited                     no limit (the default)
 *
 * Rates take B/s, kB/s, MB/s, GB/s (powers of 1000) or KiB/s, MiB/s, GiB/s (powers of 1024).
 */
import type { Clock } from '../../domain/clock.js';
import { OsrError } from '../../domain/errors.js';
import { inTimeWindow, parseTimeWindow, type TimeWindow } from './time-window.js';

export interface BandwidthRule {
  /** bytes per second; null = unlimited */
  bytesPerSec: number | null;
  /** when the rule applies; absent = always */
  window?: TimeWindow | undefined;
}

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 };

/** Parse a rate ("10MB/s", "512KiB/s", "1000000") into bytes per second; "unlimited" gives null. */
export function parseRate(text: string): number | null {
  const t = text.trim();
  if (/^unlimited$/i.test(t)) return null;
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)(?:\/s)?$/i.exec(t);
  const unit = m ? UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new OsrError('CONFIG_INVALID', `bandwidth "${text}" is not a rate (examples: 10MB/s, 512KiB/s, unlimited)`);
  const rate = Math.round(Number(m[1]) * unit);
  if (rate < 1024) throw new OsrError('CONFIG_INVALID', `bandwidth "${text}" is below 1 KiB/s; use "unlimited" for no limit`);
  return rate;
}

/** Parse a bandwidth schedule (see the module's comment). */
export function parseBandwidth(text: string): BandwidthRule[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map((rule) => {
      const at = rule.indexOf('@');
      if (at < 0) return { bytesPerSec: parseRate(rule) };
      return { bytesPerSec: parseRate(rule.slice(0, at)), window: parseTimeWindow(rule.slice(at + 1)) };
    });
}

/** The rate in force at `nowMs` (null = unlimited). */
export function rateAt(rules: readonly BandwidthRule[], nowMs: number): number | null {
  for (const r of rules) if (!r.window || inTimeWindow(r.window, nowMs)) return r.bytesPerSec;
  return null;
}

/**
 * Paces sends to a schedule's rate. Each send is booked on a virtual timeline that runs at
 * the rate; a send waits until its booking is due, less a short allowance so that an idle
 * link may send a burst of that length at once.
 */
export class Pacer {
  private bookedUntilMs = 0;

  constructor(
    private readonly rules: readonly BandwidthRule[],
    private readonly clock: Clock,
    private readonly burstMs = 100,
  ) {}

  /** the limit in force now, bytes per second (null = unlimited) */
  get rate(): number | null {
    return rateAt(this.rules, this.clock.now());
  }

  /** Wait until `bytes` may be sent; resolves early when the signal aborts. */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const rate = this.rate;
    if (rate === null || bytes <= 0) return;
    const now = this.clock.now();
    this.bookedUntilMs = Math.max(this.bookedUntilMs, now) + (bytes / rate) * 1000;
    const wait = this.bookedUntilMs - this.burstMs - now;
    if (wait > 0) await this.clock.sleep(wait, signal);
  }
}
