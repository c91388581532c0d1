/**
 * The provider channel (docs/design/agent-channel.md) with real agent processes and real
 * TLS: an agent started with --provider-api answers a provider of its own fabric on the
 * allow-listed routes only, and refuses, with AUTH_FAILED, certificates of every other
 * role, of another fabric, without a fabric, revoked, and every call while its revocation
 * list is expired; an agent with no certificate yet serves its enrolment by its bootstrap
 * certificate, which the provider takes only by the pinned fingerprint; and a real `osr
 * provider --fabric libvirt` enrols and drives an agent it reaches over https only.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { AgentClient } from '../../src/cli/agent-client.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { clientTlsOptions, createCa, createCrl, issueCertificate, readCertificateInfo, type CaMaterial, type PkiRole, type TlsMaterial } from '../../src/pki/index.js';
import { tempDir, waitFor } from '../support/lab.js';
import { libvirtSkip } from '../support/libvirt.js';
import { assertRejectsCode } from '../support/unit.js';
import { startVault, type TestVault } from '../support/vault.js';

const dir = tempDir('osr-chan-');
const procs: ChildProcess[] = [];

interface Started {
  child: ChildProcess;
  ready: { providerApi: string; bootstrapFingerprint?: string; caFingerprint: string; api: string };
  url: URL;
  log: string;
}

/** `osr agent` with the provider channel on a free loopback port; resolves with its ready line. */
async function startAgent(name: string, args: string[]): Promise<Started> {
  const log = path.join(dir, `${name}.log`);
  const fd = fs.openSync(log, 'a');
  const child = spawn(process.execPath, [OSR_BIN, 'agent', '--name', name, '--data-dir', path.join(dir, name), '--provider-api', '127.0.0.1:0', '--tls-reload', '200ms', ...args], { stdio: ['ignore', 'pipe', fd] });
  fs.closeSync(fd);
  procs.push(child);
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('\n')) resolve(out.slice(0, out.indexOf('\n')));
    });
    child.once('exit', (code) => reject(new Error(`agent ${name} exited with ${code}: ${fs.readFileSync(log, 'utf8').slice(-2000)}`)));
  });
  child.removeAllListeners('exit');
  const ready = JSON.parse(line) as Started['ready'];
  return { child, ready, url: new URL(ready.providerApi), log };
}

