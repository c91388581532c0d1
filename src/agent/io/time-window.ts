/**
 * Durations ("30s", "5m") and time-of-day windows in local time ("18:00-06:00" wraps past
 * midnight): when an automatic resync may run, and bandwidth limits by time of day.
 */
import { OsrError } from '../../domain/errors.js';

export interface TimeWindow {
  /** minutes after local midnight */
  startMinute: number;
  endMinute: number;
}

const HHMM = /^([01]\d|2[0-3]):([0-5]\d)$/;

function minuteOf(text: string, what: string): number {
  const m = HHMM.exec(text.trim());
  if (!m) throw new OsrError('CONFIG_INVALID', `${what} "${text}" is not a time of day HH:MM (00:00-23:59)`);
  return Number(m[1]) * 60 + Number(m[2]);
}

/** Parse "HH:MM-HH:MM". Equal ends mean the whole day. */
export function parseTimeWindow(text: string): TimeWindow {
  const parts = text.split('-');
  if (parts.length !== 2) throw new OsrError('CONFIG_INVALID', `time window "${text}" is not HH:MM-HH:MM (e.g. 18:00-06:00)`);
  return { startMinute: minuteOf(parts[0], 'window start'), endMinute: minuteOf(parts[1], 'window end') };
}

/** Whether the local time of `nowMs` falls in the window (start included, end not). */
export function inTimeWindow(w: TimeWindow, nowMs: number): boolean {
  const d = new Date(nowMs);
  const minute = d.getHours() * 60 + d.getMinutes();
  if (w.startMinute === w.endMinute) return true;
  if (w.startMinute < w.endMinute) return minute >= w.startMinute && minute < w.endMinute;
  return minute >= w.startMinute || minute < w.endMinute;
}

/** A duration: a number of seconds, or text with a unit (500ms, 30s, 5m, 1h). */
export function parseDuration(text: string | number): number {
  if (typeof text === 'number') return text * 1000;
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new OsrError('INVALID_ARGUMENT', `duration "${text}" is not a duration (examples: 500ms, 30s, 5m, 1h)`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * unit);
}

/** Milliseconds from `nowMs` until the local clock next shows `minute` (minutes after midnight). */
export function msUntilMinute(minute: number, nowMs: number): number {
  const t = new Date(nowMs);
  t.setHours(Math.floor(minute / 60), minute % 60, 0, 0);
  if (t.getTime() <= nowMs) t.setDate(t.getDate() + 1);
  return t.getTime() - nowMs;
}
