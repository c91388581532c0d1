/** Protected items: the filterable list, enabling protection, and an item's page with its health, history, points, disks and every operation. */
import { useState } from 'react';
import { api, type Accepted, type List } from '../api';
import { LineChart, PointTimeline } from '../charts';
import { itemDrills } from '../drills';
import { notOffered, offered, type ItemOp } from '../operations';
import { href, useRoute } from '../router';
import type { InventoryObject, Policy, ProtectedItem, RecoveryPoint, Sample, VaultEvent } from '../types';
import { ago, Badge, Dialog, Empty, ErrorBox, Field, fmtBytes, fmtSeconds, fmtTime, JobLink, Loading, Progress, Section, useCan, useLoad, useOperation } from '../ui';

const STATES = ['EnablingProtection', 'InitialReplication', 'FinalizingProtection', 'Protected', 'ResyncRequired', 'Resynchronizing', 'DisablingProtection', 'TestFailoverInProgress', 'TestFailoverComplete', 'CleaningUpTestFailover', 'FailoverInProgress', 'FailedOver', 'Committed', 'Reprotecting', 'ProtectionFailed'];
const HEALTHS = ['Healthy', 'Warning', 'Critical', 'NotApplicable'];

function EnableProtection({ onDone }: { onDone: (jobId: string) => void }) {
  const [open, setOpen] = useState(false);
  const [vmId, setVmId] = useState('');
  const [group, setGroup] = useState('');
  const vms = useLoad(() => (open ? api.all<InventoryObject>('/protectable-items') : Promise.resolve([])), [open]);
  return (
    <>
      <button type="button" className="primary" onClick={() => setOpen(true)}>
        Enable protection
      </button>
      <Dialog
        title="Enable protection"
        open={open}
        onClose={() => setOpen(false)}
        submitLabel="Enable"
        onSubmit={async () => {
          const r = await api.post<Accepted>('/protected-items', { vmId, ...(group.trim() ? { replicationGroup: group.trim() } : {}) });
          onDone(r.jobId);
        }}
      >
        <p className="muted">The VM&apos;s cloud must be paired with a cloud at the recovery site; the pairing&apos;s policy sets how it replicates.</p>
        <Field label="VM" hint={vms.data && vms.data.length === 0 ? 'Every VM the fabrics report is protected already.' : undefined}>
          <select required value={vmId} onChange={(e) => setVmId(e.target.value)}>
            <option value="">Choose a VM…</option>
            {(vms.data ?? []).filter((v) => !v.properties.replicaOf && !v.properties.testFailoverOf).map((v) => (
              <option key={v.id} value={v.id}>
                {v.name} ({v.fabricId})
              </option>
            ))}
          </select>
        </Field>
        <Field label="Replication group (optional)" hint="Members of one group get recovery points at one instant across all of them, and a recovery plan fails them over at one group point. Their primary site's hosts must be able to hold writes for a moment.">
          <input value={group} onChange={(e) => setGroup(e.target.value)} pattern="[A-Za-z0-9_\-][A-Za-z0-9._\-]*" maxLength={128} placeholder="e.g. billing-app" />
        </Field>
        <ErrorBox error={vms.error} />
      </Dialog>
    </>
  );
}

/** protected items per page of the list */
const ITEMS_PAGE = 100;

