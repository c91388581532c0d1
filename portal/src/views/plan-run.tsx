/** A recovery plan run's live view: each group, its actions and VMs, and the manual step waiting for input. */
import { useEffect, useState } from 'react';
import { api, type List } from '../api';
import { href } from '../router';
import type { Job, JobTask, PlanRunOutput, PlanVmResult, ProtectedItem, RecoveryPlan } from '../types';
import { Badge, Empty, ErrorBox, Field, fmtSeconds, fmtTime, JobLink, Progress, Section, useCan, useLoad } from '../ui';

const FINISHED = ['Succeeded', 'Failed', 'Cancelled'];

/** what a manual action asks for while the run waits */
interface WaitingFor {
  message?: string;
  action?: string;
  group?: string;
  phase?: string;
  plan?: string;
}

const OPERATIONS: Record<string, string> = {
  'test-failover': 'Test failover',
  'test-failover-cleanup': 'Test failover cleanup',
  'planned-failover': 'Planned failover',
  'unplanned-failover': 'Unplanned failover',
  'change-recovery-point': 'Change of recovery point',
  commit: 'Commit',
  reprotect: 'Reprotect',
};

export function operationLabel(op: string | null | undefined): string {
  if (!op) return 'Run';
  return OPERATIONS[op] ?? op;
}

/** a task of a run, read from its name (the names the vault gives a plan run's tasks) */
type Step =
  | { kind: 'vms'; task: JobTask; group: number | null; groupName: string | null; op: string }
  | { kind: 'action'; task: JobTask; group: number; groupName: string; phase: 'pre' | 'post'; action: string; actionKind: string }
  | { kind: 'other'; task: JobTask };

const GROUP_TASK = /^Group (\d+) \((.+)\)(?: (pre|post) action: (.+) \((script|manual|webhook)\)|: (\S+) of \d+ VMs?)$/;
const ALL_TASK = /^(\S+) of \d+ VMs?$/;

function readStep(task: JobTask): Step {
  const m = GROUP_TASK.exec(task.name);
  if (m) {
    const group = Number(m[1]);
    const groupName = m[2]!;
    if (m[3]) return { kind: 'action', task, group, groupName, phase: m[3] as 'pre' | 'post', action: m[4]!, actionKind: m[5]! };
    return { kind: 'vms', task, group, groupName, op: m[6]! };
  }
  const a = ALL_TASK.exec(task.name);
  if (a) return { kind: 'vms', task, group: null, groupName: null, op: a[1]! };
  return { kind: 'other', task };
}

interface GroupView {
  key: string;
  number: number | null;
  name: string | null;
  pre: Extract<Step, { kind: 'action' }>[];
  vms: Extract<Step, { kind: 'vms' }> | null;
  post: Extract<Step, { kind: 'action' }>[];
}

function arrange(tasks: JobTask[]): { before: JobTask[]; groups: GroupView[]; after: JobTask[]; op: string | null } {
  const before: JobTask[] = [];
  const after: JobTask[] = [];
  const groups: GroupView[] = [];
  let op: string | null = null;
  const groupFor = (number: number | null, name: string | null): GroupView => {
    const key = number === null ? 'all' : `g${number}`;
    let g = groups.find((x) => x.key === key);
    if (!g) {
      g = { key, number, name, pre: [], vms: null, post: [] };
      groups.push(g);
    }
    return g;
  };
  for (const t of tasks) {
    const s = readStep(t);
    if (s.kind === 'other') (groups.length === 0 ? before : after).push(t);
    else if (s.kind === 'vms') {
      op = s.op;
      groupFor(s.group, s.groupName).vms = s;
    } else groupFor(s.group, s.groupName)[s.phase].push(s);
  }
  return { before, groups, after, op };
}

/** the items of a group of the run: the plan's group of that number and name (or of that name) */
function groupItems(plan: RecoveryPlan | null | undefined, g: GroupView): string[] {
  if (!plan) return [];
  if (g.number === null) return plan.groups.flatMap((x) => x.items);
  const byNumber = plan.groups[g.number - 1];
  if (byNumber && byNumber.name === g.name) return byNumber.items;
  return plan.groups.find((x) => x.name === g.name)?.items ?? [];
}

/** each item's own job that this run started (its creator is the run) */
async function childJobs(jobId: string, items: string[]): Promise<Record<string, Job>> {
  const out: Record<string, Job> = {};
  await Promise.all(
    items.map(async (item) => {
      const r = await api.get<List<Job>>('/jobs', { target: item, limit: 10 }).catch(() => null);
      const j = r?.items.find((x) => x.createdBy === `plan-run:${jobId}`);
      if (j) out[item] = j;
    }),
  );
  return out;
}

