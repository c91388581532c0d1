/** Cloud pairings (a source cloud, a target cloud, a policy) and the network and storage mappings a failover follows. */
import { useState } from 'react';
import { api } from '../api';
import type { CloudPairing, Fabric, InventoryObject, Mapping, Policy } from '../types';
import { Dialog, Empty, ErrorBox, Field, fmtTime, JobLink, Loading, Section, useCan, useLoad } from '../ui';
import { byId, ConfirmDelete, names, ObjectOptions, objectLabel, useFieldErrors } from './infrastructure-common';

// ---- cloud pairings ----------------------------------------------------------------------

const PAIRING_FIELDS = ['sourceCloudId', 'targetCloudId', 'policyId'] as const;

async function loadPairings() {
  const [pairings, policies, clouds, fabrics] = await Promise.all([api.all<CloudPairing>('/cloud-pairings'), api.all<Policy>('/policies'), api.all<InventoryObject>('/clouds'), api.all<Fabric>('/fabrics')]);
  return { pairings, policies, clouds, fabrics };
}

function CreatePairing({ open, onClose, onCreated }: { open: boolean; onClose: () => void; onCreated: () => void }) {
  const [sourceCloudId, setSource] = useState('');
  const [targetCloudId, setTarget] = useState('');
  const [policyId, setPolicy] = useState('');
  const [wasOpen, setWasOpen] = useState(false);
  const fe = useFieldErrors(PAIRING_FIELDS);
  const choices = useLoad(() => (open ? loadPairings() : Promise.resolve(undefined)), [open]);
  if (open !== wasOpen) {
    setWasOpen(open);
    if (open) {
      setSource('');
      setTarget('');
      setPolicy('');
      fe.clear();
    }
  }
  const d = choices.data;
  const fabrics = byId(d?.fabrics ?? []);
  return (
    <Dialog
      title="Create cloud pairing"
      open={open}
      onClose={onClose}
      submitLabel="Create"
      onSubmit={async () => {
        fe.clear();
        try {
          await api.post<CloudPairing>('/cloud-pairings', { sourceCloudId, targetCloudId, policyId });
        } catch (e) {
          fe.refused(e);
        }
        onCreated();
      }}
    >
      <p className="muted">The VMs of the source cloud replicate to the target cloud (on another fabric, or on the same one) as the chosen policy says.</p>
      <Field label="Source cloud" error={fe.errors.sourceCloudId}>
        <select name="sourceCloudId" required value={sourceCloudId} onChange={(e) => setSource(e.target.value)}>
          <ObjectOptions objects={d?.clouds ?? []} fabrics={fabrics} placeholder="Choose the cloud to protect…" />
        </select>
      </Field>
      <Field label="Target cloud" error={fe.errors.targetCloudId}>
        <select name="targetCloudId" required value={targetCloudId} onChange={(e) => setTarget(e.target.value)}>
          <ObjectOptions objects={d?.clouds ?? []} fabrics={fabrics} placeholder="Choose the recovery cloud…" />
        </select>
      </Field>
      <Field label="Policy" error={fe.errors.policyId} hint={d && d.policies.length === 0 ? 'There is none yet: create one on the Policies tab first.' : undefined}>
        <select name="policyId" required value={policyId} onChange={(e) => setPolicy(e.target.value)}>
          <option value="">Choose…</option>
          {(d?.policies ?? []).map((p) => (
            <option key={p.id} value={p.id}>
              {p.name}
            </option>
          ))}
        </select>
      </Field>
      <ErrorBox error={choices.error} />
    </Dialog>
  );
}

