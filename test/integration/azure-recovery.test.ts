/**
 * Failover into Azure against the fake Resource Manager (every request checked against the
 * REST specifications' schemas) and Azurite: a recovery point's snapshots become managed
 * disks, NICs on the mapped subnet and a VM, whose disks hold the point's bytes; throttling,
 * server errors, conflicts and failed operations on the way; a step run again takes up
 * what an earlier try made; a cleanup removes exactly what the job made.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ComputeManagementClient } from '@azure/arm-compute';
import { NetworkManagementClient } from '@azure/arm-network';
import { AzureBlobReplica } from '../../src/agent/azure/blob-replica.js';
import { AzureRecovery, OSR_TAG, type VmFromPoint } from '../../src/drivers/azure/recovery.js';
import { pointDisks, readReplicaPoints } from '../../src/drivers/azure/replica-points.js';
import { startAzurite, type Azurite } from '../support/azurite.js';
import { writeDeltaLog } from '../support/delta-log.js';
import { startFakeArm, type FakeArm } from '../support/fake-arm.js';
import { assertRejectsCode, withDir } from '../support/unit.js';

const MiB = 1024 * 1024;
let azurite: Azurite;
const az = (): Azurite => azurite;
let arm: FakeArm;
let compute: ComputeManagementClient;
let network: NetworkManagementClient;
let subnetId: string;

before(async () => {
  azurite = await startAzurite();
  arm = await startFakeArm({ storageCredential: az().credential, storageBlobEndpoint: az().url, lroMs: 50 });
  const options = { endpoint: arm.endpoint, tlsOptions: { ca: arm.ca }, retryOptions: { maxRetries: 4, retryDelayInMs: 20, maxRetryDelayInMs: 200 } };
  compute = new ComputeManagementClient(arm.credential, arm.subscriptionId, options);
  network = new NetworkManagementClient(arm.credential, arm.subscriptionId, options);
  // the recovery site's own network, as its administrator made it
  const vnet = await network.virtualNetworks.createOrUpdate(arm.resourceGroup, 'prod', { location: 'westeurope', addressSpace: { addressPrefixes: ['10.20.0.0/16'] }, subnets: [{ name: 'app', addressPrefix: '10.20.1.0/24' }] }, { updateIntervalInMs: 20 });
  subnetId = vnet.subnets![0]!.id!;
});
after(async () => {
  await arm?.stop();
  await azurite?.stop();
});

const DISKS = [
  { id: 'disk-os', name: 'sda', size: 6 * MiB },
  { id: 'disk-data', name: 'sdb', size: 3 * MiB + 4096 },
];

/** A replica with two points; answers the bytes of each disk at point 2. */
async function replicaWithPoints(dir: string, vmId: string): Promise<{ replica: AzureBlobReplica; container: ReturnType<ReturnType<typeof az>['service']['getContainerClient']>; atPoint2: Buffer[] }> {
  const container = az().service.getContainerClient(`osr-${vmId}`);
  const replica = await AzureBlobReplica.open(container, { vmId, vmName: vmId, disks: DISKS, retention: { hours: 24, maxPoints: 24 } }, { spoolDir: path.join(dir, 'spool'), createContainer: true });
  const models = DISKS.map((d) => crypto.randomBytes(d.size));
  for (const [i, d] of DISKS.entries()) {
    await replica.writeInitial(d.name, 0, [models[i]!]);
    await replica.checkpointInitial(d.name, d.size, true);
  }
  let atPoint2: Buffer[] = [];
  for (const seq of [1, 2, 3]) {
    const files = DISKS.map((d, i) => {
      const data = crypto.randomBytes(70_000);
      const offset = 4096 * seq;
      data.copy(models[i]!, offset);
      const file = path.join(dir, String(seq), `${d.name}.osrlog`);
      writeDeltaLog(file, seq, d, [{ kind: 'write', offset, data }]);
      return { diskName: d.name, file };
    });
    await replica.applyDelta({ seq, timeMs: Date.now(), consistency: 'crash-consistent', deltaBytes: 70_000 }, files);
    if (seq === 2) atPoint2 = models.map((m) => Buffer.from(m));
  }
  return { replica, container, atPoint2 };
}

