/**
 * Policies: how a pairing's VMs replicate. The form sends what was typed; the vault's
 * rules decide, and its message stands under the field it names.
 */
import { useState } from 'react';
import { api } from '../api';
import type { Policy, PolicySettings } from '../types';
import { Dialog, Empty, Field, fmtSeconds, fmtTime, Loading, Section, useCan, useLoad } from '../ui';
import { ConfirmDelete, useFieldErrors } from './infrastructure-common';

const OFFERED = ['30', '300', '900'];
const OTHER = 'other';
/** the copy select's choice for continuous replication (copyMode continuous) */
const CONTINUOUS = 'continuous';

interface Form {
  name: string;
  /** one of OFFERED, OTHER with `copyOther`, or CONTINUOUS with `pointInterval` */
  copy: string;
  copyOther: string;
  /** continuous: seconds between recovery points */
  pointInterval: string;
  /** a continuous policy's copy frequency, kept for a switch back to cycles */
  copyKept: string;
  retentionHours: string;
  appConsistentFrequencyHours: string;
  port: string;
  compression: boolean;
  method: string;
  startAt: string;
  exportPath: string;
  importPath: string;
  deleteReplicaOnDisable: boolean;
  hostOsVersion: string;
}

/** what a new policy's form starts with: the vault's defaults */
const NEW: Form = {
  name: '',
  copy: '300',
  copyOther: '',
  pointInterval: '5',
  copyKept: '',
  retentionHours: '0',
  appConsistentFrequencyHours: '0',
  port: '8084',
  compression: true,
  method: 'now',
  startAt: '',
  exportPath: '',
  importPath: '',
  deleteReplicaOnDisable: true,
  hostOsVersion: 'any',
};

const FIELDS = [
  'name',
  'copyFrequencySeconds',
  'copyMode',
  'pointIntervalSeconds',
  'retentionHours',
  'appConsistentFrequencyHours',
  'port',
  'compression',
  'initialReplication.method',
  'initialReplication.startAt',
  'initialReplication.exportPath',
  'initialReplication.importPath',
  'deleteReplicaOnDisable',
  'hostOsVersion',
] as const;
const ALIASES = { initialReplication: 'initialReplication.method' };

