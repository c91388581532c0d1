/**
 * An Azure recovery site for the tests: the Azure provider (AzureFabricDriver) in the test's
 * process, registered with the vault, against Azurite and the fake Resource Manager. The
 * service principal cannot sign in here (no Entra ID for it): the fake's token stands in.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import YAML from 'yaml';
import { AgentClient, readAgentToken } from '../../src/cli/agent-client.js';
import { AzureFabricDriver } from '../../src/drivers/azure/azure-driver.js';
import { azureClients } from '../../src/drivers/azure/clients.js';
import { parseAzureSite } from '../../src/drivers/azure/site.js';
import { ProviderChannel } from '../../src/provider/channel.js';
import { FabricProvider } from '../../src/provider/fabric-provider.js';
import { registerWithVault } from '../../src/provider/registration.js';
import { VERSION } from '../../src/vault/version.js';
import { AZURITE_ACCOUNT, AZURITE_KEY, type Azurite } from './azurite.js';
import { NetworkManagementClient } from '@azure/arm-network';
import { startAzurite } from './azurite.js';
import { startFakeArm, type FakeArm } from './fake-arm.js';
import { startVault, type TestVault } from './vault.js';

/** `regionAgent`: the osr agent in the region (failback), reached through its local API */
export async function startAzureProvider(o: { vault: TestVault; dir: string; azurite: Azurite; arm: FakeArm; name?: string; regionAgent?: { api: string; apiTokenFile?: string | undefined; replicationPort: number } }): Promise<{ driver: AzureFabricDriver; provider: FabricProvider }> {
  const name = o.name ?? 'azure-we';
  fs.writeFileSync(path.join(o.dir, 'account.key'), `${AZURITE_KEY}\n`, { mode: 0o600 });
  fs.writeFileSync(path.join(o.dir, 'sp.secret'), 'unused\n', { mode: 0o600 });
  fs.writeFileSync(path.join(o.dir, 'arm-ca.pem'), o.arm.ca);
  const site = parseAzureSite(
    YAML.stringify({
      name,
      subscriptionId: o.arm.subscriptionId,
      resourceGroup: o.arm.resourceGroup,
      location: 'westeurope',
      storageAccount: { name: AZURITE_ACCOUNT, blobEndpoint: o.azurite.url, keyFile: 'account.key' },
      credential: { tenantId: '11111111-2222-3333-4444-555555555555', clientId: '66666666-7777-8888-9999-aaaaaaaaaaaa', clientSecretFile: 'sp.secret' },
      endpoints: { resourceManager: o.arm.endpoint, caFile: 'arm-ca.pem' },
      ...(o.regionAgent ? { regionAgent: { agent: o.regionAgent.api, ...(o.regionAgent.apiTokenFile !== undefined ? { agentTokenFile: o.regionAgent.apiTokenFile } : {}), addresses: ['127.0.0.1'], replicationPort: o.regionAgent.replicationPort } } : {}),
    }),
    o.dir,
  );
  const driver = new AzureFabricDriver(site, azureClients(site, { credential: o.arm.credential, retryDelayMs: 10 }), {
    pollMs: 20,
    copyPollMs: 20,
    importPollMs: 200,
    connectRegionAgent: (h) => new AgentClient(h.agent, { token: h.agentTokenFile !== undefined ? readAgentToken(h.agentTokenFile) : undefined }),
  });
  const dir = path.join(o.dir, 'azure-provider');
  const key = (await o.vault.api.request<{ key: string }>('POST', '/api/v1/registration-keys')).key;
  const registration = await registerWithVault({ vaultUrl: o.vault.url, key, fabric: { name, kind: driver.kind }, serverName: name, version: VERSION, inventoryScope: 'all', dir });
  const provider = new FabricProvider({ driver, channel: new ProviderChannel(registration, { dir }), dir, statusIntervalMs: 1000, pollSeconds: 2, log: pino({ level: 'warn' }, pino.destination(2)) });
  await provider.start();
  return { driver, provider };
}

/**
 * The Azure side of a failback test and its vault: Azurite, the fake Resource Manager with
 * virtual network `prod` (10.9.0.0/16, Subnet1), and a vault whose CLI config is
 * DIR/osr.yaml (its CA in DIR/vault-ca.pem). What started is stopped if the rest fails.
 */
export async function startAzureRecoverySite(dir: string): Promise<{ azurite: Azurite; arm: FakeArm; vault: TestVault }> {
  const azurite = await startAzurite();
  let arm: FakeArm | undefined;
  try {
    arm = await startFakeArm({ storageCredential: azurite.credential, storageBlobEndpoint: azurite.url, lroMs: 20 });
    const network = new NetworkManagementClient(arm.credential, arm.subscriptionId, { endpoint: arm.endpoint, tlsOptions: { ca: arm.ca } });
    await network.virtualNetworks.createOrUpdate(arm.resourceGroup, 'prod', { location: 'westeurope', addressSpace: { addressPrefixes: ['10.9.0.0/16'] }, subnets: [{ name: 'Subnet1', addressPrefix: '10.9.0.0/24' }] }, { updateIntervalInMs: 20 });
    const vault = await startVault({ dataDir: path.join(dir, 'vault') });
    fs.writeFileSync(path.join(dir, 'vault-ca.pem'), vault.vault.ctx.identity.ca.certPem);
    fs.writeFileSync(path.join(dir, 'osr.yaml'), YAML.stringify({ vault: vault.url, token: vault.token, ca: path.join(dir, 'vault-ca.pem') }), { mode: 0o600 });
    return { azurite, arm, vault };
  } catch (e) {
    await arm?.stop();
    await azurite.stop();
    throw e;
  }
}
