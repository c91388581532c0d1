/** Sizes as people write them: 512M, 10G, 1T (powers of 1024), or bytes. */
import { OsrError } from '../../domain/errors.js';

export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?$/i.exec(text.trim());
  if (!m) throw new OsrError('INVALID_ARGUMENT', `size "${text}" is not a size (examples: 512M, 10G, 1T)`);
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.round(Number(m[1]) * unit);
}