function TaskLine({ task, job, label }: { task: JobTask; job: Job; label?: string }) {
  const waiting = job.state === 'WaitingForInput' && job.currentStep === task.name;
  return (
    <li>
      <Badge value={waiting ? 'WaitingForInput' : task.state} /> {label ?? task.name}
      {task.startedAt && <span className="muted"> — {fmtTime(task.startedAt)}{task.endedAt ? ` to ${fmtTime(task.endedAt)}` : ''}</span>}
      {task.error && (
        <div className="error">
          <strong>{task.error.code}</strong> {task.error.message}
        </div>
      )}
    </li>
  );
}

function ActionLine({ step, job, output }: { step: Extract<Step, { kind: 'action' }>; job: Job; output: PlanRunOutput | null }) {
  const done = output?.actions.find((a) => a.group === step.groupName && a.phase === step.phase && a.name === step.action);
  return (
    <>
      <TaskLine task={step.task} job={job} label={`${step.phase === 'pre' ? 'Pre' : 'Post'} action ${step.action} (${step.actionKind})`} />
      {done && (done.comment || done.by || done.exitCode !== undefined || done.status !== undefined) && (
        <li className="muted">
          {done.comment ? `“${done.comment}”` : ''}
          {done.by ? ` by ${done.by}` : ''}
          {done.exitCode !== undefined ? ` exit code ${done.exitCode}` : ''}
          {done.status !== undefined ? ` HTTP ${done.status}` : ''}
          {done.attempts > 1 ? ` after ${done.attempts} tries` : ''}
        </li>
      )}
    </>
  );
}

interface VmRow {
  item: string;
  name: string;
  state: string;
  job: string | null;
  progress: number | null;
  step: string | null;
  point: PlanVmResult['point'] | null;
  upAfterSeconds: number | null;
  note: string | null;
}

function vmRows(items: string[], output: PlanRunOutput | null, groupName: string | null, children: Record<string, Job>, names: Map<string, string>): VmRow[] {
  if (output) {
    const vms = groupName === null ? output.vms : output.vms.filter((v) => v.group === groupName);
    return vms.map((v) => ({
      item: v.item,
      name: v.name,
      state: v.state,
      job: v.job,
      progress: null,
      step: null,
      point: v.point ?? null,
      upAfterSeconds: v.upAfterSeconds ?? null,
      note: v.error ? `${v.error.code}: ${v.error.message}` : (v.note ?? null),
    }));
  }
  return items.map((item) => {
    const j = children[item];
    return {
      item,
      name: names.get(item) ?? item,
      state: j?.state ?? 'NotStarted',
      job: j?.id ?? null,
      progress: j && !FINISHED.includes(j.state) ? j.progress : null,
      step: j && !FINISHED.includes(j.state) ? j.currentStep : null,
      point: null,
      upAfterSeconds: null,
      note: j?.error ? `${j.error.code}: ${j.error.message}` : null,
    };
  });
}

