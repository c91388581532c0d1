/** SVG charts drawn from API data: a line over time (RPO history) and a timeline of recovery points. */
import type { ReactNode } from 'react';

export interface Pt {
  t: number;
  v: number | null;
}

const W = 640;
const H = 180;
const PAD = { l: 56, r: 12, t: 10, b: 24 };

function ticks(min: number, max: number, n: number): number[] {
  if (max <= min) return [min];
  const out: number[] = [];
  for (let i = 0; i <= n; i++) out.push(min + ((max - min) * i) / n);
  return out;
}

function clock(t: number, span: number): string {
  const d = new Date(t);
  return span > 2 * 86400_000 ? d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' }) : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

/**
 * One or more series over time. `limit` draws a dashed line (the RPO target, say). Gaps
 * (null values) break the line. The chart has a text summary for screen readers.
 */
export function LineChart({ series, format, label, limit, empty }: { series: { name: string; points: Pt[]; className?: string }[]; format: (v: number) => string; label: string; limit?: { value: number; name: string }; empty?: ReactNode }) {
  const all = series.flatMap((s) => s.points);
  const vals = all.map((p) => p.v).filter((v): v is number => v !== null);
  if (all.length < 2 || vals.length === 0) return <p className="muted">{empty ?? 'Not enough samples yet.'}</p>;
  const t0 = Math.min(...all.map((p) => p.t));
  const t1 = Math.max(...all.map((p) => p.t));
  const vMax = Math.max(...vals, limit?.value ?? 0) * 1.1 || 1;
  const x = (t: number) => PAD.l + ((t - t0) / Math.max(1, t1 - t0)) * (W - PAD.l - PAD.r);
  const y = (v: number) => H - PAD.b - (v / vMax) * (H - PAD.t - PAD.b);
  const path = (pts: Pt[]) => {
    let d = '';
    let pen = false;
    for (const p of pts) {
      if (p.v === null) {
        pen = false;
        continue;
      }
      d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
      pen = true;
    }
    return d;
  };
  const last = vals[vals.length - 1]!;
  const summary = `${label}: ${series.length} series from ${new Date(t0).toLocaleString()} to ${new Date(t1).toLocaleString()}, highest ${format(Math.max(...vals))}, latest ${format(last)}`;
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={summary}>
        {ticks(0, vMax, 4).map((v) => (
          <g key={`y${v}`}>
            <line className="grid" x1={PAD.l} x2={W - PAD.r} y1={y(v)} y2={y(v)} />
            <text className="axis" x={PAD.l - 4} y={y(v) + 4} textAnchor="end">
              {format(v)}
            </text>
          </g>
        ))}
        {ticks(t0, t1, 4).map((t) => (
          <text key={`x${t}`} className="axis" x={x(t)} y={H - 6} textAnchor="middle">
            {clock(t, t1 - t0)}
          </text>
        ))}
        {limit && <line className="limit" x1={PAD.l} x2={W - PAD.r} y1={y(limit.value)} y2={y(limit.value)} />}
        {series.map((s) => (
          <path key={s.name} className={`line ${s.className ?? ''}`} d={path(s.points)} />
        ))}
      </svg>
      <figcaption className="legend">
        {series.map((s) => (
          <span key={s.name} className={`key ${s.className ?? ''}`}>
            {s.name}
          </span>
        ))}
        {limit && <span className="key limit">{limit.name}</span>}
      </figcaption>
    </figure>
  );
}

/** Recovery points on a line from the oldest to the newest; app-consistent ones stand taller. The chosen one is marked. */
export function PointTimeline({ points, chosen, onChoose }: { points: { id: string; at: string; consistency: string }[]; chosen?: string | undefined; onChoose?: (id: string) => void }) {
  if (points.length === 0) return <p className="muted">No recovery points yet.</p>;
  const ts = points.map((p) => Date.parse(p.at));
  const t0 = Math.min(...ts);
  const t1 = Math.max(...ts);
  const x = (t: number) => 16 + ((t - t0) / Math.max(1, t1 - t0)) * (W - 32);
  return (
    <figure className="chart timeline">
      <svg viewBox={`0 0 ${W} 64`} role="img" aria-label={`${points.length} recovery points from ${new Date(t0).toLocaleString()} to ${new Date(t1).toLocaleString()}`}>
        <line className="grid" x1={8} x2={W - 8} y1={40} y2={40} />
        {points.map((p) => {
          const cx = x(Date.parse(p.at));
          const app = p.consistency === 'app';
          return (
            <g key={p.id} className={`pt ${app ? 'app' : 'crash'}${p.id === chosen ? ' chosen' : ''}`} onClick={onChoose ? () => onChoose(p.id) : undefined}>
              <title>{`${new Date(p.at).toLocaleString()} (${p.consistency}-consistent)`}</title>
              <line x1={cx} x2={cx} y1={app ? 14 : 26} y2={40} />
              <circle cx={cx} cy={app ? 14 : 26} r={p.id === chosen ? 6 : 4} />
            </g>
          );
        })}
        <text className="axis" x={8} y={60}>
          {new Date(t0).toLocaleTimeString()}
        </text>
        <text className="axis" x={W - 8} y={60} textAnchor="end">
          {new Date(t1).toLocaleTimeString()}
        </text>
      </svg>
      <figcaption className="legend">
        <span className="key app">app-consistent</span>
        <span className="key crash">crash-consistent</span>
      </figcaption>
    </figure>
  );
}
