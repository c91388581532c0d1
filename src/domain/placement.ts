/**
 * Where a replica goes (ASR's rules, DESIGN.md §5): each NIC connects to the VM network
 * its source network is mapped to (unmapped: not connected); each disk goes to a storage
 * location of the classification its source classification is mapped to (no mapping: the
 * host's default location), the one with the most free space; and the replica runs on a
 * host of the target cloud that reaches every mapped network and those locations.
 * Pure: the caller gives the inventory it read.
 */
import { OsrError } from './errors.js';

export interface PlacementHost {
  id: string;
  name: string;
  osVersion: string;
  logicalNetworks: string[];
  storageLocations: string[];
}

export interface PlacementInput {
  vm: { id: string; name: string; disks: { id: string; storageLocation?: string }[]; nics: { id: string; vmNetwork?: string }[] };
  targetHosts: PlacementHost[];
  /** source VM network → target VM network */
  networkMap: Map<string, string>;
  /** target VM network → its logical network */
  networkLogical: Map<string, string>;
  /** source storage location → its classification */
  locationClass: Map<string, string>;
  /** source classification → target classification */
  storageMap: Map<string, string>;
  /** target storage locations, with classification and free space */
  targetLocations: { id: string; classification: string; freeBytes?: number }[];
}

export interface Placement {
  hostId: string;
  /** disk id → target storage location */
  storage: Record<string, string>;
  /** NIC id → target VM network, or null (not connected) */
  networks: Record<string, string | null>;
}

export function placeReplica(p: PlacementInput): Placement {
  if (p.targetHosts.length === 0) throw new OsrError('INVALID_STATE', `the target cloud has no hosts to run the replica of ${p.vm.name} on`);
  const networks: Record<string, string | null> = {};
  for (const nic of p.vm.nics) networks[nic.id] = (nic.vmNetwork && p.networkMap.get(nic.vmNetwork)) || null;
  const neededLogical = [...new Set(Object.values(networks).filter((n): n is string => n !== null).map((n) => p.networkLogical.get(n)).filter((n): n is string => n !== undefined))];

  const reasons: string[] = [];
  for (const host of [...p.targetHosts].sort((a, b) => a.name.localeCompare(b.name))) {
    const missingNet = neededLogical.filter((n) => !host.logicalNetworks.includes(n));
    if (missingNet.length > 0) {
      reasons.push(`${host.name} does not reach ${missingNet.join(', ')}`);
      continue;
    }
    const storage: Record<string, string> = {};
    let ok = true;
    for (const disk of p.vm.disks) {
      const cls = disk.storageLocation ? p.locationClass.get(disk.storageLocation) : undefined;
      const targetCls = cls ? p.storageMap.get(cls) : undefined;
      const reachable = p.targetLocations.filter((l) => host.storageLocations.includes(l.id));
      const candidates = targetCls ? reachable.filter((l) => l.classification === targetCls) : [];
      const chosen = candidates.sort((a, b) => (b.freeBytes ?? 0) - (a.freeBytes ?? 0))[0] ?? (targetCls ? undefined : reachable.find((l) => l.id === host.storageLocations[0]));
      if (!chosen) {
        reasons.push(targetCls ? `${host.name} reaches no storage of classification ${targetCls}` : `${host.name} has no storage location`);
        ok = false;
        break;
      }
      storage[disk.id] = chosen.id;
    }
    if (ok) return { hostId: host.id, storage, networks };
  }
  throw new OsrError('INVALID_STATE', `no host of the target cloud can run the replica of ${p.vm.name}: ${reasons.join('; ')}`, { reasons });
}
