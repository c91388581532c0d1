/**
 * Retention: the history the vault keeps grows with every call and every job, so what is
 * older than the retention is deleted — events, audit records, and jobs that ended (with
 * their tasks and provider commands). A job that is still a protected item's active job
 * (a failed protection job that may be restarted) is kept whatever its age.
 */
import type { Kysely } from 'kysely';
import { affected } from './rows.js';
import type { Database } from './schema.js';

/** The retention unless the vault is told otherwise: 90 days. */
export const DEFAULT_RETENTION_MS = 90 * 24 * 3600_000;

const ENDED = ['Succeeded', 'Failed', 'Cancelled'];

export interface Pruned {
  events: number;
  jobs: number;
  audit: number;
}

/** Delete events, ended jobs and audit records from before `before` (ms since the epoch). */
export async function pruneBefore(db: Kysely<Database>, before: number): Promise<Pruned> {
  const events = affected(await db.deleteFrom('events').where('at', '<', before).executeTakeFirst());
  const audit = affected(await db.deleteFrom('audit').where('at', '<', before).executeTakeFirst());
  const jobs = await db.transaction().execute(async (trx) => {
    const old = (eb: Kysely<Database>) =>
      eb
        .selectFrom('jobs')
        .select('id')
        .where('state', 'in', ENDED)
        .where('ended_at', '<', before)
        .where('id', 'not in', eb.selectFrom('protected_items').select('active_job_id').where('active_job_id', 'is not', null).$narrowType<{ active_job_id: string }>());
    await trx.deleteFrom('job_tasks').where('job_id', 'in', old(trx)).execute();
    await trx.deleteFrom('provider_commands').where('job_id', 'in', old(trx)).execute();
    return affected(await trx.deleteFrom('jobs').where('id', 'in', old(trx)).executeTakeFirst());
  });
  return { events, jobs, audit };
}
