/**
 * Failback from Azure, end to end through the vault: a lab VM fails over to Azure and is
 * committed; the VM writes in Azure (a test writes into its managed disk's bytes); reprotect
 * deallocates it, the osr agent in the region reads its disks through read SASs and
 * replicates them home comparing every block, so that only the blocks the VM changed in
 * Azure cross to the on-premises replica; a planned failover brings the VM up on premises
 * from them, its commit, and a reprotect that protects it to Azure again — the failover's
 * Azure resources removed, the replica's container resynchronized by checksums rather than
 * copied anew. The bytes at every step are compared with what the VM held.
 */
import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import type { ProtectedItem } from '../../src/domain/resources.js';
import type { AzureFabricDriver } from '../../src/drivers/azure/azure-driver.js';
import { OSR_TAG } from '../../src/drivers/azure/recovery.js';
import { ensurePki, OSR_BIN, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { labAgents, labNbdUri } from '../../src/lab/launcher.js';
import { AgentClient } from '../../src/cli/agent-client.js';
import type { FabricProvider } from '../../src/provider/fabric-provider.js';
import type { Azurite } from '../support/azurite.js';
import { startAzureProvider, startAzureRecoverySite } from '../support/azure-site.js';
import type { FakeArm } from '../support/fake-arm.js';
import { tempDir, waitFor } from '../support/lab.js';
import { mapPrimaryToAzure, startLabProvider } from '../support/lab-provider.js';
import type { TestVault } from '../support/vault.js';

const run = promisify(execFile);
const dir = tempDir('osr-azure-failback-');
const MiB = 1024 * 1024;
let azurite: Azurite;
let arm: FakeArm;
let v: TestVault;
let labProvider: ChildProcess | undefined;
let azureProvider: FabricProvider | undefined;
let regionAgent: RunningAgent | undefined;
let driver: AzureFabricDriver;

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 300_000 });
  return r.stdout;
}

