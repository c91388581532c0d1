/**
 * Infrastructure: the fabrics with their providers and inventory (clouds, host groups,
 * hosts, VM networks, storage), and the configuration that protection rests on:
 * policies, cloud pairings, network and storage mappings.
 */
import { api } from '../api';
import { href } from '../router';
import type { Fabric, InventoryObject } from '../types';
import { ago, Badge, Empty, fmtBytes, fmtTime, Loading, Section, useLoad } from '../ui';
import { byId } from './infrastructure-common';
import { Mappings, Pairings } from './infrastructure-config';
import { Policies } from './infrastructure-policies';

const TABS: [string, string][] = [
  ['fabrics', 'Fabrics'],
  ['policies', 'Policies'],
  ['pairings', 'Cloud pairings'],
  ['mappings', 'Network and storage mappings'],
];
/** other addresses of a tab */
const ALIASES: Record<string, string> = { 'cloud-pairings': 'pairings', 'network-mappings': 'mappings', 'storage-mappings': 'mappings' };

export function Infrastructure({ tab }: { tab?: string | undefined }) {
  const current = tab === undefined ? 'fabrics' : (ALIASES[tab] ?? tab);
  return (
    <>
      <h1>Infrastructure</h1>
      <nav className="tabs" aria-label="Infrastructure">
        {TABS.map(([k, label]) => (
          <a key={k} href={href('infrastructure', k)} aria-current={current === k ? 'page' : undefined}>
            {label}
          </a>
        ))}
      </nav>
      {current === 'fabrics' ? (
        <Fabrics />
      ) : current === 'policies' ? (
        <Policies />
      ) : current === 'pairings' ? (
        <Pairings />
      ) : current === 'mappings' ? (
        <Mappings />
      ) : (
        <p role="alert">
          There is no infrastructure page <code>{tab}</code>. <a href={href('infrastructure', 'fabrics')}>Go to the fabrics</a>.
        </p>
      )}
    </>
  );
}

function Fabrics() {
  const l = useLoad(() => api.all<Fabric>('/fabrics'), [], 15_000);
  return (
    <Loading l={l}>
      {(fabrics) =>
        fabrics.length === 0 ? (
          <Empty>No fabric is registered yet: a provider registers its management server with a registration key (osr registration-key create).</Empty>
        ) : (
          fabrics.map((f) => <FabricPanel key={f.id} fabric={f} />)
        )
      }
    </Loading>
  );
}

