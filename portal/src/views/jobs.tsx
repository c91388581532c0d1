/** Jobs: the filterable list, and a job's page with its tasks, progress, bytes, errors and the actions it allows. */
import { useRef, useState, type FormEvent } from 'react';
import { api, type List, type Query } from '../api';
import { href, useRoute } from '../router';
import type { Job, JobTask } from '../types';
import { ago, Badge, Dialog, Empty, ErrorBox, Field, fmtBytes, fmtRate, fmtSeconds, fmtTime, JobLink, Loading, Progress, Section, useCan, useLoad } from '../ui';
import { PlanRun } from './plan-run';

const STATES = ['Queued', 'Running', 'WaitingForInput', 'Succeeded', 'Failed', 'Cancelled'];
const FINISHED = ['Succeeded', 'Failed', 'Cancelled'];
const KINDS = [
  'enable-protection',
  'disable-protection',
  'test-failover',
  'test-failover-cleanup',
  'planned-failover',
  'unplanned-failover',
  'change-recovery-point',
  'commit-failover',
  'reprotect',
  'resync',
  'confirm-disks',
  'plan-run',
  'reconnect-replicas',
];
const SINCE: [string, string][] = [
  ['', 'any time'],
  ['1h', 'last hour'],
  ['24h', 'last 24 h'],
  ['7d', 'last 7 days'],
  ['30d', 'last 30 days'],
];
const PAGE = 50;

const stateLabel = (s: string) => (s === 'WaitingForInput' ? 'Waiting for input' : s);

/** `since` as the URL carries it (24h, 30m, 7d, or a time) as the time the API takes */
function sinceTime(v: string, now = Date.now()): string | undefined {
  if (!v) return undefined;
  const m = /^(\d+(?:\.\d+)?)\s*(m|min|h|d|w)$/i.exec(v.trim());
  if (m) {
    const unit: Record<string, number> = { m: 60, min: 60, h: 3600, d: 86400, w: 604800 };
    return new Date(now - Number(m[1]) * unit[m[2]!.toLowerCase()]! * 1000).toISOString();
  }
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : new Date(t).toISOString();
}

function sinceLabel(v: string): string {
  const known = SINCE.find(([k]) => k === v);
  if (known) return known[1];
  const m = /^(\d+(?:\.\d+)?)\s*(m|min|h|d|w)$/i.exec(v.trim());
  if (m) return `last ${m[1]} ${m[2]!.toLowerCase() === 'min' ? 'm' : m[2]!.toLowerCase()}`;
  return `since ${fmtTime(v)}`;
}

/** where a job's target lives: a plan run's is a recovery plan, an item job's a protected item */
function targetHref(kind: string, target: string | null): string | null {
  if (!target) return null;
  if (kind === 'plan-run') return href('plans', target);
  if (kind === 'reconnect-replicas') return null; // a VM network of the source site
  return href('items', target);
}

function Target({ job }: { job: Pick<Job, 'kind' | 'target'> }) {
  if (!job.target) return <span className="muted">—</span>;
  const h = targetHref(job.kind, job.target);
  const what = job.kind === 'plan-run' ? 'recovery plan' : job.kind === 'reconnect-replicas' ? 'VM network' : 'protected item';
  return h ? (
    <a href={h} title={`${what} ${job.target}`}>
      {job.target}
    </a>
  ) : (
    <code title={what}>{job.target}</code>
  );
}

function duration(startedAt: string | null, endedAt: string | null, now = Date.now()): string {
  if (!startedAt) return '—';
  const end = endedAt ? Date.parse(endedAt) : now;
  return fmtSeconds(Math.max(0, (end - Date.parse(startedAt)) / 1000));
}

/**
 * Jobs newest first, `want` of them: one request while the API's limit allows, then pages
 * by the API's cursor when it gives one, else by creation time.
 */
