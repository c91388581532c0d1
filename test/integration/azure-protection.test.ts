/**
 * A lab VM protected to Azure through the vault, end to end: a vault, the lab's provider
 * process (its host agent replicates the VM into Azure storage itself), and the Azure
 * provider (AzureFabricDriver) against Azurite and the fake Resource Manager. The osr CLI
 * sets up the policy, pairing and mappings and enables protection; the points the Azure
 * provider reads are the agent's; a test failover makes a VM whose disks hold the point's
 * bytes on an isolated network, and its cleanup removes all of it; a planned failover
 * ships the last writes and makes the VM on the mapped subnet, a change of point makes it
 * again from an earlier point, and the commit keeps it; an unplanned failover of a VM still
 * writing revokes its agent's access to the container and fences it. A recovery plan of
 * both VMs runs its drill on one network made for it, which its cleanup removes.
 * The container's SAS reaches the source's agent and nothing the vault keeps or shows.
 */
import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { NetworkManagementClient } from '@azure/arm-network';
import { ContainerClient } from '@azure/storage-blob';
import Sqlite from 'better-sqlite3';
import YAML from 'yaml';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { AzureFabricDriver } from '../../src/drivers/azure/azure-driver.js';
import { OSR_TAG } from '../../src/drivers/azure/recovery.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { labNbdUri } from '../../src/lab/launcher.js';
import { FabricProvider } from '../../src/provider/fabric-provider.js';
import { startAzurite, type Azurite } from '../support/azurite.js';
import { startAzureProvider } from '../support/azure-site.js';
import { startFakeArm, type FakeArm } from '../support/fake-arm.js';
import { tempDir, waitFor } from '../support/lab.js';
import { mapPrimaryToAzure, startLabProvider } from '../support/lab-provider.js';
import { startVault, type TestVault } from '../support/vault.js';

const run = promisify(execFile);
const dir = tempDir('osr-azure-e2e-');
const MiB = 1024 * 1024;
let azurite: Azurite;
let arm: FakeArm;
let v: TestVault;
let labProvider: ChildProcess | undefined;
let azureProvider: FabricProvider | undefined;
let driver: AzureFabricDriver;
let subnetId = '';

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 300_000 });
  return r.stdout;
}