function FabricPanel({ fabric: f }: { fabric: Fabric }) {
  return (
    <Section title={`Fabric ${f.name}`}>
      <dl className="props">
        <dt>Kind</dt>
        <dd>{f.kind}</dd>
        <dt>Version</dt>
        <dd>{f.version}</dd>
        <dt>Heartbeat</dt>
        <dd>
          {f.heartbeatLost ? <Badge value="Critical" title="the fabric's providers have stopped sending heartbeats" /> : <Badge value="Healthy" />} <span>{f.heartbeatLost ? 'heartbeat lost' : 'receiving heartbeats'}</span>, last{' '}
          <time dateTime={f.lastHeartbeatAt ?? undefined} title={fmtTime(f.lastHeartbeatAt)}>
            {ago(f.lastHeartbeatAt)}
          </time>
        </dd>
        <dt>Inventory</dt>
        <dd>
          {f.inventoryAt ? (
            <>
              reported <time dateTime={f.inventoryAt}>{fmtTime(f.inventoryAt)}</time> <span className="muted">({ago(f.inventoryAt)})</span>
            </>
          ) : (
            <span className="muted">not reported yet</span>
          )}
        </dd>
        <dt>Inventory scope</dt>
        <dd>{f.inventoryScope === 'all' ? 'all clouds' : f.inventoryScope.join(', ') || 'no cloud'}</dd>
        <dt>Registered</dt>
        <dd>{fmtTime(f.createdAt)}</dd>
      </dl>
      <h3>Providers ({f.providers.length})</h3>
      {f.providers.length === 0 ? (
        <Empty>No provider is registered for this fabric.</Empty>
      ) : (
        <table className="responsive">
          <thead>
            <tr>
              <th>Name</th>
              <th>Version</th>
              <th>Registered</th>
              <th>Last heartbeat</th>
              <th>Status</th>
            </tr>
          </thead>
          <tbody>
            {f.providers.map((p) => (
              <tr key={p.id}>
                <td data-label="Name">{p.name}</td>
                <td data-label="Version">{p.version}</td>
                <td data-label="Registered">{fmtTime(p.registeredAt)}</td>
                <td data-label="Last heartbeat">
                  <span title={fmtTime(p.lastHeartbeatAt)}>{ago(p.lastHeartbeatAt)}</span>
                </td>
                <td data-label="Status">{f.heartbeatLost ? <Badge value="Critical" title="heartbeat lost" /> : <Badge value="Healthy" />}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <FabricInventory fabric={f} />
    </Section>
  );
}

interface Inventory {
  clouds: InventoryObject[];
  hostGroups: InventoryObject[];
  hosts: InventoryObject[];
  logicalNetworks: InventoryObject[];
  vmNetworks: InventoryObject[];
  classifications: InventoryObject[];
  locations: InventoryObject[];
}

async function loadInventory(fabric: string): Promise<Inventory> {
  const q = { fabric };
  const [clouds, hostGroups, hosts, logicalNetworks, vmNetworks, classifications, locations] = await Promise.all(
    ['/clouds', '/host-groups', '/hosts', '/logical-networks', '/vm-networks', '/storage-classifications', '/storage-locations'].map((p) => api.all<InventoryObject>(p, q)),
  );
  return { clouds: clouds!, hostGroups: hostGroups!, hosts: hosts!, logicalNetworks: logicalNetworks!, vmNetworks: vmNetworks!, classifications: classifications!, locations: locations! };
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const strs = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
const byName = (a: InventoryObject, b: InventoryObject) => a.name.localeCompare(b.name);

function FabricInventory({ fabric }: { fabric: Fabric }) {
  // the inventory is read again when the fabric reports a new one
  const l = useLoad(() => loadInventory(fabric.id), [fabric.id, fabric.inventoryAt]);
  return (
    <Loading l={l}>
      {(inv) => {
        const all = byId([...inv.logicalNetworks, ...inv.classifications, ...inv.locations]);
        const name = (id: string) => all.get(id)?.name ?? id;
        const cloudIds = new Set(inv.clouds.map((c) => c.id));
        const groupIds = new Set(inv.hostGroups.map((g) => g.id));
        const groupsOf = (cloud: string | null) => inv.hostGroups.filter((g) => (cloud === null ? g.parentId === null || !cloudIds.has(g.parentId) : g.parentId === cloud)).sort(byName);
        const hostsOf = (group: string | null) => inv.hosts.filter((h) => (group === null ? h.parentId === null || !groupIds.has(h.parentId) : h.parentId === group)).sort(byName);
        const looseGroups = groupsOf(null);
        const looseHosts = hostsOf(null);
        const hostList = (hosts: InventoryObject[], where: string) =>
          hosts.length === 0 ? (
            <p className="muted">No host.</p>
          ) : (
            <table className="responsive infra-hosts" aria-label={`Hosts of ${where}`}>
              <thead>
                <tr>
                  <th>Host</th>
                  <th>OS version</th>
                  <th>Logical networks</th>
                  <th>Storage locations</th>
                  <th>Replication agent</th>
                </tr>
              </thead>
              <tbody>
                {hosts.map((h) => {
                  const agent = h.properties.agent as { address?: unknown; replicationPort?: unknown } | undefined;
                  return (
                    <tr key={h.id}>
                      <td data-label="Host">{h.name}</td>
                      <td data-label="OS version">{str(h.properties.osVersion) ?? '—'}</td>
                      <td data-label="Logical networks">{strs(h.properties.logicalNetworks).map(name).join(', ') || '—'}</td>
                      <td data-label="Storage locations">{strs(h.properties.storageLocations).map(name).join(', ') || '—'}</td>
                      <td data-label="Replication agent">{agent && typeof agent.address === 'string' ? `${agent.address}:${String(agent.replicationPort ?? '')}` : <span className="muted">none</span>}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          );
        const groupItem = (g: InventoryObject) => (
          <li key={g.id}>
            <span className="muted">Host group</span> <strong>{g.name}</strong> <span className="muted">({hostsOf(g.id).length} hosts)</span>
            {hostList(hostsOf(g.id), `host group ${g.name}`)}
          </li>
        );
        return (
          <>
            <h3>
              Clouds ({inv.clouds.length}), host groups ({inv.hostGroups.length}) and hosts ({inv.hosts.length})
            </h3>
            {inv.clouds.length === 0 && inv.hostGroups.length === 0 && inv.hosts.length === 0 ? (
              <Empty>{fabric.inventoryAt ? 'The inventory holds no cloud, host group or host.' : 'The fabric has not reported its inventory yet.'}</Empty>
            ) : (
              <ul className="infra-tree">
                {[...inv.clouds].sort(byName).map((c) => (
                  <li key={c.id}>
                    <span className="muted">Cloud</span> <strong>{c.name}</strong> <span className="muted">({groupsOf(c.id).length} host groups)</span>
                    {groupsOf(c.id).length === 0 ? <p className="muted">No host group.</p> : <ul className="infra-tree">{groupsOf(c.id).map(groupItem)}</ul>}
                  </li>
                ))}
                {looseGroups.length > 0 && (
                  <li>
                    <span className="muted">Host groups in no cloud</span>
                    <ul className="infra-tree">{looseGroups.map(groupItem)}</ul>
                  </li>
                )}
                {looseHosts.length > 0 && (
                  <li>
                    <span className="muted">Hosts in no host group</span>
                    {hostList(looseHosts, 'no host group')}
                  </li>
                )}
              </ul>
            )}
            <h3>VM networks ({inv.vmNetworks.length})</h3>
            {inv.vmNetworks.length === 0 ? (
              <Empty>No VM network.</Empty>
            ) : (
              <table className="responsive" aria-label={`VM networks of ${fabric.name}`}>
                <thead>
                  <tr>
                    <th>VM network</th>
                    <th>Logical network</th>
                    <th>Subnets</th>
                  </tr>
                </thead>
                <tbody>
                  {[...inv.vmNetworks].sort(byName).map((n) => {
                    const subnets = Array.isArray(n.properties.subnets) ? (n.properties.subnets as { name?: unknown; cidr?: unknown }[]) : [];
                    const ln = str(n.properties.logicalNetwork);
                    return (
                      <tr key={n.id}>
                        <td data-label="VM network">{n.name}</td>
                        <td data-label="Logical network">{ln ? name(ln) : '—'}</td>
                        <td data-label="Subnets">{subnets.map((s) => `${String(s.name ?? '')} ${String(s.cidr ?? '')}`.trim()).join(', ') || '—'}</td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            )}
            <h3>
              Storage: {inv.classifications.length} classification{inv.classifications.length === 1 ? '' : 's'}, {inv.locations.length} location{inv.locations.length === 1 ? '' : 's'}
            </h3>
            {inv.classifications.length > 0 && (
              <p>
                <span className="muted">Storage classifications:</span> {[...inv.classifications].sort(byName).map((c) => c.name).join(', ')}
              </p>
            )}
            {inv.locations.length === 0 ? (
              <Empty>No storage location.</Empty>
            ) : (
              <table className="responsive" aria-label={`Storage locations of ${fabric.name}`}>
                <thead>
                  <tr>
                    <th>Storage location</th>
                    <th>Classification</th>
                    <th>Kind</th>
                    <th>Path</th>
                    <th className="num">Free</th>
                  </tr>
                </thead>
                <tbody>
                  {[...inv.locations].sort(byName).map((s) => {
                    const cls = str(s.properties.classification);
                    const free = s.properties.freeBytes;
                    return (
                      <tr key={s.id}>
                        <td data-label="Storage location">{s.name}</td>
                        <td data-label="Classification">{cls ? name(cls) : '—'}</td>
                        <td data-label="Kind">{str(s.properties.kind) ?? '—'}</td>
                        <td data-label="Path">
                          <code>{str(s.properties.path) ?? '—'}</code>
                        </td>
                        <td data-label="Free" className="num">
                          {typeof free === 'number' ? fmtBytes(free) : '—'}
                        </td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            )}
          </>
        );
      }}
    </Loading>
  );
}