const item = async (): Promise<ProtectedItem> => (await v.api.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=10')).items.find((i) => i.name === 'web')!;

before(async () => {
  ({ azurite, arm, vault: v } = await startAzureRecoverySite(dir));

  labProvider = await startLabProvider(v, dir, [{ name: 'web', host: 'p-host', disks: [{ name: 'system', size: '8M', storage: 'p-host-store' }, { name: 'data', size: '4M', storage: 'p-host-store' }], nics: [{ network: 'Prod' }], workload: false }]);

  // the osr agent in the region: a lab host's agent, enrolled by the Azure provider with the vault's CA
  const pkiDir = path.join(dir, 'region-pki');
  await ensurePki(pkiDir, ['azure-westeurope']);
  regionAgent = await startAgentProcess({ name: 'azure-westeurope', dataDir: path.join(dir, 'region-agent'), pkiDir, listenPort: 0, logFile: path.join(dir, 'region-agent.log') });
  ({ driver, provider: azureProvider } = await startAzureProvider({ vault: v, dir, azurite, arm, regionAgent: { api: regionAgent.apiUrl, apiTokenFile: regionAgent.apiTokenFile, replicationPort: regionAgent.replicationPort! } }));
});

after(async () => {
  await azureProvider?.stop();
  if (regionAgent) await stopAgentProcess(regionAgent);
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

/** The lab VM's disk through its NBD export: `write` writes and flushes, otherwise reads `bytes` at `offset`. */
async function vmDisk(vm: string, disk: string, offset: number, bytes: number, write?: Buffer): Promise<Buffer> {
  const [target] = await labNbdUri(dir, vm, disk);
  const c = await NbdClient.connect(target!.uri);
  try {
    if (write) {
      await c.write(offset, write);
      await c.flush();
      return write;
    }
    return await c.read(offset, bytes);
  } finally {
    await c.close();
  }
}

const failoverDisks = () => [...arm.resources.values()].filter((r) => r.type === 'Microsoft.Compute/disks' && r.tags?.[OSR_TAG.role] === 'failover');

test('failback from Azure: reprotect reads the deallocated VM\'s disks in the region and sends home only the blocks it changed; a planned failover brings it home; reprotect protects it to Azure again', { timeout: 600_000 }, async () => {
  await mapPrimaryToAzure(v, osr, arm.resourceGroup);
  const original = await vmDisk('web', 'disk0', 0, 0, crypto.randomBytes(2 * MiB));
  await osr('item', 'enable', 'web', '--wait');
  await osr('item', 'planned-failover', 'web', '--wait');
  await osr('item', 'commit', 'web', '--wait');
  let it = await item();
  assert.equal(it.state, 'Committed');

  // the VM writes in Azure: 64 KiB into its system disk, 4 KiB into its data disk
  const system = failoverDisks().find((r) => r.name.endsWith('disk0'))!;
  const data = failoverDisks().find((r) => r.name.endsWith('disk1'))!;
  const inAzure = crypto.randomBytes(64 * 1024);
  await arm.diskBlob(system.id).uploadPages(inAzure, 3 * MiB, inAzure.length);
  const inAzureData = crypto.randomBytes(4096);
  await arm.diskBlob(data.id).uploadPages(inAzureData, MiB, inAzureData.length);
  const changed = inAzure.length + inAzureData.length;

  // reprotect: the old primary becomes the replica; the VM in Azure is deallocated and replicates home from the region's agent
  await osr('item', 'reprotect', 'web', '--wait');
  it = await item();
  assert.equal(it.state, 'Protected');
  assert.equal(arm.powerOf('web'), 'deallocated', 'the VM in Azure is deallocated before its disks are read');
  assert.deepEqual([...arm.resources.values()].filter((r) => r.type === 'Microsoft.Compute/disks' && r.properties.diskState === 'ActiveSAS').map((r) => r.name), [], 'the disks\' read access ended after the import');
  const home = (await regionAgent!.api.get<{ vm: string; resync: { differingBytes: number; wireBytesSent: number; totalBytes: number } | null }[]>('/v1/replications')).find((r) => r.vm === 'web')!;
  assert.ok(home.resync, 'reverse replication compared the disks');
  assert.equal(home.resync.totalBytes, 12 * MiB, 'every block of both disks compared');
  assert.ok(home.resync.differingBytes >= changed && home.resync.differingBytes <= changed * 2, `only the blocks the VM changed in Azure were sent: ${home.resync.differingBytes} bytes for ${changed} changed`);

  // the VM in Azure stays deallocated: osr does not start it while it fails back
  const inAzureVm = await waitFor('the VM in Azure shown off', async () => (await v.api.request<{ items: { id: string; name: string; fabricId: string; properties: { powerState?: string } }[] }>('GET', '/api/v1/vms?limit=100')).items.find((x) => x.name === 'web' && x.fabricId === 'azure-we' && x.properties.powerState === 'Off'), 30_000, 200);
  await assert.rejects(driver.setPower(inAzureVm.id.slice('azure-we.'.length), 'start'), (e: unknown) => (e as { code?: string }).code === 'INVALID_STATE');
  // a write made in Azure after the reprotect read the disks (the VM started outside osr): the planned failover reads the disks once more
  const late = crypto.randomBytes(4096);
  await arm.diskBlob(system.id).uploadPages(late, 5 * MiB, late.length);

  // a planned failover home: the VM runs on premises from the disks as they were in Azure
  await osr('item', 'planned-failover', 'web', '--wait');
  assert.ok((await vmDisk('web', 'disk0', 5 * MiB, late.length)).equals(late), 'what the VM wrote in Azure after the reprotect came home too');
  it = await item();
  assert.equal(it.state, 'FailedOver');
  assert.ok((await vmDisk('web', 'disk0', 3 * MiB, inAzure.length)).equals(inAzure), 'the write made in Azure came home');
  assert.ok((await vmDisk('web', 'disk1', MiB, inAzureData.length)).equals(inAzureData));
  assert.ok((await vmDisk('web', 'disk0', 0, original.length)).equals(original), 'what was there before the failover is there');
  await osr('item', 'commit', 'web', '--wait');

  // reprotect to Azure again: the failover's resources go, the container is resynchronized, not copied anew
  await osr('item', 'reprotect', 'web', '--wait');
  it = await item();
  assert.equal(it.state, 'Protected');
  assert.equal(it.replication.replica?.agent.kind, 'azure');
  assert.deepEqual([...arm.resources.values()].filter((r) => r.tags?.[OSR_TAG.role] === 'failover').map((r) => r.name), [], 'what the failover made in Azure is removed');
  assert.equal(arm.powerOf('web'), undefined);
  // the on-premises agent compared every block with the container, and sent only what the VM changed in Azure
  const [labAgent] = labAgents(dir);
  const out = (await new AgentClient(labAgent!.api).get<{ vm: string; resync: { differingBytes: number; totalBytes: number } | null }[]>('/v1/replications')).find((r) => r.vm === 'web')!;
  assert.ok(out.resync, 'replication to Azure began with a resync');
  assert.equal(out.resync.totalBytes, 12 * MiB);
  assert.ok(out.resync.differingBytes >= changed && out.resync.differingBytes <= changed * 2, `${out.resync.differingBytes} bytes sent to the container for ${changed} changed`);
  // the next point of the container holds the VM as it runs on premises
  const before = (await v.api.request<{ items: { id: string }[] }>('GET', `/api/v1/protected-items/${it.id}/recovery-points`)).items.map((p) => Number(p.id));
  await waitFor('a point after the reprotect', async () => (await v.api.request<{ items: { id: string }[] }>('GET', `/api/v1/protected-items/${it.id}/recovery-points`)).items.some((p) => Number(p.id) > Math.max(...before, 0)), 120_000, 1000);
  // a drill of the newest point: its disk holds the write made in Azure
  await osr('item', 'test-failover', 'web', '--network', 'temporary', '--wait');
  const drill = [...arm.resources.values()].find((r) => r.type === 'Microsoft.Compute/disks' && r.tags?.[OSR_TAG.role] === 'test' && r.name.endsWith('disk0'))!;
  const drilled = await arm.diskBytes(drill.id);
  assert.ok(drilled.subarray(3 * MiB, 3 * MiB + inAzure.length).equals(inAzure), 'the replica in Azure holds what the VM wrote there, now from home');
  assert.ok(drilled.subarray(0, original.length).equals(original));
  await osr('item', 'test-failover-cleanup', 'web', '--wait');
  assert.deepEqual(arm.violations, [], 'every request matched the REST specifications');
});
