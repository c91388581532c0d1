/**
 * The job table as a port: create, read, list, and the lease protocol that lets several
 * vault processes share one database without two of them running the same job.
 *
 * A vault claims a job by setting `locked_by` to its own id and `locked_until` to now plus
 * its lease; on PostgreSQL the candidate row is chosen `FOR UPDATE SKIP LOCKED`, so two
 * claims never wait on or take the same row; SQLite has one writer at a time, so its claim
 * is one atomic UPDATE. Every later write of the job checks `locked_by` (fencing by owner):
 * a vault whose lease ran out and was taken over gets LEASE_LOST and stops.
 */
import { randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import { OsrError } from '../domain/errors.js';
import { Dialect } from './database.js';
import type { Database, JobRow, JobTaskRow } from './schema.js';

export const JobState = {
  Queued: 'Queued',
  Running: 'Running',
  WaitingForInput: 'WaitingForInput',
  Succeeded: 'Succeeded',
  Failed: 'Failed',
  Cancelled: 'Cancelled',
} as const;
export type JobState = (typeof JobState)[keyof typeof JobState];

/** States a vault may claim a job in (a Running job whose lease ran out is taken over). */
const CLAIMABLE: readonly JobState[] = [JobState.Queued, JobState.Running];
const FINISHED: readonly JobState[] = [JobState.Succeeded, JobState.Failed, JobState.Cancelled];

export interface NewJob {
  kind: string;
  target?: string | null;
  input?: unknown;
  /** the job's tasks, in order (the job engine takes them from the job kind) */
  tasks?: readonly string[];
  createdBy?: string | null;
  /** default a new random id; a caller that must not create a job twice gives its own */
  id?: string;
}

export const TaskState = { NotStarted: 'NotStarted', Running: 'Running', Succeeded: 'Succeeded', Failed: 'Failed', Skipped: 'Skipped', Cancelled: 'Cancelled' } as const;
export type TaskState = (typeof TaskState)[keyof typeof TaskState];

/** The columns a patch of a job sets. */
function jobColumns(p: JobPatch): Record<string, unknown> {
  return {
    ...(p.state !== undefined ? { state: p.state } : {}),
    ...(p.step !== undefined ? { step: p.step } : {}),
    ...(p.data !== undefined ? { data: JSON.stringify(p.data) } : {}),
    ...(p.waitingFor !== undefined ? { waiting_for: p.waitingFor === null ? null : JSON.stringify(p.waitingFor) } : {}),
    ...(p.startedAt !== undefined ? { started_at: p.startedAt } : {}),
    ...(p.release ? { locked_by: null, locked_until: null } : {}),
    ...(p.progress !== undefined ? { progress: p.progress } : {}),
    ...(p.currentStep !== undefined ? { current_step: p.currentStep } : {}),
    ...(p.output !== undefined ? { output: JSON.stringify(p.output) } : {}),
    ...(p.error !== undefined ? { error: p.error === null ? null : JSON.stringify(p.error) } : {}),
  };
}

export interface TaskPatch {
  state?: TaskState;
  progress?: number | null;
  detail?: unknown;
  error?: { code: string; message: string } | null;
}

export interface JobFilter {
  state?: JobState;
  kind?: string;
  target?: string;
  /** created at or after (ms) */
  since?: number;
  /** created before (ms) */
  until?: number;
  /** at most this many, newest first (default 100, at most 1000) */
  limit?: number;
}

export interface JobPatch {
  state?: JobState;
  progress?: number;
  currentStep?: string | null;
  output?: unknown;
  error?: { code: string; message: string } | null;
  step?: number;
  data?: unknown;
  waitingFor?: unknown;
  startedAt?: number;
  /** release the lease with this write */
  release?: boolean;
}

export class JobStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: Dialect,
    private readonly now: () => number = Date.now,
  ) {}

  async create(job: NewJob): Promise<JobRow> {
    const t = this.now();
    const row: JobRow = {
      id: job.id ?? randomUUID(),
      kind: job.kind,
      target: job.target ?? null,
      state: JobState.Queued,
      input: JSON.stringify(job.input ?? {}),
      output: null,
      error: null,
      progress: 0,
      current_step: null,
      attempts: 0,
      created_at: t,
      updated_at: t,
      locked_by: null,
      locked_until: null,
      step: 0,
      data: null,
      waiting_for: null,
      cancel_requested: 0,
      created_by: job.createdBy ?? null,
      started_at: null,
      ended_at: null,
    };
    const tasks = (job.tasks ?? []).map((name, position) => ({ job_id: row.id, position, name, state: TaskState.NotStarted, started_at: null, ended_at: null, error: null, progress: null, detail: null }));
    await this.db.transaction().execute(async (trx) => {
      await trx.insertInto('jobs').values(row).execute();
      if (tasks.length > 0) await trx.insertInto('job_tasks').values(tasks).execute();
    });
    return row;
  }

  tasks(jobId: string): Promise<JobTaskRow[]> {
    return this.db.selectFrom('job_tasks').selectAll().where('job_id', '=', jobId).orderBy('position').execute();
  }

  /**
   * Update one task of a job this vault holds (the lease is checked), and with `job` the
   * job's own fields in the same transaction: one commit for both, not two.
   */
  /**
   * Change a task of a job this vault holds, and the job's fields, in one transaction;
   * `next`: a second task changed with it (a task's end and the next one's start: one commit).
   */
  async updateTask(jobId: string, owner: string, position: number, p: TaskPatch, job: JobPatch = {}, next?: { position: number; patch: TaskPatch }): Promise<void> {
    const t = this.now();
    await this.db.transaction().execute(async (trx) => {
      await owned(trx, jobId, owner, { ...jobColumns(job), updated_at: t });
      for (const [at, patch] of next ? ([[position, p], [next.position, next.patch]] as const) : ([[position, p]] as const)) {
        await trx
          .updateTable('job_tasks')
          .set({
            ...(patch.state !== undefined ? { state: patch.state } : {}),
            ...(patch.state === TaskState.Running ? { started_at: t, ended_at: null, error: null } : {}),
            ...(patch.state === TaskState.Succeeded || patch.state === TaskState.Failed || patch.state === TaskState.Cancelled ? { ended_at: t } : {}),
            ...(patch.progress !== undefined ? { progress: patch.progress } : {}),
            ...(patch.detail !== undefined ? { detail: JSON.stringify(patch.detail) } : {}),
            ...(patch.error !== undefined ? { error: patch.error === null ? null : JSON.stringify(patch.error) } : {}),
          })
          .where('job_id', '=', jobId)
          .where('position', '=', at)
          .execute();
      }
    });
  }

  /**
   * Ask a job to stop. A queued job or one waiting for input is cancelled at once; a
   * running one is flagged and its vault stops it at the next check. INVALID_STATE for a
   * finished job.
   */
  async requestCancel(id: string): Promise<JobRow> {
    const t = this.now();
    const r = await this.db
      .updateTable('jobs')
      .set({ state: JobState.Cancelled, updated_at: t, ended_at: t, waiting_for: null, locked_by: null, locked_until: null })
      .where('id', '=', id)
      .where('state', 'in', [JobState.Queued, JobState.WaitingForInput])
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) {
      const f = await this.db.updateTable('jobs').set({ cancel_requested: 1, updated_at: t }).where('id', '=', id).where('state', '=', JobState.Running).executeTakeFirst();
      if (Number(f.numUpdatedRows) === 0) {
        const job = await this.get(id);
        throw new OsrError('INVALID_STATE', `job ${id} is ${job.state}; only a queued, running or waiting job can be cancelled`, { state: job.state });
      }
    }
    return this.get(id);
  }

  /**
   * Queue a failed or cancelled job again. It goes on from the task that did not finish:
   * tasks that succeeded are not run twice.
   */
  async restart(id: string, patch?: (data: unknown) => Promise<unknown>): Promise<JobRow> {
    const t = this.now();
    const current = await this.get(id);
    const data = patch ? JSON.stringify(await patch(current.data === null ? {} : JSON.parse(current.data))) : current.data;
    const r = await this.db
      .updateTable('jobs')
      .set({ state: JobState.Queued, error: null, cancel_requested: 0, ended_at: null, updated_at: t, locked_by: null, locked_until: null, data })
      .where('id', '=', id)
      .where('state', 'in', [JobState.Failed, JobState.Cancelled])
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) {
      const job = await this.get(id);
      throw new OsrError('INVALID_STATE', `job ${id} is ${job.state}; only a failed or cancelled job can be restarted`, { state: job.state });
    }
    return this.get(id);
  }

  /**
   * Give a job waiting for input what it waits for: `patch(data)` returns the job's data
   * with the answer in it. The job is queued again and goes on from the waiting task.
   */
  async resume(id: string, patch: (data: unknown, job: JobRow) => unknown): Promise<JobRow> {
    return this.db.transaction().execute(async (trx) => {
      const job = await trx.selectFrom('jobs').selectAll().where('id', '=', id).executeTakeFirst();
      if (!job) throw new OsrError('NOT_FOUND', `job ${id} does not exist`);
      if (job.state !== JobState.WaitingForInput) throw new OsrError('INVALID_STATE', `job ${id} is ${job.state}, not waiting for input`, { state: job.state });
      const data = JSON.stringify(patch(job.data === null ? {} : JSON.parse(job.data), job));
      const r = await trx
        .updateTable('jobs')
        .set({ state: JobState.Queued, waiting_for: null, data, updated_at: this.now() })
        .where('id', '=', id)
        .where('state', '=', JobState.WaitingForInput)
        .executeTakeFirst();
      if (Number(r.numUpdatedRows) === 0) throw new OsrError('INVALID_STATE', `job ${id} changed state while being resumed`);
      return { ...job, state: JobState.Queued, waiting_for: null, data };
    });
  }

  /** Jobs of a state and kind, counted (for metrics). */
  async countByState(): Promise<{ state: string; kind: string; n: number }[]> {
    const rows = await this.db.selectFrom('jobs').select(['state', 'kind']).select((eb) => eb.fn.countAll().as('n')).groupBy(['state', 'kind']).execute();
    return rows.map((r) => ({ state: r.state, kind: r.kind, n: Number(r.n) }));
  }

  async get(id: string): Promise<JobRow> {
    const row = await this.db.selectFrom('jobs').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new OsrError('NOT_FOUND', `job ${id} does not exist`);
    return row;
  }

  /** The jobs of these ids that exist, by id: one query for many (a plan run watching its VMs' jobs). */
  async many(ids: readonly string[]): Promise<Map<string, JobRow>> {
    const out = new Map<string, JobRow>();
    for (let i = 0; i < ids.length; i += 500) {
      const chunk = ids.slice(i, i + 500);
      if (chunk.length === 0) continue;
      for (const row of await this.db.selectFrom('jobs').selectAll().where('id', 'in', chunk).execute()) out.set(row.id, row);
    }
    return out;
  }

  async list(f: JobFilter = {}): Promise<JobRow[]> {
    let q = this.db.selectFrom('jobs').selectAll();
    if (f.state) q = q.where('state', '=', f.state);
    if (f.kind) q = q.where('kind', '=', f.kind);
    if (f.target) q = q.where('target', '=', f.target);
    if (f.since !== undefined) q = q.where('created_at', '>=', f.since);
    if (f.until !== undefined) q = q.where('created_at', '<', f.until);
    return q
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .limit(Math.min(Math.max(f.limit ?? 100, 1), 1000))
      .execute();
  }

  /**
   * Claim the oldest job that is queued, or running under a lease that ran out (its vault
   * died), for `owner` until now + leaseMs. Undefined when there is none.
   */
  async claim(owner: string, leaseMs: number): Promise<JobRow | undefined> {
    const t = this.now();
    const candidate = this.db
      .selectFrom('jobs')
      .select('id')
      .where('state', 'in', CLAIMABLE)
      .where((eb) => eb.or([eb('locked_until', 'is', null), eb('locked_until', '<', t)]))
      .orderBy('created_at')
      .orderBy('id')
      .limit(1);
    const pick = this.dialect === Dialect.Postgres ? candidate.forUpdate().skipLocked() : candidate;
    return this.db
      .updateTable('jobs')
      .set((eb) => ({ locked_by: owner, locked_until: t + leaseMs, state: JobState.Running, attempts: eb('attempts', '+', 1), updated_at: t }))
      .where('id', '=', (eb) => eb.selectFrom(pick.as('c')).select('c.id'))
      .returningAll()
      .executeTakeFirst();
  }

  /** Extend the lease; LEASE_LOST when another vault holds the job now. */
  async renew(id: string, owner: string, leaseMs: number): Promise<void> {
    const t = this.now();
    await this.owned(id, owner, { locked_until: t + leaseMs, updated_at: t });
  }

  /** Record progress (or a state change) of a job this vault holds. */
  /**
   * Change a job this vault holds. `alongside` runs in the same transaction (a command
   * queued with the job data that records it: one commit, and neither without the other).
   */
  async update(id: string, owner: string, p: JobPatch, alongside?: (trx: Kysely<Database>) => Promise<void>): Promise<void> {
    const set = { ...jobColumns(p), updated_at: this.now() };
    if (!alongside) return this.owned(id, owner, set);
    await this.db.transaction().execute(async (trx) => {
      await owned(trx, id, owner, set);
      await alongside(trx);
    });
  }

  /** End a job this vault holds: its final state, and the lease is released. */
  async finish(id: string, owner: string, state: JobState, result: { output?: unknown; error?: { code: string; message: string } } = {}): Promise<void> {
    if (!FINISHED.includes(state)) throw new OsrError('INVALID_ARGUMENT', `${state} is not a final job state`);
    await this.owned(id, owner, {
      state,
      progress: state === JobState.Succeeded ? 1 : undefined,
      output: result.output === undefined ? undefined : JSON.stringify(result.output),
      error: result.error ? JSON.stringify(result.error) : undefined,
      locked_by: null,
      locked_until: null,
      updated_at: this.now(),
      ended_at: this.now(),
    });
  }

  private owned(id: string, owner: string, set: Record<string, unknown>): Promise<void> {
    return owned(this.db, id, owner, set);
  }
}

/** Write a job's row only while `owner` holds its lease: LEASE_LOST otherwise. */
async function owned(db: Kysely<Database>, id: string, owner: string, set: Record<string, unknown>): Promise<void> {
  {
    const values = Object.fromEntries(Object.entries(set).filter(([, v]) => v !== undefined));
    const r = await db
      .updateTable('jobs')
      .set(values)
      .where('id', '=', id)
      .where('locked_by', '=', owner)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) {
      const row = await db.selectFrom('jobs').select(['locked_by']).where('id', '=', id).executeTakeFirst();
      if (!row) throw new OsrError('NOT_FOUND', `job ${id} does not exist`);
      throw new OsrError('LEASE_LOST', `job ${id} is held by ${row.locked_by ?? 'no vault'} now, not by ${owner}`, { holder: row.locked_by });
    }
  }
}

/** For tests and benchmarks: rows of every job, oldest first. */
export function allJobs(db: Kysely<Database>): Promise<JobRow[]> {
  return db.selectFrom('jobs').selectAll().orderBy('created_at').orderBy('id').execute();
}
