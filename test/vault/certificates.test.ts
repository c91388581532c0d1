/**
 * A provider may have agent certificates issued only for hosts its fabric reported, with
 * the names the inventory gives them: a real vault over HTTPS, a registered provider.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import { systemClock } from '../../src/domain/clock.js';
import type { HostAdmission } from '../../src/domain/resources.js';
import { generateKeyPairPem, readCertificateInfo, readCrl, signEnrolmentProof } from '../../src/pki/index.js';
import { ProviderChannel } from '../../src/provider/channel.js';
import { loadRegistration, registerWithVault } from '../../src/provider/registration.js';
import { ProviderRuntime } from '../../src/provider/runtime.js';
import { tempDir, waitFor } from '../support/lab.js';
import { assertRejectsCode } from '../support/unit.js';
import { siteInventory, startVault, TestProvider, type TestVault } from '../support/vault.js';

let v: TestVault;
const providers: TestProvider[] = [];
const channels: ProviderChannel[] = [];
before(async () => {
  v = await startVault({ name: 'certs' });
});
after(async () => {
  for (const p of providers) await p.stop().catch(() => undefined);
  for (const c of channels) c.close();
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
  // the inventory's names, and the fabric the vault enrolled it through, from the vault's own records
  assert.deepEqual(san.split(', ').sort(), [`DNS:${ny.hosts[0]}.example.org`, 'IP Address:10.20.30.40', `URI:urn:osr:fabric:${info.fabricId}`]);
  assert.equal(info.fabricId, 'vmm-ny');

  // a host that lists no address is named by its host name alone
  const second = await ny.channel.enrolAgent(ny.hosts[1]!, publicKeyPem);
  assert.equal(new crypto.X509Certificate(second.certificate).subjectAltName, `DNS:${ny.hosts[1]}, URI:urn:osr:fabric:vmm-ny`);
});

test('the vault renews its own server certificate two thirds into its life, without a restart (a clock moved forward)', async () => {
  let offset = 0;
  const clock = { now: () => Date.now() + offset, sleep: systemClock.sleep };
  const w = await startVault({ name: 'renewing', clock, settings: { certificateCheckIntervalMs: 100 } });
  try {
    const serverCert = async (): Promise<crypto.X509Certificate> => {
      const u = new URL(w.url);
      const s = tls.connect({ host: u.hostname, port: Number(u.port), ca: w.vault.ctx.identity.ca.certPem, servername: 'localhost' });
      await once(s, 'secureConnect');
      const c = s.getPeerX509Certificate()!;
      s.destroy();
      return c;
    };
    const first = await serverCert();
    // sixty days on, a third of its life is left: the next check renews it
    offset = 61 * 86_400_000;
    const renewed = await waitFor('a new server certificate', async () => {
      const c = await serverCert();
      return c.serialNumber !== first.serialNumber ? c : undefined;
    }, 10_000);
    assert.ok(Date.parse(renewed.validTo) >= Date.parse(first.validTo));
    assert.ok(renewed.checkIssued(new crypto.X509Certificate(w.vault.ctx.identity.ca.certPem)));
    // clients that connect now are served with it; the API answers as before
    const fresh = w.as(w.token);
    assert.equal((await fresh.request<{ items: unknown[] }>('GET', '/api/v1/fabrics')).items.length, 0);
    const events = await w.api.request<{ items: { kind: string }[] }>('GET', '/api/v1/events?limit=50');
    assert.equal(events.items.filter((e) => e.kind === 'vault.certificate-renewed').length, 1, 'renewed once, not at every check');
  } finally {
    await w.close();
  }
});

test('a host that holds a valid certificate gets a new one only against proof of its current key; an Owner\'s reset lets it enrol anew', async () => {
  const f = await provider('VMM-Pop', 'pop');
  const host = f.hosts[0]!;
  const first = await generateKeyPairPem();
  const issued = await f.channel.enrolAgent(host, first.publicKeyPem, { dnsNames: [`${host}.example.org`] });
  const next = await generateKeyPairPem();
  // what a stolen provider key would try: its own key certified under the host's name
  await assertRejectsCode(f.channel.enrolAgent(host, next.publicKeyPem), 'AUTH_FAILED', /holds a valid certificate/);
  const other = await generateKeyPairPem();
  await assertRejectsCode(f.channel.enrolAgent(host, next.publicKeyPem, {}, signEnrolmentProof({ certPem: issued.certificate, keyPem: other.privateKeyPem }, host, next.publicKeyPem)), 'AUTH_FAILED', /signature/);
  await assertRejectsCode(f.channel.enrolAgent(host, next.publicKeyPem, {}, signEnrolmentProof({ certPem: issued.certificate, keyPem: first.privateKeyPem }, host, other.publicKeyPem)), 'AUTH_FAILED', /signature/);
  const second = await f.channel.enrolAgent(f.hosts[1]!, other.publicKeyPem);
  await assertRejectsCode(f.channel.enrolAgent(host, next.publicKeyPem, {}, signEnrolmentProof({ certPem: second.certificate, keyPem: other.privateKeyPem }, host, next.publicKeyPem)), 'AUTH_FAILED', /not host/);
  // its holder renews it
  const renewed = await f.channel.enrolAgent(host, next.publicKeyPem, {}, signEnrolmentProof({ certPem: issued.certificate, keyPem: first.privateKeyPem }, host, next.publicKeyPem));
  assert.equal(readCertificateInfo(renewed.certificate).commonName, host);
  // the key it renewed away from proves nothing any more, though its certificate has not expired
  const third = await generateKeyPairPem();
  await assertRejectsCode(f.channel.enrolAgent(host, third.publicKeyPem, {}, signEnrolmentProof({ certPem: issued.certificate, keyPem: first.privateKeyPem }, host, third.publicKeyPem)), 'AUTH_FAILED', /not with its newest/);
  // it lost its key: only an Owner resets it, and then it enrols without a proof
  const reader = (await v.api.request<{ secret: string }>('POST', '/api/v1/tokens', { name: 'pop-reader', role: 'Reader' })).secret;
  await assertRejectsCode(v.as(reader).request('POST', `/api/v1/host-admissions/${f.p.fabricId}/${host}/reset`), 'FORBIDDEN');
  const reset = await v.api.request<{ revoked: number }>('POST', `/api/v1/host-admissions/${f.p.fabricId}/${host}/reset`);
  assert.equal(reset.revoked, 2);
  await f.channel.enrolAgent(host, (await generateKeyPairPem()).publicKeyPem);
});

test('host admission: the first inventory\'s hosts are certified; a host reported later only once an Owner approved it', async () => {
  const f = await provider('VMM-Adm', 'adm');
  // its inventory is put by hand from here on
  await f.p.stop();
  const { publicKeyPem } = await generateKeyPairPem();
  const first = await v.api.request<{ items: HostAdmission[] }>('GET', `/api/v1/host-admissions?fabric=${f.p.fabricId}`);
  assert.deepEqual(first.items.map((a) => [a.host, a.state, a.decidedBy]), f.hosts.map((h) => [h, 'admitted', 'first-inventory']));
  await f.channel.enrolAgent(f.hosts[0]!, publicKeyPem);

  // what a stolen provider key could do: report a host of its own, and ask for its certificate
  const inv = siteInventory('adm', ['Cloud'], 0);
  inv.hosts[0]!.addresses = ['10.20.30.40', `${inv.hosts[0]!.name}.example.org`];
  inv.hosts.push({ ...inv.hosts[1]!, id: 'rogue', name: 'adm-rogue', addresses: ['10.66.66.66'] });
  inv.hostGroups[0]!.hosts.push('rogue');
  await f.channel.putInventory(inv);
  await assertRejectsCode(f.channel.enrolAgent('adm-rogue', publicKeyPem), 'HOST_NOT_APPROVED', /osr host approve vmm-adm adm-rogue/);
  const pending = await v.api.request<{ items: HostAdmission[] }>('GET', '/api/v1/host-admissions?state=pending');
  assert.deepEqual(pending.items.map((a) => [a.fabricId, a.host]), [['vmm-adm', 'adm-rogue']]);
  const events = (await v.api.request<{ items: { kind: string; message: string }[] }>('GET', `/api/v1/events?target=${f.p.fabricId}`)).items;
  assert.ok(events.some((e) => e.kind === 'host.admission-pending' && e.message.includes('adm-rogue')), 'an event says a host waits');

  // only an Owner approves
  const reader = (await v.api.request<{ secret: string }>('POST', '/api/v1/tokens', { name: 'adm-reader', role: 'Reader' })).secret;
  await assertRejectsCode(v.as(reader).request('POST', '/api/v1/host-admissions/vmm-adm/adm-rogue/approve'), 'FORBIDDEN');
  await assertRejectsCode(v.api.request('POST', '/api/v1/host-admissions/vmm-adm/nobody/approve'), 'NOT_FOUND');
  const approved = await v.api.request<HostAdmission>('POST', '/api/v1/host-admissions/vmm-adm/adm-rogue/approve');
  assert.equal(approved.state, 'admitted');
  assert.ok(approved.decidedBy);
  assert.equal(readCertificateInfo((await f.channel.enrolAgent('adm-rogue', publicKeyPem)).certificate).commonName, 'adm-rogue');

  // a host reported under another id is another host, even with the name of an admitted one:
  // its certificates are revoked with the old record, and it waits for an Owner
  const swapped = siteInventory('adm', ['Cloud'], 0);
  swapped.hosts[0]!.id = 'swapped-id';
  swapped.hostGroups[0]!.hosts = swapped.hostGroups[0]!.hosts.map((h) => (h === 'cloud-h1' ? 'swapped-id' : h));
  await f.channel.putInventory(swapped);
  await assertRejectsCode(f.channel.enrolAgent(f.hosts[0]!, (await generateKeyPairPem()).publicKeyPem), 'HOST_NOT_APPROVED');
  await f.channel.putInventory(inv);

  // a host that leaves the inventory loses its admission: back again, it waits for an Owner anew
  const without = siteInventory('adm', ['Cloud'], 0);
  await f.channel.putInventory(without);
  await f.channel.putInventory(inv);
  await assertRejectsCode(f.channel.enrolAgent('adm-rogue', publicKeyPem), 'HOST_NOT_APPROVED');
});

test('a host removed from the inventory, or a removed fabric, has its certificates on the revocation list the vault publishes', async () => {
  const a = await provider('VMM-Rev-A', 'ra');
  const b = await provider('VMM-Rev-B', 'rb');
  const { publicKeyPem } = await generateKeyPairPem();
  const hostCert = await a.channel.enrolAgent(a.hosts[0]!, publicKeyPem);
  const serial = (pem: string) => new crypto.X509Certificate(pem).serialNumber.toLowerCase();
  const listed = async (c: ProviderChannel) => (await readCrl(await c.revocationList(), v.vault.ctx.identity.ca.certPem)).serials;
  const numberOf = async (c: ProviderChannel) => (await readCrl(await c.revocationList(), v.vault.ctx.identity.ca.certPem)).crlNumber;
  assert.ok(!(await listed(a.channel)).includes(serial(hostCert.certificate)));
  const before = await numberOf(a.channel);
  assert.equal(typeof before, 'number', 'the vault\'s lists carry a CRL number');

  // the host leaves the fabric's inventory
  const inv = siteInventory('ra', ['Cloud'], 0);
  inv.hosts = inv.hosts.filter((h) => h.name !== a.hosts[0]);
  for (const g of inv.hostGroups) g.hosts = g.hosts.filter((id) => inv.hosts.some((h) => h.id === id));
  await a.channel.putInventory(inv);
  assert.ok((await listed(a.channel)).includes(serial(hostCert.certificate)), 'the removed host\'s certificate is not on the list');
  assert.ok((await listed(b.channel)).includes(serial(hostCert.certificate)), 'every provider gets the same list');
  assert.ok((await numberOf(b.channel))! > before!, 'a revocation raises the list\'s number');

  // a removed fabric: its provider's certificate too (the vault refuses it already)
  const providerSerial = serial(a.p.registration.tls.cert);
  await a.p.stop();
  await v.api.request('DELETE', `/api/v1/fabrics/${a.p.fabricId}`);
  assert.ok((await listed(b.channel)).includes(providerSerial));
  await assertRejectsCode(a.channel.revocationList(), 'UNAUTHENTICATED');
});

test('a provider renews its own certificate over its channel two thirds into its life (a clock moved forward); the old one is accepted until the new one is used, then revoked', async () => {
  const dir = tempDir('osr-provider-renew-');
  const key = (await v.api.request<{ key: string }>('POST', '/api/v1/registration-keys')).key;
  const first = await registerWithVault({ vaultUrl: v.url, key, fabric: { name: 'VMM-Renew', kind: 'test' }, serverName: 'renew-server', version: '0.1.0', dir });
  const serial = (pem: string) => new crypto.X509Certificate(pem).serialNumber.toLowerCase();
  const listed = async (c: ProviderChannel) => (await readCrl(await c.revocationList(), v.vault.ctx.identity.ca.certPem)).serials;
  const channel = new ProviderChannel(first, { dir });
  channels.push(channel);

  // a month on, nothing is due
  assert.equal(await channel.renewIfDue(Date.now() + 30 * 86_400_000), false);
  assert.equal(serial(channel.registration.tls.cert), serial(first.tls.cert));

  // a renewal the provider did not keep (it crashed before saving): the old certificate still gets in
  const lost = await generateKeyPairPem();
  await channel.client.request('POST', '/api/v1/provider/certificate', { publicKey: lost.publicKeyPem });
  const stale = new ProviderChannel(first);
  channels.push(stale);
  await stale.heartbeat();

  // through the runtime, on a clock 250 days on: renewed at start, then every call uses the new one
  const clock = { now: () => Date.now() + 250 * 86_400_000, sleep: systemClock.sleep };
  const runtime = new ProviderRuntime(channel, { handlers: {}, inventory: () => siteInventory('rn', ['Cloud'], 0), pollSeconds: 1, clock });
  const renewed = once(runtime, 'certificate-renewed');
  await runtime.start();
  try {
    await renewed;
    const next = channel.registration;
    assert.notEqual(serial(next.tls.cert), serial(first.tls.cert));
    const info = readCertificateInfo(next.tls.cert);
    assert.deepEqual([info.commonName, info.role], [first.providerId, 'provider']);
    assert.ok(Date.parse(next.notAfter) >= Date.parse(first.notAfter));
    // kept whole in the registration directory: a restarted provider loads the new pair
    const loaded = (await loadRegistration(dir))!;
    assert.equal(loaded.tls.cert, next.tls.cert);
    assert.ok(new crypto.X509Certificate(loaded.tls.cert).checkPrivateKey(crypto.createPrivateKey(loaded.tls.key)));
    assert.equal(fs.statSync(path.join(dir, JSON.parse(fs.readFileSync(path.join(dir, 'registration.json'), 'utf8')).files.key)).mode & 0o777, 0o600);
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('provider')).length, 2, 'the old certificate and key files are removed');

    // the first call with the new certificate makes it the only one: the old one is refused and listed as revoked
    await channel.heartbeat();
    await assertRejectsCode(stale.heartbeat(), 'UNAUTHENTICATED', /other than the one it registered with/);
    const revoked = await listed(channel);
    assert.ok(revoked.includes(serial(first.tls.cert)), 'the superseded certificate is on the revocation list');
    assert.ok(!revoked.includes(serial(next.tls.cert)));
    // the runtime goes on working with it (its long-poll moved to the new connection)
    await runtime.syncInventory();
    const events = await v.api.request<{ items: { kind: string }[] }>('GET', '/api/v1/events?limit=200');
    assert.equal(events.items.filter((e) => e.kind === 'provider.certificate-renewed').length, 2, 'the lost renewal and the kept one');
    // renewed once: a month after it was issued, the new certificate is not due
    assert.equal(await channel.renewIfDue(Date.now() + 30 * 86_400_000), false);
  } finally {
    await runtime.stop();
  }
});

test('a registration directory left by a renewal cut short loads the pair it names and drops the other files', async () => {
  const dir = tempDir('osr-provider-files-');
  const key = (await v.api.request<{ key: string }>('POST', '/api/v1/registration-keys')).key;
  const reg = await registerWithVault({ vaultUrl: v.url, key, fabric: { name: 'VMM-Files', kind: 'test' }, serverName: 'files-server', version: '0.1.0', dir });
  // a new pair written, registration.json not yet replaced
  fs.writeFileSync(path.join(dir, 'provider-0abc.crt'), 'half a renewal');
  fs.writeFileSync(path.join(dir, 'provider-0abc.key'), 'half a renewal');
  const loaded = (await loadRegistration(dir))!;
  assert.equal(loaded.tls.cert, reg.tls.cert);
  assert.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('provider')).sort(), ['provider.crt', 'provider.key']);
  // a registration.json that names a file outside the directory is refused
  const meta = JSON.parse(fs.readFileSync(path.join(dir, 'registration.json'), 'utf8'));
  fs.writeFileSync(path.join(dir, 'registration.json'), JSON.stringify({ ...meta, files: { cert: '../../etc/passwd', key: 'provider.key' } }));
  await assertRejectsCode(loadRegistration(dir), 'CONFIG_INVALID');
});
