/**
 * Checks of a fabric's site file fields (YAML), shared by the fabrics' drivers: a wrong
 * field is refused with CONFIG_INVALID naming it.
 */
import { OsrError } from '../domain/errors.js';
import { isSafeName } from '../domain/names.js';

export const fail = (field: string, why: string) => new OsrError('CONFIG_INVALID', `site file: ${field} ${why}`, { field });
export type Node = Record<string, unknown>;

export function mapping(v: unknown, field: string): Node {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw fail(field, 'must be a mapping');
  return v as Node;
}
export function list(v: unknown, field: string, required = false): unknown[] {
  if (v === undefined || v === null) {
    if (required) throw fail(field, 'is missing: it must be a list');
    return [];
  }
  if (!Array.isArray(v)) throw fail(field, 'must be a list');
  return v;
}
export function text(v: unknown, field: string): string {
  if (typeof v !== 'string' || v.trim() === '') throw fail(field, 'must be a non-empty string');
  if (v.length > 200) throw fail(field, 'is longer than 200 characters');
  return v;
}
export function optionalText(v: unknown, field: string): string | undefined {
  return v === undefined || v === null ? undefined : text(v, field);
}
/** A name that becomes an id, a file name or XML: a safe name (domain/names.ts). */
export function safe(v: unknown, field: string): string {
  const s = text(v, field);
  if (!isSafeName(s) || s.length > 63) throw fail(field, `"${s}" is not a name osr can use: 1 to 63 of A-Z a-z 0-9 . _ - , not starting with a dot`);
  return s;
}
export function unique(values: string[], field: string): void {
  const seen = new Set<string>();
  for (const v of values) {
    if (seen.has(v)) throw fail(field, `names "${v}" twice`);
    seen.add(v);
  }
}
