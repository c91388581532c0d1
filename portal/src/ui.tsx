/** Small pieces every view uses: loading data with refresh, errors as the vault words them, badges, formats, dialogs. */
import { createContext, useCallback, useContext, useEffect, useId, useRef, useState, type ReactNode } from 'react';
import { ApiError } from './api';
import { href } from './router';
import type { Me } from './types';

export const MeContext = createContext<Me | null>(null);

/** whether the signed-in token's role grants a permission */
export function useCan(): (p: Me['permissions'][number]) => boolean {
  const me = useContext(MeContext);
  return (p) => me?.permissions.includes(p) ?? false;
}

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => void;
}

/** Loads with `load`, again when `deps` change, and every `refreshMs` while the page is shown. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[], refreshMs?: number): Loaded<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  useEffect(() => {
    let live = true;
    setLoading(true);
    loadRef.current().then(
      (d) => {
        if (!live) return;
        setData(d);
        setError(undefined);
        setLoading(false);
      },
      (e) => {
        if (!live) return;
        setError(e);
        setLoading(false);
      },
    );
    return () => {
      live = false;
    };
  }, [...deps, tick]);
  useEffect(() => {
    if (!refreshMs) return;
    const t = setInterval(() => {
      if (document.visibilityState === 'visible') setTick((x) => x + 1);
    }, refreshMs);
    return () => clearInterval(t);
  }, [refreshMs]);
  const reload = useCallback(() => setTick((x) => x + 1), []);
  return { data, error, loading, reload };
}

export function ErrorBox({ error }: { error: unknown }) {
  if (error === undefined || error === null) return null;
  if (error instanceof ApiError) {
    return (
      <div className="error" role="alert">
        <strong>{error.code}</strong> {error.message}
        {error.problems.length > 0 && (
          <ul>
            {error.problems.map((p, i) => (
              <li key={i}>{p}</li>
            ))}
          </ul>
        )}
      </div>
    );
  }
  return (
    <div className="error" role="alert">
      {(error as Error).message ?? String(error)}
    </div>
  );
}

/** What a list or page shows while it loads or when loading failed */
export function Loading<T>({ l, children }: { l: Loaded<T>; children: (d: T) => ReactNode }) {
  if (l.data === undefined) {
    if (l.error) return <ErrorBox error={l.error} />;
    return <p className="muted" aria-live="polite">Loading…</p>;
  }
  return (
    <>
      {l.error ? <ErrorBox error={l.error} /> : null}
      {children(l.data)}
    </>
  );
}

const TONES: Record<string, string> = {
  Healthy: 'ok',
  Succeeded: 'ok',
  Protected: 'ok',
  Resolved: 'ok',
  Warning: 'warn',
  WaitingForInput: 'warn',
  Critical: 'bad',
  Failed: 'bad',
  ProtectionFailed: 'bad',
  ResyncRequired: 'bad',
  Active: 'bad',
  Running: 'busy',
  Queued: 'busy',
  Cancelled: 'muted',
  NotApplicable: 'muted',
};

export function Badge({ value, title }: { value: string | null | undefined; title?: string }) {
  const v = value ?? '—';
  const tone = TONES[v] ?? (/ing$|InProgress$/.test(v) ? 'busy' : 'info');
  return (
    <span className={`badge ${tone}`} title={title}>
      {v === 'NotApplicable' ? 'Not applicable' : v}
    </span>
  );
}

export function fmtTime(iso: string | null | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return 'never';
  const s = Math.round((now - Date.parse(iso)) / 1000);
  if (s < 0) return `in ${fmtSeconds(-s)}`;
  return `${fmtSeconds(s)} ago`;
}

export function fmtSeconds(s: number | null | undefined): string {
  if (s === null || s === undefined || !Number.isFinite(s)) return '—';
  if (s < 1) return `${s.toFixed(2)} s`;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const two = (a: number, au: string, b: number, bu: string) => (b === 0 ? `${a} ${au}` : `${a} ${au} ${b} ${bu}`);
  if (s < 3600) return two(Math.floor(s / 60), 'min', Math.round(s % 60), 's');
  if (s < 86400) return two(Math.floor(s / 3600), 'h', Math.round((s % 3600) / 60), 'min');
  return two(Math.floor(s / 86400), 'd', Math.round((s % 86400) / 3600), 'h');
}