function VmTable({ rows, group }: { rows: VmRow[]; group: string }) {
  if (rows.length === 0) return <Empty>No VMs in this group.</Empty>;
  return (
    <table className="responsive">
      <thead>
        <tr>
          <th>VM</th>
          <th>State</th>
          <th>VM job</th>
          <th>Recovery point</th>
          <th className="num">Up after</th>
          <th>Note</th>
        </tr>
      </thead>
      <tbody>
        {rows.map((r) => (
          <tr key={r.item}>
            <td data-label="VM">
              <a href={href('items', r.item)}>{r.name}</a>
            </td>
            <td data-label="State">
              <Badge value={r.state} /> {r.progress !== null && <Progress value={r.progress} label={`${r.name} in group ${group}`} />}
              {r.step && <div className="muted">{r.step}</div>}
            </td>
            <td data-label="VM job">{r.job ? <JobLink id={r.job} /> : '—'}</td>
            <td data-label="Recovery point">{r.point ? `${fmtTime(r.point.at)} (${r.point.consistency}-consistent)` : '—'}</td>
            <td data-label="Up after" className="num">
              {fmtSeconds(r.upAfterSeconds)}
            </td>
            <td data-label="Note">{r.note ?? ''}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Resume({ job, waiting, onDone }: { job: Job; waiting: WaitingFor; onDone: () => void }) {
  const can = useCan();
  const [comment, setComment] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  return (
    <div className="notice waiting">
      <h3>Manual action{waiting.action ? `: ${waiting.action}` : ''}</h3>
      <p className="muted">
        {waiting.group ? `Group ${waiting.group}` : ''}
        {waiting.phase ? `, ${waiting.phase === 'pre' ? 'before' : 'after'} its VMs` : ''}. The run waits until someone resumes it.
      </p>
      <p className="instruction">{waiting.message ?? 'Do the manual step, then resume the run.'}</p>
      {can('operate') ? (
        <form
          onSubmit={async (e) => {
            e.preventDefault();
            setBusy(true);
            setError(undefined);
            try {
              await api.post(`/jobs/${encodeURIComponent(job.id)}/resume`, { comment });
              setComment('');
              onDone();
            } catch (err) {
              setError(err);
            } finally {
              setBusy(false);
            }
          }}
        >
          <Field label="Comment" hint="What was done; it is kept with the run.">
            <textarea value={comment} onChange={(e) => setComment(e.target.value)} maxLength={2000} />
          </Field>
          <ErrorBox error={error} />
          <button type="submit" className="primary" disabled={busy}>
            {busy ? 'Resuming…' : 'Resume'}
          </button>
        </form>
      ) : (
        <p className="muted">Your role may not resume runs.</p>
      )}
    </div>
  );
}

export function PlanRun({ jobId }: { jobId: string }) {
  const can = useCan();
  const [live, setLive] = useState(true);
  const job = useLoad(() => api.get<Job>(`/jobs/${encodeURIComponent(jobId)}`), [jobId], live ? 1500 : undefined);
  const j = job.data;
  const state = j?.state;
  useEffect(() => {
    if (state) setLive(!FINISHED.includes(state));
  }, [state]);
  const target = j?.target ?? null;
  const plan = useLoad(() => (target ? api.get<RecoveryPlan>(`/recovery-plans/${encodeURIComponent(target)}`).catch(() => null) : Promise.resolve(null)), [target]);
  const names = useLoad(
    () =>
      // the names of the plan's VMs (the vault filters by plan: never every item)
      (target ? api.all<ProtectedItem>('/protected-items', { plan: target }) : Promise.resolve([]))
        .then((xs) => new Map(xs.map((x) => [x.id, x.name])))
        .catch(() => new Map<string, string>()),
    [target],
  );
  const output = (j?.output ?? null) as PlanRunOutput | null;
  const hasOutput = output !== null && Array.isArray(output.vms);
  const items = plan.data ? plan.data.groups.flatMap((g) => g.items) : [];
  const itemsKey = items.join(',');
  // without the run's output (it runs, or it failed), each VM's state is its own job's
  const children = useLoad(() => (!hasOutput && itemsKey ? childJobs(jobId, itemsKey.split(',')) : Promise.resolve({} as Record<string, Job>)), [jobId, itemsKey, hasOutput, state], live ? 2000 : undefined);
  const [actionError, setActionError] = useState<unknown>(undefined);
  const [acting, setActing] = useState(false);

  if (!j) {
    if (job.error) return <ErrorBox error={job.error} />;
    return (
      <p className="muted" aria-live="polite">
        Loading the run…
      </p>
    );
  }
  const tasks = j.tasks ?? [];
  const { before, groups, after, op } = arrange(tasks);
  const operation = hasOutput ? output.operation : op;
  const planName = hasOutput ? output.plan : (plan.data?.name ?? target);
  const waiting = j.state === 'WaitingForInput' && j.waitingFor && typeof j.waitingFor === 'object' ? (j.waitingFor as WaitingFor) : null;
  const act = async (what: 'cancel' | 'restart') => {
    setActing(true);
    setActionError(undefined);
    try {
      await api.post(`/jobs/${encodeURIComponent(j.id)}/${what}`);
      setLive(true);
      job.reload();
    } catch (e) {
      setActionError(e);
    } finally {
      setActing(false);
    }
  };
  const rtoNote = hasOutput && output.rtoSeconds !== null ? fmtSeconds(output.rtoSeconds) : null;
  return (
    <>
      <section className="panel" aria-label="Plan run">
        <header className="panel-head">
          <h2>
            {operationLabel(operation)}
            {planName ? (
              <>
                {' of '}
                {target ? <a href={href('plans', target)}>{planName}</a> : planName}
              </>
            ) : null}
          </h2>
          <div className="buttons">
            <Badge value={j.state} />
            {can('operate') && j.allowedActions.includes('cancel') && (
              <button type="button" disabled={acting} onClick={() => void act('cancel')}>
                Cancel
              </button>
            )}
            {can('operate') && j.allowedActions.includes('restart') && (
              <button type="button" disabled={acting} onClick={() => void act('restart')}>
                Restart
              </button>
            )}
          </div>
        </header>
        <dl className="props">
          <dt>Job</dt>
          <dd>
            <JobLink id={j.id} />
          </dd>
          <dt>Current step</dt>
          <dd>{FINISHED.includes(j.state) ? '—' : (j.currentStep ?? '—')}</dd>
          <dt>Progress</dt>
          <dd>
            <Progress value={j.state === 'Succeeded' ? 1 : j.progress} label="Overall progress" />
          </dd>
          <dt>Started</dt>
          <dd>
            {fmtTime(j.startedAt ?? j.createdAt)}
            {j.createdBy ? ` by ${j.createdBy}` : ''}
          </dd>
          <dt>Ended</dt>
          <dd>{fmtTime(j.endedAt)}</dd>
          {rtoNote && (
            <>
              <dt>RTO</dt>
              <dd>{rtoNote} (from the start until the last VM ran)</dd>
            </>
          )}
          {hasOutput && (
            <>
              <dt>VMs</dt>
              <dd>
                {output.vms.length - output.failed} of {output.vms.length} without failure
                {output.failed > 0 ? `, ${output.failed} failed` : ''}
              </dd>
            </>
          )}
        </dl>
        {j.error && (
          <div className="error" role="alert">
            <strong>{j.error.code}</strong> {j.error.message}
            {j.error.task ? <div className="muted">in: {j.error.task}</div> : null}
          </div>
        )}
        <ErrorBox error={actionError} />
        {job.error ? <ErrorBox error={job.error} /> : null}
        {waiting && <Resume job={j} waiting={waiting} onDone={job.reload} />}
      </section>
      <Section title="Groups of this run">
        {before.length > 0 && (
          <ul className="run-steps">
            {before.map((t) => (
              <TaskLine key={t.name} task={t} job={j} />
            ))}
          </ul>
        )}
        {groups.length === 0 && <Empty>No group has started.</Empty>}
        <ol className="groups">
          {groups.map((g) => {
            const title = g.number === null ? 'All VMs' : `Group ${g.number}: ${g.name}`;
            const detail = (g.vms?.task.detail ?? null) as { vms?: number; done?: number; running?: number; failed?: number } | null;
            const rows = vmRows(groupItems(plan.data, g), hasOutput ? output : null, g.name, children.data ?? {}, names.data ?? new Map());
            return (
              <li key={g.key} className="group">
                <h3>
                  {title} {g.vms && <Badge value={j.state === 'WaitingForInput' && j.currentStep === g.vms.task.name ? 'WaitingForInput' : g.vms.task.state} />}
                </h3>
                {g.vms && g.vms.task.state === 'Running' && (
                  <p>
                    <Progress value={g.vms.task.progress} label={`VMs of ${title}`} />{' '}
                    {detail && detail.vms !== undefined && (
                      <span className="muted">
                        {detail.done ?? 0} of {detail.vms} done, {detail.running ?? 0} running{detail.failed ? `, ${detail.failed} failed` : ''}
                      </span>
                    )}
                  </p>
                )}
                {g.pre.length > 0 && (
                  <ul className="run-steps">
                    {g.pre.map((s) => (
                      <ActionLine key={s.task.name} step={s} job={j} output={hasOutput ? output : null} />
                    ))}
                  </ul>
                )}
                {g.vms?.task.error && (
                  <div className="error">
                    <strong>{g.vms.task.error.code}</strong> {g.vms.task.error.message}
                  </div>
                )}
                <VmTable rows={rows} group={g.name ?? 'all'} />
                {g.post.length > 0 && (
                  <ul className="run-steps">
                    {g.post.map((s) => (
                      <ActionLine key={s.task.name} step={s} job={j} output={hasOutput ? output : null} />
                    ))}
                  </ul>
                )}
              </li>
            );
          })}
        </ol>
        {after.length > 0 && (
          <ul className="run-steps">
            {after.map((t) => (
              <TaskLine key={t.name} task={t} job={j} />
            ))}
          </ul>
        )}
        {hasOutput && output.testNetwork && (
          <p className="muted">
            The drill&apos;s isolated network: <code>{output.testNetwork}</code>
          </p>
        )}
      </Section>
    </>
  );
}
