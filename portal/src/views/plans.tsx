/**
 * Recovery plans: the list, and a plan's page with its runs (test failover and cleanup,
 * planned and unplanned failover, change recovery point, commit, reprotect), the live view
 * of its newest run, its check before a run, its drills, and the editor of its groups
 * (drag or move them to reorder), their VMs, pre and post actions and dependencies.
 */
import { useEffect, useState, type DragEvent } from 'react';
import { api, type Accepted, type List } from '../api';
import { offeredForPlan, type ItemOp } from '../operations';
import { go, href } from '../router';
import type { Job, PlanDrill, ProtectedItem, RecoveryPlan } from '../types';
import { Badge, Dialog, Empty, ErrorBox, Field, fmtSeconds, fmtTime, JobLink, Loading, Section, useCan, useLoad } from '../ui';
import { PlanRun } from './plan-run';

type Spec = Pick<RecoveryPlan, 'name' | 'description' | 'shutdownGroup' | 'groups' | 'dependencies'>;
type Group = Spec['groups'][number];
type Action = NonNullable<Group['pre']>[number];
type FailoverType = NonNullable<Action['failoverTypes']>[number];
type Direction = NonNullable<Action['directions']>[number];

const ACTIVE = ['Queued', 'Running', 'WaitingForInput'];
const FAILOVER_TYPES: FailoverType[] = ['test', 'planned', 'unplanned'];
const DIRECTIONS: [Direction, string][] = [
  ['primary-to-recovery', 'primary to recovery'],
  ['recovery-to-primary', 'recovery to primary'],
];

