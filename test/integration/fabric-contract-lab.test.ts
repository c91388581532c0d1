/**
 * The fabric contract (test/support/fabric-contract.ts) on the lab: two hosts of one site,
 * a VM with a guest writing to its disk on the first, its replica on the second, both
 * roles played by one driver. Lab-specific checks are in lab-driver.test.ts.
 */
import fs from 'node:fs';
import path from 'node:path';
import { LabFabricDriver } from '../../src/lab/lab-driver.js';
import type { SiteConfig } from '../../src/lab/topology.js';
import { fabricContract } from '../support/fabric-contract.js';
import { tempDir } from '../support/lab.js';

fabricContract('lab', () => {
  const dir = tempDir('osr-contract-lab-');
  const site: SiteConfig = {
    name: 'Lab-Contract',
    logicalNetworks: ['LN1'],
    vmNetworks: [
      { name: 'Net1', logicalNetwork: 'LN1', subnets: [{ name: 'S1', cidr: '10.9.0.0/24', pool: { start: '10.9.0.10', end: '10.9.0.20' } }] },
      { name: 'Net2', logicalNetwork: 'LN1', subnets: [{ name: 'S1', cidr: '10.8.0.0/24', pool: { start: '10.8.0.10', end: '10.8.0.20' } }] },
    ],
    storage: { classifications: ['GOLD'], locations: [{ name: 'gold1', classification: 'GOLD', kind: 'share' }] },
    clouds: [
      { name: 'Primary', hostGroups: [{ name: 'P', hosts: [{ name: 'p-h1', logicalNetworks: ['LN1'], storageLocations: ['gold1'] }] }] },
      { name: 'Recovery', hostGroups: [{ name: 'R', hosts: [{ name: 'r-h1', logicalNetworks: ['LN1'], storageLocations: ['gold1'] }] }] },
    ],
    vms: [{ name: 'app', host: 'p-h1', disks: [{ name: 'system', size: '8M' }], nics: [{ network: 'Net1', subnet: 'S1' }], workload: { bytesPerSecond: 64 * 1024 } }],
    lab: { dir: path.join(dir, 'site') },
  };
  return {
    driver: () => new LabFabricDriver(site),
    vmId: 'app',
    placement: { hostId: 'r-h1', storage: { disk0: 'gold1' }, networks: { nic0: 'net1' } },
    otherNetwork: 'net2',
    close: async () => fs.rmSync(dir, { recursive: true, force: true }),
  };
});
