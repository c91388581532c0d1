/** Plain-text tables for benchmark reports. */

export type Cell = string | number | null | undefined;

function text(c: Cell): string {
  if (c === null || c === undefined) return '—';
  if (typeof c === 'number') return Number.isFinite(c) ? String(c) : '—';
  return c;
}

/** Render rows under a header, columns padded to the widest cell; numbers right-aligned. */
export function formatTable(header: string[], rows: Cell[][]): string {
  const cells = [header, ...rows.map((r) => header.map((_, i) => text(r[i])))];
  const width = header.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const numeric = header.map((_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === 'number' || r[i] === null || r[i] === undefined));
  const line = (r: string[]) => r.map((c, i) => (numeric[i] ? c.padStart(width[i]) : c.padEnd(width[i]))).join(' | ').trimEnd();
  const sep = width.map((w) => '-'.repeat(w)).join('-|-');
  return [line(cells[0]), sep, ...cells.slice(1).map(line)].join('\n');
}

/** Fixed decimals for display; null stays null (shown as an em dash). */
export function fmt(x: number | null | undefined, digits = 1): string | null {
  if (x === null || x === undefined || !Number.isFinite(x)) return null;
  return x.toFixed(digits);
}