export function fmtBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${u[i]}`;
}

export function fmtRate(bytesPerSec: number | null | undefined): string {
  if (bytesPerSec === null || bytesPerSec === undefined) return '—';
  return `${fmtBytes(bytesPerSec)}/s (${((bytesPerSec * 8) / 1e6).toFixed(bytesPerSec * 8 < 1e7 ? 2 : 0)} Mbit/s)`;
}

export function JobLink({ id, children }: { id: string; children?: ReactNode }) {
  return <a href={href('jobs', id)}>{children ?? `job ${id.slice(0, 8)}`}</a>;
}

export function Progress({ value, label }: { value: number | null | undefined; label: string }) {
  const pct = value === null || value === undefined ? undefined : Math.round(value * 100);
  return (
    <span className="progress">
      <progress max={100} value={pct} aria-label={label} />
      <span className="muted">{pct === undefined ? '' : `${pct}%`}</span>
    </span>
  );
}

/**
 * A modal dialog (the browser's own <dialog>: focus stays inside, Escape closes it).
 * `onSubmit` runs when its form is sent; an ApiError it throws is shown in the dialog.
 */
export function Dialog({ title, open, onClose, onSubmit, submitLabel, children, danger }: { title: string; open: boolean; onClose: () => void; onSubmit: () => Promise<void>; submitLabel: string; children?: ReactNode; danger?: boolean }) {
  const ref = useRef<HTMLDialogElement>(null);
  const [error, setError] = useState<unknown>(undefined);
  const [busy, setBusy] = useState(false);
  const titleId = useId();
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) {
      setError(undefined);
      d.showModal();
    } else if (!open && d.open) d.close();
  }, [open]);
  return (
    <dialog ref={ref} onClose={onClose} aria-labelledby={titleId}>
      <form
        method="dialog"
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(undefined);
          try {
            await onSubmit();
            onClose();
          } catch (err) {
            setError(err);
          } finally {
            setBusy(false);
          }
        }}
      >
        <h2 id={titleId}>{title}</h2>
        {children}
        <ErrorBox error={error} />
        <div className="buttons">
          <button type="submit" className={danger ? 'danger' : 'primary'} disabled={busy}>
            {busy ? 'Working…' : submitLabel}
          </button>
          <button type="button" onClick={onClose}>
            Cancel
          </button>
        </div>
      </form>
    </dialog>
  );
}

/** A labelled form field */
export function Field({ label, children, hint, error }: { label: string; children: ReactNode; hint?: string; error?: string | undefined }) {
  return (
    <label className={`field${error ? ' invalid' : ''}`}>
      <span>{label}</span>
      {children}
      {hint && <small className="muted">{hint}</small>}
      {error && (
        <small className="field-error" role="alert">
          {error}
        </small>
      )}
    </label>
  );
}

/** The result line of an operation started from a page: the job it became, or the vault's refusal */
export function useOperation(): { start: (f: () => Promise<{ jobId?: string } | unknown>) => Promise<void>; notice: ReactNode; busy: boolean } {
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ jobId?: string; error?: unknown } | null>(null);
  const start = async (f: () => Promise<{ jobId?: string } | unknown>) => {
    setBusy(true);
    setResult(null);
    try {
      const r = (await f()) as { jobId?: string } | undefined;
      setResult({ jobId: r?.jobId });
    } catch (e) {
      setResult({ error: e });
    } finally {
      setBusy(false);
    }
  };
  const notice = result?.error ? (
    <ErrorBox error={result.error} />
  ) : result?.jobId ? (
    <p className="notice" role="status">
      Started <JobLink id={result.jobId} />.
    </p>
  ) : null;
  return { start, notice, busy };
}

export function Section({ title, children, actions }: { title: string; children: ReactNode; actions?: ReactNode }) {
  return (
    <section className="panel" aria-label={title}>
      <header className="panel-head">
        <h2>{title}</h2>
        {actions && <div className="buttons">{actions}</div>}
      </header>
      {children}
    </section>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="muted empty">{children}</p>;
}