/** A failover's plan from point `seq` as the driver reads it from the container (what the agent wrote). */
async function planOf(replica: AzureBlobReplica, container: ReturnType<ReturnType<typeof az>['service']['getContainerClient']>, jobId: string, seq: number, o: Partial<VmFromPoint> = {}): Promise<VmFromPoint> {
  const read = await readReplicaPoints(container);
  assert.deepEqual(
    read.points.map((p) => p.point.seq),
    replica.points().map((p) => p.seq),
    'the driver reads the points the agent made',
  );
  return {
    itemId: 'item-web1',
    jobId,
    role: 'failover',
    vmName: 'web1',
    vmSize: 'Standard_B2s',
    generation: 'V1',
    osType: 'Linux',
    diskSku: 'StandardSSD_LRS',
    disks: pointDisks(container, read, seq),
    nics: [{ subnetId, privateIp: '10.20.1.10' }],
    ...o,
  };
}

function recoveryFor(container: ReturnType<ReturnType<typeof az>['service']['getContainerClient']>): AzureRecovery {
  return new AzureRecovery(compute, network, container, { subscriptionId: arm.subscriptionId, resourceGroup: arm.resourceGroup, location: 'westeurope', storageAccountId: `/subscriptions/${arm.subscriptionId}/resourceGroups/storage/providers/Microsoft.Storage/storageAccounts/devstoreaccount1` }, { pollMs: 20, copyPollMs: 20 });
}

test(
  'a failover makes managed disks holding the point\'s bytes, a NIC on the mapped subnet and a VM; throttling and server errors are retried, a failed operation is taken up by the next try, and every request meets the specification',
  withDir(async (dir) => {
    const { replica, container, atPoint2 } = await replicaWithPoints(dir, 'vm-failover-1');
    const recovery = recoveryFor(container);
    const plan = await planOf(replica, container, 'job-fo-1', 2);
    arm.inject({ method: 'PUT', path: /\/disks\/web1-sda$/, status: 429, times: 1, retryAfterSeconds: 0 });
    arm.inject({ method: 'PUT', path: /\/networkInterfaces\/web1-nic0$/, status: 500, times: 1 });
    arm.failNextOperation(/\/virtualMachines\/web1$/, 'AllocationFailed', 'no capacity for Standard_B2s in the zone');
    const steps: string[] = [];
    await assertRejectsCode(recovery.createVm(plan, (step) => steps.push(step)), 'AZURE_OPERATION_FAILED');
    assert.deepEqual([...new Set(steps)], ['copy-point', 'import-disk', 'make-nic', 'make-vm']);
    // the step again: the copies, disks and NIC made are taken as they are, the VM made again
    const putsBefore = arm.requests.filter((r) => r.method === 'PUT').length;
    const made = await recovery.createVm(plan);
    const puts = arm.requests.slice(0).filter((r) => r.method === 'PUT').length - putsBefore;
    assert.equal(puts, 1, 'only the VM is sent again');
    assert.deepEqual(arm.violations, [], 'every request meets the specification');
    assert.ok(arm.requests.some((r) => r.status === 429) && arm.requests.some((r) => r.status === 500), 'the faults were met and retried');

    const vm = arm.resources.get(made.vmId.toLowerCase())!;
    assert.equal(vm.properties.provisioningState, 'Succeeded');
    assert.deepEqual(vm.tags, { [OSR_TAG.item]: 'item-web1', [OSR_TAG.job]: 'job-fo-1', [OSR_TAG.role]: 'failover' });
    for (const [i, id] of made.diskIds.entries()) {
      const bytes = await arm.diskBytes(id);
      assert.ok(bytes.subarray(0, DISKS[i]!.size).equals(atPoint2[i]!), `disk ${DISKS[i]!.name} holds point 2's bytes`);
      assert.ok(bytes.subarray(DISKS[i]!.size).every((b) => b === 0), 'then zeros to the whole MiB');
      assert.equal(arm.resources.get(id.toLowerCase())!.properties.managedBy, made.vmId, 'attached to the VM');
    }
    const nic = arm.resources.get(made.nicIds[0]!.toLowerCase())!;
    const ipc = (nic.properties.ipConfigurations as { properties: { subnet: { id: string }; privateIPAddress: string } }[])[0]!;
    assert.equal(ipc.properties.subnet.id, subnetId);
    assert.equal(ipc.properties.privateIPAddress, '10.20.1.10');
    // the live blobs were never written by the failover: the latest point is still 3
    assert.equal((await container.getPageBlobClient('disks/sda.vhd').getProperties()).blobSequenceNumber, 3);

    // cleanup removes exactly what the job made (twice is harmless); the site's own network stays
    const { removed } = await recovery.removeJob('job-fo-1');
    assert.equal(removed.filter((r) => r.startsWith('VM ')).length, 1);
    assert.equal(removed.filter((r) => r.startsWith('disk ')).length, 2);
    assert.equal(removed.filter((r) => r.startsWith('blob ')).length, 2);
    assert.deepEqual([...arm.resources.values()].map((r) => r.name), ['prod']);
    assert.deepEqual((await recovery.removeJob('job-fo-1')).removed, []);
    assert.deepEqual(arm.violations, []);
  }),
);

