/**
 * Byte ranges of a disk as sorted, disjoint [offset, length] pairs: what changed since a
 * point, what two sites wrote after they diverged. Small and plain, so they can be kept in
 * manifests and sent in messages.
 */
export type Range = [offset: number, length: number];

/** Ranges per disk name. */
export type DiskRanges = Record<string, Range[]>;

/** Sort and merge overlapping or touching ranges; empty ranges go. */
export function normalizeRanges(ranges: readonly Range[]): Range[] {
  const sorted = ranges.filter((r) => r[1] > 0).sort((a, b) => a[0] - b[0]);
  const out: Range[] = [];
  for (const [off, len] of sorted) {
    const last = out.at(-1);
    if (last && off <= last[0] + last[1]) last[1] = Math.max(last[1], off + len - last[0]);
    else out.push([off, len]);
  }
  return out;
}

/** The union of several sets of ranges per disk. */
export function unionDiskRanges(...sets: (DiskRanges | undefined)[]): DiskRanges {
  const all: Record<string, Range[]> = {};
  for (const set of sets) {
    if (!set) continue;
    for (const [disk, ranges] of Object.entries(set)) (all[disk] ??= []).push(...ranges.map((r): Range => [r[0], r[1]]));
  }
  const out: DiskRanges = {};
  for (const [disk, ranges] of Object.entries(all)) out[disk] = normalizeRanges(ranges);
  return out;
}

/** Widen every range to whole blocks of `blockSize` within a disk of `size` bytes, merged. */
export function alignRanges(ranges: readonly Range[], blockSize: number, size: number): Range[] {
  return normalizeRanges(
    ranges.map(([off, len]): Range => {
      const start = Math.floor(off / blockSize) * blockSize;
      const end = Math.min(size, Math.ceil((off + len) / blockSize) * blockSize);
      return [start, end - start];
    }),
  );
}

export function totalBytes(ranges: readonly Range[]): number {
  return ranges.reduce((n, r) => n + r[1], 0);
}

/** Bytes of the ranges of every disk. */
export function diskRangesBytes(ranges: DiskRanges): number {
  return Object.values(ranges).reduce((n, r) => n + totalBytes(r), 0);
}

/** Check that ranges lie within a disk of `size` bytes (input from a peer or a file). */
export function rangesValid(ranges: unknown, size: number): ranges is Range[] {
  return Array.isArray(ranges) && ranges.every((r) => Array.isArray(r) && r.length === 2 && Number.isSafeInteger(r[0]) && Number.isSafeInteger(r[1]) && r[0] >= 0 && r[1] >= 0 && r[0] + r[1] <= size);
}
