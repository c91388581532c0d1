/**
 * A map from byte ranges to values: sorted, non-overlapping extents. `set` overrides what
 * was there (splitting neighbours); `fillGaps` only covers what nothing covers yet.
 * Used for recovery-point views (which file holds each range) and change-log indexes.
 */
export interface MappedExtent<V> {
  start: number;
  end: number; // exclusive
  value: V;
  /** offset of `start` within the value's own address space (e.g. a file offset) */
  base: number;
}

export class ExtentMap<V> {
  private items: MappedExtent<V>[] = [];

  get size(): number {
    return this.items.length;
  }

  entries(): readonly MappedExtent<V>[] {
    return this.items;
  }

  /** index of the first extent whose end > pos */
  private firstEndingAfter(pos: number): number {
    let lo = 0;
    let hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.items[mid].end <= pos) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Map [start, end) to value, overriding; base is where `start` lies in the value. */
  set(start: number, end: number, value: V, base: number): void {
    if (end <= start) return;
    const i = this.firstEndingAfter(start);
    let j = i;
    const replacement: MappedExtent<V>[] = [];
    while (j < this.items.length && this.items[j].start < end) {
      const e = this.items[j];
      if (e.start < start) replacement.push({ start: e.start, end: start, value: e.value, base: e.base });
      if (e.end > end) replacement.push({ start: end, end: e.end, value: e.value, base: e.base + (end - e.start) });
      j++;
    }
    const left = replacement.filter((r) => r.start < start);
    const right = replacement.filter((r) => r.start >= end);
    this.items.splice(i, j - i, ...left, { start, end, value, base }, ...right);
  }

  /** Map the parts of [start, end) that nothing covers yet. */
  fillGaps(start: number, end: number, value: V, base: number): void {
    for (const gap of this.gaps(start, end)) {
      this.set(gap.start, gap.end, value, base + (gap.start - start));
    }
  }

  /** The uncovered sub-ranges of [start, end). */
  gaps(start: number, end: number): { start: number; end: number }[] {
    const out: { start: number; end: number }[] = [];
    let pos = start;
    for (let i = this.firstEndingAfter(start); i < this.items.length && this.items[i].start < end; i++) {
      const e = this.items[i];
      if (e.start > pos) out.push({ start: pos, end: e.start });
      pos = Math.max(pos, e.end);
    }
    if (pos < end) out.push({ start: pos, end });
    return out;
  }

  /**
   * Split [start, end) into pieces, each either mapped (value and offset within the
   * value) or unmapped (value undefined).
   */
  resolve(start: number, end: number): { start: number; end: number; value: V | undefined; offset: number }[] {
    const out: { start: number; end: number; value: V | undefined; offset: number }[] = [];
    let pos = start;
    for (let i = this.firstEndingAfter(start); i < this.items.length && this.items[i].start < end && pos < end; i++) {
      const e = this.items[i];
      if (e.start > pos) {
        out.push({ start: pos, end: e.start, value: undefined, offset: pos });
        pos = e.start;
      }
      const stop = Math.min(e.end, end);
      out.push({ start: pos, end: stop, value: e.value, offset: e.base + (pos - e.start) });
      pos = stop;
    }
    if (pos < end) out.push({ start: pos, end, value: undefined, offset: pos });
    return out;
  }

  /** Total bytes covered. */
  coveredBytes(): number {
    let n = 0;
    for (const e of this.items) n += e.end - e.start;
    return n;
  }
}
