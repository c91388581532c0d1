/**
 * Time-of-day windows in local time ("18:00-06:00" wraps past midnight), for when an
 * automatic resync may run and, later, bandwidth limits by time of day.
 */
import { OsrError } from '../domain/errors.js';

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
