/**
 * The Azure fabric's inventory, as the vault maps networks and storage with it: the
 * region is one host (osr runs no agent in Azure to fail over to it), the resource
 * group's virtual networks are its VM networks with their subnets (the isolated networks
 * osr makes for drills under a logical network no host has, as the lab reports its own), and the managed-disk types are its storage
 * classifications, each a location in the replicas' storage account.
 */
import type { NetworkManagementClient } from '@azure/arm-network';
import type { InventoryDocument } from '../../domain/resources.js';
import { armError, OSR_TAG } from './recovery.js';
import type { AzureSiteConfig } from './site.js';

/** The managed-disk types a failover may make, as storage classifications. */
export const DISK_TYPES = [
  { id: 'Standard_LRS', name: 'Standard HDD' },
  { id: 'StandardSSD_LRS', name: 'Standard SSD' },
  { id: 'Premium_LRS', name: 'Premium SSD' },
] as const;

/** The logical network of osr's drill networks (no host has it). */
export const DRILL_LOGICAL = 'ln-osr-drills';

export function azureHostId(site: Pick<AzureSiteConfig, 'location'>): string {
  return `azure-${site.location}`;
}

/** An inventory id: unique across every kind of the fabric's inventory, of the characters the vault takes. */
const ID = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/;
const idOf = (prefix: string, name: string): string => `${prefix}-${name.replace(/[^A-Za-z0-9._-]+/g, '-')}`.slice(0, 128);

export async function azureInventory(site: AzureSiteConfig, network: NetworkManagementClient): Promise<InventoryDocument> {
  const vnets: { name: string; subnets: { name: string; cidr: string }[] }[] = [];
  const drills: typeof vnets = [];
  try {
    for await (const v of network.virtualNetworks.list(site.resourceGroup)) {
      const subnets = (v.subnets ?? []).flatMap((s) => (s.name && s.addressPrefix ? [{ name: s.name, cidr: s.addressPrefix }] : []));
      // a VM network's id is the virtual network's name (what a network mapping names): Azure's rules for it fit the vault's
      if (!v.name || !ID.test(v.name)) continue;
      // osr's drill networks are VM networks of a logical network no host has: never a replica's placement
      if (v.tags?.[OSR_TAG.role] !== undefined) drills.push({ name: v.name, subnets });
      else vnets.push({ name: v.name, subnets });
    }
  } catch (e) {
    throw armError(e, `listing the virtual networks of resource group ${site.resourceGroup}`);
  }
  vnets.sort((a, b) => a.name.localeCompare(b.name));
  const host = azureHostId(site);
  const locations = DISK_TYPES.map((t) => ({ id: idOf('sa', `${site.storageAccount.name}-${t.id}`), name: `${t.name} (${site.storageAccount.name})`, classification: t.id, kind: 'volume' as const, path: site.storageAccount.blobEndpoint }));
  const cloud = idOf('rg', site.resourceGroup);
  const group = idOf('region', site.location);
  return {
    clouds: [{ id: cloud, name: `${site.location}/${site.resourceGroup}`, hostGroups: [group] }],
    hostGroups: [{ id: group, name: site.location, hosts: [host] }],
    hosts: [{ id: host, name: host, osVersion: 'Azure', logicalNetworks: vnets.map((v) => idOf('ln', v.name)), storageLocations: locations.map((l) => l.id) }],
    logicalNetworks: [...vnets.map((v) => ({ id: idOf('ln', v.name), name: v.name })), ...(drills.length > 0 ? [{ id: DRILL_LOGICAL, name: 'osr isolated (drills)' }] : [])],
    vmNetworks: [...vnets.map((v) => ({ id: v.name, name: v.name, logicalNetwork: idOf('ln', v.name), subnets: v.subnets })), ...drills.map((v) => ({ id: v.name, name: v.name, logicalNetwork: DRILL_LOGICAL, subnets: v.subnets }))],
    ipPools: [],
    storageClassifications: DISK_TYPES.map((t) => ({ id: t.id, name: t.name })),
    storageLocations: locations,
    vms: [],
  };
}
