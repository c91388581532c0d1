/**
 * The Azure fabric's inventory, as the vault maps networks and storage with it: the
 * region is one host (osr runs no agent in Azure to fail over to it), the resource
 * group's virtual networks are its VM networks with their subnets (the isolated networks
 * osr makes for drills are left out), and the managed-disk types are its storage
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

export function azureHostId(site: Pick<AzureSiteConfig, 'location'>): string {
  return `azure-${site.location}`;
}

export async function azureInventory(site: AzureSiteConfig, network: NetworkManagementClient): Promise<InventoryDocument> {
  const vnets: { name: string; subnets: { name: string; cidr: string }[] }[] = [];
  try {
    for await (const v of network.virtualNetworks.list(site.resourceGroup)) {
      if (v.tags?.[OSR_TAG.role] !== undefined) continue;
      const subnets = (v.subnets ?? []).flatMap((s) => (s.name && s.addressPrefix ? [{ name: s.name, cidr: s.addressPrefix }] : []));
      if (v.name) vnets.push({ name: v.name, subnets });
    }
  } catch (e) {
    throw armError(e, `listing the virtual networks of resource group ${site.resourceGroup}`);
  }
  vnets.sort((a, b) => a.name.localeCompare(b.name));
  const host = azureHostId(site);
  const locations = DISK_TYPES.map((t) => ({ id: `${site.storageAccount.name}/${t.id}`, name: `${t.name} (${site.storageAccount.name})`, classification: t.id, kind: 'volume' as const, path: site.storageAccount.blobEndpoint }));
  return {
    clouds: [{ id: site.resourceGroup, name: `${site.location}/${site.resourceGroup}`, hostGroups: [site.location] }],
    hostGroups: [{ id: site.location, name: site.location, hosts: [host] }],
    hosts: [{ id: host, name: host, osVersion: 'Azure', logicalNetworks: vnets.map((v) => v.name), storageLocations: locations.map((l) => l.id) }],
    logicalNetworks: vnets.map((v) => ({ id: v.name, name: v.name })),
    vmNetworks: vnets.map((v) => ({ id: v.name, name: v.name, logicalNetwork: v.name, subnets: v.subnets })),
    ipPools: [],
    storageClassifications: DISK_TYPES.map((t) => ({ id: t.id, name: t.name })),
    storageLocations: locations,
    vms: [],
  };
}
