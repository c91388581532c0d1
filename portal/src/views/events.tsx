/** Events (what happened, newest first) and alerts (what needs someone), with filters; alerts can be marked resolved. */
import { useRef, useState } from 'react';
import { api, type List } from '../api';
import { useRoute } from '../router';
import type { Alert, VaultEvent } from '../types';
import { ago, Badge, Empty, ErrorBox, Field, fmtTime, Loading, Section, useCan, useLoad } from '../ui';

function Alerts() {
  const [state, setState] = useState<'Active' | 'Resolved' | ''>('Active');
  const can = useCan();
  const [error, setError] = useState<unknown>(undefined);
  const l = useLoad(() => api.get<List<Alert>>('/alerts', { state, limit: 200 }), [state], 5000);
  return (
    <Section
      title="Alerts"
      actions={
        <Field label="Alert state">
          <select value={state} onChange={(e) => setState(e.target.value as typeof state)}>
            <option value="Active">Active</option>
            <option value="Resolved">Resolved</option>
            <option value="">All</option>
          </select>
        </Field>
      }
    >
      <ErrorBox error={error} />
      <Loading l={l}>
        {(d) =>
          d.items.length === 0 ? (
            <Empty>No {state ? state.toLowerCase() : ''} alerts.</Empty>
          ) : (
            <table className="responsive">
              <thead>
                <tr>
                  <th>When</th>
                  <th>Severity</th>
                  <th>Alert</th>
                  <th>Target</th>
                  <th>Delivered</th>
                  <th>State</th>
                </tr>
              </thead>
              <tbody>
                {d.items.map((a) => (
                  <tr key={a.id}>
                    <td data-label="When" title={fmtTime(a.at)}>
                      {ago(a.at)}
                    </td>
                    <td data-label="Severity">
                      <Badge value={a.severity} />
                    </td>
                    <td data-label="Alert">
                      {a.message} <span className="muted">({a.kind})</span>
                    </td>
                    <td data-label="Target">{a.target ?? '—'}</td>
                    <td data-label="Delivered">{a.deliveries.length === 0 ? '—' : a.deliveries.map((x) => `${x.channel} ${x.to}: ${x.ok ? 'ok' : (x.error ?? 'failed')}`).join('; ')}</td>
                    <td data-label="State">
                      <Badge value={a.state} />{' '}
                      {a.state === 'Active' && can('operate') && (
                        <button
                          type="button"
                          className="small"
                          aria-label={`Resolve alert: ${a.message}`}
                          onClick={async () => {
                            setError(undefined);
                            try {
                              await api.post(`/alerts/${encodeURIComponent(a.id)}/resolve`);
                              l.reload();
                            } catch (e) {
                              setError(e);
                            }
                          }}
                        >
                          Resolve
                        </button>
                      )}
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

function EventList() {
  const route = useRoute();
  const [target, setTarget] = useState(route.query.get('target') ?? '');
  const [kind, setKind] = useState('');
  const [pages, setPages] = useState<VaultEvent[][]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(undefined);
  // while older pages are shown, the refresh leaves the list alone (a newer first page would
  // leave a gap before them); a changed filter starts over
  const shown = useRef<{ key: string; first: VaultEvent[]; paged: boolean }>({ key: '', first: [], paged: false });
  const l = useLoad(
    async () => {
      const key = `${target}\u0000${kind}`;
      if (shown.current.key === key && shown.current.paged) return shown.current.first;
      const r = await api.get<List<VaultEvent>>('/events', { target, kind, limit: 100 });
      shown.current = { key, first: r.items, paged: false };
      setPages([]);
      setNext(r.next);
      return r.items;
    },
    [target, kind],
    10_000,
  );
  const more = async () => {
    if (!next) return;
    try {
      const r = await api.get<List<VaultEvent>>('/events', { target, kind, limit: 100, after: next });
      shown.current.paged = true;
      setPages((p) => [...p, r.items]);
      setNext(r.next);
    } catch (e) {
      setError(e);
    }
  };
  return (
    <Section title="Events">
      <div className="filters" role="search" aria-label="Filter events">
        <Field label="Target (item, plan or fabric id)">
          <input value={target} onChange={(e) => setTarget(e.target.value.trim())} />
        </Field>
        <Field label="Kind">
          <input value={kind} onChange={(e) => setKind(e.target.value.trim())} placeholder="such as item.health" />
        </Field>
      </div>
      <ErrorBox error={error} />
      <Loading l={l}>
        {(first) => {
          const rows = [...first, ...pages.flat()];
          return rows.length === 0 ? (
            <Empty>No events.</Empty>
          ) : (
            <>
              <table className="responsive">
                <thead>
                  <tr>
                    <th>When</th>
                    <th>Severity</th>
                    <th>Kind</th>
                    <th>Event</th>
                    <th>Target</th>
                  </tr>
                </thead>
                <tbody>
                  {rows.map((e) => (
                    <tr key={e.id}>
                      <td data-label="When" title={fmtTime(e.at)}>
                        {ago(e.at)}
                      </td>
                      <td data-label="Severity">
                        <Badge value={e.severity} />
                      </td>
                      <td data-label="Kind">
                        <code>{e.kind}</code>
                      </td>
                      <td data-label="Event">{e.message}</td>
                      <td data-label="Target">{e.target ?? '—'}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
              {next && (
                <button type="button" onClick={more}>
                  Load more
                </button>
              )}
            </>
          );
        }}
      </Loading>
    </Section>
  );
}

export function Events() {
  return (
    <>
      <h1>Events and alerts</h1>
      <Alerts />
      <EventList />
    </>
  );
}
