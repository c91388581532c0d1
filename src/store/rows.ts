/** Small helpers shared by the store's tables: ids that sort by time, JSON columns, ISO times. */
import { randomBytes } from 'node:crypto';

/** An id that sorts by creation time (ms, base 36) and is unique across vault processes. */
export function timeId(now: number): string {
  return `${now.toString(36).padStart(9, '0')}-${randomBytes(6).toString('hex')}`;
}

export const iso = (ms: number | null | undefined): string | null => (ms === null || ms === undefined ? null : new Date(ms).toISOString());

export function json<T>(text: string | null | undefined, fallback: T): T {
  if (text === null || text === undefined) return fallback;
  return JSON.parse(text) as T;
}

/** Rows updated or deleted by a Kysely result, as a number on both dialects. */
export const affected = (r: { numUpdatedRows?: bigint; numDeletedRows?: bigint }): number => Number(r.numUpdatedRows ?? r.numDeletedRows ?? 0n);

/** A limit within 1..max (default def). */
export const clampLimit = (limit: number | undefined, def = 100, max = 1000): number => Math.min(Math.max(Math.floor(limit ?? def), 1), max);

/** A unique-constraint violation on either dialect. */
export function isUniqueViolation(e: unknown): boolean {
  const code = (e as { code?: string } | undefined)?.code;
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}
