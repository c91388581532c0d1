/**
 * Following vault jobs until they end: a progress bar with the current step, the tasks,
 * and bytes, rate and ETA when the running task's progress carries them (as a provider's
 * initial replication reports them). On a terminal the view is redrawn in place; anywhere
 * else a line is printed per change. A job that Succeeded returns; one that Failed or was
 * Cancelled throws its error code.
 */
import { ERROR_CODES, OsrError, type ErrorCode } from '../domain/errors.js';
import type { CliApi } from './api-common.js';
import { formatBytes, formatSeconds, progressBar } from './format.js';

export interface JobTaskView {
  name: string;
  state: string;
  progress: number | null;
  startedAt: string | null;
  endedAt: string | null;
  error: { code: string; message: string } | null;
  detail: unknown;
}

/** A job as GET /api/v1/jobs/{id} answers it. */
export interface JobView {
  id: string;
  kind: string;
  target: string | null;
  state: string;
  progress: number | null;
  currentStep: string | null;
  attempts: number;
  ranBy: string[];
  createdBy: string | null;
  createdAt: string | null;
  updatedAt: string | null;
  startedAt: string | null;
  endedAt: string | null;
  error: { code: string; message: string; task?: string } | null;
  output: unknown;
  waitingFor: unknown;
  allowedActions: string[];
  tasks?: JobTaskView[];
}

export const FINISHED_STATES: readonly string[] = ['Succeeded', 'Failed', 'Cancelled'];

/** What a running task's progress detail may carry. */
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
    rateBytesPerSec: typeof d.rateBytesPerSec === 'number' ? d.rateBytesPerSec : undefined,
    etaSeconds: typeof d.etaSeconds === 'number' ? d.etaSeconds : undefined,
    currentDisk: typeof d.currentDisk === 'string' ? d.currentDisk : undefined,
  };
}

/** The task the job works on now (or last worked on). */
function currentTask(job: JobView): JobTaskView | undefined {
  const tasks = job.tasks ?? [];
  return tasks.find((t) => t.state === 'Running') ?? tasks.find((t) => t.name === job.currentStep);
}

/**
 * Bytes, rate and ETA of the running task. When the provider reports bytes without a rate,
 * the rate is measured here over the last samples (each timed by the job's update time,
 * when the vault wrote it), so it does not jump with the polling.
 */
export class RateMeter {
  private readonly samples = new Map<string, { bytes: number; at: number }[]>();

  constructor(private readonly windowMs = 10_000) {}

  private measured(job: JobView, bytes: number, now: number): number | undefined {
    const list = this.samples.get(job.id) ?? [];
    const last = list[list.length - 1];
    if (last && bytes < last.bytes) list.length = 0; // started over (a restarted job)
    if (!last || bytes !== last.bytes) {
      const at = job.updatedAt ? Date.parse(job.updatedAt) : now;
      list.push({ bytes, at: Number.isNaN(at) ? now : at });
    }
    while (list.length > 2 && list[list.length - 1]!.at - list[0]!.at > this.windowMs) list.shift();
    this.samples.set(job.id, list);
    const first = list[0]!;
    const newest = list[list.length - 1]!;
    return newest.at > first.at ? ((newest.bytes - first.bytes) * 1000) / (newest.at - first.at) : undefined;
  }

  text(job: JobView, now = Date.now()): string {
    const task = currentTask(job);
    const p = task && task.state === 'Running' ? byteProgress(task.detail) : undefined;
    if (!p) return '';
    const rate = p.rateBytesPerSec ?? this.measured(job, p.bytesDone, now);
    const eta = p.etaSeconds ?? (rate && rate > 0 ? Math.max(0, p.bytesTotal - p.bytesDone) / rate : null);
    return [`${formatBytes(p.bytesDone)}/${formatBytes(p.bytesTotal)}`, rate !== undefined ? `${formatBytes(rate)}/s` : '', eta !== null ? `ETA ${formatSeconds(eta)}` : '', p.currentDisk ? `disk ${p.currentDisk}` : '']
      .filter(Boolean)
      .join('  ');
  }
}

const TASK_MARK: Record<string, string> = { Succeeded: '✓', Running: '▶', Failed: '✗', Cancelled: '✗', Skipped: '-', NotStarted: '·' };

function waitingText(job: JobView): string {
  const w = job.waitingFor as { message?: string } | null;
  const what = w?.message ?? (w ? JSON.stringify(w) : 'a manual step');
  return `waiting for input (${what}); when done: osr job resume ${job.id} --comment TEXT`;
}

