/**
 * The libvirt fabric's inventory: each host's libvirt inventory (its agent's selected
 * domains, networks, pools) and the driver's records, mapped through the site file into
 * the provider's InventoryDocument. Pure: the driver reads the hosts, this maps them.
 *
 * - a VM's id is its domain's UUID; its disks are its `disk` devices by target, with size,
 *   image format and the storage location of the mapped pool whose directory holds them;
 *   its NICs are nic0, nic1… in the order of its machine's, on the VM networks their
 *   libvirt networks map to; it carries its machine;
 * - replica and test VMs are the driver's records; drill networks are VM networks on an
 *   isolated logical network.
 */
import { checkMachine, type MachineSpec } from '../../domain/machine.js';
import type { InventoryDocument } from '../../domain/resources.js';
import type { AgentHostInventory } from './host-api.js';
import { domainSelected, type LibvirtSiteConfig } from './site.js';
import type { LibvirtState } from './state.js';

/** The logical network drill networks are on: reached by no host's uplink. */
const ISOLATED_LOGICAL = 'osr-isolated';
const DEFAULT_OS = 'libvirt';

/** A domain of the site, where it was last seen. */
export interface DomainRef {
  id: string;
  name: string;
  hostId: string;
  running: boolean;
  domain: AgentHostInventory['domains'][number];
}

/** The name of a test VM's domain at its host (the agent prefixes it). */
export const testDomainName = (testVmId: string): string => `osr-test-${testVmId}`;

/**
 * The domains of a host that are VMs of the site: selected by the site file, not osr's own
 * (drills' `osr-…`), and not a replica's domain at its host (its replica record shows it).
 */
export function siteDomains(site: LibvirtSiteConfig, hostId: string, inv: AgentHostInventory | undefined, state: LibvirtState): DomainRef[] {
  return (inv?.domains ?? [])
    .filter((d) => !d.name.startsWith('osr-') && domainSelected(site, d.name))
    .filter((d) => !Object.values(state.replicas).some((r) => r.hostId === hostId && (r.replicationId === d.uuid || r.name === d.name)))
    .map((d) => ({ id: d.uuid, name: d.name, hostId, running: d.running, domain: d }));
}

/**
 * A domain's machine as the vault may keep it: within checkMachine's bounds, or none (a
 * domain whose definition osr cannot carry — a network name it does not take, say — is
 * still a VM of the inventory; a drill of it is refused for want of a machine).
 */
function machineOf(d: DomainRef): MachineSpec | undefined {
  try {
    return checkMachine(d.domain.machine);
  } catch {
    return undefined;
  }
}

