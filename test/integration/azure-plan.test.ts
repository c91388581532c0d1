/**
 * A recovery plan of both kinds of VMs protected to Azure, through the vault: a lab VM (its
 * lab provider a process) and a libvirt domain (`osr agent --host libvirt` and `osr
 * provider --fabric libvirt`), each replicated by its own host's agent into a container of
 * the storage account (Azurite), with the Azure provider against the fake Resource
 * Manager. The plan's drill makes a test VM of each in one network made for it, the libvirt
 * domain's disks holding its point's bytes and a prefix of its guest's records; the
 * cleanup removes everything the drill made.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import YAML from 'yaml';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { OSR_TAG } from '../../src/drivers/azure/recovery.js';
import { OSR_BIN, ensurePki, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { FabricProvider } from '../../src/provider/fabric-provider.js';
import { startAzurite, type Azurite } from '../support/azurite.js';
import { startAzureProvider } from '../support/azure-site.js';
import { startFakeArm, type FakeArm } from '../support/fake-arm.js';
import { tempDir, waitFor } from '../support/lab.js';
import { libvirtSkip, recordsOnImage, startTinyDomain, type TinyDomain } from '../support/libvirt.js';
import { site } from '../support/topology.js';
import { startVault, type TestVault } from '../support/vault.js';

const run = promisify(execFile);
const skip = libvirtSkip();
const dir = tempDir('osr-azure-plan-');
const tag = `azp${process.pid}`;
let azurite: Azurite | undefined;
let arm: FakeArm | undefined;
let v: TestVault | undefined;
let dom: TinyDomain | undefined;
let kvmAgent: RunningAgent | undefined;
const processes: ChildProcess[] = [];
let azureProvider: FabricProvider | undefined;

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 600_000 });
  return r.stdout;
}

/** A provider process, resolved once it has registered. */
async function provider(name: string, args: string[]): Promise<void> {
  const key = (await v!.api.request<{ key: string }>('POST', '/api/v1/registration-keys')).key;
  const logFile = path.join(dir, `${name}.log`);
  const log = fs.openSync(logFile, 'a');
  const p = spawn(process.execPath, [OSR_BIN, 'provider', ...args, '--vault', v!.url, '--registration-key', key, '--status-interval', '1s', '--inventory-interval', '2s', '--poll', '2s'], { stdio: ['ignore', 'pipe', log] });
  fs.closeSync(log);
  processes.push(p);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    p.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('"fabricId"')) resolve();
    });
    p.once('exit', (c) => reject(new Error(`provider ${name} exited (${c}): ${fs.readFileSync(logFile, 'utf8').slice(-2000)}`)));
  });
}

before(async () => {
  if (skip) return;
  azurite = await startAzurite();
  arm = await startFakeArm({ storageCredential: azurite.credential, storageBlobEndpoint: azurite.url, lroMs: 20 });
  v = await startVault({ dataDir: path.join(dir, 'vault') });
  fs.writeFileSync(path.join(dir, 'vault-ca.pem'), v.vault.ctx.identity.ca.certPem);
  fs.writeFileSync(path.join(dir, 'osr.yaml'), YAML.stringify({ vault: v.url, token: v.token, ca: path.join(dir, 'vault-ca.pem') }), { mode: 0o600 });

  // the lab site: one VM
  const lab = site('Lab', 'lab-host', [{ name: 'app', host: 'lab-host', disks: [{ name: 'system', size: '8M', storage: 'lab-host-store' }], nics: [], workload: { bytesPerSecond: 16 * 1024 } }]);
  fs.mkdirSync(path.join(dir, 'lab'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'lab.yaml'), YAML.stringify({ ...lab, lab: { dir: path.join(dir, 'lab') } }));
  await provider('lab-provider', ['--fabric', 'lab', '--config', path.join(dir, 'lab.yaml')]);

  // the libvirt site: one KVM host running one tiny domain
  dom = await startTinyDomain(`${tag}-db`, path.join(dir, 'domain'));
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, [`${tag}-kvm`]);
  kvmAgent = await startAgentProcess({ name: `${tag}-kvm`, dataDir: path.join(dir, 'kvm-agent'), pkiDir, listenPort: 0, extraArgs: ['--host', 'libvirt', '--libvirt-domains', `^${dom.name}$`], logFile: path.join(dir, 'kvm-agent.log') });
  fs.writeFileSync(
    path.join(dir, 'kvm.yaml'),
    `name: ${tag}-kvm\ndir: kvm-provider\nhosts:\n  - { name: ${kvmAgent.name}, agent: '${kvmAgent.apiUrl}', addresses: [127.0.0.1], replicationPort: ${kvmAgent.replicationPort} }\nclouds:\n  - { name: Gold, hostGroups: [{ name: Rack1, hosts: [${kvmAgent.name}] }] }\n`,
  );
  await provider('kvm-provider', ['--fabric', 'libvirt', '--config', path.join(dir, 'kvm.yaml')]);

  // Azure, its provider in this process
  azureProvider = (await startAzureProvider({ vault: v, dir, azurite, arm })).provider;
});