export function Items() {
  const route = useRoute();
  const [name, setName] = useState(route.query.get('name') ?? '');
  const state = route.query.get('state') ?? '';
  const health = route.query.get('health') ?? '';
  const setFilter = (k: string, v: string) => {
    const q = new URLSearchParams(route.query);
    if (v) q.set(k, v);
    else q.delete(k);
    window.location.hash = `/items${q.toString() ? `?${q}` : ''}`;
  };
  const can = useCan();
  const [started, setStarted] = useState<string | null>(null);
  // a page at a time from the vault, which filters (a vault may hold 100,000 items): the
  // cursors of the pages before this one, to go back
  const [cursors, setCursors] = useState<(string | null)[]>([null]);
  const after = cursors[cursors.length - 1] ?? null;
  const filterKey = `${state}|${health}|${name}`;
  const [pagedFor, setPagedFor] = useState(filterKey);
  if (pagedFor !== filterKey) {
    setPagedFor(filterKey);
    setCursors([null]);
  }
  const l = useLoad(() => api.get<List<ProtectedItem>>('/protected-items', { state, health, name: name.trim(), limit: ITEMS_PAGE, ...(after ? { after } : {}) }), [state, health, name, after], 4000);
  const shown = l.data?.items ?? [];
  const first = (cursors.length - 1) * ITEMS_PAGE;
  return (
    <>
      <div className="panel-head">
        <h1>Protected items</h1>
        {can('configure') && <EnableProtection onDone={setStarted} />}
      </div>
      {started && (
        <p className="notice" role="status">
          Protection is being enabled: <JobLink id={started} />.
        </p>
      )}
      <div className="filters" role="search" aria-label="Filter protected items">
        <Field label="Name">
          <input type="search" value={name} onChange={(e) => setName(e.target.value)} placeholder="start of a name" />
        </Field>
        <Field label="State">
          <select value={state} onChange={(e) => setFilter('state', e.target.value)}>
            <option value="">any</option>
            {STATES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </Field>
        <Field label="Health">
          <select value={health} onChange={(e) => setFilter('health', e.target.value)}>
            <option value="">any</option>
            {HEALTHS.map((s) => (
              <option key={s} value={s}>
                {s === 'NotApplicable' ? 'Not applicable' : s}
              </option>
            ))}
          </select>
        </Field>
      </div>
      <Loading l={l}>
        {() =>
          shown.length === 0 ? (
            <Empty>{cursors.length === 1 && !state && !health && !name.trim() ? 'No VM is protected yet: enable protection of one.' : 'No protected item matches.'}</Empty>
          ) : (
            <div className="panel">
              <table className="responsive">
                <caption className="muted">
                  {cursors.length === 1 && !l.data?.next ? `${shown.length} protected item${shown.length === 1 ? '' : 's'}` : `protected items ${first + 1}–${first + shown.length}${l.data?.next ? ', more on the next page' : ''}`}
                </caption>
                <thead>
                  <tr>
                    <th>Name</th>
                    <th>State</th>
                    <th>Health</th>
                    <th className="num">RPO</th>
                    <th>Last recovery point</th>
                    <th>Ready for failover</th>
                    <th>Job</th>
                  </tr>
                </thead>
                <tbody>
                  {shown.map((i) => (
                    <tr key={i.id}>
                      <td data-label="Name">
                        <a href={href('items', i.id)}>{i.name}</a>
                      </td>
                      <td data-label="State">
                        <Badge value={i.state} />
                        {i.progress !== null && i.state === 'InitialReplication' ? <Progress value={i.progress} label={`initial replication of ${i.name}`} /> : null}
                      </td>
                      <td data-label="Health">
                        <Badge value={i.health} title={i.healthReasons.map((r) => r.message).join('; ')} />
                      </td>
                      <td data-label="RPO" className="num">
                        {fmtSeconds(i.rpoSeconds)}
                      </td>
                      <td data-label="Last recovery point">{ago(i.lastRecoveryPointAt)}</td>
                      <td data-label="Ready for failover">{i.readiness.ready ? 'Yes' : <span className="muted">{i.readiness.reason}</span>}</td>
                      <td data-label="Job">{i.activeJobId ? <JobLink id={i.activeJobId} /> : '—'}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
              <nav className="buttons" aria-label="Pages of protected items">
                <button type="button" disabled={cursors.length === 1} onClick={() => setCursors((c) => c.slice(0, -1))}>
                  Previous page
                </button>
                <button type="button" disabled={!l.data?.next} onClick={() => l.data?.next && setCursors((c) => [...c, l.data!.next])}>
                  Next page
                </button>
              </nav>
            </div>
          )
        }
      </Loading>
    </>
  );
}

/** a recovery point picker: the named choices, then each point at the recovery site */
function PointSelect({ value, onChange, points, named }: { value: string; onChange: (v: string) => void; points: RecoveryPoint[]; named: [string, string][] }) {
  return (
    <>
      <Field label="Recovery point">
        <select value={value} onChange={(e) => onChange(e.target.value)}>
          {named.map(([v, label]) => (
            <option key={v} value={v}>
              {label}
            </option>
          ))}
          {points.map((p) => (
            <option key={p.id} value={p.id}>
              {fmtTime(p.at)} ({p.consistency}-consistent)
            </option>
          ))}
        </select>
      </Field>
      <PointTimeline points={points} chosen={points.some((p) => p.id === value) ? value : undefined} onChoose={onChange} />
    </>
  );
}

interface ItemData {
  item: ProtectedItem;
  points: RecoveryPoint[];
  samples: Sample[];
  vm: InventoryObject | null;
  events: VaultEvent[];
}

async function loadItem(id: string): Promise<ItemData> {
  const p = encodeURIComponent(id);
  const [item, points, samples, vm, events] = await Promise.all([
    api.get<ProtectedItem>(`/protected-items/${p}`),
    api.get<List<RecoveryPoint>>(`/protected-items/${p}/recovery-points`),
    api.get<List<Sample>>(`/protected-items/${p}/samples`),
    api.get<InventoryObject>(`/vms/${p}`).catch(() => null),
    api.get<List<VaultEvent>>(`/protected-items/${p}/events`, { limit: 20 }),
  ]);
  return { item, points: points.items, samples: samples.items, vm, events: events.items };
}

function Actions({ d, policy, reload }: { d: ItemData; policy: Policy | null; reload: () => void }) {
  const { item, points } = d;
  const can = useCan();
  const op = useOperation();
  const [dialog, setDialog] = useState<ItemOp | null>(null);
  const [point, setPoint] = useState('latest');
  const [network, setNetwork] = useState('none');
  const [notes, setNotes] = useState('');
  const [shutdown, setShutdown] = useState(false);
  const [confirmDisks, setConfirmDisks] = useState(false);
  // '': as the policy says
  const [deleteReplica, setDeleteReplica] = useState<'' | 'true' | 'false'>('');
  const policyDeletes = policy?.settings.deleteReplicaOnDisable;
  const targetFabric = item.replication.targetFabricId;
  const networks = useLoad(() => (dialog === 'test-failover' && targetFabric ? api.all<InventoryObject>('/vm-networks', { fabric: targetFabric }) : Promise.resolve([])), [dialog, targetFabric]);
  if (!can('operate')) return <p className="muted">Your role may read but not run operations.</p>;
  // a disk of the VM shrank or was removed: its replication waits for the user
  const diskChange = item.healthReasons.find((r) => r.code === 'DISK_CHANGE_UNCONFIRMED');
  const path = `/protected-items/${encodeURIComponent(item.id)}`;
  const open = (o: ItemOp) => {
    setPoint('latest');
    setDialog(o);
  };
  const run = (f: () => Promise<unknown>) => async () => {
    await op.start(f);
    reload();
  };
  // the dialog's own submit: an error stays in the dialog, success shows the job on the page
  const submit = (f: () => Promise<Accepted>) => async () => {
    const r = await f();
    await op.start(async () => r);
    reload();
  };
  const b = (o: ItemOp, label: string, danger = false) => (
    <button type="button" className={danger ? 'danger' : undefined} disabled={!offered(o, item) || op.busy} title={notOffered(o, item)} onClick={() => open(o)}>
      {label}
    </button>
  );
  const simple: Partial<Record<ItemOp, [string, string, string]>> = {
    'planned-failover': ['Planned failover', 'The VM is shut down at the source, its last writes are shipped, and it starts at the recovery site with nothing lost. The old primary is fenced until it is reprotected.', 'Start planned failover'],
    commit: ['Commit', 'The failover becomes final: the other recovery points are dropped and the point cannot be changed any more. Reprotect next.', 'Commit'],
    reprotect: ['Reprotect', 'Replication runs the other way: the old primary becomes the replica, and only what differs is sent.', 'Reprotect'],
    resync: ['Resynchronize', 'Both ends compare their disks block by block and only what differs is sent. Replication goes on afterwards.', 'Resynchronize'],
  };
  return (
    <>
      <div className="buttons" role="group" aria-label="Operations">
        {b('test-failover', 'Test failover')}
        {b('test-failover-cleanup', 'Clean up test failover')}
        {b('planned-failover', 'Planned failover')}
        {b('unplanned-failover', 'Unplanned failover', true)}
        {b('change-recovery-point', 'Change recovery point')}
        {b('commit', 'Commit')}
        {b('reprotect', 'Reprotect')}
        {b('resync', 'Resynchronize')}
        {diskChange && (
          <button type="button" disabled={op.busy} onClick={() => setConfirmDisks(true)}>
            Confirm disk change
          </button>
        )}
        {can('configure') && b('disable', 'Disable protection', true)}
      </div>
      {op.notice}
      <Dialog title="Test failover" open={dialog === 'test-failover'} onClose={() => setDialog(null)} submitLabel="Start test failover" onSubmit={submit(() => api.post<Accepted>(`${path}/test-failover`, { recoveryPoint: point, network }))}>
        <p className="muted">A VM starts from the point at the recovery site, in isolation; replication goes on. Clean it up to finish the drill.</p>
        <PointSelect value={point} onChange={setPoint} points={points} named={[['latest', 'Latest'], ['latest-app-consistent', 'Latest app-consistent']]} />
        <Field label="Network">
          <select value={network} onChange={(e) => setNetwork(e.target.value)}>
            <option value="none">None (not connected)</option>
            <option value="temporary">A temporary isolated network, removed at cleanup</option>
            {(networks.data ?? []).map((n) => (
              <option key={n.id} value={n.id}>
                {n.name}
              </option>
            ))}
          </select>
        </Field>
      </Dialog>
      <Dialog title="Clean up test failover" open={dialog === 'test-failover-cleanup'} onClose={() => setDialog(null)} submitLabel="Clean up" onSubmit={submit(() => api.post<Accepted>(`${path}/test-failover-cleanup`, notes ? { notes } : {}))}>
        <p className="muted">The drill&apos;s VM (and a network made for it) is removed and the drill is recorded with its RTO.</p>
        <Field label="Notes">
          <textarea value={notes} onChange={(e) => setNotes(e.target.value)} maxLength={4000} />
        </Field>
      </Dialog>
      <Dialog title="Unplanned failover" danger open={dialog === 'unplanned-failover'} onClose={() => setDialog(null)} submitLabel="Start unplanned failover" onSubmit={submit(() => api.post<Accepted>(`${path}/unplanned-failover`, { recoveryPoint: point, shutdownSource: shutdown }))}>
        <p className="muted">For when the primary site is lost: the VM starts at the recovery site from the chosen point. Writes after it are lost.</p>
        <PointSelect value={point} onChange={setPoint} points={points} named={[['latest', 'Latest (the newest at the recovery site)'], ['latest-processed', 'Latest processed'], ['latest-app-consistent', 'Latest app-consistent']]} />
        <label className="field inline">
          <input type="checkbox" checked={shutdown} onChange={(e) => setShutdown(e.target.checked)} /> Shut down the source first (carries on if its site does not answer)
        </label>
      </Dialog>
      <Dialog title="Change recovery point" open={dialog === 'change-recovery-point'} onClose={() => setDialog(null)} submitLabel="Change recovery point" onSubmit={submit(() => api.post<Accepted>(`${path}/change-recovery-point`, { recoveryPoint: point }))}>
        <p className="muted">Before the commit, the failed-over VM starts again from another point; what it wrote since the failover is discarded.</p>
        <PointSelect value={point} onChange={setPoint} points={points} named={[['latest', 'Latest'], ['latest-app-consistent', 'Latest app-consistent']]} />
      </Dialog>
      <Dialog title="Disable protection" danger open={dialog === 'disable'} onClose={() => setDialog(null)} submitLabel="Disable protection" onSubmit={submit(() => api.del<Accepted>(path, deleteReplica ? { deleteReplica } : {}))}>
        <p>Replication of {item.name} stops and its recovery points are dropped.</p>
        <Field label="The replica">
          <select value={deleteReplica} onChange={(e) => setDeleteReplica(e.target.value as '' | 'true' | 'false')}>
            <option value="">As the policy says{policyDeletes === undefined ? '' : policyDeletes ? ' (delete it)' : ' (keep it)'}</option>
            <option value="false">Keep it as a VM of its own</option>
            <option value="true">Delete it</option>
          </select>
        </Field>
      </Dialog>
      <Dialog title="Confirm disk change" open={confirmDisks} onClose={() => setConfirmDisks(false)} submitLabel="Confirm" onSubmit={submit(() => api.post<Accepted>(`${path}/confirm-disks`))}>
        <p>{diskChange?.message}</p>
        <p className="muted">Confirmed, replication goes on: the next recovery points have the disks as they are now; the older points keep the disks as they were.</p>
      </Dialog>
      {Object.entries(simple).map(([o, [title, text, submitLabel]]) => (
        <Dialog key={o} title={title} open={dialog === o} onClose={() => setDialog(null)} submitLabel={submitLabel} onSubmit={run(() => api.post<Accepted>(`${path}/${o}`))}>
          <p>{text}</p>
        </Dialog>
      ))}
    </>
  );
}

export function ItemPage({ id }: { id: string }) {
  const l = useLoad(() => loadItem(id), [id], 4000);
  // the item's policy (its pairing's), read again only when it is another one
  const policyId = l.data?.item.replication.policyId;
  const policy = useLoad(() => (policyId ? api.get<Policy>(`/policies/${encodeURIComponent(policyId)}`).catch(() => null) : Promise.resolve(null)), [policyId]);
  return (
    <Loading l={l}>
      {(d) => {
        const { item, points, samples, vm } = d;
        const disks = ((vm?.properties.disks as { id: string; name: string; sizeBytes: number; storageLocation?: string }[] | undefined) ?? []);
        const nics = ((vm?.properties.nics as { id: string; vmNetwork?: string; ip?: string }[] | undefined) ?? []);
        const drills = itemDrills(item);
        // the RPO a policy aims under: its copy frequency, or a continuous policy's point interval
        const settings = policy.data?.settings;
        const copy = settings && (settings.copyMode === 'continuous' ? settings.pointIntervalSeconds : settings.copyFrequencySeconds);
        return (
          <>
            <p>
              <a href={href('items')}>Protected items</a> /
            </p>
            <div className="panel-head">
              <h1>{item.name}</h1>
              <div className="buttons">
                <Badge value={item.state} />
                <Badge value={item.health} />
              </div>
            </div>
            <Section title="Operations">
              <Actions d={d} policy={policy.data ?? null} reload={l.reload} />
            </Section>
            <div className="grid2">
              <Section title="Health">
                <dl className="props">
                  <dt>State</dt>
                  <dd>
                    <Badge value={item.state} /> {item.progress !== null && item.state === 'InitialReplication' ? <Progress value={item.progress} label="initial replication" /> : null}
                  </dd>
                  <dt>Health</dt>
                  <dd>
                    <Badge value={item.health} />
                    {item.healthReasons.length > 0 && (
                      <ul>
                        {item.healthReasons.map((r) => (
                          <li key={r.code}>
                            <code>{r.code}</code> {r.message}
                          </li>
                        ))}
                      </ul>
                    )}
                  </dd>
                  <dt>Ready for failover</dt>
                  <dd>{item.readiness.ready ? 'Yes: a crash-consistent point is at the recovery site' : `No: ${item.readiness.reason}`}</dd>
                  <dt>RPO</dt>
                  <dd>{fmtSeconds(item.rpoSeconds)}</dd>
                  {settings && (
                    <>
                      <dt>Replication</dt>
                      <dd>{settings.copyMode === 'continuous' ? `continuous: a cut every second, a point kept every ${settings.pointIntervalSeconds ?? 5} s` : `a copy every ${fmtSeconds(settings.copyFrequencySeconds)}`}</dd>
                    </>
                  )}
                  {item.replication.group !== undefined && (
                    <>
                      <dt>Replication group</dt>
                      <dd>
                        {item.replication.group}: its points are cut at one instant with the group's other VMs, and a recovery plan fails them over at one group point
                      </dd>
                    </>
                  )}
                  <dt>Last recovery point</dt>
                  <dd>
                    {fmtTime(item.lastRecoveryPointAt)} ({ago(item.lastRecoveryPointAt)})
                  </dd>
                  <dt>Active job</dt>
                  <dd>{item.activeJobId ? <JobLink id={item.activeJobId} /> : '—'}</dd>
                  <dt>Fabric</dt>
                  <dd>{item.fabricId}</dd>
                  <dt>Protected since</dt>
                  <dd>{fmtTime(item.createdAt)}</dd>
                </dl>
              </Section>
              <Section title="RPO history">
                <LineChart
                  label={`RPO of ${item.name}`}
                  format={(v) => fmtSeconds(v)}
                  series={[{ name: 'RPO', points: samples.map((s) => ({ t: Date.parse(s.at), v: s.rpoSeconds })) }]}
                  {...(copy ? { limit: { value: copy, name: settings?.copyMode === 'continuous' ? 'point interval' : 'copy frequency' } } : {})}
                  empty="No RPO samples yet: one is taken a minute while the item replicates."
                />
              </Section>
            </div>
            <Section title={`Recovery points (${points.length})`}>
              <PointTimeline points={points} />
              {points.length > 0 && (
                <details>
                  <summary>All recovery points</summary>
                  <table className="responsive">
                    <thead>
                      <tr>
                        <th>Time</th>
                        <th>Consistency</th>
                        <th>Group cut</th>
                        <th>Id</th>
                      </tr>
                    </thead>
                    <tbody>
                      {points.map((p) => (
                        <tr key={p.id}>
                          <td data-label="Time">{fmtTime(p.at)}</td>
                          <td data-label="Consistency">{p.consistency}</td>
                          <td data-label="Group cut">{p.cut ?? '—'}</td>
                          <td data-label="Id">
                            <code>{p.id}</code>
                          </td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                </details>
              )}
            </Section>
            <div className="grid2">
              <Section title="Disks">
                {disks.length === 0 ? (
                  <Empty>The fabric reports no disks for this VM.</Empty>
                ) : (
                  <table className="responsive">
                    <thead>
                      <tr>
                        <th>Disk</th>
                        <th className="num">Size</th>
                        <th>Storage location</th>
                      </tr>
                    </thead>
                    <tbody>
                      {disks.map((k) => (
                        <tr key={k.id}>
                          <td data-label="Disk">{k.name}</td>
                          <td data-label="Size" className="num">
                            {fmtBytes(k.sizeBytes)}
                          </td>
                          <td data-label="Storage location">{k.storageLocation ?? '—'}</td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                )}
                {nics.length > 0 && (
                  <>
                    <h3>Network adapters</h3>
                    <ul>
                      {nics.map((n) => (
                        <li key={n.id}>
                          {n.vmNetwork ?? 'not connected'}
                          {n.ip ? ` — ${n.ip}` : ''}
                        </li>
                      ))}
                    </ul>
                  </>
                )}
              </Section>
              <Section title="Drills">
                {drills.length === 0 ? (
                  <Empty>No drill yet: run a test failover, then clean it up.</Empty>
                ) : (
                  <table className="responsive">
                    <thead>
                      <tr>
                        <th>Cleaned up</th>
                        <th>Result</th>
                        <th className="num">RTO</th>
                        <th>Point</th>
                        <th>Evidence</th>
                        <th>Notes</th>
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
                          <td data-label="Point">{fmtTime(x.point.at)}</td>
                          <td data-label="Evidence">
                            {x.evidence ? (
                              <details>
                                <summary>
                                  {x.evidence.running ? 'running' : 'off'}
                                  {x.evidence.guestAgentAnswered ? ', guest agent answered' : ', no guest agent'}
                                </summary>
                                <pre className="console">{x.evidence.console || '(the console was empty)'}</pre>
                              </details>
                            ) : (
                              '-'
                            )}
                          </td>
                          <td data-label="Notes">{x.notes ?? ''}</td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                )}
              </Section>
            </div>
            <Section title="Recent events" actions={<a href={`${href('events')}?target=${encodeURIComponent(item.id)}`}>All events</a>}>
              {d.events.length === 0 ? (
                <Empty>No events.</Empty>
              ) : (
                <ul>
                  {d.events.map((e) => (
                    <li key={e.id}>
                      <Badge value={e.severity} /> {e.message} <span className="muted">{ago(e.at)}</span>
                    </li>
                  ))}
                </ul>
              )}
            </Section>
          </>
        );
      }}
    </Loading>
  );
}

