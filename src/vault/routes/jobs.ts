/** Jobs: list with filters, read with tasks, export (JSON, CSV), cancel, restart, resume. */
import { Type } from '@fastify/type-provider-typebox';
import { OsrError } from '../../domain/errors.js';
import type { JobEngine } from '../../jobs/engine.js';
import { JobState, type JobFilter } from '../../store/jobs.js';
import type { JobRow, JobTaskRow } from '../../store/schema.js';
import { iso, json } from '../../store/rows.js';
import { allows, type Role } from '../../domain/roles.js';
import { principal, type App, type VaultContext } from '../context.js';
import { IdParam } from '../schemas.js';

/**
 * What a webhook answered or a script printed may hold what the endpoint or the script
 * knows: only the roles that configure plans (and so choose those endpoints) see it.
 */
function visibleOutput(output: unknown, role: Role | null): unknown {
  if (role !== null && allows(role, 'configure')) return output;
  const o = output as { actions?: Record<string, unknown>[] } | null;
  if (!o || typeof o !== 'object' || !Array.isArray(o.actions)) return output;
  return { ...o, actions: o.actions.map((a) => ('output' in a ? { ...Object.fromEntries(Object.entries(a).filter(([k]) => k !== 'output')), outputHidden: true } : a)) };
}

export function jobView(engine: JobEngine, j: JobRow, tasks?: JobTaskRow[], role: Role | null = null) {
  return {
    id: j.id,
    kind: j.kind,
    target: j.target,
    state: j.state,
    progress: j.progress,
    currentStep: j.current_step,
    attempts: j.attempts,
    ranBy: json<{ vaults?: string[] }>(j.data, {}).vaults ?? [],
    createdBy: j.created_by,
    createdAt: iso(j.created_at),
    updatedAt: iso(j.updated_at),
    startedAt: iso(j.started_at),
    endedAt: iso(j.ended_at),
    error: json(j.error, null),
    output: visibleOutput(json(j.output, null), role),
    waitingFor: json(j.waiting_for, null),
    allowedActions: engine.allowedActions(j),
    ...(tasks
      ? { tasks: tasks.map((t) => ({ name: t.name, state: t.state, progress: t.progress, startedAt: iso(t.started_at), endedAt: iso(t.ended_at), error: json(t.error, null), detail: json(t.detail, null) })) }
      : {}),
  };
}

const CSV_COLUMNS = ['id', 'kind', 'target', 'state', 'progress', 'currentStep', 'attempts', 'createdBy', 'createdAt', 'startedAt', 'endedAt', 'errorCode', 'errorMessage'] as const;

const csvCell = (v: unknown): string => {
  const s = v === null || v === undefined ? '' : String(v);
  // quoted when needed; a leading = + - @ is defused so a spreadsheet does not run it
  const safe = /^[=+\-@]/.test(s) ? `'${s}` : s;
  return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
};

const JOB_STATES = Object.values(JobState).map((s) => Type.Literal(s));

export const jobRoutes = (ctx: VaultContext) => async (app: App) => {
  const { jobs } = ctx.store;
  const { engine } = ctx;
  const tags = ['jobs'];
  const Filter = Type.Object({
    state: Type.Optional(Type.Union(JOB_STATES)),
    kind: Type.Optional(Type.String({ maxLength: 100 })),
    target: Type.Optional(Type.String({ maxLength: 300 })),
    since: Type.Optional(Type.String({ format: 'date-time' })),
    until: Type.Optional(Type.String({ format: 'date-time' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  });
  const filter = (q: { state?: string; kind?: string; target?: string; since?: string; until?: string; limit?: number }): JobFilter => {
    const t = (s: string | undefined, name: string) => {
      if (s === undefined) return undefined;
      const ms = Date.parse(s);
      if (Number.isNaN(ms)) throw new OsrError('INVALID_ARGUMENT', `${name} is not a time: ${s}`, { field: name });
      return ms;
    };
    return { state: q.state as JobState | undefined, kind: q.kind, target: q.target, since: t(q.since, 'since'), until: t(q.until, 'until'), limit: q.limit };
  };

  app.get('/jobs', { config: { access: 'read' }, schema: { summary: 'jobs, newest first, filtered', tags, querystring: Filter } }, async (request) => ({
    items: (await jobs.list(filter(request.query))).map((j) => jobView(engine, j, undefined, principal(request).role)),
    next: null,
  }));
  app.get(
    '/jobs/export',
    { config: { access: 'read' }, schema: { summary: 'jobs as a JSON or CSV download (same filters as the list)', tags, querystring: Type.Object({ ...Filter.properties, format: Type.Optional(Type.Union([Type.Literal('json'), Type.Literal('csv')])) }) } },
    async (request, reply) => {
      const rows = (await jobs.list({ ...filter(request.query), limit: request.query.limit ?? 1000 })).map((j) => jobView(engine, j, undefined, principal(request).role));
      if (request.query.format === 'csv') {
        const lines = [CSV_COLUMNS.join(',')];
        for (const j of rows) {
          const err = j.error as { code?: string; message?: string } | null;
          const rec: Record<(typeof CSV_COLUMNS)[number], unknown> = { ...j, errorCode: err?.code, errorMessage: err?.message };
          lines.push(CSV_COLUMNS.map((c) => csvCell(rec[c])).join(','));
        }
        return reply.type('text/csv; charset=utf-8').header('content-disposition', 'attachment; filename="jobs.csv"').send(`${lines.join('\r\n')}\r\n`);
      }
      return reply.header('content-disposition', 'attachment; filename="jobs.json"').send(rows);
    },
  );
  app.get('/jobs/:id', { config: { access: 'read' }, schema: { summary: 'a job with its tasks and the actions it allows', tags, params: IdParam } }, async (request) => {
    const job = await jobs.get(request.params.id);
    return jobView(engine, job, await jobs.tasks(job.id), principal(request).role);
  });
  app.post('/jobs/:id/cancel', { config: { access: 'operate' }, schema: { summary: 'cancel a queued, running or waiting job', tags, params: IdParam } }, async (request) => jobView(engine, await engine.cancel(request.params.id), undefined, principal(request).role));
  app.post('/jobs/:id/restart', { config: { access: 'operate' }, schema: { summary: 'run a failed or cancelled job again from the task that did not finish', tags, params: IdParam } }, async (request) => jobView(engine, await engine.restart(request.params.id), undefined, principal(request).role));
  app.post(
    '/jobs/:id/resume',
    { config: { access: 'operate' }, schema: { summary: 'resume a job waiting for input (a manual step done)', tags, params: IdParam, body: Type.Object({ comment: Type.String({ maxLength: 2000 }) }, { additionalProperties: false }) } },
    async (request) => jobView(engine, await engine.resume(request.params.id, { comment: request.body.comment, by: principal(request).actor, at: ctx.clock.now() }), undefined, principal(request).role),
  );
};