test(
  'a resource of the same name made by someone else is refused, never overwritten; a 409 while this job\'s own earlier request runs is resolved by reading the resource',
  withDir(async (dir) => {
    const { replica, container } = await replicaWithPoints(dir, 'vm-failover-2');
    const recovery = recoveryFor(container);
    // someone's NIC with the name the failover would use
    await network.networkInterfaces.createOrUpdate(arm.resourceGroup, 'db1-nic0', { location: 'westeurope', tags: { owner: 'someone' }, ipConfigurations: [{ name: 'ipconfig1', subnet: { id: subnetId }, privateIPAllocationMethod: 'Dynamic' }] }, { updateIntervalInMs: 20 });
    await assertRejectsCode(recovery.createVm(await planOf(replica, container, 'job-fo-2', 1, { vmName: 'db1' })), 'AZURE_CONFLICT');
    assert.ok(arm.resources.has(`/subscriptions/${arm.subscriptionId}/resourcegroups/${arm.resourceGroup}/providers/microsoft.network/networkinterfaces/db1-nic0`.toLowerCase()), 'their NIC is still there');
    await recovery.removeJob('job-fo-2');
    await network.networkInterfaces.delete(arm.resourceGroup, 'db1-nic0', { updateIntervalInMs: 20 });

    // this job's earlier try left its disk being made: the retry's PUT meets a 409 and waits for it
    const plan = await planOf(replica, container, 'job-fo-3', 3, { vmName: 'app1' });
    arm.failNextOperation(/\/virtualMachines\/app1$/, 'AllocationFailed', 'no capacity');
    await assertRejectsCode(recovery.createVm(plan), 'AZURE_OPERATION_FAILED');
    await compute.disks.delete(arm.resourceGroup, 'app1-sdb', { updateIntervalInMs: 20 });
    arm.setOperationMs(600);
    await compute.disks.beginCreateOrUpdate(arm.resourceGroup, 'app1-sdb', {
      location: 'westeurope',
      tags: { [OSR_TAG.item]: 'item-web1', [OSR_TAG.job]: 'job-fo-3', [OSR_TAG.role]: 'failover' },
      sku: { name: 'StandardSSD_LRS' },
      creationData: { createOption: 'Import', sourceUri: container.getBlobClient(`failover/job-fo-3/sdb.vhd`).url, storageAccountId: `/subscriptions/${arm.subscriptionId}/resourceGroups/storage/providers/Microsoft.Storage/storageAccounts/devstoreaccount1` },
    });
    arm.setOperationMs(50);
    const before409 = arm.requests.filter((r) => r.status === 409).length;
    const made = await recovery.createVm(plan);
    assert.ok(arm.requests.filter((r) => r.status === 409).length > before409, 'a 409 was met');
    assert.equal(made.diskIds.length, 2);
    assert.deepEqual(arm.violations, []);
    await recovery.removeJob('job-fo-3');
  }),
);

test(
  'a test failover goes into an isolated network made for the drill, and its cleanup removes the network with the VM',
  withDir(async (dir) => {
    const { replica, container } = await replicaWithPoints(dir, 'vm-drill-1');
    const recovery = recoveryFor(container);
    const net = await recovery.createDrillNetwork({ itemId: 'item-web1', jobId: 'job-tf-1', name: 'osr-drill-job-tf-1', addressPrefix: '10.99.0.0/24' });
    const made = await recovery.createVm(await planOf(replica, container, 'job-tf-1', 3, { role: 'test', vmName: 'web1-test', nics: [{ subnetId: net.subnetId }] }));
    const vnet = arm.resources.get(net.vnetId.toLowerCase())!;
    assert.equal(vnet.tags?.[OSR_TAG.role], 'test');
    assert.equal(vnet.properties.virtualNetworkPeerings, undefined, 'no peering');
    assert.ok(arm.resources.has(made.vmId.toLowerCase()));
    await recovery.removeJob('job-tf-1');
    assert.deepEqual([...arm.resources.values()].map((r) => r.name), ['prod']);
    assert.deepEqual(arm.violations, []);
  }),
);