/** One line of a job: state, bar, step, bytes; what a non-terminal prints per change. */
export function jobLine(job: JobView, meter: RateMeter = new RateMeter(), withTarget = false, withBytes = true): string {
  const head = withTarget ? `${job.target ?? job.id}  ` : '';
  const bar = progressBar(job.state === 'Succeeded' ? 1 : (job.progress ?? 0), 20);
  if (job.state === 'WaitingForInput') return `${head}${job.state} ${bar}  ${job.currentStep ?? ''}: ${waitingText(job)}`;
  if (job.state === 'Failed' || job.state === 'Cancelled') return `${head}${job.state} ${bar}  ${job.error ? `${job.error.code}: ${job.error.message}${job.error.task ? ` (task ${job.error.task})` : ''}` : ''}`.trimEnd();
  const bytes = job.state === 'Running' && withBytes ? meter.text(job) : '';
  return `${head}${job.state} ${bar}  ${job.state === 'Succeeded' ? 'done' : (job.currentStep ?? '')}${bytes ? `  ${bytes}` : ''}`.trimEnd();
}

/** The full view of one job: heading, bar with the step, then each task. */
function jobBlock(job: JobView, meter: RateMeter): string[] {
  const lines = [`job ${job.id}  ${job.kind}${job.target ? `  ${job.target}` : ''}`, jobLine(job, meter, false, false)];
  const tasks = job.tasks ?? [];
  const width = Math.max(0, ...tasks.map((t) => t.name.length));
  for (const t of tasks) {
    const extra =
      t.state === 'Running'
        ? [progressBar(t.progress ?? 0, 20), meter.text(job)].filter(Boolean).join('  ')
        : t.state === 'Failed' && t.error
          ? `${t.error.code}: ${t.error.message}`
          : t.state;
    lines.push(`  ${TASK_MARK[t.state] ?? '?'} ${t.name.padEnd(width)}  ${extra}`.trimEnd());
  }
  return lines;
}

/** The error a job that did not succeed exits with. */
export function jobError(job: JobView): OsrError {
  const code: ErrorCode = job.error?.code && job.error.code in ERROR_CODES ? (job.error.code as ErrorCode) : job.state === 'Cancelled' ? 'INVALID_STATE' : 'JOB_FAILED';
  const what = `job ${job.id} (${job.kind}${job.target ? ` of ${job.target}` : ''})`;
  const why = job.error ? `${job.error.task ? ` in task "${job.error.task}"` : ''}: ${job.error.message}` : '';
  return new OsrError(code, `${what} ${job.state === 'Cancelled' ? 'was cancelled' : 'failed'}${why}`, { jobId: job.id, state: job.state });
}

export interface WatchOptions {
  /** print each changed job as a line of JSON */
  json: boolean;
  intervalMs: number;
  out?: NodeJS.WriteStream;
  /** give up after this long (INVALID_STATE: the job goes on in the vault) */
  timeoutMs?: number;
}

/**
 * Poll the jobs until every one has ended. Resolves with the jobs when all Succeeded;
 * otherwise throws the error of the first that did not.
 */
export async function watchJobs(api: CliApi, ids: string[], o: WatchOptions): Promise<JobView[]> {
  const out = o.out ?? process.stdout;
  const tty = out.isTTY === true && !o.json;
  const meter = new RateMeter();
  const lastLine = new Map<string, string>();
  const latest = new Map<string, JobView>();
  let drawn = 0;
  const started = Date.now();

  const draw = (jobs: JobView[]) => {
    const lines = jobs.length === 1 ? jobBlock(jobs[0]!, meter) : jobs.map((j) => jobLine(j, meter, true));
    const cols = out.columns && out.columns > 10 ? out.columns - 1 : 200;
    const clipped = lines.map((l) => (l.length > cols ? `${l.slice(0, cols - 1)}…` : l));
    out.write(`${drawn > 0 ? `\x1b[${drawn}F\x1b[0J` : ''}${clipped.join('\n')}\n`);
    drawn = clipped.length;
  };

  for (;;) {
    const jobs = await Promise.all(ids.map(async (id) => (FINISHED_STATES.includes(latest.get(id)?.state ?? '') ? latest.get(id)! : await api.get<JobView>(`/jobs/${encodeURIComponent(id)}`))));
    for (const j of jobs) {
      const seen = latest.get(j.id);
      latest.set(j.id, j);
      if (tty) continue;
      if (o.json) {
        if (!seen || JSON.stringify(seen) !== JSON.stringify(j)) out.write(`${JSON.stringify(j)}\n`);
        continue;
      }
      const line = `${ids.length > 1 ? '' : `job ${j.id}  `}${jobLine(j, meter, ids.length > 1)}`;
      if (lastLine.get(j.id) !== line) {
        out.write(`${line}\n`);
        lastLine.set(j.id, line);
      }
    }
    if (tty) draw(jobs);
    if (jobs.every((j) => FINISHED_STATES.includes(j.state))) {
      const bad = jobs.find((j) => j.state !== 'Succeeded');
      if (bad) throw jobError(bad);
      return jobs;
    }
    if (o.timeoutMs !== undefined && Date.now() - started > o.timeoutMs) {
      throw new OsrError('INVALID_STATE', `gave up watching after ${formatSeconds(o.timeoutMs / 1000)}; the job goes on in the vault (osr job watch ${ids.join(' ')})`);
    }
    await new Promise((r) => setTimeout(r, o.intervalMs));
  }
}
