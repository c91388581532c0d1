/**
 * The one rule for names that become file names, and for the numbers that become file
 * offsets, when they come from outside the process: a peer agent on the replication wire,
 * an offline export's manifest, a caller of the agent's local API. Every path built from
 * such input goes through these checks first (docs/security.md).
 *
 * A safe name is 1–128 characters of `A–Z a–z 0–9 . _ -` that does not start with a dot,
 * so it can never be `.`, `..`, a hidden file, an absolute path or hold a separator.
 */
import { OsrError, type ErrorCode } from './errors.js';

export const MAX_NAME_LENGTH = 128;
/** The rule as a JSON Schema pattern (API bodies); the length is checked beside it. */
export const SAFE_NAME_PATTERN = '^[A-Za-z0-9_-][A-Za-z0-9._-]*$';
const SAFE_NAME = new RegExp(SAFE_NAME_PATTERN);

/** The largest disk osr replicates: 64 TiB. */
export const MAX_DISK_BYTES = 64 * 1024 ** 4;
/** The most disks one VM may have. */
export const MAX_DISKS = 64;

/** Whether `value` is a safe name (see the module comment). */
export function isSafeName(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= MAX_NAME_LENGTH && SAFE_NAME.test(value);
}

/** `value` as a safe name, or an error with `code` naming `what` (e.g. "VM id"). */
export function safeName(value: unknown, what: string, code: ErrorCode = 'PROTOCOL_ERROR'): string {
  if (isSafeName(value)) return value;
  const shown = typeof value === 'string' ? JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value) : typeof value;
  throw new OsrError(code, `${what} ${shown} is not a valid name: use 1 to ${MAX_NAME_LENGTH} of the characters A-Z a-z 0-9 . _ - , not starting with a dot`, { field: what });
}

/** `value` as an integer in [min, max], or an error with `code` naming `what`. */
export function safeInteger(value: unknown, what: string, min = 0, max = Number.MAX_SAFE_INTEGER, code: ErrorCode = 'PROTOCOL_ERROR'): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= min && value <= max) return value;
  throw new OsrError(code, `${what} ${typeof value === 'number' ? String(value) : typeof value} is not an integer between ${min} and ${max}`, { field: what });
}

/** A recovery point's sequence number: a non-negative safe integer. */
export function safeSeq(value: unknown, what = 'point sequence', code: ErrorCode = 'PROTOCOL_ERROR'): number {
  return safeInteger(value, what, 0, Number.MAX_SAFE_INTEGER, code);
}

/**
 * A byte range [offset, offset + length) that must lie within `size` bytes (`length` may be
 * 0 only when `allowEmpty`). Answers the checked pair.
 */
export function safeRange(offset: unknown, length: unknown, size: number, what: string, code: ErrorCode = 'PROTOCOL_ERROR', allowEmpty = false): [number, number] {
  const o = safeInteger(offset, `${what} offset`, 0, Number.MAX_SAFE_INTEGER, code);
  const l = safeInteger(length, `${what} length`, allowEmpty ? 0 : 1, Number.MAX_SAFE_INTEGER, code);
  if (o + l > size) throw new OsrError(code, `${what} ${o}+${l} lies beyond the end of its ${size} bytes`, { field: what, offset: o, length: l, size });
  return [o, l];
}

/** An object (not null, not an array), or an error naming `what`. */
export function safeObject(value: unknown, what: string, code: ErrorCode = 'PROTOCOL_ERROR'): Record<string, unknown> {
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as Record<string, unknown>;
  throw new OsrError(code, `${what} must be an object`, { field: what });
}

/** A boolean, absent meaning `fallback`. */
export function safeBoolean(value: unknown, what: string, fallback = false, code: ErrorCode = 'PROTOCOL_ERROR'): boolean {
  if (value === undefined) return fallback;
  if (typeof value === 'boolean') return value;
  throw new OsrError(code, `${what} must be true or false`, { field: what });
}
