/** Topologies the lab tests build: one fabric with one host and its own storage. */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import type { TopologySpec } from '../../src/lab/topology.js';
import { VaultClient } from '../../src/provider/vault-client.js';

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

/**
 * A detached lab of `topology` under `dir` (items reported every second), a policy `policy`
 * of `policyFlags` and the pairing of the primary's cloud with the recovery site's: the
 * vault's API client, as the lab's osr.yaml names it. `osr` runs the osr command with
 * that config.
 */
export async function labWithPairing(dir: string, topology: TopologySpec, osr: (...args: string[]) => Promise<string>, policy: string, policyFlags: string[]): Promise<VaultClient> {
  const file = path.join(dir, 'topology.in.yaml');
  fs.writeFileSync(file, YAML.stringify(topology));
  await osr('lab', 'up', '--dir', dir, '--topology', file, '--port', '0', '--detach', '--status-interval', '1s');
  const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { vault: string; token: string; ca: string };
  const api = new VaultClient(cfg.vault, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
  await osr('policy', 'create', policy, ...policyFlags);
  await osr('pairing', 'create', '--policy', policy, '--source-cloud', 'primary.primary-cloud', '--target-cloud', 'recovery.recovery-cloud');
  return api;
}
