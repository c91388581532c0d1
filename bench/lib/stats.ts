/** Small statistics helpers for the benchmarks. */

/** The median (mean of the two middle values for an even count); NaN for no values. */
export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

/**
 * The p-th percentile (0..100) by linear interpolation between closest ranks (the
 * "R-7" / numpy default method); NaN for no values.
 */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const rank = (Math.min(100, Math.max(0, p)) / 100) * (s.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return s[lo] + (s[hi] - s[lo]) * (rank - lo);
}

export function mean(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  return values.reduce((a, b) => a + b, 0) / values.length;
}

export function max(values: readonly number[]): number {
  return values.length === 0 ? NaN : values.reduce((a, b) => (b > a ? b : a), -Infinity);
}

export function min(values: readonly number[]): number {
  return values.length === 0 ? NaN : values.reduce((a, b) => (b < a ? b : a), Infinity);
}

/** Round to `digits` decimals (keeps JSON readable); NaN and Infinity become null. */
export function round(x: number, digits = 2): number | null {
  if (!Number.isFinite(x)) return null;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** 1 MB = 1e6 bytes throughout the benchmarks. */
export const MB = 1e6;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