export function Plans() {
  const can = useCan();
  const l = useLoad(() => api.all<RecoveryPlan>('/recovery-plans'), [], 15_000);
  const [creating, setCreating] = useState(false);
  const [name, setName] = useState('');
  const [description, setDescription] = useState('');
  return (
    <>
      <h1>Recovery plans</h1>
      <Section
        title="Plans"
        actions={
          can('configure') && (
            <button type="button" className="primary" onClick={() => setCreating(true)}>
              Create recovery plan
            </button>
          )
        }
      >
        <Loading l={l}>
          {(plans) =>
            plans.length === 0 ? (
              <Empty>No recovery plan yet. A plan fails over VMs together: its groups in order, the VMs of a group in parallel.</Empty>
            ) : (
              <table className="responsive">
                <thead>
                  <tr>
                    <th>Name</th>
                    <th>Description</th>
                    <th className="num">Groups</th>
                    <th className="num">VMs</th>
                    <th>Updated</th>
                  </tr>
                </thead>
                <tbody>
                  {plans.map((p) => (
                    <tr key={p.id}>
                      <td data-label="Name">
                        <a href={href('plans', p.id)}>{p.name}</a>
                      </td>
                      <td data-label="Description">{p.description ?? ''}</td>
                      <td data-label="Groups" className="num">
                        {p.groups.length}
                        {p.shutdownGroup ? ' + shutdown' : ''}
                      </td>
                      <td data-label="VMs" className="num">
                        {p.groups.reduce((n, g) => n + g.items.length, 0)}
                      </td>
                      <td data-label="Updated">{fmtTime(p.updatedAt)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )
          }
        </Loading>
      </Section>
      <Dialog
        title="Create recovery plan"
        open={creating}
        onClose={() => setCreating(false)}
        submitLabel="Create"
        onSubmit={async () => {
          const p = await api.post<RecoveryPlan>('/recovery-plans', { name, ...(description ? { description } : {}), groups: [{ name: 'Group 1', items: [] }] });
          setName('');
          setDescription('');
          go('plans', p.id);
        }}
      >
        <Field label="Name">
          <input value={name} onChange={(e) => setName(e.target.value)} required maxLength={100} />
        </Field>
        <Field label="Description">
          <textarea value={description} onChange={(e) => setDescription(e.target.value)} maxLength={2000} />
        </Field>
        <p className="muted">The plan starts with one empty group; add VMs and more groups on its page.</p>
      </Dialog>
    </>
  );
}

interface PlanData {
  plan: RecoveryPlan;
  /** the plan's VMs that are protected items (the vault filters: never every item) */
  items: ProtectedItem[];
}

async function loadPlan(id: string): Promise<PlanData> {
  const [plan, items] = await Promise.all([api.get<RecoveryPlan>(`/recovery-plans/${encodeURIComponent(id)}`), api.all<ProtectedItem>('/protected-items', { plan: id })]);
  return { plan, items };
}

/** protected items a search for VMs to add shows at most */
const PICK_LIMIT = 20;

export function PlanPage({ id }: { id: string }) {
  const l = useLoad(() => loadPlan(id), [id], 4000);
  // the run shown: the one just started here, else the plan's newest
  const [started, setStarted] = useState<string | null>(null);
  const newest = useLoad(() => api.get<List<Job>>('/jobs', { kind: 'plan-run', target: l.data?.plan.id ?? id, limit: 1 }).then((r) => r.items[0] ?? null), [id, l.data?.plan.id, started], 3000);
  const run = newest.data ?? null;
  const runId = started ?? run?.id ?? null;
  // while a run of the plan is not finished, no other starts (the vault would refuse it)
  const active = run !== null && ACTIVE.includes(run.state);
  const runKey = run ? `${run.id}:${run.state}` : '';
  return (
    <Loading l={l}>
      {(d) => (
        <>
          <h1>{d.plan.name}</h1>
          {d.plan.description && <p className="muted">{d.plan.description}</p>}
          <Runs d={d} active={active} onStarted={(jobId) => {
              setStarted(jobId);
              l.reload();
            }} />
          {runId ? <PlanRun key={runId} jobId={runId} /> : <Section title="Plan run"><Empty>The plan has not run yet.</Empty></Section>}
          <Validation id={d.plan.id} updatedAt={d.plan.updatedAt} runKey={runKey} />
          <Editor d={d} reload={l.reload} />
          <Drills id={d.plan.id} runKey={runKey} />
        </>
      )}
    </Loading>
  );
}

/** the plan's operations, each offered while one of its VMs is in a state it starts from */
function Runs({ d, active, onStarted }: { d: PlanData; active: boolean; onStarted: (jobId: string) => void }) {
  const can = useCan();
  const [dialog, setDialog] = useState<ItemOp | null>(null);
  const [point, setPoint] = useState('latest');
  const [network, setNetwork] = useState('none');
  const [notes, setNotes] = useState('');
  const [shutdown, setShutdown] = useState(false);
  const byId = new Map(d.items.map((i) => [i.id, i]));
  const planned = d.plan.groups.flatMap((g) => g.items);
  const members = planned.map((i) => byId.get(i)).filter((i): i is ProtectedItem => i !== undefined);
  const missing = planned.length - members.length;
  const running = active || members.some((i) => i.activeJobId);
  if (!can('operate')) return null;
  const path = `/recovery-plans/${encodeURIComponent(d.plan.id)}`;
  const start = (op: ItemOp, body: unknown) => async () => {
    const r = await api.post<Accepted>(`${path}/${op}`, body);
    onStarted(r.jobId);
  };
  const open = (op: ItemOp) => {
    setPoint('latest');
    setDialog(op);
  };
  const b = (op: ItemOp, label: string, danger = false) => (
    <button type="button" className={danger ? 'danger' : undefined} disabled={running || !offeredForPlan(op, members, missing)} onClick={() => open(op)}>
      {label}
    </button>
  );
  const pointField = (named: [string, string][]) => (
    <Field label="Recovery point" hint="for every VM of the plan">
      <select value={point} onChange={(e) => setPoint(e.target.value)}>
        {named.map(([v, label]) => (
          <option key={v} value={v}>
            {label}
          </option>
        ))}
      </select>
    </Field>
  );
  const simple: [ItemOp, string, string][] = [
    ['planned-failover', 'Planned failover', 'The shutdown group first (when the plan has one), then each group in order: the VMs are shut down at the source, their last writes shipped, and they start at the recovery site with nothing lost. The run stops at the first error.'],
    ['commit', 'Commit', 'The failover of every failed-over VM becomes final; their other recovery points are dropped.'],
    ['reprotect', 'Reprotect', 'Replication of every committed VM runs the other way, sending only what differs.'],
  ];
  return (
    <Section title="Run the plan">
      <div className="buttons" role="group" aria-label="Plan operations">
        {b('test-failover', 'Test failover')}
        {b('test-failover-cleanup', 'Clean up test failover')}
        {b('planned-failover', 'Planned failover')}
        {b('unplanned-failover', 'Unplanned failover', true)}
        {b('change-recovery-point', 'Change recovery point')}
        {b('commit', 'Commit')}
        {b('reprotect', 'Reprotect')}
      </div>
      {missing > 0 && (
        <p className="field-error">
          {missing === 1 ? 'A VM of this plan is' : `${missing} VMs of this plan are`} not protected: enable its protection or remove it from the plan.
        </p>
      )}
      {running && <p className="muted">{active ? 'A run of this plan is not finished' : 'A job runs on a VM of this plan'}; the plan&apos;s operations wait for it.</p>}
      <Dialog title="Test failover" open={dialog === 'test-failover'} onClose={() => setDialog(null)} submitLabel="Start test failover" onSubmit={start('test-failover', { recoveryPoint: point, network })}>
        <p className="muted">The groups start in order at the recovery site, in isolation; replication goes on. Clean up to finish the drill.</p>
        {pointField([
          ['latest', 'Latest'],
          ['latest-app-consistent', 'Latest app-consistent'],
        ])}
        <Field label="Network">
          <select value={network} onChange={(e) => setNetwork(e.target.value)}>
            <option value="none">None (not connected)</option>
            <option value="temporary">A temporary isolated network, removed at cleanup</option>
          </select>
        </Field>
      </Dialog>
      <Dialog title="Clean up test failover" open={dialog === 'test-failover-cleanup'} onClose={() => setDialog(null)} submitLabel="Clean up" onSubmit={start('test-failover-cleanup', notes ? { notes } : {})}>
        <p className="muted">The drill&apos;s VMs and its network are removed; the drill is recorded with its RTO per VM and for the plan.</p>
        <Field label="Notes">
          <textarea value={notes} onChange={(e) => setNotes(e.target.value)} maxLength={2000} />
        </Field>
      </Dialog>
      <Dialog title="Unplanned failover" danger open={dialog === 'unplanned-failover'} onClose={() => setDialog(null)} submitLabel="Start unplanned failover" onSubmit={start('unplanned-failover', { recoveryPoint: point, shutdownSource: shutdown })}>
        <p className="muted">For when the primary site is lost: each group in order from the chosen point; a VM that fails does not stop the others. Writes after the point are lost.</p>
        {pointField([
          ['latest', 'Latest (the newest at the recovery site)'],
          ['latest-processed', 'Latest processed'],
          ['latest-app-consistent', 'Latest app-consistent'],
        ])}
        <label className="field inline">
          <input type="checkbox" checked={shutdown} onChange={(e) => setShutdown(e.target.checked)} /> Shut down the source VMs first (carries on if their site does not answer)
        </label>
      </Dialog>
      <Dialog title="Change recovery point" open={dialog === 'change-recovery-point'} onClose={() => setDialog(null)} submitLabel="Change recovery point" onSubmit={start('change-recovery-point', { recoveryPoint: point })}>
        <p className="muted">Before the commit, every failed-over VM starts again from another point; what they wrote since the failover is discarded.</p>
        {pointField([
          ['latest', 'Latest'],
          ['latest-app-consistent', 'Latest app-consistent'],
        ])}
      </Dialog>
      {simple.map(([op, title, text]) => (
        <Dialog key={op} title={title} open={dialog === op} onClose={() => setDialog(null)} submitLabel={title} onSubmit={start(op, {})}>
          <p>{text}</p>
        </Dialog>
      ))}
    </Section>
  );
}

interface Problem {
  severity: 'error' | 'warning';
  code: string;
  item: string | null;
  message: string;
}

function Validation({ id, updatedAt, runKey }: { id: string; updatedAt: string; runKey: string }) {
  const [n, setN] = useState(0);
  const l = useLoad(() => api.get<{ valid: boolean; problems: Problem[] }>(`/recovery-plans/${encodeURIComponent(id)}/validation`), [id, updatedAt, n, runKey]);
  return (
    <Section
      title="Check before a run"
      actions={
        <button type="button" onClick={() => setN((x) => x + 1)}>
          Validate
        </button>
      }
    >
      <Loading l={l}>
        {(v) => (
          <>
            <p>
              <Badge value={v.valid ? 'Healthy' : 'Critical'} /> {v.valid ? 'Ready to run.' : 'Not ready: a run would stop at the errors below.'}
            </p>
            {v.problems.length > 0 && (
              <ul className="problems">
                {v.problems.map((p, i) => (
                  <li key={i} className={p.severity === 'error' ? 'field-error' : undefined}>
                    <strong>{p.severity}</strong> <code>{p.code}</code> {p.message}
                  </li>
                ))}
              </ul>
            )}
          </>
        )}
      </Loading>
    </Section>
  );
}

function Drills({ id, runKey }: { id: string; runKey: string }) {
  const l = useLoad(() => api.get<List<PlanDrill>>(`/recovery-plans/${encodeURIComponent(id)}/drills`).then((r) => r.items), [id, runKey], 15_000);
  return (
    <Section title="Drills">
      <Loading l={l}>
        {(drills) =>
          drills.length === 0 ? (
            <Empty>No drill yet: a test failover and its cleanup, both succeeded, make one.</Empty>
          ) : (
            <table className="responsive">
              <thead>
                <tr>
                  <th>Cleaned up</th>
                  <th>Result</th>
                  <th className="num">RTO</th>
                  <th>VMs (RTO, point)</th>
                  <th>Notes</th>
                  <th>Jobs</th>
                </tr>
              </thead>
              <tbody>
                {drills.map((x) => (
                  <tr key={x.cleanupJob}>
                    <td data-label="Cleaned up">{fmtTime(x.cleanedUpAt)}</td>
                    <td data-label="Result">
                      <Badge value={x.succeeded ? 'Succeeded' : 'Failed'} />
                    </td>
                    <td data-label="RTO" className="num">
                      {fmtSeconds(x.rtoSeconds)}
                    </td>
                    <td data-label="VMs">
                      {x.vms.map((v) => (
                        <div key={v.item}>
                          {v.name}: {fmtSeconds(v.rtoSeconds)}
                          {v.point ? `, ${fmtTime(v.point.at)} (${v.point.consistency})` : ''}
                        </div>
                      ))}
                    </td>
                    <td data-label="Notes">{x.notes ?? ''}</td>
                    <td data-label="Jobs">
                      {x.testFailoverJob && <JobLink id={x.testFailoverJob}>test failover</JobLink>} <JobLink id={x.cleanupJob}>cleanup</JobLink>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )
        }
      </Loading>
    </Section>
  );
}

const specOf = (p: RecoveryPlan): Spec => ({
  name: p.name,
  ...(p.description !== undefined ? { description: p.description } : {}),
  shutdownGroup: p.shutdownGroup ?? false,
  groups: p.groups.map((g) => ({ name: g.name, items: [...g.items], pre: [...(g.pre ?? [])], post: [...(g.post ?? [])] })),
  dependencies: { ...(p.dependencies ?? {}) },
});

/** what the vault is sent: empty action lists and dependencies left out */
function toBody(s: Spec): Spec {
  const deps = Object.fromEntries(Object.entries(s.dependencies ?? {}).filter(([item, before]) => before.length > 0 && s.groups.some((g) => g.items.includes(item))));
  return {
    name: s.name,
    ...(s.description ? { description: s.description } : {}),
    shutdownGroup: s.shutdownGroup ?? false,
    groups: s.groups.map((g) => ({ name: g.name, items: g.items, ...(g.pre?.length ? { pre: g.pre } : {}), ...(g.post?.length ? { post: g.post } : {}) })),
    ...(Object.keys(deps).length ? { dependencies: deps } : {}),
  };
}

const move = <T,>(xs: T[], from: number, to: number): T[] => {
  const out = [...xs];
  const [x] = out.splice(from, 1);
  out.splice(to, 0, x!);
  return out;
};

const DRAG_GROUP = 'application/x-osr-group';
const DRAG_ITEM = 'application/x-osr-item';

function Editor({ d, reload }: { d: PlanData; reload: () => void }) {
  const can = useCan();
  const [spec, setSpec] = useState<Spec>(() => specOf(d.plan));
  const [dirty, setDirty] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  const [saving, setSaving] = useState(false);
  const [saved, setSaved] = useState(false);
  const [dragOver, setDragOver] = useState<number | null>(null);
  // the plan changed elsewhere while nothing is edited here: show the new one
  useEffect(() => {
    if (!dirty) setSpec(specOf(d.plan));
  }, [d.plan.updatedAt]);
  const editable = can('configure');
  // names of the plan's VMs, and of those added here from a search and not saved yet
  const [learned, setLearned] = useState<ReadonlyMap<string, string>>(new Map());
  const names = new Map([...learned, ...d.items.map((i): [string, string] => [i.id, i.name])]);
  const nameOf = (id: string) => names.get(id) ?? id;
  const inPlan = new Set(spec.groups.flatMap((g) => g.items));
  const learn = (i: ProtectedItem) => setLearned((m) => new Map([...m, [i.id, i.name]]));
  const change = (f: (s: Spec) => Spec) => {
    setSpec((s) => f(s));
    setDirty(true);
    setSaved(false);
  };
  const setGroup = (gi: number, f: (g: Group) => Group) => change((s) => ({ ...s, groups: s.groups.map((g, i) => (i === gi ? f(g) : g)) }));
  const moveItem = (item: string, to: number) =>
    change((s) => ({ ...s, groups: s.groups.map((g, i) => (i === to ? (g.items.includes(item) ? g : { ...g, items: [...g.items, item] }) : { ...g, items: g.items.filter((x) => x !== item) })) }));
  const save = async () => {
    setSaving(true);
    setError(undefined);
    try {
      await api.put<RecoveryPlan>(`/recovery-plans/${encodeURIComponent(d.plan.id)}`, toBody(spec));
      setDirty(false);
      setSaved(true);
      reload();
    } catch (e) {
      setError(e);
    } finally {
      setSaving(false);
    }
  };
  const onDrop = (gi: number) => (e: DragEvent) => {
    e.preventDefault();
    setDragOver(null);
    const g = e.dataTransfer.getData(DRAG_GROUP);
    const item = e.dataTransfer.getData(DRAG_ITEM);
    if (g !== '') {
      const from = Number(g);
      if (from !== gi) change((s) => ({ ...s, groups: move(s.groups, from, gi) }));
    } else if (item) moveItem(item, gi);
  };
  const allowDrop = (gi: number) => (e: DragEvent) => {
    if (!editable) return;
    e.preventDefault();
    setDragOver(gi);
  };
  return (
    <Section
      title="Groups"
      actions={
        editable && (
          <>
            {dirty && <span className="muted">unsaved changes</span>}
            {saved && !dirty && (
              <span role="status" className="muted">
                Saved.
              </span>
            )}
            <button type="button" disabled={!dirty || saving} onClick={() => {
                setSpec(specOf(d.plan));
                setDirty(false);
                setError(undefined);
              }}>
              Discard changes
            </button>
            <button type="button" className="primary" disabled={!dirty || saving} onClick={() => void save()}>
              {saving ? 'Saving…' : 'Save plan'}
            </button>
          </>
        )
      }
    >
      <ErrorBox error={error} />
      {editable && (
        <label className="field inline">
          <input type="checkbox" checked={spec.shutdownGroup ?? false} onChange={(e) => change((s) => ({ ...s, shutdownGroup: e.target.checked }))} /> Shut down every source VM first in a planned or unplanned failover (a shutdown group; never in a test failover)
        </label>
      )}
      <p className="muted">
        Groups run in order, the VMs of a group in parallel. {editable ? 'Drag a group or a VM to move it, or use the buttons.' : ''}
      </p>
      <ol className="groups editor">
        {spec.groups.map((g, gi) => (
          <li
            key={gi}
            className={`group${dragOver === gi ? ' drop' : ''}`}
            aria-label={`Group ${gi + 1}: ${g.name}`}
            onDragOver={allowDrop(gi)}
            onDragLeave={() => setDragOver((x) => (x === gi ? null : x))}
            onDrop={onDrop(gi)}
          >
            <div className="group-head" draggable={editable} onDragStart={(e) => e.dataTransfer.setData(DRAG_GROUP, String(gi))}>
              <h3>
                <span aria-hidden="true" className="handle">
                  ⠿
                </span>{' '}
                Group {gi + 1}
              </h3>
              {editable ? (
                <>
                  <label className="field inline">
                    <span>Name of group {gi + 1}</span>
                    <input value={g.name} maxLength={100} onChange={(e) => setGroup(gi, (x) => ({ ...x, name: e.target.value }))} />
                  </label>
                  <div className="buttons">
                    <button type="button" className="small" disabled={gi === 0} aria-label={`Move group ${g.name} up`} onClick={() => change((s) => ({ ...s, groups: move(s.groups, gi, gi - 1) }))}>
                      Move up
                    </button>
                    <button type="button" className="small" disabled={gi === spec.groups.length - 1} aria-label={`Move group ${g.name} down`} onClick={() => change((s) => ({ ...s, groups: move(s.groups, gi, gi + 1) }))}>
                      Move down
                    </button>
                    <button
                      type="button"
                      className="small"
                      disabled={spec.groups.length === 1 || g.items.length > 0}
                      title={g.items.length > 0 ? 'move its VMs to another group first' : undefined}
                      aria-label={`Remove group ${g.name}`}
                      onClick={() => change((s) => ({ ...s, groups: s.groups.filter((_, i) => i !== gi) }))}
                    >
                      Remove
                    </button>
                  </div>
                </>
              ) : (
                <strong>{g.name}</strong>
              )}
            </div>
            <GroupVms spec={spec} gi={gi} editable={editable} nameOf={nameOf} items={d.items} inPlan={inPlan} learn={learn} change={change} moveItem={moveItem} />
            <Actions title="Pre actions" actions={g.pre ?? []} editable={editable} onChange={(pre) => setGroup(gi, (x) => ({ ...x, pre }))} group={g.name} />
            <Actions title="Post actions" actions={g.post ?? []} editable={editable} onChange={(post) => setGroup(gi, (x) => ({ ...x, post }))} group={g.name} />
          </li>
        ))}
      </ol>
      {editable && (
        <button type="button" onClick={() => change((s) => ({ ...s, groups: [...s.groups, { name: nextName(s.groups), items: [], pre: [], post: [] }] }))}>
          Add group
        </button>
      )}
    </Section>
  );
}

function nextName(groups: Group[]): string {
  for (let n = groups.length + 1; ; n++) if (!groups.some((g) => g.name === `Group ${n}`)) return `Group ${n}`;
}

function GroupVms({
  spec,
  gi,
  editable,
  nameOf,
  items,
  inPlan,
  learn,
  change,
  moveItem,
}: {
  spec: Spec;
  gi: number;
  editable: boolean;
  nameOf: (id: string) => string;
  items: ProtectedItem[];
  inPlan: ReadonlySet<string>;
  learn: (i: ProtectedItem) => void;
  change: (f: (s: Spec) => Spec) => void;
  moveItem: (item: string, to: number) => void;
}) {
  const g = spec.groups[gi]!;
  const [adding, setAdding] = useState('');
  // VMs to add: the vault's items whose names start with what is typed, a few at a time
  const [search, setSearch] = useState('');
  const found = useLoad(() => (editable ? api.get<List<ProtectedItem>>('/protected-items', { name: search.trim(), limit: PICK_LIMIT }).then((r) => r.items) : Promise.resolve([])), [editable, search]);
  const free = (found.data ?? []).filter((i) => !inPlan.has(i.id));
  const state = new Map(items.map((i) => [i.id, i.state]));
  const deps = spec.dependencies ?? {};
  // an item may wait for items of its own group or of an earlier one
  const earlier = spec.groups.slice(0, gi + 1).flatMap((x) => x.items);
  const setDeps = (item: string, before: string[]) => change((s) => ({ ...s, dependencies: { ...(s.dependencies ?? {}), [item]: before } }));
  return (
    <div className="group-vms">
      {g.items.length === 0 ? (
        <Empty>No VM in this group.</Empty>
      ) : (
        <table className="responsive">
          <thead>
            <tr>
              <th>VM</th>
              <th>State</th>
              <th>Waits for</th>
              {editable && <th>Change</th>}
            </tr>
          </thead>
          <tbody>
            {g.items.map((item) => {
              const before = deps[item] ?? [];
              const candidates = earlier.filter((x) => x !== item && !before.includes(x));
              return (
                <tr key={item} draggable={editable} onDragStart={(e) => e.dataTransfer.setData(DRAG_ITEM, item)}>
                  <td data-label="VM">
                    <a href={href('items', item)}>{nameOf(item)}</a>
                  </td>
                  <td data-label="State">{state.has(item) ? <Badge value={state.get(item)} /> : <span className="field-error">not protected</span>}</td>
                  <td data-label="Waits for">
                    {before.length === 0 && !editable && '—'}
                    {before.map((b) => (
                      <span key={b} className="chip">
                        {nameOf(b)}
                        {editable && (
                          <button type="button" className="small" aria-label={`${nameOf(item)} no longer waits for ${nameOf(b)}`} onClick={() => setDeps(item, before.filter((x) => x !== b))}>
                            ×
                          </button>
                        )}
                      </span>
                    ))}
                    {editable && candidates.length > 0 && (
                      <select aria-label={`${nameOf(item)} waits for`} value="" onChange={(e) => e.target.value && setDeps(item, [...before, e.target.value])}>
                        <option value="">add…</option>
                        {candidates.map((c) => (
                          <option key={c} value={c}>
                            {nameOf(c)}
                          </option>
                        ))}
                      </select>
                    )}
                  </td>
                  {editable && (
                    <td data-label="Change">
                      <div className="buttons">
                        <select aria-label={`Move ${nameOf(item)} to group`} value={gi} onChange={(e) => moveItem(item, Number(e.target.value))}>
                          {spec.groups.map((x, i) => (
                            <option key={i} value={i}>
                              {`Group ${i + 1}: ${x.name}`}
                            </option>
                          ))}
                        </select>
                        <button
                          type="button"
                          className="small"
                          aria-label={`Remove ${nameOf(item)} from the plan`}
                          onClick={() =>
                            change((s) => ({
                              ...s,
                              groups: s.groups.map((x) => ({ ...x, items: x.items.filter((y) => y !== item) })),
                              dependencies: Object.fromEntries(Object.entries(s.dependencies ?? {}).filter(([k]) => k !== item).map(([k, v]) => [k, v.filter((y) => y !== item)])),
                            }))
                          }
                        >
                          Remove
                        </button>
                      </div>
                    </td>
                  )}
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {editable && (
        <div className="buttons">
          <input type="search" aria-label={`Find protected items to add to group ${g.name}`} placeholder="start of a name" value={search} onChange={(e) => setSearch(e.target.value)} />
          <select aria-label={`Protected item to add to group ${g.name}`} value={adding} onChange={(e) => setAdding(e.target.value)}>
            <option value="">Choose a protected item…</option>
            {free.map((i) => (
              <option key={i.id} value={i.id}>
                {i.name}
              </option>
            ))}
          </select>
          <button
            type="button"
            disabled={!adding}
            onClick={() => {
              const picked = free.find((i) => i.id === adding);
              if (picked) learn(picked);
              moveItem(adding, gi);
              setAdding('');
            }}
          >
            Add VM
          </button>
        </div>
      )}
    </div>
  );
}

const emptyAction = (): Action => ({ name: '', kind: 'manual', target: '' });

function Actions({ title, actions, editable, onChange, group }: { title: string; actions: Action[]; editable: boolean; onChange: (a: Action[]) => void; group: string }) {
  if (!editable && actions.length === 0) return null;
  const set = (i: number, f: (a: Action) => Action) => onChange(actions.map((a, j) => (j === i ? f(a) : a)));
  const toggle = <T,>(xs: T[] | undefined, x: T, on: boolean): T[] | undefined => {
    const out = on ? [...(xs ?? []), x] : (xs ?? []).filter((y) => y !== x);
    return out.length === 0 ? undefined : out;
  };
  const what = title.toLowerCase().replace(/s$/, '');
  return (
    <div className="plan-actions">
      <h4>{title}</h4>
      {actions.length === 0 && <p className="muted">None.</p>}
      {actions.map((a, i) => {
        const label = `${what} ${i + 1} of group ${group}`;
        return editable ? (
          <fieldset key={i} className="action">
            <legend>{a.name || `New ${what}`}</legend>
            <div className="action-fields">
              <Field label={`Name of ${label}`}>
                <input value={a.name} maxLength={100} required onChange={(e) => set(i, (x) => ({ ...x, name: e.target.value }))} />
              </Field>
              <Field label="Kind">
                <select value={a.kind} onChange={(e) => set(i, (x) => ({ ...x, kind: e.target.value as Action['kind'] }))}>
                  <option value="manual">manual (the run waits for a person)</option>
                  <option value="script">script (run by the provider at the fabric)</option>
                  <option value="webhook">webhook (POST with the run&apos;s context)</option>
                </select>
              </Field>
              <Field label={a.kind === 'manual' ? 'Instruction' : a.kind === 'script' ? 'Script path' : 'URL'}>
                <input value={a.target} maxLength={2000} required onChange={(e) => set(i, (x) => ({ ...x, target: e.target.value }))} />
              </Field>
              <Field label="Timeout (seconds)" hint="empty: the default">
                <input type="number" min={1} max={86400} value={a.timeoutSeconds ?? ''} onChange={(e) => set(i, (x) => withNumber(x, 'timeoutSeconds', e.target.value))} />
              </Field>
              <Field label="Retries">
                <input type="number" min={0} max={10} value={a.retries ?? ''} onChange={(e) => set(i, (x) => withNumber(x, 'retries', e.target.value))} />
              </Field>
            </div>
            <div className="buttons" role="group" aria-label={`Failover types of ${label} (none checked: all)`}>
              <span className="muted">Runs in</span>
              {FAILOVER_TYPES.map((t) => (
                <label key={t} className="field inline">
                  <input type="checkbox" checked={a.failoverTypes?.includes(t) ?? false} onChange={(e) => set(i, (x) => withList(x, 'failoverTypes', toggle(x.failoverTypes, t, e.target.checked)))} /> {t}
                </label>
              ))}
              <span className="muted">failover, going</span>
              {DIRECTIONS.map(([dir, text]) => (
                <label key={dir} className="field inline">
                  <input type="checkbox" checked={a.directions?.includes(dir) ?? false} onChange={(e) => set(i, (x) => withList(x, 'directions', toggle(x.directions, dir, e.target.checked)))} /> {text}
                </label>
              ))}
              <button type="button" className="small" disabled={i === 0} aria-label={`Move ${label} up`} onClick={() => onChange(move(actions, i, i - 1))}>
                Move up
              </button>
              <button type="button" className="small" aria-label={`Remove ${label}`} onClick={() => onChange(actions.filter((_, j) => j !== i))}>
                Remove
              </button>
            </div>
          </fieldset>
        ) : (
          <p key={i}>
            <strong>{a.name}</strong> ({a.kind}): <code>{a.target}</code>
            {a.failoverTypes ? ` — ${a.failoverTypes.join(', ')} failover` : ''}
            {a.directions ? `, ${a.directions.join(', ')}` : ''}
          </p>
        );
      })}
      {editable && (
        <button type="button" className="small" onClick={() => onChange([...actions, emptyAction()])}>
          Add {what}
        </button>
      )}
    </div>
  );
}

function withNumber(a: Action, key: 'timeoutSeconds' | 'retries', v: string): Action {
  const { [key]: _old, ...rest } = a;
  return v === '' ? rest : { ...rest, [key]: Number(v) };
}

function withList(a: Action, key: 'failoverTypes' | 'directions', v: string[] | undefined): Action {
  const out: Action = { ...a };
  if (v === undefined) delete out[key];
  else (out as unknown as Record<string, unknown>)[key] = v;
  return out;
}