async function loadJobs(q: Query, want: number): Promise<{ jobs: Job[]; more: boolean }> {
  const jobs: Job[] = [];
  const seen = new Set<string>();
  let after: string | undefined;
  let until: string | undefined;
  for (;;) {
    const last = jobs[jobs.length - 1];
    const ties = until && last ? jobs.filter((j) => j.createdAt === last.createdAt).length : 0;
    const limit = Math.min(1000, want - jobs.length + ties);
    const page = await api.get<List<Job>>('/jobs', { ...q, limit, after, until });
    let added = 0;
    for (const j of page.items) {
      if (seen.has(j.id)) continue;
      seen.add(j.id);
      jobs.push(j);
      added++;
    }
    const full = page.items.length >= limit;
    if (jobs.length >= want) return { jobs: jobs.slice(0, want), more: page.next !== null || full };
    if (page.next) {
      after = page.next;
      continue;
    }
    const oldest = jobs[jobs.length - 1]?.createdAt;
    if (!full || added === 0 || !oldest) return { jobs, more: false };
    // created before the oldest shown, or in the same millisecond (those shown are skipped)
    until = new Date(Date.parse(oldest) + 1).toISOString();
  }
}

export function Jobs() {
  const route = useRoute();
  const state = route.query.get('state') ?? '';
  const kind = route.query.get('kind') ?? '';
  const target = route.query.get('target') ?? '';
  const since = route.query.get('since') ?? '';
  const key = JSON.stringify([state, kind, target, since]);
  const [targetText, setTargetText] = useState({ key, value: target });
  const targetValue = targetText.key === key ? targetText.value : target;
  const [paging, setPaging] = useState({ key, pages: 1 });
  const pages = paging.key === key ? paging.pages : 1;

  const setQuery = (changes: Record<string, string>) => {
    const q = new URLSearchParams(route.query);
    for (const [k, v] of Object.entries(changes)) {
      if (v) q.set(k, v);
      else q.delete(k);
    }
    window.location.hash = `/jobs${q.toString() ? `?${q}` : ''}`;
  };
  const applyTarget = (e: FormEvent) => {
    e.preventDefault();
    setQuery({ target: targetValue.trim() });
  };
  const filtered = Boolean(state || kind || target || since);

  const l = useLoad(() => loadJobs({ state: STATES.includes(state) ? state : undefined, kind, target, since: sinceTime(since) }, pages * PAGE), [key, pages], 3000);
  const badState = state && !STATES.includes(state);
  const badSince = since && sinceTime(since) === undefined;
  const now = Date.now();

  return (
    <>
      <h1>Jobs</h1>
      <form className="filters" role="search" aria-label="Filter jobs" onSubmit={applyTarget}>
        <Field label="State">
          <select value={STATES.includes(state) ? state : ''} onChange={(e) => setQuery({ state: e.target.value })}>
            <option value="">all</option>
            {STATES.map((s) => (
              <option key={s} value={s}>
                {stateLabel(s)}
              </option>
            ))}
          </select>
        </Field>
        <Field label="Kind">
          <select value={kind} onChange={(e) => setQuery({ kind: e.target.value })}>
            <option value="">all</option>
            {(KINDS.includes(kind) || !kind ? KINDS : [...KINDS, kind]).map((k) => (
              <option key={k} value={k}>
                {k}
              </option>
            ))}
          </select>
        </Field>
        <Field label="Created">
          <select value={since} onChange={(e) => setQuery({ since: e.target.value })}>
            {(SINCE.some(([k]) => k === since) ? SINCE : [...SINCE, [since, sinceLabel(since)] as [string, string]]).map(([k, label]) => (
              <option key={k} value={k}>
                {label}
              </option>
            ))}
          </select>
        </Field>
        <Field label="Target">
          <input type="search" value={targetValue} onChange={(e) => setTargetText({ key, value: e.target.value })} placeholder="item or plan id" spellCheck={false} />
        </Field>
        <div className="buttons">
          <button type="submit">Apply</button>
          {filtered && (
            <a className="button" href={href('jobs')}>
              Clear filters
            </a>
          )}
        </div>
      </form>
      {badState && <ErrorBox error={new Error(`"${state}" is not a job state; showing jobs in every state`)} />}
      {badSince && <ErrorBox error={new Error(`"${since}" is not a time or a span such as 24h; showing jobs of any time`)} />}
      <Loading l={l}>
        {({ jobs, more }) =>
          jobs.length === 0 ? (
            <Empty>{filtered ? 'No job matches these filters.' : 'No job has run yet: operations on protected items and recovery plans run as jobs.'}</Empty>
          ) : (
            <div className="panel">
              <table className="responsive jobs">
                <caption className="muted">
                  {jobs.length} job{jobs.length === 1 ? '' : 's'}
                  {more ? ' shown (newest first)' : ''}
                </caption>
                <thead>
                  <tr>
                    <th>Kind</th>
                    <th>Target</th>
                    <th>State</th>
                    <th>Progress</th>
                    <th>Current step</th>
                    <th>Started</th>
                    <th className="num">Duration</th>
                    <th>Started by</th>
                  </tr>
                </thead>
                <tbody>
                  {jobs.map((j) => (
                    <tr key={j.id}>
                      <td data-label="Kind">
                        <JobLink id={j.id}>{j.kind}</JobLink> <span className="muted">{j.id.slice(0, 8)}</span>
                      </td>
                      <td data-label="Target">
                        <Target job={j} />
                      </td>
                      <td data-label="State">
                        <Badge value={j.state} title={j.error ? `${j.error.code}: ${j.error.message}` : undefined} />
                      </td>
                      <td data-label="Progress">
                        <Progress value={j.state === 'Succeeded' ? 1 : j.progress} label={`progress of ${j.kind} ${j.id.slice(0, 8)}`} />
                      </td>
                      <td data-label="Current step">
                        {j.error ? (
                          <span title={j.error.message}>
                            <code>{j.error.code}</code>
                            {j.error.task ? <span className="muted"> in {j.error.task}</span> : null}
                          </span>
                        ) : FINISHED.includes(j.state) ? (
                          <span className="muted">—</span>
                        ) : (
                          (j.currentStep ?? <span className="muted">—</span>)
                        )}
                      </td>
                      <td data-label="Started">{j.startedAt ? <time dateTime={j.startedAt} title={fmtTime(j.startedAt)}>{ago(j.startedAt, now)}</time> : <span className="muted">{j.state === 'Queued' ? 'queued' : '—'}</span>}</td>
                      <td data-label="Duration" className="num">
                        {duration(j.startedAt, j.endedAt, now)}
                      </td>
                      <td data-label="Started by">{j.createdBy ?? <span className="muted">the vault</span>}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
              {more && (
                <div className="buttons load-more">
                  <button type="button" onClick={() => setPaging({ key, pages: pages + 1 })}>
                    Load more
                  </button>
                </div>
              )}
            </div>
          )
        }
      </Loading>
    </>
  );
}

/** What a running task's detail may carry about the bytes it copies. */
interface ByteProgress {
  bytesDone: number;
  bytesTotal: number;
  rateBytesPerSec?: number;
  etaSeconds?: number;
  currentDisk?: string;
}

function byteProgress(detail: unknown): ByteProgress | undefined {
  if (!detail || typeof detail !== 'object') return undefined;
  const d = detail as Record<string, unknown>;
  if (typeof d.bytesDone !== 'number' || typeof d.bytesTotal !== 'number') return undefined;
  return {
    bytesDone: d.bytesDone,
    bytesTotal: d.bytesTotal,
    ...(typeof d.rateBytesPerSec === 'number' ? { rateBytesPerSec: d.rateBytesPerSec } : {}),
    ...(typeof d.etaSeconds === 'number' ? { etaSeconds: d.etaSeconds } : {}),
    ...(typeof d.currentDisk === 'string' ? { currentDisk: d.currentDisk } : {}),
  };
}

const BYTE_KEYS = new Set(['bytesDone', 'bytesTotal', 'rateBytesPerSec', 'etaSeconds', 'currentDisk']);

/** a task's detail beyond its bytes, if any */
function otherDetail(detail: unknown): unknown {
  if (detail === null || detail === undefined) return undefined;
  if (typeof detail !== 'object' || Array.isArray(detail)) return detail;
  const rest = Object.fromEntries(Object.entries(detail).filter(([k]) => !BYTE_KEYS.has(k)));
  return Object.keys(rest).length ? rest : undefined;
}

/**
 * The rate of a task that reports bytes without one, measured over the last samples
 * (each timed by when the vault updated the job), so it does not jump with the polling.
 */
class RateMeter {
  private readonly samples = new Map<string, { bytes: number; at: number }[]>();

  rate(key: string, bytes: number, at: number, windowMs = 10_000): number | undefined {
    const list = this.samples.get(key) ?? [];
    const last = list[list.length - 1];
    if (last && bytes < last.bytes) list.length = 0;
    if (!last || bytes !== last.bytes) list.push({ bytes, at });
    while (list.length > 2 && list[list.length - 1]!.at - list[0]!.at > windowMs) list.shift();
    this.samples.set(key, list);
    const first = list[0]!;
    const newest = list[list.length - 1]!;
    return newest.at > first.at ? ((newest.bytes - first.bytes) * 1000) / (newest.at - first.at) : undefined;
  }
}

function pretty(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v, null, 2);
}

function CancelJob({ job, onDone }: { job: Job; onDone: () => void }) {
  const [open, setOpen] = useState(false);
  return (
    <>
      <button type="button" className="danger" onClick={() => setOpen(true)}>
        Cancel job
      </button>
      <Dialog
        title="Cancel this job?"
        open={open}
        danger
        onClose={() => setOpen(false)}
        submitLabel="Cancel the job"
        onSubmit={async () => {
          await api.post<Job>(`/jobs/${encodeURIComponent(job.id)}/cancel`);
          onDone();
        }}
      >
        <p>
          {job.state === 'Running'
            ? `The ${job.kind} job stops at the end of its current step (${job.currentStep ?? 'the one running'}); what it did so far stays as it is.`
            : `The ${job.kind} job will not run.`}{' '}
          A cancelled job can be restarted from the task that did not finish.
        </p>
      </Dialog>
    </>
  );
}

function ResumeJob({ job, onDone }: { job: Job; onDone: () => void }) {
  const [open, setOpen] = useState(false);
  const [comment, setComment] = useState('');
  const waiting = job.waitingFor as { message?: unknown } | null;
  return (
    <>
      <button type="button" className="primary" onClick={() => setOpen(true)}>
        Resume
      </button>
      <Dialog
        title="Resume the job"
        open={open}
        onClose={() => setOpen(false)}
        submitLabel="Resume"
        onSubmit={async () => {
          await api.post<Job>(`/jobs/${encodeURIComponent(job.id)}/resume`, { comment });
          setComment('');
          onDone();
        }}
      >
        <p>{typeof waiting?.message === 'string' ? waiting.message : `The job waits at ${job.currentStep ?? 'a manual step'}.`} Resume it once that is done.</p>
        <Field label="Comment" hint="What was done; it is recorded with the job.">
          <textarea value={comment} onChange={(e) => setComment(e.target.value)} maxLength={2000} rows={4} />
        </Field>
      </Dialog>
    </>
  );
}

function TaskRows({ job, meter }: { job: Job; meter: RateMeter }) {
  const tasks = job.tasks ?? [];
  const withBytes = tasks.some((t) => byteProgress(t.detail));
  const now = Date.now();
  const at = job.updatedAt ? Date.parse(job.updatedAt) : now;
  const row = (t: JobTask, i: number) => {
    const b = byteProgress(t.detail);
    const rate = b ? (b.rateBytesPerSec ?? (t.state === 'Running' ? meter.rate(`${job.id}/${t.name}`, b.bytesDone, Number.isNaN(at) ? now : at) : undefined)) : undefined;
    const eta = b && t.state === 'Running' ? (b.etaSeconds ?? (rate && rate > 0 ? Math.max(0, b.bytesTotal - b.bytesDone) / rate : undefined)) : undefined;
    const failedHere = job.error?.task === t.name;
    const rest = otherDetail(t.detail);
    const progress = t.state === 'Succeeded' ? 1 : (t.progress ?? (b && b.bytesTotal > 0 ? b.bytesDone / b.bytesTotal : null));
    return (
      <tr key={`${i}-${t.name}`} className={failedHere ? 'failed-task' : t.state === 'Running' ? 'running-task' : undefined} aria-current={t.state === 'Running' ? 'step' : undefined}>
        <td data-label="#" className="num">
          {i + 1}
        </td>
        <td data-label="Task">{t.name}</td>
        <td data-label="State">
          <Badge value={t.state} />
        </td>
        <td data-label="Progress">{t.state === 'NotStarted' || t.state === 'Skipped' ? <span className="muted">—</span> : <Progress value={progress} label={`progress of task ${t.name}`} />}</td>
        {withBytes && (
          <>
            <td data-label="Bytes" className="num">
              {b ? `${fmtBytes(b.bytesDone)} / ${fmtBytes(b.bytesTotal)}` : '—'}
            </td>
            <td data-label="Rate" className="num">
              {t.state === 'Running' ? fmtRate(rate) : '—'}
            </td>
            <td data-label="ETA" className="num">
              {t.state === 'Running' ? fmtSeconds(eta) : '—'}
            </td>
            <td data-label="Current disk">{b?.currentDisk && t.state === 'Running' ? <code>{b.currentDisk}</code> : '—'}</td>
          </>
        )}
        <td data-label="Started">{t.startedAt ? <time dateTime={t.startedAt}>{fmtTime(t.startedAt)}</time> : '—'}</td>
        <td data-label="Ended">{t.endedAt ? <time dateTime={t.endedAt}>{fmtTime(t.endedAt)}</time> : '—'}</td>
        <td data-label="Duration" className="num">
          {t.state === 'Running' || t.endedAt ? duration(t.startedAt, t.endedAt, now) : '—'}
        </td>
        <td data-label="Error / detail">
          {t.error ? (
            <span className="task-error">
              <code>{t.error.code}</code> {t.error.message}
            </span>
          ) : null}
          {rest !== undefined ? (
            <details>
              <summary>Detail</summary>
              <pre className="json">{pretty(rest)}</pre>
            </details>
          ) : null}
          {!t.error && rest === undefined ? <span className="muted">—</span> : null}
        </td>
      </tr>
    );
  };
  if (tasks.length === 0) return <Empty>This job has no tasks.</Empty>;
  return (
    <table className="responsive tasks">
      <thead>
        <tr>
          <th className="num">#</th>
          <th>Task</th>
          <th>State</th>
          <th>Progress</th>
          {withBytes && (
            <>
              <th className="num">Bytes</th>
              <th className="num">Rate</th>
              <th className="num">ETA</th>
              <th>Current disk</th>
            </>
          )}
          <th>Started</th>
          <th>Ended</th>
          <th className="num">Duration</th>
          <th>Error / detail</th>
        </tr>
      </thead>
      <tbody>{tasks.map(row)}</tbody>
    </table>
  );
}

export function JobPage({ id }: { id: string }) {
  const can = useCan();
  const [finished, setFinished] = useState(false);
  const meter = useRef(new RateMeter()).current;
  const l = useLoad(
    async () => {
      const j = await api.get<Job>(`/jobs/${encodeURIComponent(id)}`);
      setFinished(FINISHED.includes(j.state));
      return j;
    },
    [id],
    finished ? 15_000 : 1500,
  );
  const [restarting, setRestarting] = useState(false);
  const [actionError, setActionError] = useState<unknown>(undefined);
  const [notice, setNotice] = useState<string | null>(null);

  const restart = async (job: Job) => {
    setRestarting(true);
    setActionError(undefined);
    setNotice(null);
    try {
      await api.post<Job>(`/jobs/${encodeURIComponent(job.id)}/restart`);
      setNotice('The job is queued again; it goes on from the task that did not finish.');
      setFinished(false);
      l.reload();
    } catch (e) {
      setActionError(e);
    } finally {
      setRestarting(false);
    }
  };

  return (
    <>
      <p>
        <a href={href('jobs')}>Jobs</a> /
      </p>
      <Loading l={l}>
        {(job) => {
          const operate = can('operate');
          const allows = (a: string) => operate && job.allowedActions.includes(a);
          const ranBy = (job as Job & { ranBy?: string[] }).ranBy ?? [];
          const waiting = job.waitingFor as { message?: unknown } | null;
          return (
            <>
              <div className="panel-head">
                <h1>
                  {job.kind} {job.target ? <span className="muted">of {job.target}</span> : null}
                </h1>
                <div className="buttons">
                  <Badge value={job.state} />
                  {allows('resume') && (
                    <ResumeJob
                      job={job}
                      onDone={() => {
                        setNotice('The job is resumed.');
                        l.reload();
                      }}
                    />
                  )}
                  {allows('restart') && (
                    <button type="button" className="primary" onClick={() => void restart(job)} disabled={restarting}>
                      {restarting ? 'Restarting…' : 'Restart'}
                    </button>
                  )}
                  {allows('cancel') && (
                    <CancelJob
                      job={job}
                      onDone={() => {
                        setNotice(job.state === 'Running' ? 'Cancellation requested: the job stops at the end of its current step.' : 'The job is cancelled.');
                        l.reload();
                      }}
                    />
                  )}
                </div>
              </div>
              <ErrorBox error={actionError} />
              {notice && (
                <p className="notice" role="status">
                  {notice}
                </p>
              )}
              {job.error && (
                <div className="error" role="alert">
                  <strong>{job.error.code}</strong> {job.error.message}
                  {job.error.task ? (
                    <>
                      {' '}
                      <span className="muted">(in task “{job.error.task}”)</span>
                    </>
                  ) : null}
                </div>
              )}
              {job.state === 'WaitingForInput' && (
                <Section title="Waiting for input">
                  <p>{typeof waiting?.message === 'string' ? waiting.message : `The job waits at ${job.currentStep ?? 'a manual step'}.`}</p>
                  {job.waitingFor !== null && job.waitingFor !== undefined && (
                    <details>
                      <summary>What it waits for</summary>
                      <pre className="json">{pretty(job.waitingFor)}</pre>
                    </details>
                  )}
                  {!allows('resume') && <p className="muted">Someone allowed to operate resumes it once the step is done.</p>}
                </Section>
              )}
              <Section title="Job">
                <dl className="props">
                  <dt>ID</dt>
                  <dd>
                    <code>{job.id}</code>
                  </dd>
                  <dt>Kind</dt>
                  <dd>{job.kind}</dd>
                  <dt>Target</dt>
                  <dd>
                    <Target job={job} />
                  </dd>
                  <dt>State</dt>
                  <dd>
                    <Badge value={job.state} /> <Progress value={job.state === 'Succeeded' ? 1 : job.progress} label="progress of the job" />
                  </dd>
                  <dt>Current step</dt>
                  <dd>{FINISHED.includes(job.state) ? <span className="muted">—</span> : (job.currentStep ?? '—')}</dd>
                  <dt>Attempts</dt>
                  <dd>{job.attempts}</dd>
                  <dt>Created by</dt>
                  <dd>{job.createdBy ?? <span className="muted">the vault</span>}</dd>
                  {ranBy.length > 0 && (
                    <>
                      <dt>Run by vault{ranBy.length === 1 ? '' : 's'}</dt>
                      <dd>{ranBy.join(', ')}</dd>
                    </>
                  )}
                  <dt>Created</dt>
                  <dd>
                    {fmtTime(job.createdAt)} {job.createdAt ? <span className="muted">({ago(job.createdAt)})</span> : null}
                  </dd>
                  <dt>Started</dt>
                  <dd>{fmtTime(job.startedAt)}</dd>
                  <dt>Ended</dt>
                  <dd>{fmtTime(job.endedAt)}</dd>
                  <dt>Duration</dt>
                  <dd>{duration(job.startedAt, job.endedAt)}</dd>
                  <dt>Updated</dt>
                  <dd>{fmtTime(job.updatedAt)}</dd>
                </dl>
                {job.output !== null && job.output !== undefined && (
                  <details>
                    <summary>Output</summary>
                    <pre className="json">{pretty(job.output)}</pre>
                  </details>
                )}
              </Section>
              {job.kind === 'plan-run' && <PlanRun jobId={id} />}
              <Section title="Tasks">
                <TaskRows job={job} meter={meter} />
              </Section>
            </>
          );
        }}
      </Loading>
    </>
  );
}
