/** The dashboard: health of the protected items, RPO over time, jobs that need a look, active alerts, drills due. */
import { api, type List } from '../api';
import { LineChart } from '../charts';
import { DRILL_INTERVAL_DAYS, isDue, lastDrillAt } from '../drills';
import { href } from '../router';
import type { Alert, ItemSummary, Job, PlanDrill, RecoveryPlan } from '../types';
import { ago, Badge, Empty, fmtSeconds, JobLink, Loading, Section, useLoad } from '../ui';

const HEALTH: { key: string; label: string; tone: string }[] = [
  { key: 'Healthy', label: 'Healthy', tone: 'ok' },
  { key: 'Warning', label: 'Warning', tone: 'warn' },
  { key: 'Critical', label: 'Critical', tone: 'bad' },
  { key: 'NotApplicable', label: 'Not applicable', tone: 'muted' },
];

interface RpoBucket {
  at: string;
  worstRpoSeconds: number | null;
  meanRpoSeconds: number | null;
  items: number;
}

interface Overview {
  /** every item at a glance, counted by the vault (a vault may hold 100,000) */
  summary: ItemSummary;
  rpo: RpoBucket[];
  failed: Job[];
  /** running and queued */
  running: Job[];
  queued: number;
  waiting: Job[];
  alerts: Alert[];
  plans: { plan: RecoveryPlan; last: number | null }[];
}

async function overview(): Promise<Overview> {
  const since = new Date(Date.now() - 24 * 3600_000).toISOString();
  const [summary, rpo, failed, running, queued, waiting, alerts, plans] = await Promise.all([
    api.get<ItemSummary>('/protected-items/summary'),
    api.get<List<RpoBucket>>('/rpo-history', { since, bucketSeconds: 300 }),
    api.get<List<Job>>('/jobs', { state: 'Failed', since, limit: 200 }),
    api.get<List<Job>>('/jobs', { state: 'Running', limit: 200 }),
    api.get<List<Job>>('/jobs', { state: 'Queued', limit: 200 }),
    api.get<List<Job>>('/jobs', { state: 'WaitingForInput', limit: 200 }),
    api.get<List<Alert>>('/alerts', { state: 'Active', limit: 200 }),
    api.all<RecoveryPlan>('/recovery-plans'),
  ]);
  const withDrills = await Promise.all(plans.map(async (plan) => ({ plan, drills: (await api.get<List<PlanDrill>>(`/recovery-plans/${encodeURIComponent(plan.id)}/drills`)).items })));
  return {
    summary,
    rpo: rpo.items,
    failed: failed.items,
    running: [...running.items, ...queued.items],
    queued: queued.items.length,
    waiting: waiting.items,
    alerts: alerts.items,
    plans: withDrills.map(({ plan, drills }) => ({ plan, last: lastDrillAt(drills) })),
  };
}

function JobList({ jobs, empty }: { jobs: Job[]; empty: string }) {
  if (jobs.length === 0) return <Empty>{empty}</Empty>;
  return (
    <ul>
      {jobs.slice(0, 8).map((j) => (
        <li key={j.id}>
          <JobLink id={j.id}>{j.kind}</JobLink> {j.target ? <span className="muted">{j.target}</span> : null} <Badge value={j.state} /> {j.error ? <span className="muted">{j.error.code}</span> : j.currentStep ? <span className="muted">{j.currentStep}</span> : null}
        </li>
      ))}
      {jobs.length > 8 && <li className="muted">and {jobs.length - 8} more</li>}
    </ul>
  );
}

