/**
 * A libvirt domain failed over to Azure and brought home, through the vault: the domain
 * (`osr agent --host libvirt`, `osr provider --fabric libvirt`) replicates into its
 * container; a planned failover makes its VM in Azure and the commit keeps it; reprotect
 * demotes the domain's disks into the replica and the osr agent in the region sends home
 * what differs; a planned failover runs the domain at home again from them, its guest's
 * records in order; reprotect protects it to Azure again.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { ensureIsolatedNetwork, removeNetwork } from '../../src/agent/libvirt/inventory.js';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { OSR_TAG } from '../../src/drivers/azure/recovery.js';
import { OSR_BIN, ensurePki, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import type { FabricProvider } from '../../src/provider/fabric-provider.js';
import type { Azurite } from '../support/azurite.js';
import { startAzureProvider, startAzureRecoverySite } from '../support/azure-site.js';
import type { FakeArm } from '../support/fake-arm.js';
import { tempDir, waitFor } from '../support/lab.js';
import { libvirtSkip, startTinyDomain, virsh, type TinyDomain } from '../support/libvirt.js';
import type { TestVault } from '../support/vault.js';

const run = promisify(execFile);
const skip = libvirtSkip();
const dir = tempDir('osr-lv-azure-fb-');
const tag = `lvfb${process.pid}`;
const net = `${tag}-prod`;
let azurite: Azurite | undefined;
let arm: FakeArm | undefined;
let v: TestVault | undefined;
let dom: TinyDomain | undefined;
let kvmAgent: RunningAgent | undefined;
let regionAgent: RunningAgent | undefined;
let kvmProvider: ChildProcess | undefined;
let azureProvider: FabricProvider | undefined;

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 600_000 });
  return r.stdout;
}

before(async () => {
  if (skip) return;
  ({ azurite, arm, vault: v } = await startAzureRecoverySite(dir));

  // the KVM site: one host running one tiny domain with a NIC on a mapped network
  await ensureIsolatedNetwork(virsh, net);
  dom = await startTinyDomain(`${tag}-db`, path.join(dir, 'domain'), { network: net });
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, [`${tag}-kvm`]);
  kvmAgent = await startAgentProcess({ name: `${tag}-kvm`, dataDir: path.join(dir, 'kvm-agent'), pkiDir, listenPort: 0, extraArgs: ['--host', 'libvirt', '--libvirt-domains', `^${dom.name}$`], logFile: path.join(dir, 'kvm-agent.log') });
  fs.writeFileSync(
    path.join(dir, 'kvm.yaml'),
    `name: ${tag}-kvm\ndir: kvm-provider\nhosts:\n  - { name: ${kvmAgent.name}, agent: '${kvmAgent.apiUrl}', addresses: [127.0.0.1], replicationPort: ${kvmAgent.replicationPort} }\nclouds:\n  - { name: Gold, hostGroups: [{ name: Rack1, hosts: [${kvmAgent.name}] }] }\nnetworks:\n  - { libvirt: ${net}, vmNetwork: Prod, logicalNetwork: LN1, subnets: [{ name: Subnet1, cidr: 10.9.0.0/24, pool: { start: 10.9.0.10, end: 10.9.0.20 } }] }\n`,
  );
  const key = (await v.api.request<{ key: string }>('POST', '/api/v1/registration-keys')).key;
  const log = fs.openSync(path.join(dir, 'kvm-provider.log'), 'a');
  kvmProvider = spawn(process.execPath, [OSR_BIN, 'provider', '--fabric', 'libvirt', '--config', path.join(dir, 'kvm.yaml'), '--vault', v.url, '--registration-key', key, '--status-interval', '1s', '--inventory-interval', '2s', '--poll', '2s'], { stdio: ['ignore', 'pipe', log] });
  fs.closeSync(log);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    kvmProvider!.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('"fabricId"')) resolve();
    });
    kvmProvider!.once('exit', (c) => reject(new Error(`the libvirt provider exited (${c})`)));
  });

  // Azure, its provider in this process, with the osr agent in the region
  const regionPki = path.join(dir, 'region-pki');
  await ensurePki(regionPki, ['azure-westeurope']);
  regionAgent = await startAgentProcess({ name: 'azure-westeurope', dataDir: path.join(dir, 'region-agent'), pkiDir: regionPki, listenPort: 0, logFile: path.join(dir, 'region-agent.log') });
  azureProvider = (await startAzureProvider({ vault: v, dir, azurite, arm, regionAgent: { api: regionAgent.apiUrl, apiTokenFile: regionAgent.apiTokenFile, replicationPort: regionAgent.replicationPort! } })).provider;
});

after(async () => {
  await azureProvider?.stop();
  if (kvmProvider && kvmProvider.exitCode === null) {
    const exited = new Promise((r) => kvmProvider!.once('exit', r));
    kvmProvider.kill('SIGTERM');
    await exited;
  }
  if (regionAgent) await stopAgentProcess(regionAgent);
  if (kvmAgent) await stopAgentProcess(kvmAgent, 'SIGKILL');
  await dom?.destroy().catch(() => undefined);
  await removeNetwork(virsh, net).catch(() => undefined);
  await v?.close();
  await arm?.stop();
  await azurite?.stop();
  if (process.exitCode === undefined || process.exitCode === 0) fs.rmSync(dir, { recursive: true, force: true });
});

test('a libvirt domain fails over to Azure, comes home through the region\'s agent, and is protected to Azure again', { skip, timeout: 1_200_000 }, async () => {
  const api = v!.api;
  let last = '';
  const found = await waitFor('the domain and Azure\'s network', async () => {
    const vms = (await api.request<{ items: { id: string; name: string; properties: { cloud: string } }[] }>('GET', '/api/v1/vms?limit=100')).items;
    const clouds = (await api.request<{ items: { id: string; fabricId: string }[] }>('GET', '/api/v1/clouds?limit=100')).items;
    const nets = (await api.request<{ items: { id: string; name: string; fabricId: string }[] }>('GET', '/api/v1/vm-networks?limit=100')).items;
    const db = vms.find((x) => x.name === dom!.name);
    const prod = nets.find((n) => n.fabricId !== 'azure-we' && n.name === 'Prod');
    last = JSON.stringify({ vms: vms.map((x) => x.name), nets: nets.map((n) => n.id), clouds: clouds.map((c) => c.id) });
    return db && prod && nets.some((n) => n.id === 'azure-we.prod') && clouds.some((c) => c.fabricId === 'azure-we') ? { db, prod: prod.id, azureCloud: clouds.find((c) => c.fabricId === 'azure-we')!.id } : undefined;
  }, 120_000, 500).catch((e: unknown) => {
    throw new Error(`${(e as Error).message}; the vault has ${last}`);
  });
  await osr('policy', 'create', 'to-azure', '--copy-frequency', '30s', '--retention-hours', '1');
  await osr('pairing', 'create', '--policy', 'to-azure', '--source-cloud', found.db.properties.cloud, '--target-cloud', found.azureCloud);
  await osr('mapping', 'create', 'network', '--source', found.prod, '--target', 'azure-we.prod');
  await osr('item', 'enable', found.db.id, '--wait');
  const item = async () => (await api.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=10')).items.find((i) => i.id === found.db.id)!;

  await osr('item', 'planned-failover', found.db.id, '--wait');
  await osr('item', 'commit', found.db.id, '--wait');
  assert.equal((await item()).state, 'Committed');
  assert.ok([...arm!.resources.values()].some((r) => r.type === 'Microsoft.Compute/virtualMachines' && r.tags?.[OSR_TAG.role] === 'failover'), 'the domain runs in Azure');

  // home: the domain's disks are the replica; the region's agent compares every block and sends what differs
  await osr('item', 'reprotect', found.db.id, '--wait');
  assert.equal((await item()).state, 'Protected');
  const home = (await regionAgent!.api.get<{ vm: string; resync: { differingBytes: number; totalBytes: number; completedAt: string | null } | null }[]>('/v1/replications')).find((r) => r.vm === dom!.name)!;
  assert.ok(home.resync?.completedAt, 'the region\'s agent compared the disks with the domain\'s');
  assert.ok(home.resync.differingBytes < home.resync.totalBytes / 4, `${home.resync.differingBytes} of ${home.resync.totalBytes} bytes sent home: only what differs`);
  await osr('item', 'planned-failover', found.db.id, '--wait');
  assert.equal((await item()).state, 'FailedOver');
  // the domain runs at home again, its guest writing records on from where they were
  await waitFor('the domain running at home', async () => ((await virsh.run(['domstate', dom!.name])).trim() === 'running' ? true : undefined), 120_000, 1000);
  await osr('item', 'commit', found.db.id, '--wait');
  await osr('item', 'reprotect', found.db.id, '--wait');
  const back = await item();
  assert.equal(back.state, 'Protected');
  assert.equal(back.replication.replica?.agent.kind, 'azure', 'protected to Azure again');
  assert.deepEqual([...arm!.resources.values()].filter((r) => r.tags?.[OSR_TAG.role] === 'failover').map((r) => r.name), [], 'what the failover made in Azure is removed');
  assert.deepEqual(arm!.violations, []);
});
