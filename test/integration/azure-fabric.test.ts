/**
 * The Azure fabric's site file, its clients and its inventory: against the fake Resource
 * Manager (every request checked against the specifications) and Azurite.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { AZURITE_ACCOUNT, AZURITE_KEY, startAzurite, type Azurite } from '../support/azurite.js';
import { startFakeArm, type FakeArm } from '../support/fake-arm.js';
import { azureClients } from '../../src/drivers/azure/clients.js';
import { azureInventory, DRILL_LOGICAL } from '../../src/drivers/azure/inventory.js';
import { AzureRecovery } from '../../src/drivers/azure/recovery.js';
import { parseAzureSite } from '../../src/drivers/azure/site.js';
import { assertThrowsCode, withDir } from '../support/unit.js';
import { openDatabase, Dialect } from '../../src/store/database.js';
import { FabricStore } from '../../src/store/inventory.js';
import { AZURE_CAPABILITIES } from '../../src/drivers/azure/capabilities.js';
import { createTestDatabase } from '../support/databases.js';

let azurite: Azurite;
let arm: FakeArm;
before(async () => {
  azurite = await startAzurite();
  arm = await startFakeArm({ storageCredential: azurite.credential, storageBlobEndpoint: azurite.url, lroMs: 20 });
});
after(async () => {
  await arm?.stop();
  await azurite?.stop();
});

const TENANT = '11111111-2222-3333-4444-555555555555';
const CLIENT = '66666666-7777-8888-9999-aaaaaaaaaaaa';

function siteYaml(dir: string, o: Record<string, string> = {}): string {
  fs.writeFileSync(path.join(dir, 'sp.secret'), 'not-a-real-secret\n', { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'account.key'), `${AZURITE_KEY}\n`, { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'arm-ca.pem'), arm.ca);
  return [
    'name: azure-we',
    `subscriptionId: ${o.subscriptionId ?? arm.subscriptionId}`,
    `resourceGroup: ${arm.resourceGroup}`,
    'location: westeurope',
    'storageAccount:',
    `  name: ${AZURITE_ACCOUNT}`,
    `  blobEndpoint: ${o.blobEndpoint ?? azurite.url}`,
    `  keyFile: ${o.keyFile ?? 'account.key'}`,
    'credential:',
    `  tenantId: ${TENANT}`,
    `  clientId: ${CLIENT}`,
    `  ${o.credentialLine ?? 'clientSecretFile: sp.secret'}`,
    'endpoints:',
    `  resourceManager: ${arm.endpoint}`,
    '  caFile: arm-ca.pem',
    o.extra ?? '',
  ].join('\n');
}

test(
  'an Azure site file is checked field by field; secrets come from owner-only files',
  withDir(async (dir) => {
    const site = parseAzureSite(siteYaml(dir), dir);
    assert.equal(site.storageAccount.resourceId, `/subscriptions/${arm.subscriptionId}/resourceGroups/${arm.resourceGroup}/providers/Microsoft.Storage/storageAccounts/${AZURITE_ACCOUNT}`);
    assert.equal(site.credential.clientSecretFile, path.join(dir, 'sp.secret'));
    assert.equal(site.dir, path.join(dir, 'state-azure-we'));
    assert.ok(!JSON.stringify(site).includes('not-a-real-secret'), 'the parsed site holds file names, not secrets');
    const refused = (yaml: string, field: string) => assertThrowsCode(() => parseAzureSite(yaml, dir), 'CONFIG_INVALID', new RegExp(field));
    refused(siteYaml(dir, { subscriptionId: 'my-subscription' }), 'subscriptionId');
    refused(siteYaml(dir, { blobEndpoint: 'http://10.1.2.3:10000/devstoreaccount1' }), 'blobEndpoint');
    refused(siteYaml(dir, { credentialLine: 'clientSecret: hunter2' }), 'credential.clientSecret is not a field: secrets are never in the site file');
    refused(siteYaml(dir, { extra: 'clientSecret: hunter2' }), 'clientSecret');
    fs.writeFileSync(path.join(dir, 'open.key'), AZURITE_KEY, { mode: 0o644 });
    fs.chmodSync(path.join(dir, 'open.key'), 0o644);
    refused(siteYaml(dir, { keyFile: 'open.key' }), 'keyFile');
    fs.symlinkSync(path.join(dir, 'account.key'), path.join(dir, 'link.key'));
    refused(siteYaml(dir, { keyFile: 'link.key' }), 'symbolic link is not followed');
    refused(siteYaml(dir, { subscriptionId: 'not-a-real-secret' }), 'subscriptionId is not a GUID$');
    refused(siteYaml(dir, { keyFile: 'account.key\n  resourceId: /subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/elsewhere' }), 'resourceId names another storage account');
  }),
);

test(
  'the inventory: the resource group\'s virtual networks as VM networks with their subnets (a drill\'s on a logical network of its own), disk types as storage; the clients reach Resource Manager and the storage account',
  withDir(async (dir) => {
    const site = parseAzureSite(siteYaml(dir), dir);
    // the service principal's credential cannot sign in here (no Entra ID): the fake's token stands in for it
    const clients = azureClients(site, { credential: arm.credential, retryDelayMs: 20 });
    await clients.network.virtualNetworks.createOrUpdate(arm.resourceGroup, 'prod', { location: 'westeurope', addressSpace: { addressPrefixes: ['10.30.0.0/16'] }, subnets: [{ name: 'web', addressPrefix: '10.30.1.0/24' }, { name: 'db', addressPrefix: '10.30.2.0/24' }] }, { updateIntervalInMs: 20 });
    const container = clients.blobs.getContainerClient('osr-inventory-test');
    await container.createIfNotExists();
    const recovery = new AzureRecovery(clients.compute, clients.network, container, { subscriptionId: site.subscriptionId, resourceGroup: site.resourceGroup, location: site.location, storageAccountId: site.storageAccount.resourceId }, { pollMs: 20 });
    await recovery.createDrillNetwork({ itemId: 'item-1', jobId: 'job-drill-9', name: 'osr-drill-9', addressPrefix: '10.99.9.0/24' });
    const inv = await azureInventory(site, clients.network);
    assert.deepEqual(inv.vmNetworks, [
      { id: 'prod', name: 'prod', logicalNetwork: 'ln-prod', subnets: [{ name: 'web', cidr: '10.30.1.0/24' }, { name: 'db', cidr: '10.30.2.0/24' }] },
      { id: 'osr-drill-9', name: 'osr-drill-9', logicalNetwork: DRILL_LOGICAL, subnets: [{ name: 'drill', cidr: '10.99.9.0/24' }] },
    ]);
    // no host is on the drills' logical network: a replica is never placed on a drill's network
    assert.deepEqual(inv.hosts.map((h) => [h.id, h.logicalNetworks]), [['azure-westeurope', ['ln-prod']]]);
    // the vault takes it as a fabric's inventory (ids unique across kinds, of the characters it allows)
    const db = await createTestDatabase(Dialect.Sqlite);
    const d = await openDatabase({ database: db.database, dataDir: db.dataDir });
    try {
      const fabrics = new FabricStore(d.db);
      const { fabric, provider } = await fabrics.registerProvider({ providerId: 'prov-az', fabricName: 'azure-we', fabricKind: 'azure', serverName: 'westeurope', version: '1', certSerial: '02', certFingerprint: 'BB', proxy: null, inventoryScope: 'all' });
      await fabrics.heartbeat(provider.id, AZURE_CAPABILITIES);
      const changes = await fabrics.replaceInventory(fabric.id, inv);
      assert.ok(changes.some((c) => c.kind === 'vm-network' && c.name === 'prod'), JSON.stringify(changes.map((c) => [c.kind, c.id])));
    } finally {
      await d.close();
      await db.drop();
    }
    assert.deepEqual(inv.storageClassifications.map((c) => c.id), ['Standard_LRS', 'StandardSSD_LRS', 'Premium_LRS']);
    assert.deepEqual(inv.storageLocations.map((l) => l.path), Array(3).fill(azurite.url));
    assert.deepEqual(arm.violations, []);
    await recovery.removeJob('job-drill-9');
    await container.delete();
  }),
);