export function Dashboard() {
  const l = useLoad(overview, [], 5000);
  return (
    <>
      <h1>Dashboard</h1>
      <Loading l={l}>
        {(o) => {
          const counts = new Map(Object.entries(o.summary.byHealth));
          const duePlans = o.plans.filter((p) => isDue(p.last));
          const dueItems = o.summary.drillsDue.items;
          const dueCount = o.summary.drillsDue.count;
          const failed24 = o.failed;
          const worst = o.summary.worstRpo;
          return (
            <>
              <div className="tiles" role="list" aria-label="Health of protected items">
                {HEALTH.map((h) => (
                  <a key={h.key} role="listitem" className={`tile ${h.tone}`} href={`${href('items')}?health=${h.key}`}>
                    <span className="n">{counts.get(h.key) ?? 0}</span>
                    {h.label}
                  </a>
                ))}
                <a role="listitem" className="tile" href={href('items')}>
                  <span className="n">{o.summary.total}</span>
                  protected items
                </a>
              </div>
              <div className="tiles" role="list" aria-label="Jobs and alerts">
                <a role="listitem" className={`tile ${failed24.length ? 'bad' : 'ok'}`} href={`${href('jobs')}?state=Failed&since=24h`}>
                  <span className="n">{failed24.length}</span>
                  jobs failed in the last 24 h
                </a>
                <a role="listitem" className="tile busy" href={`${href('jobs')}?state=${o.queued > 0 && o.queued === o.running.length ? 'Queued' : 'Running'}`}>
                  <span className="n">{o.running.length}</span>
                  jobs in progress{o.queued > 0 ? ` (${o.queued} queued)` : ''}
                </a>
                <a role="listitem" className={`tile ${o.waiting.length ? 'warn' : ''}`} href={`${href('jobs')}?state=WaitingForInput`}>
                  <span className="n">{o.waiting.length}</span>
                  jobs waiting for input
                </a>
                <a role="listitem" className={`tile ${o.alerts.length ? 'bad' : 'ok'}`} href={href('events')}>
                  <span className="n">{o.alerts.length}</span>
                  active alerts
                </a>
                <a
                  role="listitem"
                  className={`tile ${duePlans.length + dueCount ? 'warn' : 'ok'}`}
                  href={href('dashboard')}
                  onClick={(e) => {
                    // the panel below, without leaving the page's route
                    e.preventDefault();
                    const panel = document.getElementById('drills');
                    panel?.scrollIntoView();
                    panel?.focus();
                  }}
                >
                  <span className="n">{duePlans.length + dueCount}</span>
                  drills due
                </a>
              </div>
              <div className="grid2">
                <Section title="RPO over the last 24 hours">
                  <LineChart
                    label="RPO of all protected items"
                    format={(v) => fmtSeconds(v)}
                    series={[
                      { name: 'worst item', points: o.rpo.map((b) => ({ t: Date.parse(b.at), v: b.worstRpoSeconds })) },
                      { name: 'mean', className: 'alt', points: o.rpo.map((b) => ({ t: Date.parse(b.at), v: b.meanRpoSeconds })) },
                    ]}
                    empty="No RPO samples yet: they are taken once a minute while items replicate."
                  />
                  <p className="muted">Worst RPO now: {worst ? <>{fmtSeconds(worst.rpoSeconds)} (<a href={href('items', worst.id)}>{worst.name}</a>)</> : '—'}</p>
                </Section>
                <Section title="Active alerts">
                  {o.alerts.length === 0 ? (
                    <Empty>No active alerts.</Empty>
                  ) : (
                    <ul>
                      {o.alerts.slice(0, 10).map((a) => (
                        <li key={a.id}>
                          <Badge value={a.severity} /> {a.message} <span className="muted">{ago(a.at)}</span>
                        </li>
                      ))}
                    </ul>
                  )}
                </Section>
                <Section title="Jobs failed in the last 24 hours">
                  <JobList jobs={failed24} empty="No job failed in the last 24 hours." />
                </Section>
                <Section title="Jobs in progress and waiting for input">
                  <JobList jobs={[...o.waiting, ...o.running]} empty="No job runs now." />
                </Section>
              </div>
              <section id="drills" className="panel" aria-label="Drills due" tabIndex={-1}>
                <header className="panel-head">
                  <h2>Drills due</h2>
                </header>
                <p className="muted">A recovery plan or a protected item is due for a drill (a test failover, then its cleanup) when it has had none that succeeded in {DRILL_INTERVAL_DAYS} days.</p>
                {duePlans.length === 0 && dueCount === 0 ? (
                  <Empty>Every plan and protected item was drilled in the last {DRILL_INTERVAL_DAYS} days.</Empty>
                ) : (
                  <ul>
                    {duePlans.map((p) => (
                      <li key={p.plan.id}>
                        Recovery plan <a href={href('plans', p.plan.id)}>{p.plan.name}</a>: {p.last === null ? 'never drilled' : `last drilled ${ago(new Date(p.last).toISOString())}`}
                      </li>
                    ))}
                    {dueItems.map((i) => (
                      <li key={i.id}>
                        Protected item <a href={href('items', i.id)}>{i.name}</a>: never drilled in {DRILL_INTERVAL_DAYS} days
                      </li>
                    ))}
                    {dueCount > dueItems.length && <li className="muted">and {dueCount - dueItems.length} more items</li>}
                  </ul>
                )}
              </section>
            </>
          );
        }}
      </Loading>
    </>
  );
}