/** The provider's inventory document of the site now. */
export function mapInventory(site: LibvirtSiteConfig, hostInventories: Map<string, AgentHostInventory>, o: { domains: DomainRef[]; state: LibvirtState; agentVms: Map<string, boolean> }): InventoryDocument {
  const s = site;
  const state = o.state;
  const cloudOf = new Map<string, string>();
  const groupId = (cloud: string, group: string) => `${cloud}-${group}`;
  for (const c of s.clouds) for (const g of c.hostGroups) for (const h of g.hosts) cloudOf.set(h, c.name);
  const location = (host: string, pool: string) => `${host}-${pool}`;
  const doc: InventoryDocument = {
    clouds: s.clouds.map((c) => ({ id: c.name, name: c.name, hostGroups: c.hostGroups.map((g) => groupId(c.name, g.name)) })),
    hostGroups: s.clouds.flatMap((c) => c.hostGroups.map((g) => ({ id: groupId(c.name, g.name), name: g.name, hosts: g.hosts }))),
    hosts: s.hosts.map((h) => {
      const inv = hostInventories.get(h.name);
      const nets = new Set(inv?.networks.map((n) => n.name) ?? []);
      const pools = new Set(inv?.pools.map((p) => p.name) ?? []);
      return {
        id: h.name,
        name: h.name,
        osVersion: h.osVersion ?? DEFAULT_OS,
        logicalNetworks: [...new Set(s.networks.filter((n) => nets.has(n.libvirt)).map((n) => n.logicalNetwork))],
        storageLocations: s.storage.filter((x) => pools.has(x.pool)).map((x) => location(h.name, x.pool)),
        addresses: h.addresses,
        agent: { address: h.addresses[0]!, replicationPort: h.replicationPort },
      };
    }),
    logicalNetworks: [...new Set(s.networks.map((n) => n.logicalNetwork))].map((n) => ({ id: n, name: n })),
    vmNetworks: s.networks.map((n) => ({ id: n.vmNetwork, name: n.vmNetwork, logicalNetwork: n.logicalNetwork, subnets: n.subnets.map((x) => ({ name: x.name, cidr: x.cidr })) })),
    ipPools: s.networks.flatMap((n) => n.subnets.flatMap((x) => (x.pool ? [{ id: `${n.vmNetwork}-${x.name}-pool`, name: `${n.vmNetwork} ${x.name} pool`, vmNetwork: n.vmNetwork, subnet: x.name, start: x.pool.start, end: x.pool.end }] : []))),
    storageClassifications: [...new Set(s.storage.map((x) => x.classification))].map((c) => ({ id: c, name: c })),
    storageLocations: s.hosts.flatMap((h) =>
      (hostInventories.get(h.name)?.pools ?? []).flatMap((p) => {
        const m = s.storage.find((x) => x.pool === p.name);
        return m ? [{ id: location(h.name, p.name), name: `${p.name} on ${h.name}`, classification: m.classification, kind: 'volume' as const, path: p.path ?? `pool:${p.name}`, freeBytes: Math.max(0, Math.floor(p.availableBytes)) }] : [];
      }),
    ),
    vms: [],
  };
  for (const d of o.domains) {
    const inv = hostInventories.get(d.hostId);
    const pools = (inv?.pools ?? []).filter((p) => p.path && s.storage.some((x) => x.pool === p.name));
    const demoted = state.demoted[d.id];
    const machine = machineOf(d);
    doc.vms.push({
      id: d.id,
      name: d.name,
      cloud: cloudOf.get(d.hostId)!,
      host: d.hostId,
      powerState: d.running && !demoted ? 'Running' : 'Off',
      disks: d.domain.disks
        .filter((k) => k.device === 'disk')
        .map((k) => {
          const pool = k.file ? pools.find((p) => k.file!.startsWith(`${p.path!.replace(/\/$/, '')}/`)) : undefined;
          return { id: k.target, name: k.target, sizeBytes: k.sizeBytes ?? 0, ...(pool ? { storageLocation: location(d.hostId, pool.name) } : {}), ...(k.format ? { format: k.format } : {}) };
        }),
      nics: d.domain.machine.nics.map((n, i) => {
        const net = s.networks.find((x) => x.libvirt === n.network);
        return { id: `nic${i}`, ...(net ? { vmNetwork: net.vmNetwork } : {}), ...(state.nics[`${d.id}/nic${i}`]?.ip ? { ip: state.nics[`${d.id}/nic${i}`]!.ip! } : {}) };
      }),
      replicationId: d.domain.uuid,
      ...(machine ? { machine } : {}),
      ...(demoted?.itemId ? { replicaOf: demoted.itemId } : {}),
    });
  }
  const drills = Object.values(state.drillNetworks);
  if (drills.length > 0) {
    doc.logicalNetworks.push({ id: ISOLATED_LOGICAL, name: 'osr isolated (drills)' });
    for (const n of drills) {
      doc.vmNetworks.push({ id: n.id, name: n.name, logicalNetwork: ISOLATED_LOGICAL, subnets: [{ name: 'Subnet1', cidr: n.cidr }] });
      doc.ipPools.push({ id: `${n.id}-pool`, name: `${n.name} pool`, vmNetwork: n.id, subnet: 'Subnet1', start: n.pool.start, end: n.pool.end });
    }
  }
  for (const r of Object.values(state.replicas)) {
    // a promoted replica runs as one of its host's agent's VMs
    const running = o.agentVms.get(`${r.hostId}/${r.name}`) ?? false;
    doc.vms.push({
      id: r.id,
      name: r.name,
      cloud: cloudOf.get(r.hostId)!,
      host: r.hostId,
      powerState: state.promoted[r.id] && running ? 'Running' : 'Off',
      disks: r.disks,
      nics: r.nicIds.map((n) => nicView(state, r.id, n)),
      ...(r.protecting && !state.promoted[r.id] ? { replicaOf: r.itemId } : {}),
    });
  }
  for (const t of Object.values(state.testVms)) {
    const running = hostInventories.get(t.hostId)?.domains.find((d) => d.name === testDomainName(t.id))?.running ?? false;
    doc.vms.push({ id: t.id, name: `${t.replicaName}-test`, cloud: cloudOf.get(t.hostId)!, host: t.hostId, powerState: running ? 'Running' : 'Off', disks: state.replicas[t.replicaId]?.disks ?? [], nics: t.nicIds.map((n) => nicView(state, t.id, n)), testFailoverOf: t.itemId });
  }
  return doc;
}

function nicView(state: LibvirtState, vmId: string, nicId: string): { id: string; vmNetwork?: string; subnet?: string; ip?: string } {
  const n = state.nics[`${vmId}/${nicId}`];
  return { id: nicId, ...(n?.vmNetwork ? { vmNetwork: n.vmNetwork } : {}), ...(n?.vmNetwork && n.subnet ? { subnet: n.subnet } : {}), ...(n?.ip ? { ip: n.ip } : {}) };
}