after(async () => {
  await azureProvider?.stop();
  for (const p of processes) {
    if (p.exitCode !== null) continue;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await exited;
  }
  if (kvmAgent) await stopAgentProcess(kvmAgent, 'SIGKILL');
  await dom?.destroy().catch(() => undefined);
  await v?.close();
  await arm?.stop();
  await azurite?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a recovery plan of a lab VM and a libvirt domain, both protected to Azure, drilled in one network and cleaned up', { skip, timeout: 900_000 }, async () => {
  const api = v!.api;
  const vms = await waitFor('both sites\' VMs and Azure\'s networks', async () => {
    const all = (await api.request<{ items: { id: string; name: string; fabricId: string; properties: { cloud: string } }[] }>('GET', '/api/v1/vms?limit=100')).items;
    const clouds = (await api.request<{ items: { id: string; fabricId: string }[] }>('GET', '/api/v1/clouds?limit=100')).items;
    const app = all.find((x) => x.name === 'app');
    const db = all.find((x) => x.name === dom!.name);
    return app && db && clouds.some((c) => c.fabricId === 'azure-we') ? { app, db, azureCloud: clouds.find((c) => c.fabricId === 'azure-we')!.id } : undefined;
  }, 120_000, 500);
  await osr('policy', 'create', 'to-azure', '--copy-frequency', '30s', '--retention-hours', '1');
  await osr('pairing', 'create', '--policy', 'to-azure', '--source-cloud', vms.app.properties.cloud, '--target-cloud', vms.azureCloud);
  await osr('pairing', 'create', '--policy', 'to-azure', '--source-cloud', vms.db.properties.cloud, '--target-cloud', vms.azureCloud);
  await osr('item', 'enable', vms.app.id, vms.db.id, '--wait');
  const items = (await api.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=10')).items;
  assert.deepEqual(items.map((i) => [i.name, i.state, i.replication.replica?.agent.kind]).sort(), [['app', 'Protected', 'azure'], [dom!.name, 'Protected', 'azure']].sort());

  // a point of the domain taken after its guest acknowledged some records
  await waitFor('records in the guest', async () => (dom!.acked() >= 10 ? true : undefined), 120_000, 200);
  const acked = dom!.acked();
  const points = async (id: string) => (await api.request<{ items: { id: string; at: string }[] }>('GET', `/api/v1/protected-items/${id}/recovery-points`)).items.map((p) => Number(p.id));
  const before = Math.max(...(await points(vms.db.id)));
  await waitFor('a newer point of the domain', async () => Math.max(...(await points(vms.db.id))) > before + 1, 240_000, 1000);

  fs.writeFileSync(path.join(dir, 'plan.yaml'), YAML.stringify({ name: 'both-kinds', groups: [{ name: 'data', items: [vms.db.id] }, { name: 'app', items: [vms.app.id] }] }));
  await osr('plan', 'apply', '-f', path.join(dir, 'plan.yaml'));
  await osr('plan', 'test-failover', 'both-kinds', '--network', 'temporary', '--wait');
  const made = [...arm!.resources.values()].filter((r) => r.tags?.[OSR_TAG.role] === 'test');
  const testVms = made.filter((r) => r.type === 'Microsoft.Compute/virtualMachines');
  assert.deepEqual(testVms.map((r) => r.tags![OSR_TAG.item]).sort(), [vms.app.id, vms.db.id].sort(), 'a test VM of each kind');
  const nets = made.filter((r) => r.type === 'Microsoft.Network/virtualNetworks');
  assert.equal(nets.length, 1, 'one network for the drill');
  for (const n of made.filter((r) => r.type === 'Microsoft.Network/networkInterfaces')) assert.match(JSON.stringify(n.properties), new RegExp(`/virtualNetworks/${nets[0]!.name}/`, 'i'));
  // the domain's test VM: its system disk holds its guest's records in order, at least those acknowledged before the point
  const dbVm = testVms.find((r) => r.tags![OSR_TAG.item] === vms.db.id)!;
  const osDisk = (dbVm.properties.storageProfile as { osDisk: { managedDisk: { id: string } } }).osDisk.managedDisk.id;
  const image = path.join(dir, 'drill-vda.raw');
  fs.writeFileSync(image, await arm!.diskBytes(osDisk));
  const recs = recordsOnImage(image);
  assert.deepEqual(recs, recs.map((_r, i) => i), 'records out of order or missing on the drill\'s disk');
  assert.ok(recs.length >= acked, `${acked} records were acknowledged before the point; the drill's disk holds ${recs.length}`);

  await osr('plan', 'test-failover-cleanup', 'both-kinds', '--notes', 'both up', '--wait');
  assert.deepEqual([...arm!.resources.values()].filter((r) => r.tags?.[OSR_TAG.role] === 'test').map((r) => r.id), [], 'the cleanup removed everything the drill made');
  assert.deepEqual(arm!.violations, []);
});
