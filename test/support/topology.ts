/** Topologies the lab tests build: one fabric with one host and its own storage. */
import type { TopologySpec } from '../../src/lab/topology.js';

export type SiteSpec = TopologySpec['fabrics'][number];

/** A fabric `name` with one cloud, one host group and the single host `host`, holding `vms`. */
export const site = (name: string, host: string, vms: SiteSpec['vms']): SiteSpec => ({
  name,
  logicalNetworks: [],
  vmNetworks: [],
  storage: { classifications: ['GOLD'], locations: [{ name: `${host}-store`, classification: 'GOLD', kind: 'share' }] },
  clouds: [{ name: `${name}-Cloud`, hostGroups: [{ name: 'HG', hosts: [{ name: host, logicalNetworks: [], storageLocations: [`${host}-store`] }] }] }],
  vms,
});