export function Pairings() {
  const can = useCan()('configure');
  const l = useLoad(loadPairings, []);
  const [open, setOpen] = useState(false);
  const [deleting, setDeleting] = useState<{ pairing: CloudPairing; label: string } | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  return (
    <Section
      title="Cloud pairings"
      actions={
        can && (
          <button type="button" className="primary" onClick={() => setOpen(true)}>
            Create cloud pairing
          </button>
        )
      }
    >
      <p className="muted">A cloud pairing protects the VMs of a source cloud at a target cloud, under a policy. Map the VM networks and storage classifications of the two fabrics as well, so that failed-over VMs are connected and placed.</p>
      {notice && (
        <p className="notice" role="status">
          {notice}
        </p>
      )}
      <Loading l={l}>
        {({ pairings, policies, clouds, fabrics }) => {
          const cloudMap = byId(clouds);
          const fabricMap = byId(fabrics);
          const policyNames = names(policies);
          const cloud = (id: string) => objectLabel(id, cloudMap, fabricMap);
          return pairings.length === 0 ? (
            <Empty>No cloud is paired yet{can ? ': create a cloud pairing.' : '.'}</Empty>
          ) : (
            <table className="responsive">
              <thead>
                <tr>
                  <th>Source cloud</th>
                  <th>Target cloud</th>
                  <th>Policy</th>
                  <th>Created</th>
                  {can && <th>Actions</th>}
                </tr>
              </thead>
              <tbody>
                {pairings.map((p) => {
                  const label = `${cloud(p.sourceCloudId)} → ${cloud(p.targetCloudId)}`;
                  return (
                    <tr key={p.id}>
                      <td data-label="Source cloud">{cloud(p.sourceCloudId)}</td>
                      <td data-label="Target cloud">{cloud(p.targetCloudId)}</td>
                      <td data-label="Policy">{policyNames.get(p.policyId) ?? p.policyId}</td>
                      <td data-label="Created">{fmtTime(p.createdAt)}</td>
                      {can && (
                        <td data-label="Actions">
                          <button type="button" className="small" aria-label={`Delete cloud pairing ${label}`} onClick={() => setDeleting({ pairing: p, label })}>
                            Delete
                          </button>
                        </td>
                      )}
                    </tr>
                  );
                })}
              </tbody>
            </table>
          );
        }}
      </Loading>
      {can && (
        <>
          <CreatePairing
            open={open}
            onClose={() => setOpen(false)}
            onCreated={() => {
              setNotice('The cloud pairing is created: its source cloud\'s VMs can be protected now.');
              l.reload();
            }}
          />
          <ConfirmDelete
            title="Delete cloud pairing"
            open={deleting !== null}
            onClose={() => setDeleting(null)}
            onConfirm={async () => {
              if (!deleting) return;
              await api.del(`/cloud-pairings/${encodeURIComponent(deleting.pairing.id)}`);
              setNotice(`The cloud pairing ${deleting.label} is deleted.`);
              l.reload();
            }}
          >
            <p>
              Delete the cloud pairing <strong>{deleting?.label}</strong>? The vault refuses while it covers protected items.
            </p>
          </ConfirmDelete>
        </>
      )}
    </Section>
  );
}

// ---- network and storage mappings ----------------------------------------------------------

interface MappingKind {
  /** API path */
  path: string;
  title: string;
  /** the mapped objects, e.g. "VM network" */
  what: string;
  /** their inventory list */
  objects: string;
  about: string;
}

const NETWORK: MappingKind = {
  path: '/network-mappings',
  title: 'Network mappings',
  what: 'VM network',
  objects: '/vm-networks',
  about: 'A failed-over VM is connected to the target VM network its source VM network is mapped to.',
};
const STORAGE: MappingKind = {
  path: '/storage-mappings',
  title: 'Storage mappings',
  what: 'storage classification',
  objects: '/storage-classifications',
  about: 'A replica\'s disks are placed on storage of the target classification its source classification is mapped to.',
};

const MAPPING_FIELDS = ['sourceId', 'targetId'] as const;
const cap = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

async function loadMappings(kind: MappingKind) {
  const [mappings, objects, fabrics] = await Promise.all([api.all<Mapping>(kind.path), api.all<InventoryObject>(kind.objects), api.all<Fabric>('/fabrics')]);
  return { mappings, objects, fabrics };
}

function CreateMapping({ kind, open, onClose, onCreated }: { kind: MappingKind; open: boolean; onClose: () => void; onCreated: (m: Mapping & { reconnectJobId?: string | null }) => void }) {
  const [sourceId, setSource] = useState('');
  const [targetId, setTarget] = useState('');
  const [wasOpen, setWasOpen] = useState(false);
  const fe = useFieldErrors(MAPPING_FIELDS);
  const choices = useLoad(() => (open ? loadMappings(kind) : Promise.resolve(undefined)), [open, kind]);
  if (open !== wasOpen) {
    setWasOpen(open);
    if (open) {
      setSource('');
      setTarget('');
      fe.clear();
    }
  }
  const d = choices.data;
  const fabrics = byId(d?.fabrics ?? []);
  return (
    <Dialog
      title={`Create ${kind.what === 'VM network' ? 'network' : 'storage'} mapping`}
      open={open}
      onClose={onClose}
      submitLabel="Create"
      onSubmit={async () => {
        fe.clear();
        let m: Mapping & { reconnectJobId?: string | null };
        try {
          m = await api.post<Mapping & { reconnectJobId?: string | null }>(kind.path, { sourceId, targetId });
        } catch (e) {
          return fe.refused(e);
        }
        onCreated(m);
      }}
    >
      <p className="muted">{kind.about}</p>
      <Field label={`Source ${kind.what}`} error={fe.errors.sourceId}>
        <select name="sourceId" required value={sourceId} onChange={(e) => setSource(e.target.value)}>
          <ObjectOptions objects={d?.objects ?? []} fabrics={fabrics} placeholder="Choose at the primary site…" />
        </select>
      </Field>
      <Field label={`Target ${kind.what}`} error={fe.errors.targetId}>
        <select name="targetId" required value={targetId} onChange={(e) => setTarget(e.target.value)}>
          <ObjectOptions objects={d?.objects ?? []} fabrics={fabrics} placeholder="Choose at the recovery site…" />
        </select>
      </Field>
      <ErrorBox error={choices.error} />
    </Dialog>
  );
}

