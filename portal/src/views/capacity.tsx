/** The capacity planner: from measured churn and disk sizes, what each target RPO needs, the first copy's time, replica storage, and resyncs ahead. */
import { useState } from 'react';
import { api } from '../api';
import { href } from '../router';
import type { CapacityPlan } from '../types';
import { Empty, ErrorBox, Field, fmtBytes, fmtRate, fmtSeconds, fmtTime, Loading, Section, useLoad } from '../ui';

const LINKS: [number, string][] = [
  [1_250_000, '10 Mbit/s'],
  [12_500_000, '100 Mbit/s'],
  [125_000_000, '1 Gbit/s'],
  [1_250_000_000, '10 Gbit/s'],
];

export function Capacity() {
  const [rpoText, setRpoText] = useState('60,300,900,3600');
  const [rpo, setRpo] = useState('60,300,900,3600');
  const [link, setLink] = useState(12_500_000);
  const [formError, setFormError] = useState<string | undefined>(undefined);
  const l = useLoad(() => api.get<CapacityPlan>('/capacity', { rpoSeconds: rpo, bandwidthBytesPerSec: link }), [rpo, link], 30_000);
  return (
    <>
      <h1>Capacity planner</h1>
      <p className="muted">From the churn each agent measures (sampled once a minute) and the disks&apos; sizes. Items not measured yet count their disks only.</p>
      <form
        className="filters"
        aria-label="Planner settings"
        onSubmit={(e) => {
          e.preventDefault();
          const v = rpoText.replace(/\s+/g, '');
          if (!/^[0-9]+(,[0-9]+)*$/.test(v)) {
            setFormError('target RPOs are whole seconds separated by commas, such as 60,300,900');
            return;
          }
          setFormError(undefined);
          setRpo(v);
        }}
      >
        <Field label="Target RPOs (seconds)" error={formError}>
          <input value={rpoText} onChange={(e) => setRpoText(e.target.value)} inputMode="numeric" />
        </Field>
        <Field label="Link for initial replication">
          <select value={link} onChange={(e) => setLink(Number(e.target.value))}>
            {LINKS.map(([v, label]) => (
              <option key={v} value={v}>
                {label}
              </option>
            ))}
          </select>
        </Field>
        <button type="submit">Plan</button>
      </form>
      <Loading l={l}>
        {(p) => (
          <>
            {l.error ? <ErrorBox error={l.error} /> : null}
            <div className="tiles" role="list" aria-label="Totals">
              <div role="listitem" className="tile">
                <span className="n">{p.totals.items}</span>
                items ({p.totals.measured} measured)
              </div>
              <div role="listitem" className="tile">
                <span className="n">{fmtBytes(p.totals.diskBytes)}</span>
                of disks
              </div>
              <div role="listitem" className="tile">
                <span className="n">{fmtBytes(p.totals.churnBytesPerSec)}/s</span>
                churn now
              </div>
              <div role="listitem" className="tile">
                <span className="n">{fmtSeconds(p.totals.initialReplicationSeconds)}</span>
                initial replication of all
              </div>
              <div role="listitem" className="tile">
                <span className="n">{fmtBytes(p.totals.replicaStorageBytes)}</span>
                replica storage
              </div>
              <div role="listitem" className={`tile ${p.totals.firstResync ? 'warn' : 'ok'}`}>
                <span className="n">{p.totals.firstResync ? fmtSeconds(p.totals.firstResync.inSeconds) : 'none'}</span>
                {p.totals.firstResync ? `until ${p.totals.firstResync.item} needs a resync` : 'forced resync ahead'}
              </div>
            </div>
            <Section title="Bandwidth for each target RPO (all items)">
              <table>
                <thead>
                  <tr>
                    {p.totals.bandwidthForRpo.map((b) => (
                      <th key={b.rpoSeconds} className="num" scope="col">
                        RPO {fmtSeconds(b.rpoSeconds)}
                      </th>
                    ))}
                  </tr>
                </thead>
                <tbody>
                  <tr>
                    {p.totals.bandwidthForRpo.map((b) => (
                      <td key={b.rpoSeconds} className="num">
                        {fmtRate(b.bytesPerSec)}
                      </td>
                    ))}
                  </tr>
                </tbody>
              </table>
            </Section>
            <Section title="Per item">
              {p.items.length === 0 ? (
                <Empty>No protected items yet.</Empty>
              ) : (
                <table className="responsive">
                  <thead>
                    <tr>
                      <th>Item</th>
                      <th className="num">Disks</th>
                      <th className="num">Churn (peak)</th>
                      {p.totals.bandwidthForRpo.map((b) => (
                        <th key={b.rpoSeconds} className="num">
                          RPO {fmtSeconds(b.rpoSeconds)}
                        </th>
                      ))}
                      <th className="num">Initial replication</th>
                      <th className="num">Replica storage</th>
                      <th>Forced resync</th>
                    </tr>
                  </thead>
                  <tbody>
                    {p.items.map((i) => (
                      <tr key={i.id}>
                        <td data-label="Item">
                          <a href={href('items', i.id)}>{i.name}</a>
                        </td>
                        <td data-label="Disks" className="num">
                          {fmtBytes(i.diskBytes)}
                        </td>
                        <td data-label="Churn (peak)" className="num">
                          {i.measured ? `${fmtBytes(i.churnBytesPerSec)}/s (${fmtBytes(i.peakChurnBytesPerSec)}/s)` : <span className="muted">not measured yet</span>}
                        </td>
                        {i.bandwidthForRpo.map((b) => (
                          <td key={b.rpoSeconds} data-label={`RPO ${fmtSeconds(b.rpoSeconds)}`} className="num">
                            {b.bytesPerSec === null ? '—' : fmtRate(b.bytesPerSec)}
                          </td>
                        ))}
                        <td data-label="Initial replication" className="num">
                          {i.initialReplicationSeconds === null ? <span className="muted">never catches up on this link</span> : fmtSeconds(i.initialReplicationSeconds)}
                        </td>
                        <td data-label="Replica storage" className="num">
                          {fmtBytes(i.replicaStorageBytes)}
                        </td>
                        <td data-label="Forced resync">
                          {i.resync.inSeconds === null ? (
                            <span className="muted">not at this rate (logs {fmtBytes(i.resync.pendingLogBytes)} of {fmtBytes(i.resync.thresholdBytes)})</span>
                          ) : (
                            <>
                              in {fmtSeconds(i.resync.inSeconds)} ({fmtTime(i.resync.at)}): logs grow {fmtBytes(i.resync.growthBytesPerSec)}/s toward {fmtBytes(i.resync.thresholdBytes)}
                            </>
                          )}
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              )}
            </Section>
          </>
        )}
      </Loading>
    </>
  );
}