const item = async (name = 'web'): Promise<ProtectedItem> => (await v.api.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=10')).items.find((i) => i.name === name)!;

before(async () => {
  azurite = await startAzurite();
  arm = await startFakeArm({ storageCredential: azurite.credential, storageBlobEndpoint: azurite.url, lroMs: 20 });
  // the recovery site's production network, made as a user would
  const network = new NetworkManagementClient(arm.credential, arm.subscriptionId, { endpoint: arm.endpoint, tlsOptions: { ca: arm.ca } });
  const vnet = await network.virtualNetworks.createOrUpdate(arm.resourceGroup, 'prod', { location: 'westeurope', addressSpace: { addressPrefixes: ['10.9.0.0/16'] }, subnets: [{ name: 'Subnet1', addressPrefix: '10.9.0.0/24' }] }, { updateIntervalInMs: 20 });
  subnetId = vnet.subnets![0]!.id!;

  v = await startVault({ dataDir: path.join(dir, 'vault') });
  fs.writeFileSync(path.join(dir, 'vault-ca.pem'), v.vault.ctx.identity.ca.certPem);
  fs.writeFileSync(path.join(dir, 'osr.yaml'), YAML.stringify({ vault: v.url, token: v.token, ca: path.join(dir, 'vault-ca.pem') }), { mode: 0o600 });

  // the primary: a lab site with one VM on a mapped network, its provider a process of its own
  labProvider = await startLabProvider(v, dir, [
    { name: 'web', host: 'p-host', disks: [{ name: 'system', size: '8M', storage: 'p-host-store' }, { name: 'data', size: '4M', storage: 'p-host-store' }], nics: [{ network: 'Prod' }], workload: false },
    { name: 'db', host: 'p-host', disks: [{ name: 'system', size: '4M', storage: 'p-host-store' }], nics: [{ network: 'Prod' }], workload: { bytesPerSecond: 32 * 1024 } },
  ]);

  // the recovery site: Azure, its provider in this process
  ({ driver, provider: azureProvider } = await startAzureProvider({ vault: v, dir, azurite, arm }));
});

after(async () => {
  await azureProvider?.stop();
  if (labProvider && labProvider.exitCode === null) {
    const exited = new Promise((r) => labProvider!.once('exit', r));
    labProvider.kill('SIGTERM');
    await exited;
  }
  await v?.close();
  await arm?.stop();
  await azurite?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Writes through the lab VM's NBD export; answers what was written where. */
async function writeToVm(disk: string, offset: number, bytes: number): Promise<Buffer> {
  const [target] = await labNbdUri(path.join(dir), 'web', disk);
  const c = await NbdClient.connect(target!.uri);
  const data = crypto.randomBytes(bytes);
  await c.write(offset, data);
  await c.flush();
  await c.close();
  return data;
}

test('lab VMs protected to Azure: points from their containers, a recovery plan\'s drill, a drill and its cleanup, a planned failover, a change of point and the commit, an unplanned failover that fences the source', { timeout: 600_000 }, async () => {
  await mapPrimaryToAzure(v, osr, arm.resourceGroup);
  const before = await writeToVm('disk0', 0, 64 * 1024);
  // a size the recovery site does not offer is refused before any job
  await assert.rejects(osr('item', 'enable', 'web', '--vm-size', 'Standard_Nope'), (e: { stderr?: string }) => /NOT_SUPPORTED.*VM size Standard_Nope/s.test(e.stderr ?? ''));
  assert.equal((await v.api.request<{ items: unknown[] }>('GET', '/api/v1/protected-items?limit=10')).items.length, 0);
  await osr('item', 'enable', 'web', '--wait');
  await osr('item', 'enable', 'db', '--vm-size', 'Standard_D4s_v5', '--disk-type', 'Premium_LRS', '--wait');
  let it = await item();
  assert.equal(it.state, 'Protected');
  const replica = it.replication.replica!;
  assert.equal(replica.agent.kind, 'azure');
  assert.match(JSON.stringify(replica.agent), /osr-/);

  // the SAS is nowhere the vault shows: not in the item, its jobs or events
  const shown = JSON.stringify([it, await v.api.request('GET', '/api/v1/jobs?limit=100'), await v.api.request('GET', '/api/v1/events?limit=200')]);
  assert.doesNotMatch(shown, /sig=/, 'no SAS in what the vault shows');
  // nor in its database: the commands that carried it forgot it once it was handed on
  const vaultDb = new Sqlite(path.join(dir, 'vault', 'vault.db'), { readonly: true });
  try {
    const rows = vaultDb.prepare('SELECT kind, body, result FROM provider_commands').all() as { kind: string; body: string; result: string | null }[];
    assert.ok(rows.some((r) => r.kind === 'replication.enable'), 'the commands are there');
    assert.deepEqual(rows.filter((r) => `${r.body}${r.result ?? ''}`.includes('sig=')).map((r) => r.kind), [], 'no command row holds a SAS');
  } finally {
    vaultDb.close();
  }

  // the agent's access is bound to the container's policy, which the Azure provider extends
  const container = azurite.service.getContainerClient(replica.replicaVmId.split('.').at(-1)!);
  const policyEnd = async () => (await container.getAccessPolicy()).signedIdentifiers.find((p) => p.id === 'osr-agent')?.accessPolicy?.expiresOn?.getTime();
  const firstEnd = (await policyEnd())!;
  assert.ok(firstEnd > Date.now() + 6 * 24 * 3600_000, 'the access lasts a week');
  await new Promise((r) => setTimeout(r, 1100));
  await driver.renewAccess();
  assert.ok((await policyEnd())! > firstEnd, 'and is extended');
  const accessFiles = (fs.readdirSync(path.join(dir, 'sites', 'primary'), { recursive: true }) as string[]).filter((f) => f.includes('azure-access') && f.endsWith('.json'));
  assert.equal(accessFiles.length, 2, 'the agent keeps each SAS in its azure-access folder');
  accessFiles.sort((a) => (path.basename(a).startsWith('rep-web-') ? -1 : 1));
  const accessFile = path.join(dir, 'sites', 'primary', accessFiles[0]!);
  assert.equal(fs.statSync(accessFile).mode & 0o077, 0, 'owner-only');
  const agentSas = (JSON.parse(fs.readFileSync(accessFile, 'utf8')) as { sas: string }).sas;

  // a write after the first copy reaches a point the Azure provider reads from the container
  const later = await writeToVm('disk1', MiB, 32 * 1024);
  const points = async () => (await v.api.request<{ items: { id: string; at: string }[] }>('GET', `/api/v1/protected-items/${it.id}/recovery-points`)).items;
  const firstPoint = Math.max(0, ...(await points()).map((p) => Number(p.id)));
  let point = '';
  await waitFor('a point after the write', async () => {
    const newest = Math.max(0, ...(await points()).map((p) => Number(p.id)));
    point = String(newest);
    return newest > firstPoint + 1;
  }, 180_000, 500);

  // a resync on request: every block of the live blobs compared with the source, none differs
  await osr('item', 'resync', it.id, '--wait');
  const resynced = (await v.api.request<{ items: { kind: string; details: { bytesTotal?: number; differingBytes?: number } }[] }>('GET', `/api/v1/events?target=${it.id}&limit=100`)).items.find((e) => e.kind === 'resync.completed');
  assert.equal(resynced?.details.bytesTotal, 12 * MiB, 'both disks compared');
  assert.equal(resynced?.details.differingBytes, 0, 'nothing differs: every point was applied whole to the live blobs');
  assert.equal((await item()).state, 'Protected');

  // a recovery plan's drill: both VMs, group by group, on one network made for the whole drill
  fs.writeFileSync(path.join(dir, 'plan.yaml'), YAML.stringify({ name: 'to-azure', groups: [{ name: 'data', items: [(await item('db')).id] }, { name: 'web', items: [it.id] }] }));
  await osr('plan', 'apply', '-f', path.join(dir, 'plan.yaml'));
  await osr('plan', 'test-failover', 'to-azure', '--network', 'temporary', '--wait');
  const planVms = [...arm.resources.values()].filter((r) => r.type === 'Microsoft.Compute/virtualMachines' && r.tags?.[OSR_TAG.role] === 'test');
  assert.equal(planVms.length, 2, 'a test VM for each of the plan\'s VMs');
  const drillNets = [...arm.resources.values()].filter((r) => r.type === 'Microsoft.Network/virtualNetworks' && r.tags?.[OSR_TAG.role] === 'test');
  assert.equal(drillNets.length, 1, 'one network for the whole drill');
  const planNics = [...arm.resources.values()].filter((r) => r.type === 'Microsoft.Network/networkInterfaces' && r.tags?.[OSR_TAG.role] === 'test');
  assert.equal(planNics.length, 2);
  for (const n of planNics) assert.match(JSON.stringify(n.properties), new RegExp(`/virtualNetworks/${drillNets[0]!.name}/`, 'i'), 'each test VM on the drill\'s network');
  await osr('plan', 'test-failover-cleanup', 'to-azure', '--notes', 'both answered', '--wait');
  assert.deepEqual([...arm.resources.values()].filter((r) => r.tags?.[OSR_TAG.role] === 'test').map((r) => r.id), [], 'the plan\'s cleanup removed every resource its drill made, the network included');

  // a drill: the VM of the point on a network made for it, its disks holding the point's bytes
  await osr('item', 'test-failover', 'web', '--point', point, '--network', 'temporary', '--wait');
  const drillVms = [...arm.resources.values()].filter((r) => r.type === 'Microsoft.Compute/virtualMachines' && r.tags?.[OSR_TAG.role] === 'test');
  assert.equal(drillVms.length, 1);
  const drillDisks = [...arm.resources.values()].filter((r) => r.type === 'Microsoft.Compute/disks' && r.tags?.[OSR_TAG.role] === 'test');
  assert.equal(drillDisks.length, 2);
  const bytesOf = (name: string) => arm.diskBytes([...arm.resources.values()].find((r) => r.type === 'Microsoft.Compute/disks' && r.name.endsWith(name) && r.tags?.[OSR_TAG.role] === 'test')!.id);
  assert.ok((await bytesOf('disk0')).subarray(0, before.length).equals(before), 'the drill\'s system disk holds what was written before protection');
  assert.ok((await bytesOf('disk1')).subarray(MiB, MiB + later.length).equals(later), 'the drill\'s data disk holds the write of the point');
  const drillNic = [...arm.resources.values()].find((r) => r.type === 'Microsoft.Network/networkInterfaces' && r.tags?.[OSR_TAG.role] === 'test')!;
  assert.doesNotMatch(JSON.stringify(drillNic.properties), /\/virtualNetworks\/prod\//, 'the drill is not on the production network');
  await osr('item', 'test-failover-cleanup', 'web', '--notes', 'booted', '--wait');
  assert.deepEqual([...arm.resources.values()].filter((r) => r.tags?.[OSR_TAG.role] === 'test').map((r) => r.id), [], 'the cleanup removed every resource the drill made');

  // a planned failover: the last writes shipped, the VM made on the mapped subnet, then committed
  const last = await writeToVm('disk0', 2 * MiB, 16 * 1024);
  await osr('item', 'planned-failover', 'web', '--wait');
  it = await item();
  assert.equal(it.state, 'FailedOver');
  const vm = [...arm.resources.values()].find((r) => r.type === 'Microsoft.Compute/virtualMachines' && r.tags?.[OSR_TAG.role] === 'failover')!;
  assert.ok(vm, 'the failed-over VM exists in Azure');
  const systemDisk = [...arm.resources.values()].find((r) => r.type === 'Microsoft.Compute/disks' && r.tags?.[OSR_TAG.role] === 'failover' && r.name.endsWith('disk0'))!;
  assert.ok((await arm.diskBytes(systemDisk.id)).subarray(2 * MiB, 2 * MiB + last.length).equals(last), 'nothing written before the planned failover is lost');
  const nic = [...arm.resources.values()].find((r) => r.type === 'Microsoft.Network/networkInterfaces' && r.tags?.[OSR_TAG.role] === 'failover')!;
  assert.match(JSON.stringify(nic.properties), new RegExp(subnetId.replace(/[/.]/g, '\\$&'), 'i'), 'its NIC is on the mapped subnet');
  // before the commit, another point: the VM is made again from it, what the first one made removed
  const failoverJobBefore = vm.tags![OSR_TAG.job];
  // a point the replica does not have is refused before anything of the running VM goes
  await assert.rejects(osr('item', 'change-recovery-point', 'web', '--point', '999999', '--wait'));
  assert.ok(arm.resources.has(vm.id.toLowerCase()), 'the failed-over VM still runs');
  assert.equal((await item()).state, 'FailedOver');
  await osr('item', 'change-recovery-point', 'web', '--point', point, '--wait');
  const vms = [...arm.resources.values()].filter((r) => r.type === 'Microsoft.Compute/virtualMachines' && r.tags?.[OSR_TAG.role] === 'failover' && r.tags[OSR_TAG.item] === it.id);
  assert.equal(vms.length, 1, 'one failed-over VM');
  assert.notEqual(vms[0]!.tags![OSR_TAG.job], failoverJobBefore, 'made again by the change of point');
  const disk0 = [...arm.resources.values()].find((r) => r.type === 'Microsoft.Compute/disks' && r.tags?.[OSR_TAG.job] === vms[0]!.tags![OSR_TAG.job] && r.name.endsWith('disk0'))!;
  const atPoint = await arm.diskBytes(disk0.id);
  assert.ok(atPoint.subarray(2 * MiB, 2 * MiB + last.length).every((b) => b === 0), 'the earlier point does not hold the last write');
  assert.ok(atPoint.subarray(0, before.length).equals(before));
  assert.ok(![...arm.resources.values()].some((r) => r.tags?.[OSR_TAG.job] === failoverJobBefore), 'what the first point made is gone');

  // the old primary's access to the replica was revoked at the failover
  const asAgent = new ContainerClient(`${container.url}?${agentSas}`);
  await assert.rejects(asAgent.getBlockBlobClient('probe').upload('x', 1), (e: { statusCode?: number }) => e.statusCode === 403, 'the agent\'s SAS no longer writes');
  await osr('item', 'commit', 'web', '--wait');
  assert.equal((await item()).state, 'Committed');
  const copies: string[] = [];
  for await (const b of container.listBlobsFlat({ prefix: 'failover/' })) copies.push(b.name);
  assert.deepEqual(copies, [], 'the commit removed the copies the disks were imported from');
  assert.ok(arm.resources.has(vms[0]!.id.toLowerCase()), 'the committed VM stays');

  // an unplanned failover of a VM still writing at the primary: the latest point runs in Azure, the source is fenced
  await osr('item', 'unplanned-failover', 'db', '--wait');
  const db = await item('db');
  assert.equal(db.state, 'FailedOver');
  const dbVm = [...arm.resources.values()].find((r) => r.type === 'Microsoft.Compute/virtualMachines' && r.tags?.[OSR_TAG.item] === db.id && r.tags[OSR_TAG.role] === 'failover');
  assert.ok(dbVm, 'db runs in Azure');
  assert.equal((dbVm.properties.hardwareProfile as { vmSize: string }).vmSize, 'Standard_D4s_v5', 'of the size chosen at enable');
  assert.ok([...arm.resources.values()].filter((r) => r.type === 'Microsoft.Compute/disks' && r.tags?.[OSR_TAG.job] === dbVm.tags![OSR_TAG.job]).every((d) => (d.sku as { name: string }).name === 'Premium_LRS'), 'on the disk type chosen at enable');
  assert.equal((await item('db')).replication.recoveryVm?.size, 'Standard_D4s_v5');
  assert.equal((vms[0]!.properties.hardwareProfile as { vmSize: string }).vmSize, 'Standard_B1s', 'web, of no chosen size, the smallest (its machine is not known)');
  await waitFor('the old primary fenced', async () => {
    const vmsNow = (await v.api.request<{ items: { name: string; fabricId: string; properties: { powerState: string } }[] }>('GET', '/api/v1/vms?limit=100')).items;
    return vmsNow.find((x) => x.name === 'db' && x.fabricId === 'primary')?.properties.powerState !== 'Running';
  });
  assert.deepEqual(arm.violations, [], 'every request met the specification');
});
