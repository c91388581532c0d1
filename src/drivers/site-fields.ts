/**
 * Checks of a fabric's site file fields (YAML), shared by the fabrics' drivers: a wrong
 * field is refused with CONFIG_INVALID naming it.
 */
import fs from 'node:fs';
import YAML from 'yaml';
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

/**
 * Read a file that holds a secret: a regular file (a symbolic link is not followed), owned
 * by this process's user or root, that no one else may read, of at most `maxBytes`. Read
 * from the descriptor that was checked, so a file swapped in between is not read.
 */
export function readOwnerOnlyFile(file: string, what: string, o: { code?: 'CONFIG_INVALID' | 'INVALID_ARGUMENT'; maxBytes?: number } = {}): string {
  const refuse = (why: string) => new OsrError(o.code ?? 'CONFIG_INVALID', `${what}: ${file} ${why}`);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (e) {
    throw refuse(`cannot be opened (${(e as NodeJS.ErrnoException).code ?? 'error'}; a symbolic link is not followed)`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw refuse('is not a regular file');
    const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
    if (uid !== undefined && st.uid !== uid && st.uid !== 0) throw refuse(`is owned by user ${st.uid}, not by this user or root`);
    if ((st.mode & 0o077) !== 0) throw refuse(`may be read by others (mode ${(st.mode & 0o777).toString(8)}): a secret's file is chmod 600`);
    const max = o.maxBytes ?? 64 * 1024;
    if (st.size > max) throw refuse(`is ${st.size} bytes; a secret's file is at most ${max}`);
    const buf = Buffer.alloc(st.size);
    let n = 0;
    while (n < buf.length) {
      const r = fs.readSync(fd, buf, n, buf.length - n, n);
      if (r === 0) break;
      n += r;
    }
    const text = buf.subarray(0, n).toString('utf8').trim();
    if (text === '') throw refuse('is empty');
    return text;
  } finally {
    fs.closeSync(fd);
  }
}

/** A site file's YAML text as a document (CONFIG_INVALID when it is not YAML). */
export function parseSiteYaml(text: string): unknown {
  try {
    return YAML.parse(text);
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `site file is not valid YAML: ${(e as Error).message}`);
  }
}