/** A raw HTTPS call with a client certificate; the agent's certificate is not checked here (the agent's checks are the point). */
async function raw(a: Started, m: TlsMaterial, method: string, p: string, body?: unknown, host?: string): Promise<{ status: number; body: { code?: string; message?: string } & Record<string, unknown> }> {
  const socket = tls.connect({ ...clientTlsOptions(m), host: a.url.hostname, port: Number(a.url.port), rejectUnauthorized: false, checkServerIdentity: () => undefined });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  const payload = body !== undefined ? Buffer.from(JSON.stringify(body)) : undefined;
  return new Promise((resolve, reject) => {
    const req = http.request(
      { createConnection: () => socket, method, path: p, headers: { host: host ?? a.url.host, ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}) } },
      (r) => {
        const chunks: Buffer[] = [];
        r.on('data', (c: Buffer) => chunks.push(c));
        r.on('end', () => {
          const t = Buffer.concat(chunks).toString();
          resolve({ status: r.statusCode ?? 0, body: t ? (JSON.parse(t) as Record<string, unknown>) : {} });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

const material = (ca: CaMaterial, issued: { certPem: string; keyPem: string }): TlsMaterial => ({ cert: issued.certPem, key: issued.keyPem, ca: ca.certPem });

let ca: CaMaterial;
const certs: Record<string, TlsMaterial> = {};
let revokedSerial = '';

before(async () => {
  ca = await createCa({ commonName: 'channel test vault CA' });
  const issue = async (cn: string, role: PkiRole, fabricId?: string) => {
    const c = await issueCertificate(ca, { commonName: cn, role, ...(fabricId !== undefined ? { fabricId } : {}) });
    return { m: material(ca, c), serial: c.serialNumber };
  };
  certs.provider = (await issue('prov-1', 'provider', 'site-a')).m;
  certs.otherFabric = (await issue('prov-2', 'provider', 'site-b')).m;
  certs.noFabric = (await issue('prov-3', 'provider')).m;
  certs.agent = (await issue('kvm9', 'agent', 'site-a')).m;
  certs.client = (await issue('operator', 'client')).m;
  certs.vault = (await issue('vault-x', 'vault')).m;
  const revoked = await issue('prov-4', 'provider', 'site-a');
  certs.revoked = revoked.m;
  revokedSerial = revoked.serial;
  const other = await createCa({ commonName: 'someone else' });
  certs.otherCa = material(other, await issueCertificate(other, { commonName: 'prov-5', role: 'provider', fabricId: 'site-a' }));
});

after(async () => {
  await Promise.all(
    procs
      .filter((p) => p.exitCode === null && p.signalCode === null)
      .map((p) => {
        const exited = new Promise((r) => p.once('exit', r));
        p.kill('SIGTERM');
        return exited;
      }),
  );
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('an enrolled agent', () => {
  let a: Started;
  let agentSerial = '';
  before(async () => {
    const pki = path.join(dir, 'pki-kvm1');
    fs.mkdirSync(pki, { recursive: true });
    const own = await issueCertificate(ca, { commonName: 'kvm1', role: 'agent', fabricId: 'site-a', ipAddresses: ['127.0.0.1'] });
    agentSerial = own.serialNumber;
    fs.writeFileSync(path.join(pki, 'ca.crt'), ca.certPem);
    fs.writeFileSync(path.join(pki, 'kvm1.crt'), own.certPem);
    fs.writeFileSync(path.join(pki, 'kvm1.key'), own.keyPem, { mode: 0o600 });
    a = await startAgent('kvm1', ['--pki-dir', pki]);
    assert.equal(a.ready.bootstrapFingerprint, undefined, 'an enrolled agent has no bootstrap certificate');
  });

  test('its fabric\'s provider reaches the allow-listed routes; the rest is AUTH_FAILED', async () => {
    const p = certs.provider!;
    assert.equal((await raw(a, p, 'GET', '/v1/status')).body.name, 'kvm1');
    for (const route of ['/v1/vms', '/v1/replications', '/v1/replicas', '/v1/enrolment']) assert.equal((await raw(a, p, 'GET', route)).status, 200, route);
    // allowed, and answered by the route itself
    assert.equal((await raw(a, p, 'POST', '/v1/vms/nothing/fence', { epoch: 2 })).body.code, 'VM_NOT_FOUND');
    assert.equal((await raw(a, p, 'GET', '/v1/host/inventory')).body.code, 'NOT_SUPPORTED');
    const refused: [string, string, unknown?][] = [
      ['POST', '/v1/vms', { name: 'x', disks: ['1M'] }],
      ['POST', '/v1/vms/x/start'],
      ['POST', '/v1/vms/x/stop', {}],
      ['POST', '/v1/replicas/import', { dir: '/etc' }],
      ['POST', '/v1/replicas/x/overlays/y/commit'],
      ['GET', '/v1/not-a-route'],
      ['POST', '/v1/replications', { vm: 'x', peer: '127.0.0.1:1', initialReplication: 'offline', exportDir: '/tmp/x' }],
    ];
    for (const [method, route, body] of refused) {
      const r = await raw(a, p, method, route, body);
      assert.equal(r.status, 403, `${method} ${route}`);
      assert.equal(r.body.code, 'AUTH_FAILED', `${method} ${route}`);
    }
    assert.match((await raw(a, p, 'POST', '/v1/vms', { name: 'x', disks: ['1M'] })).body.message!, /not a call a provider may make/);
    const wrongHost = await raw(a, p, 'GET', '/v1/status', undefined, 'evil.example:80');
    assert.equal(wrongHost.body.code, 'HOST_NOT_ALLOWED');
  });

  test('other roles, another fabric, no fabric and another CA are refused', async () => {
    for (const [which, pattern] of [['agent', /role agent/], ['client', /role client/], ['vault', /role vault/], ['otherFabric', /fabric site-a, not to the provider's fabric site-b/], ['noFabric', /names no fabric/]] as const) {
      const r = await raw(a, certs[which]!, 'GET', '/v1/status');
      assert.equal(r.status, 403, which);
      assert.equal(r.body.code, 'AUTH_FAILED', which);
      assert.match(r.body.message!, pattern, which);
    }
    await assert.rejects(raw(a, certs.otherCa!, 'GET', '/v1/status'), 'a certificate of another CA does not get through TLS');
    const log = fs.readFileSync(a.log, 'utf8');
    assert.match(log, /"peer":"kvm9","role":"agent","fingerprint":"[0-9A-F:]{95}"/, 'a refusal is logged with the peer\'s name, role and fingerprint');
    assert.match(log, /"peer":"prov-2","role":"provider".*site-b/);
  });

  test('a revoked provider is refused once the list names it; an expired list lets only a newer list in; an older list is never taken', async () => {
    assert.equal((await raw(a, certs.revoked!, 'GET', '/v1/status')).status, 200);
    const day = 86_400_000;
    const list = await createCrl(ca, [{ serialNumber: revokedSerial, revokedAt: new Date() }], { nextUpdate: new Date(Date.now() + day) });
    assert.equal((await raw(a, certs.provider!, 'PUT', '/v1/enrolment/crl', { crl: list })).status, 200);
    const r = await raw(a, certs.revoked!, 'GET', '/v1/status');
    assert.equal(r.body.code, 'AUTH_FAILED');
    assert.match(r.body.message!, /revoked/);
    assert.equal((await raw(a, certs.provider!, 'GET', '/v1/status')).status, 200);

    // a list made before the one held: it could leave out a certificate revoked since
    const older = await createCrl(ca, [], { thisUpdate: new Date(Date.now() - 3 * day), nextUpdate: new Date(Date.now() + day) });
    const o = await raw(a, certs.provider!, 'PUT', '/v1/enrolment/crl', { crl: older });
    assert.equal(o.body.code, 'INVALID_ARGUMENT');
    assert.match(o.body.message!, /before the one this agent holds/);
    assert.equal((await raw(a, certs.revoked!, 'GET', '/v1/status')).body.code, 'AUTH_FAILED', 'the revoked provider stays refused');

    const expired = await createCrl(ca, [], { thisUpdate: new Date(Date.now() - 60_000), nextUpdate: new Date(Date.now() - 30_000) });
    assert.equal((await raw(a, certs.provider!, 'PUT', '/v1/enrolment/crl', { crl: expired })).status, 200);
    const e = await raw(a, certs.provider!, 'GET', '/v1/status');
    assert.equal(e.body.code, 'AUTH_FAILED');
    assert.match(e.body.message!, /revocation list expired/);
    assert.equal((await raw(a, certs.provider!, 'PUT', '/v1/enrolment/crl', { crl: list })).body.code, 'INVALID_ARGUMENT', 'the first list is older than the expired one');
    const newer = await createCrl(ca, [{ serialNumber: revokedSerial, revokedAt: new Date() }], { thisUpdate: new Date(), nextUpdate: new Date(Date.now() + day) });
    assert.equal((await raw(a, certs.provider!, 'PUT', '/v1/enrolment/crl', { crl: newer })).status, 200, 'a newer list is taken');
    assert.equal((await raw(a, certs.provider!, 'GET', '/v1/status')).status, 200);

    // lists the vault makes carry a CRL number: it orders lists made within one second too
    const numbered = (n: number | undefined, at = new Date()) => createCrl(ca, [{ serialNumber: revokedSerial, revokedAt: new Date() }], { thisUpdate: at, nextUpdate: new Date(Date.now() + day), ...(n !== undefined ? { crlNumber: n } : {}) });
    assert.equal((await raw(a, certs.provider!, 'PUT', '/v1/enrolment/crl', { crl: await numbered(7) })).status, 200);
    const lower = await raw(a, certs.provider!, 'PUT', '/v1/enrolment/crl', { crl: await numbered(6, new Date(Date.now() + 1000)) });
    assert.equal(lower.body.code, 'INVALID_ARGUMENT');
    assert.match(lower.body.message!, /CRL number 6, below the 7/);
    assert.equal((await raw(a, certs.provider!, 'PUT', '/v1/enrolment/crl', { crl: await numbered(undefined, new Date(Date.now() + 1000)) })).body.code, 'INVALID_ARGUMENT', 'a list without a number is older than one with');
    assert.equal((await raw(a, certs.provider!, 'PUT', '/v1/enrolment/crl', { crl: await numbered(8) })).status, 200);
  });

  test('the provider\'s client checks the agent: its name, its fabric and the revocation list', async () => {
    const client = (hostName: string, fabricId: string, revoked?: string[]) => new AgentClient(a.ready.providerApi, { channel: { tls: () => certs.provider!, hostName, fabricId: () => fabricId, revoked: () => new Set(revoked ?? []) } });
    // a revoked agent key is not the host, not even to enrol it again
    await assertRejectsCode(client('kvm1', 'site-a', [agentSerial]).get('/v1/status'), 'TLS_PEER_CERT_UNTRUSTED', /was revoked by the vault/);
    await assertRejectsCode(client('kvm1', 'site-a', [agentSerial]).post('/v1/enrolment/key', {}), 'TLS_PEER_CERT_UNTRUSTED', /was revoked by the vault/);
    assert.equal((await client('kvm1', 'site-a').get<{ name: string }>('/v1/status')).name, 'kvm1');
    await assertRejectsCode(client('kvm2', 'site-a').get('/v1/status'), 'TLS_PEER_CERT_UNTRUSTED', /names kvm1, not host kvm2/);
    await assertRejectsCode(client('kvm1', 'site-b').get('/v1/status'), 'TLS_PEER_CERT_UNTRUSTED', /fabric site-a, not this provider's fabric site-b/);
  });
});

describe('an agent not enrolled yet', () => {
  let b: Started;
  before(async () => {
    fs.writeFileSync(path.join(dir, 'vault-ca.crt'), ca.certPem);
    b = await startAgent('kvm2', ['--ca', path.join(dir, 'vault-ca.crt'), '--provider-fabric', 'site-a']);
  });

  test('presents a bootstrap certificate the provider takes by its fingerprint, for the enrolment only; then its certificate from the CA', async () => {
    const fp = b.ready.bootstrapFingerprint!;
    assert.match(fp, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    assert.equal(b.ready.caFingerprint, new (await import('node:crypto')).X509Certificate(ca.certPem).fingerprint256);
    const client = (agentFingerprint: string | undefined, fabricId = 'site-a') => new AgentClient(b.ready.providerApi, { channel: { tls: () => certs.provider!, hostName: 'kvm2', fabricId: () => fabricId, agentFingerprint } });
    const wrong = fp.replace(/^../, fp.startsWith('00') ? '11' : '00');
    await assertRejectsCode(client(wrong).get('/v1/status'), 'TLS_PEER_CERT_UNTRUSTED', /not the site file's agentFingerprint/);
    await assertRejectsCode(client(undefined).get('/v1/status'), 'TLS_PEER_CERT_UNTRUSTED', /no agentFingerprint/);
    // a provider that saw the host enrolled since the site file gave this fingerprint (it keeps that across restarts) takes it no more
    const spent = new AgentClient(b.ready.providerApi, { channel: { tls: () => certs.provider!, hostName: 'kvm2', fabricId: () => 'site-a', agentFingerprint: fp, bootstrapSpent: () => true } });
    await assertRejectsCode(spent.get('/v1/status'), 'TLS_PEER_CERT_UNTRUSTED', /after it was enrolled/);
    const pinned = client(fp);
    assert.equal((await pinned.get<{ name: string }>('/v1/status')).name, 'kvm2');
    await assertRejectsCode(pinned.get('/v1/vms'), 'TLS_PEER_CERT_UNTRUSTED', /not enrolled yet/);
    // the agent refuses it too
    const r = await raw(b, certs.provider!, 'GET', '/v1/vms');
    assert.equal(r.body.code, 'AUTH_FAILED');
    assert.match(r.body.message!, /not enrolled yet/);
    assert.equal((await raw(b, certs.agent!, 'GET', '/v1/status')).body.code, 'AUTH_FAILED', 'only a provider enrols it');
    const otherSite = await raw(b, certs.otherFabric!, 'GET', '/v1/status');
    assert.equal(otherSite.body.code, 'AUTH_FAILED', 'only the provider of the fabric --provider-fabric names enrols it');
    assert.match(otherSite.body.message!, /fabric site-a's provider only/);

    const { publicKeyPem } = await pinned.post<{ publicKeyPem: string }>('/v1/enrolment/key');
    // over the channel: only a certificate from the agent's own CA, role agent, of the provider's fabric
    const other = await createCa({ commonName: 'a CA of the provider\'s choosing' });
    const foreign = await issueCertificate(other, { commonName: 'kvm2', role: 'agent', fabricId: 'site-a', publicKeyPem });
    await assertRejectsCode(pinned.call('PUT', '/v1/enrolment/certificate', { certificate: foreign.certPem, caCertificate: other.certPem }), 'AUTH_FAILED', /own CA only/);
    const otherFabric = await issueCertificate(ca, { commonName: 'kvm2', role: 'agent', fabricId: 'site-b', publicKeyPem });
    await assertRejectsCode(pinned.call('PUT', '/v1/enrolment/certificate', { certificate: otherFabric.certPem, caCertificate: ca.certPem }), 'AUTH_FAILED', /fabric site-b, not the provider's fabric site-a/);
    const good = await issueCertificate(ca, { commonName: 'kvm2', role: 'agent', fabricId: 'site-a', publicKeyPem });
    await pinned.call('PUT', '/v1/enrolment/certificate', { certificate: good.certPem, caCertificate: ca.certPem });

    // enrolled: its certificate from the CA at once, and the whole list of routes
    assert.deepEqual(await pinned.get('/v1/vms'), []);
    assert.equal(readCertificateInfo(fs.readFileSync(path.join(dir, 'kvm2', 'pki', 'kvm2.crt'), 'utf8')).fabricId, 'site-a');
    assert.equal(fs.existsSync(path.join(dir, 'kvm2', 'pki', 'bootstrap.key')), false, 'the bootstrap key is gone');
    assert.equal((await raw(b, certs.otherFabric!, 'GET', '/v1/status')).body.code, 'AUTH_FAILED', 'now of fabric site-a only');
    await assertRejectsCode(client(fp, 'site-b').get('/v1/status'), 'TLS_PEER_CERT_UNTRUSTED', /not this provider's fabric/);
  });
});

describe('osr provider --fabric libvirt over the provider channel only', { skip: libvirtSkip() }, () => {
  let v: TestVault | undefined;
  let provider: ChildProcess | undefined;
  const tag = `chan${process.pid}`;
  after(async () => {
    if (provider && provider.exitCode === null) {
      const exited = new Promise((r) => provider!.once('exit', r));
      provider.kill('SIGTERM');
      await exited;
    }
    await v?.close();
  });

  test('enrols a bootstrap agent it reaches by https and reads its host', async () => {
    v = await startVault({ dataDir: path.join(dir, 'vault') });
    const caFile = path.join(dir, 'real-vault-ca.crt');
    fs.writeFileSync(caFile, v.vault.ctx.identity.ca.certPem);
    // a KVM host's agent that owns no domain (the host's inventory is read, nothing is made)
    const host = `${tag}-kvm`;
    const agent = await startAgent(host, ['--ca', caFile, '--host', 'libvirt', '--libvirt-domains', `^${tag}-none$`]);
    assert.equal(agent.ready.caFingerprint, v.vault.ctx.identity.caFingerprint);
    fs.writeFileSync(
      path.join(dir, 'site.yaml'),
      `name: ${tag}
dir: provider
hosts:
  - { name: ${host}, agent: '${agent.ready.providerApi}', agentFingerprint: '${agent.ready.bootstrapFingerprint!}', addresses: [127.0.0.1] }
clouds:
  - { name: Gold, hostGroups: [{ name: Rack1, hosts: [${host}] }] }
`,
    );
    const key = (await v.api.request<Record<string, unknown>>('POST', '/api/v1/registration-keys')).key as string;
    const log = path.join(dir, 'provider.log');
    const fd = fs.openSync(log, 'a');
    provider = spawn(process.execPath, [OSR_BIN, 'provider', '--fabric', 'libvirt', '--config', path.join(dir, 'site.yaml'), '--vault', v.url, '--registration-key', key, '--inventory-interval', '2s', '--status-interval', '2s'], { stdio: ['ignore', 'ignore', fd] });
    fs.closeSync(fd);
    const certFile = path.join(dir, host, 'pki', `${host}.crt`);
    await waitFor('the agent enrolled through the channel', () => fs.existsSync(certFile), 60_000, 200).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}; provider: ${fs.readFileSync(log, 'utf8').slice(-2000)}; agent: ${fs.readFileSync(agent.log, 'utf8').slice(-2000)}`);
    });
    const fabric = await waitFor('the fabric registered', async () => ((await v!.api.request<{ items: Record<string, unknown>[] }>('GET', '/api/v1/fabrics')).items).find((f) => f.name === tag), 30_000, 250);
    const info = readCertificateInfo(fs.readFileSync(certFile, 'utf8'));
    assert.equal(info.role, 'agent');
    assert.equal(info.commonName, host);
    assert.equal(info.fabricId, fabric.id, 'the vault named the provider\'s fabric in the agent\'s certificate');
    // the provider drives the enrolled agent over the channel: the host is up and the agent took the revocation list
    await waitFor('the host up at the provider', () => /is up/.test(fs.readFileSync(log, 'utf8')), 30_000, 200);
    // its bootstrap certificate is spent, across the provider's restarts: kept in its state
    const stateFile = path.join(dir, 'provider', 'libvirt-state.json');
    await waitFor('the enrolment kept by the provider', () => fs.existsSync(stateFile) && (JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { enrolled?: Record<string, { agentFingerprint: string }> }).enrolled?.[host]?.agentFingerprint === agent.ready.bootstrapFingerprint!.toUpperCase(), 30_000, 200);
    const refusals = fs.readFileSync(agent.log, 'utf8').split('\n').filter((l) => l.includes('provider channel: refused'));
    assert.deepEqual(refusals, [], 'the provider made no call the channel refuses');
  });
});
