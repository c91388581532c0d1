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
import type { Database, JobRow } from './schema.js';

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
}

export interface JobFilter {
  state?: JobState;
  kind?: string;
  target?: string;
  /** at most this many, newest first (default 100, at most 1000) */
  limit?: number;
}

export interface JobPatch {
  state?: JobState;
  progress?: number;
  currentStep?: string | null;
  output?: unknown;
  error?: { code: string; message: string } | null;
}

export class JobStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: Dialect,
    private readonly now: () => number = Date.now,
  ) {}

  async create(job: NewJob): Promise<JobRow> {
    const t = this.now();
    const row = {
      id: randomUUID(),
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
    };
    await this.db.insertInto('jobs').values(row).execute();
    return row;
  }

  async get(id: string): Promise<JobRow> {
    const row = await this.db.selectFrom('jobs').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new OsrError('NOT_FOUND', `job ${id} does not exist`);
    return row;
  }

  async list(f: JobFilter = {}): Promise<JobRow[]> {
    let q = this.db.selectFrom('jobs').selectAll();
    if (f.state) q = q.where('state', '=', f.state);
    if (f.kind) q = q.where('kind', '=', f.kind);
    if (f.target) q = q.where('target', '=', f.target);
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
  async update(id: string, owner: string, p: JobPatch): Promise<void> {
    await this.owned(id, owner, {
      ...(p.state !== undefined ? { state: p.state } : {}),
      ...(p.progress !== undefined ? { progress: p.progress } : {}),
      ...(p.currentStep !== undefined ? { current_step: p.currentStep } : {}),
      ...(p.output !== undefined ? { output: JSON.stringify(p.output) } : {}),
      ...(p.error !== undefined ? { error: p.error === null ? null : JSON.stringify(p.error) } : {}),
      updated_at: this.now(),
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
    });
  }

  private async owned(id: string, owner: string, set: Record<string, unknown>): Promise<void> {
    const values = Object.fromEntries(Object.entries(set).filter(([, v]) => v !== undefined));
    const r = await this.db
      .updateTable('jobs')
      .set(values)
      .where('id', '=', id)
      .where('locked_by', '=', owner)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) {
      const row = await this.db.selectFrom('jobs').select(['locked_by']).where('id', '=', id).executeTakeFirst();
      if (!row) throw new OsrError('NOT_FOUND', `job ${id} does not exist`);
      throw new OsrError('LEASE_LOST', `job ${id} is held by ${row.locked_by ?? 'no vault'} now, not by ${owner}`, { holder: row.locked_by });
    }
  }
}

/** For tests and benchmarks: rows of every job, oldest first. */
export function allJobs(db: Kysely<Database>): Promise<JobRow[]> {
  return db.selectFrom('jobs').selectAll().orderBy('created_at').orderBy('id').execute();
}