/** an ISO time as a datetime-local input shows it (local time, to the minute) */
function localInput(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

function formOf(p: Policy): Form {
  const s = p.settings;
  const copy = String(s.copyFrequencySeconds);
  const continuous = s.copyMode === 'continuous';
  const i = s.initialReplication;
  return {
    name: p.name,
    copy: continuous ? CONTINUOUS : OFFERED.includes(copy) ? copy : OTHER,
    copyOther: continuous || OFFERED.includes(copy) ? '' : copy,
    pointInterval: String(s.pointIntervalSeconds ?? 5),
    copyKept: continuous ? copy : '',
    retentionHours: String(s.retentionHours),
    appConsistentFrequencyHours: String(s.appConsistentFrequencyHours),
    port: String(s.port),
    compression: s.compression,
    method: i.method,
    startAt: i.method === 'scheduled' ? localInput(i.startAt) : '',
    exportPath: i.method === 'offline' ? i.exportPath : '',
    importPath: i.method === 'offline' ? i.importPath : '',
    deleteReplicaOnDisable: s.deleteReplicaOnDisable,
    hostOsVersion: s.hostOsVersion,
  };
}

/** a number as typed; an empty field is left to the vault's default, anything else is sent as it is for the vault to judge */
function num(s: string): number | string | undefined {
  const t = s.trim();
  if (t === '') return undefined;
  const n = Number(t);
  return Number.isNaN(n) ? t : n;
}

/** the settings the form holds, as the API takes them */
function settingsOf(f: Form): Record<string, unknown> {
  const initialReplication: Record<string, string> = { method: f.method };
  if (f.method === 'scheduled' && f.startAt.trim() !== '') {
    const at = new Date(f.startAt);
    initialReplication.startAt = Number.isNaN(at.getTime()) ? f.startAt : at.toISOString();
  }
  if (f.method === 'offline') {
    initialReplication.exportPath = f.exportPath;
    initialReplication.importPath = f.importPath;
  }
  const continuous = f.copy === CONTINUOUS;
  const s: Record<string, unknown> = {
    copyMode: continuous ? 'continuous' : 'cycles',
    copyFrequencySeconds: num(continuous ? f.copyKept : f.copy === OTHER ? f.copyOther : f.copy),
    pointIntervalSeconds: continuous ? num(f.pointInterval) : undefined,
    retentionHours: num(f.retentionHours),
    appConsistentFrequencyHours: num(f.appConsistentFrequencyHours),
    port: num(f.port),
    compression: f.compression,
    initialReplication,
    deleteReplicaOnDisable: f.deleteReplicaOnDisable,
    hostOsVersion: f.hostOsVersion,
  };
  for (const k of Object.keys(s)) if (s[k] === undefined) delete s[k];
  return s;
}

function initialSummary(i: PolicySettings['initialReplication']): string {
  switch (i.method) {
    case 'now':
      return 'now';
    case 'scheduled':
      return `scheduled ${fmtTime(i.startAt)}`;
    case 'offline':
      return `offline (${i.exportPath} → ${i.importPath})`;
  }
}

function PolicyDialog({ editing, open, onClose, onSaved }: { editing: Policy | null; open: boolean; onClose: () => void; onSaved: (p: Policy) => void }) {
  const [f, setF] = useState<Form>(NEW);
  const [shownFor, setShownFor] = useState<{ open: boolean; id: string | null }>({ open: false, id: null });
  const fe = useFieldErrors(FIELDS, ALIASES);
  // a dialog opened (again) starts from the policy it edits, or from the defaults
  const id = editing?.id ?? null;
  if (open !== shownFor.open || (open && id !== shownFor.id)) {
    setShownFor({ open, id });
    if (open) {
      setF(editing ? formOf(editing) : NEW);
      fe.clear();
    }
  }
  const set = <K extends keyof Form>(k: K, v: Form[K]) => setF((x) => ({ ...x, [k]: v }));
  const err = (k: (typeof FIELDS)[number]) => fe.errors[k];
  return (
    <Dialog
      title={editing ? `Edit policy ${editing.name}` : 'Create policy'}
      open={open}
      onClose={onClose}
      submitLabel={editing ? 'Save' : 'Create'}
      onSubmit={async () => {
        fe.clear();
        const settings = settingsOf(f);
        try {
          const p = editing ? await api.put<Policy>(`/policies/${encodeURIComponent(editing.id)}`, { name: f.name, settings }) : await api.post<Policy>('/policies', { name: f.name, settings });
          onSaved(p);
        } catch (e) {
          fe.refused(e);
        }
      }}
    >
      <Field label="Name" error={err('name')}>
        <input type="text" name="name" autoComplete="off" value={f.name} onChange={(e) => set('name', e.target.value)} />
      </Field>
      <div className="grid2 infra-form">
        <Field label="Copy frequency" error={f.copy === OTHER ? err('copyMode') : (err('copyFrequencySeconds') ?? err('copyMode'))}>
          <select name="copyFrequencySeconds" value={f.copy} onChange={(e) => set('copy', e.target.value)}>
            <option value="30">30 s</option>
            <option value="300">5 min</option>
            <option value="900">15 min</option>
            <option value={CONTINUOUS}>continuous (writes ship as they are made)</option>
            <option value={OTHER}>another interval…</option>
          </select>
        </Field>
        {f.copy === CONTINUOUS && (
          <Field label="Point interval (seconds)" hint="a crash-consistent recovery point is kept this often, 1 to 60 s" error={err('pointIntervalSeconds')}>
            <input type="number" name="pointIntervalSeconds" inputMode="numeric" value={f.pointInterval} onChange={(e) => set('pointInterval', e.target.value)} />
          </Field>
        )}
        {f.copy === OTHER && (
          <Field label="Interval between copies (seconds)" error={err('copyFrequencySeconds')}>
            <input type="number" name="copyOther" inputMode="numeric" value={f.copyOther} onChange={(e) => set('copyOther', e.target.value)} />
          </Field>
        )}
        <Field label="Retention (hours)" hint="0 keeps only the latest recovery point" error={err('retentionHours')}>
          <input type="number" name="retentionHours" inputMode="numeric" value={f.retentionHours} onChange={(e) => set('retentionHours', e.target.value)} />
        </Field>
        <Field label="App-consistent frequency (hours)" hint="0 for none" error={err('appConsistentFrequencyHours')}>
          <input type="number" name="appConsistentFrequencyHours" inputMode="numeric" value={f.appConsistentFrequencyHours} onChange={(e) => set('appConsistentFrequencyHours', e.target.value)} />
        </Field>
        <Field label="Initial replication" error={err('initialReplication.method')}>
          <select name="initialReplicationMethod" value={f.method} onChange={(e) => set('method', e.target.value)}>
            <option value="now">now</option>
            <option value="scheduled">scheduled</option>
            <option value="offline">offline (export and import)</option>
          </select>
        </Field>
        {f.method === 'scheduled' && (
          <Field label="Start at" error={err('initialReplication.startAt')}>
            <input type="datetime-local" name="startAt" value={f.startAt} onChange={(e) => set('startAt', e.target.value)} />
          </Field>
        )}
        {f.method === 'offline' && (
          <>
            <Field label="Export path at the source" error={err('initialReplication.exportPath')}>
              <input type="text" name="exportPath" value={f.exportPath} onChange={(e) => set('exportPath', e.target.value)} />
            </Field>
            <Field label="Import path at the target" error={err('initialReplication.importPath')}>
              <input type="text" name="importPath" value={f.importPath} onChange={(e) => set('importPath', e.target.value)} />
            </Field>
          </>
        )}
        <Field label="Replication port" error={err('port')}>
          <input type="number" name="port" inputMode="numeric" value={f.port} onChange={(e) => set('port', e.target.value)} />
        </Field>
        <Field label="Host OS version" hint="the hosts' OS version it covers, or any" error={err('hostOsVersion')}>
          <input type="text" name="hostOsVersion" value={f.hostOsVersion} onChange={(e) => set('hostOsVersion', e.target.value)} />
        </Field>
      </div>
      <label className="field inline">
        <input type="checkbox" name="compression" checked={f.compression} onChange={(e) => set('compression', e.target.checked)} />
        <span>Compress replication traffic</span>
      </label>
      {err('compression') && <small className="field-error" role="alert">{err('compression')}</small>}
      <label className="field inline">
        <input type="checkbox" name="deleteReplicaOnDisable" checked={f.deleteReplicaOnDisable} onChange={(e) => set('deleteReplicaOnDisable', e.target.checked)} />
        <span>Delete the replica when protection is disabled</span>
      </label>
      {err('deleteReplicaOnDisable') && <small className="field-error" role="alert">{err('deleteReplicaOnDisable')}</small>}
      <p className="muted">Authentication is by certificate, from the vault&apos;s CA.</p>
    </Dialog>
  );
}

export function Policies() {
  const can = useCan()('configure');
  const l = useLoad(() => api.all<Policy>('/policies'), []);
  const [editing, setEditing] = useState<Policy | null>(null);
  const [open, setOpen] = useState(false);
  const [deleting, setDeleting] = useState<Policy | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  return (
    <Section
      title="Policies"
      actions={
        can && (
          <button
            type="button"
            className="primary"
            onClick={() => {
              setEditing(null);
              setOpen(true);
            }}
          >
            Create policy
          </button>
        )
      }
    >
      <p className="muted">A policy says how the VMs of a cloud pairing replicate: how often a copy is sent, how long recovery points are kept, and how the first copy is made.</p>
      {saved && (
        <p className="notice" role="status">
          {saved}
        </p>
      )}
      <Loading l={l}>
        {(policies) =>
          policies.length === 0 ? (
            <Empty>No policy yet{can ? ': create one, then pair clouds under it.' : '.'}</Empty>
          ) : (
            <table className="responsive">
              <thead>
                <tr>
                  <th>Name</th>
                  <th>Copy frequency</th>
                  <th>Retention</th>
                  <th>App-consistent</th>
                  <th>Initial replication</th>
                  <th>Compression</th>
                  <th className="num">Port</th>
                  <th>Disabling protection</th>
                  <th>Host OS version</th>
                  <th>Changed</th>
                  {can && <th>Actions</th>}
                </tr>
              </thead>
              <tbody>
                {policies.map((p) => {
                  const s = p.settings;
                  return (
                    <tr key={p.id}>
                      <td data-label="Name">{p.name}</td>
                      <td data-label="Copy frequency">{s.copyMode === 'continuous' ? `continuous, a point every ${s.pointIntervalSeconds ?? 5} s` : `every ${fmtSeconds(s.copyFrequencySeconds)}`}</td>
                      <td data-label="Retention">{s.retentionHours === 0 ? 'latest point only' : `${s.retentionHours} h`}</td>
                      <td data-label="App-consistent">{s.appConsistentFrequencyHours === 0 ? 'none' : `every ${s.appConsistentFrequencyHours} h`}</td>
                      <td data-label="Initial replication">{initialSummary(s.initialReplication)}</td>
                      <td data-label="Compression">{s.compression ? 'on' : 'off'}</td>
                      <td data-label="Port" className="num">
                        {s.port}
                      </td>
                      <td data-label="Disabling protection">{s.deleteReplicaOnDisable ? 'deletes the replica' : 'keeps the replica'}</td>
                      <td data-label="Host OS version">{s.hostOsVersion}</td>
                      <td data-label="Changed">{fmtTime(p.updatedAt)}</td>
                      {can && (
                        <td data-label="Actions">
                          <div className="buttons">
                            <button
                              type="button"
                              className="small"
                              aria-label={`Edit policy ${p.name}`}
                              onClick={() => {
                                setEditing(p);
                                setOpen(true);
                              }}
                            >
                              Edit
                            </button>
                            <button type="button" className="small" aria-label={`Delete policy ${p.name}`} onClick={() => setDeleting(p)}>
                              Delete
                            </button>
                          </div>
                        </td>
                      )}
                    </tr>
                  );
                })}
              </tbody>
            </table>
          )
        }
      </Loading>
      {can && (
        <>
          <PolicyDialog
            editing={editing}
            open={open}
            onClose={() => setOpen(false)}
            onSaved={(p) => {
              setSaved(editing ? `Policy ${p.name} is changed.` : `Policy ${p.name} is created.`);
              l.reload();
            }}
          />
          <ConfirmDelete
            title="Delete policy"
            open={deleting !== null}
            onClose={() => setDeleting(null)}
            onConfirm={async () => {
              if (!deleting) return;
              await api.del(`/policies/${encodeURIComponent(deleting.id)}`);
              setSaved(`Policy ${deleting.name} is deleted.`);
              l.reload();
            }}
          >
            <p>
              Delete policy <strong>{deleting?.name}</strong>? The vault refuses while a cloud pairing uses it.
            </p>
          </ConfirmDelete>
        </>
      )}
    </Section>
  );
}