function MappingSection({ kind }: { kind: MappingKind }) {
  const can = useCan()('configure');
  const l = useLoad(() => loadMappings(kind), [kind]);
  const [open, setOpen] = useState(false);
  const [deleting, setDeleting] = useState<{ mapping: Mapping; label: string } | null>(null);
  const [notice, setNotice] = useState<{ text: string; jobId?: string | null | undefined } | null>(null);
  const short = kind === NETWORK ? 'network mapping' : 'storage mapping';
  return (
    <Section
      title={kind.title}
      actions={
        can && (
          <button type="button" className="primary" onClick={() => setOpen(true)}>
            Create {short}
          </button>
        )
      }
    >
      <p className="muted">{kind.about}</p>
      {notice && (
        <p className="notice" role="status">
          {notice.text}
          {notice.jobId ? (
            <>
              {' '}
              Replicas are reconnected by <JobLink id={notice.jobId} />.
            </>
          ) : null}
        </p>
      )}
      <Loading l={l}>
        {({ mappings, objects, fabrics }) => {
          const objectMap = byId(objects);
          const fabricMap = byId(fabrics);
          const label = (id: string) => objectLabel(id, objectMap, fabricMap);
          return mappings.length === 0 ? (
            <Empty>No {kind.what} is mapped yet.</Empty>
          ) : (
            <table className="responsive">
              <thead>
                <tr>
                  <th>Source {kind.what}</th>
                  <th>Target {kind.what}</th>
                  <th>Created</th>
                  {can && <th>Actions</th>}
                </tr>
              </thead>
              <tbody>
                {mappings.map((m) => {
                  const text = `${label(m.sourceId)} → ${label(m.targetId)}`;
                  return (
                    <tr key={m.id}>
                      <td data-label={`Source ${kind.what}`}>{label(m.sourceId)}</td>
                      <td data-label={`Target ${kind.what}`}>{label(m.targetId)}</td>
                      <td data-label="Created">{fmtTime(m.createdAt)}</td>
                      {can && (
                        <td data-label="Actions">
                          <button type="button" className="small" aria-label={`Delete ${short} ${text}`} onClick={() => setDeleting({ mapping: m, label: text })}>
                            Delete
                          </button>
                        </td>
                      )}
                    </tr>
                  );
                })}
              </tbody>
            </table>
          );
        }}
      </Loading>
      {can && (
        <>
          <CreateMapping
            kind={kind}
            open={open}
            onClose={() => setOpen(false)}
            onCreated={(m) => {
              setNotice({ text: `${cap(short)} ${labelIn(l.data, m.sourceId)} → ${labelIn(l.data, m.targetId)} is created.`, jobId: m.reconnectJobId });
              l.reload();
            }}
          />
          <ConfirmDelete
            title={`Delete ${short}`}
            open={deleting !== null}
            onClose={() => setDeleting(null)}
            onConfirm={async () => {
              if (!deleting) return;
              await api.del(`${kind.path}/${encodeURIComponent(deleting.mapping.id)}`);
              setNotice({ text: `${cap(short)} ${deleting.label} is deleted.${kind === NETWORK ? ' A reconnect-replicas job disconnects the replicas it concerned.' : ''}` });
              l.reload();
            }}
          >
            <p>
              Delete the {short} <strong>{deleting?.label}</strong>?{kind === NETWORK ? ' Replicas connected through it are disconnected.' : ''}
            </p>
          </ConfirmDelete>
        </>
      )}
    </Section>
  );
}

/** an object's label from what a mapping section loaded (the id while it has not) */
function labelIn(d: Awaited<ReturnType<typeof loadMappings>> | undefined, id: string): string {
  return d ? objectLabel(id, byId(d.objects), byId(d.fabrics)) : id;
}

export function Mappings() {
  return (
    <>
      <MappingSection kind={NETWORK} />
      <MappingSection kind={STORAGE} />
    </>
  );
}
