/**
 * A provider may have agent certificates issued only for hosts its fabric reported, with
 * the names the inventory gives them: a real vault over HTTPS, a registered provider.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';
import { generateKeyPairPem, readCertificateInfo } from '../../src/pki/index.js';
import { ProviderChannel } from '../../src/provider/channel.js';
import { assertRejectsCode } from '../support/unit.js';
import { siteInventory, startVault, TestProvider, type TestVault } from '../support/vault.js';

let v: TestVault;
const providers: TestProvider[] = [];
before(async () => {
  v = await startVault({ name: 'certs' });
});
after(async () => {
  for (const p of providers) await p.stop().catch(() => undefined);
  await v.close();
});

async function provider(fabric: string, site: string): Promise<{ p: TestProvider; channel: ProviderChannel; hosts: string[] }> {
  const inventory = siteInventory(site, ['Cloud'], 0);
  inventory.hosts[0]!.addresses = ['10.20.30.40', `${inventory.hosts[0]!.name}.example.org`];
  const key = (await v.api.request<{ key: string }>('POST', '/api/v1/registration-keys')).key;
  const p = await TestProvider.start(v.url, key, { fabric, inventory });
  providers.push(p);
  return { p, channel: new ProviderChannel(p.registration), hosts: inventory.hosts.map((h) => h.name) };
}

test('agent certificates: only for hosts of the fabric\'s inventory, with the inventory\'s names', async () => {
  const ny = await provider('VMM-NY', 'ny');
  const sf = await provider('VMM-SF', 'sf');
  const { publicKeyPem } = await generateKeyPairPem();

  // a host no fabric reported, and a host of another fabric
  await assertRejectsCode(ny.channel.enrolAgent('evil-host', publicKeyPem), 'NOT_IN_INVENTORY', /no host evil-host/);
  await assertRejectsCode(ny.channel.enrolAgent(sf.hosts[0]!, publicKeyPem), 'NOT_IN_INVENTORY');
  // names the inventory does not list for the host
  await assertRejectsCode(ny.channel.enrolAgent(ny.hosts[0]!, publicKeyPem, { dnsNames: ['vault.example.org'] }), 'NOT_IN_INVENTORY', /not reported at vault\.example\.org/);
  await assertRejectsCode(ny.channel.enrolAgent(ny.hosts[0]!, publicKeyPem, { ipAddresses: ['127.0.0.1'] }), 'NOT_IN_INVENTORY');

  const issued = await ny.channel.enrolAgent(ny.hosts[0]!, publicKeyPem);
  const info = readCertificateInfo(issued.certificate);
  assert.deepEqual([info.commonName, info.role], [ny.hosts[0], 'agent']);
  const san = new crypto.X509Certificate(issued.certificate).subjectAltName ?? '';
  assert.deepEqual(san.split(', ').sort(), [`DNS:${ny.hosts[0]}.example.org`, 'IP Address:10.20.30.40']);

  // a host that lists no address is named by its host name alone
  const second = await ny.channel.enrolAgent(ny.hosts[1]!, publicKeyPem);
  assert.equal(new crypto.X509Certificate(second.certificate).subjectAltName, `DNS:${ny.hosts[1]}`);
});
