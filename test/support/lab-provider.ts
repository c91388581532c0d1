/**
 * The primary site of the tests that protect lab VMs to Azure: a lab site with its VMs on
 * one mapped network (Prod, 10.9.0.0/24), its provider a process of its own registered with
 * the vault; answers once the provider has registered.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { waitFor } from './lab.js';
import { site } from './topology.js';
import type { TestVault } from './vault.js';

export async function startLabProvider(v: TestVault, dir: string, vms: Parameters<typeof site>[2]): Promise<ChildProcess> {
  const primary = site('Primary', 'p-host', vms);
  primary.logicalNetworks = ['LN'];
  primary.vmNetworks = [{ name: 'Prod', logicalNetwork: 'LN', subnets: [{ name: 'Subnet1', cidr: '10.9.0.0/24', pool: { start: '10.9.0.10', end: '10.9.0.20' } }] }];
  primary.clouds[0]!.hostGroups[0]!.hosts[0]!.logicalNetworks = ['LN'];
  fs.mkdirSync(path.join(dir, 'sites', 'primary'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'sites', 'primary.yaml'), YAML.stringify({ ...primary, lab: { dir: path.join(dir, 'sites', 'primary') } }));
  const key = (await v.api.request<{ key: string }>('POST', '/api/v1/registration-keys')).key;
  const log = fs.openSync(path.join(dir, 'lab-provider.log'), 'a');
  const child = spawn(process.execPath, [OSR_BIN, 'provider', '--fabric', 'lab', '--config', path.join(dir, 'sites', 'primary.yaml'), '--vault', v.url, '--registration-key', key, '--status-interval', '1s', '--poll', '2s'], { stdio: ['ignore', 'pipe', log] });
  fs.closeSync(log);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('"fabricId"')) resolve();
    });
    child.once('exit', (c) => reject(new Error(`the lab provider exited (${c}): ${fs.readFileSync(path.join(dir, 'lab-provider.log'), 'utf8').slice(-2000)}`)));
  });
  return child;
}

/**
 * Once both fabrics' inventories are in: the policy, the pairing of the primary's cloud with
 * the Azure site's resource group, and its network and storage mappings, made with the CLI.
 */
export async function mapPrimaryToAzure(v: TestVault, osr: (...args: string[]) => Promise<string>, resourceGroup: string): Promise<void> {
  await waitFor('both fabrics\' inventories', async () => {
    const vms = (await v.api.request<{ items: { name: string }[] }>('GET', '/api/v1/vms?limit=100')).items;
    const nets = (await v.api.request<{ items: { id: string }[] }>('GET', '/api/v1/vm-networks?limit=100')).items;
    return vms.some((x) => x.name === 'web') && nets.some((n) => n.id === 'azure-we.prod');
  });
  await osr('policy', 'create', 'to-azure', '--copy-frequency', '30s', '--retention-hours', '1');
  await osr('pairing', 'create', '--policy', 'to-azure', '--source-cloud', 'primary.primary-cloud', '--target-cloud', `azure-we.rg-${resourceGroup}`);
  await osr('mapping', 'create', 'network', '--source', 'primary.prod', '--target', 'azure-we.prod');
  await osr('mapping', 'create', 'storage', '--source', 'primary.gold', '--target', 'azure-we.StandardSSD_LRS');
}
