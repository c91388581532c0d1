/**
 * A provider enrols an agent it did not start through the agent's local API: the agent
 * makes the key, takes a certificate for it from another CA and replicates with it at
 * once; what does not fit (another name, another key, another CA) is refused. An agent
 * whose host has no hypervisor answers the host routes with NOT_SUPPORTED.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createCa, createCrl, issueCertificate, verifyEnrolmentProof, type CaMaterial, type EnrolmentProof } from '../../src/pki/index.js';
import { createVm, startPair, tempDir, waitFor, waitForPoint, type Pair } from '../support/lab.js';
import { assertRejectsCode } from '../support/unit.js';

let pair: Pair | undefined;
let vaultCa: CaMaterial;

before(async () => {
  vaultCa = await createCa({ commonName: 'enrolment vault CA' });
  pair = await startPair(tempDir('osr-enrol-'), { primaryArgs: ['--tls-reload', '200ms'], replicaArgs: ['--tls-reload', '200ms'] });
});
after(async () => {
  await pair?.stop();
});

interface Enrolment {
  name: string;
  certificate: { commonName: string; serial: string } | null;
  caCertificate: string | null;
  pending: boolean;
}

test('an agent takes a certificate for a key it made, from the CA given with it; both agents then replicate with the new CA', async () => {
  const { primary, replica } = pair!;
  for (const a of [primary, replica]) {
    const before = await a.api.get<Enrolment>('/v1/enrolment');
    assert.equal(before.certificate?.commonName, a.name);
    const { publicKeyPem } = await a.api.post<{ publicKeyPem: string }>('/v1/enrolment/key');
    assert.equal((await a.api.post<{ publicKeyPem: string }>('/v1/enrolment/key')).publicKeyPem, publicKeyPem, 'asked again, the same pending key');
    const pendingKey = path.join(a.options.dataDir, 'enrolment', 'pending.key');
    assert.equal(fs.statSync(pendingKey).mode & 0o077, 0, 'the pending key is the agent user\'s alone');

    const other = await createCa({ commonName: 'someone else' });
    const wrongName = await issueCertificate(vaultCa, { commonName: 'not-this-agent', role: 'agent', publicKeyPem });
    await assertRejectsCode(a.api.call('PUT', '/v1/enrolment/certificate', { certificate: wrongName.certPem, caCertificate: vaultCa.certPem }), 'INVALID_ARGUMENT', /names not-this-agent/);
    const otherKey = await issueCertificate(vaultCa, { commonName: a.name, role: 'agent' });
    await assertRejectsCode(a.api.call('PUT', '/v1/enrolment/certificate', { certificate: otherKey.certPem, caCertificate: vaultCa.certPem }), 'INVALID_ARGUMENT', /pending key/);
    const good = await issueCertificate(vaultCa, { commonName: a.name, role: 'agent', publicKeyPem });
    await assertRejectsCode(a.api.call('PUT', '/v1/enrolment/certificate', { certificate: good.certPem, caCertificate: other.certPem }), 'INVALID_ARGUMENT', /not issued by the CA/);
    await assertRejectsCode(a.api.call('PUT', '/v1/enrolment/certificate', { certificate: 'junk', caCertificate: vaultCa.certPem }), 'INVALID_ARGUMENT');

    await a.api.call('PUT', '/v1/enrolment/certificate', { certificate: good.certPem, caCertificate: vaultCa.certPem });
    await a.api.call('PUT', '/v1/enrolment/certificate', { certificate: good.certPem, caCertificate: vaultCa.certPem });
    const after = await a.api.get<Enrolment>('/v1/enrolment');
    assert.equal(after.caCertificate?.trim(), vaultCa.certPem.trim());
    assert.equal(after.pending, false);
    assert.notEqual(after.certificate?.serial, before.certificate?.serial);
    const key = path.join(path.dirname(pendingKey), '..', '..', 'pki', `${a.name}.key`);
    if (fs.existsSync(key)) assert.equal(fs.statSync(key).mode & 0o077, 0);
    await a.api.call('PUT', '/v1/enrolment/crl', { crl: await createCrl(vaultCa, [], { nextUpdate: new Date(Date.now() + 86_400_000) }) });
    // enrolled: its next key comes with proof of the certificate it holds, made with that certificate's key
    const renewal = await a.api.post<{ publicKeyPem: string; proof: EnrolmentProof }>('/v1/enrolment/key');
    assert.equal(verifyEnrolmentProof(renewal.proof, a.name, renewal.publicKeyPem, vaultCa.certPem).serial, good.serialNumber);
    await assertRejectsCode(a.api.call('PUT', '/v1/enrolment/crl', { crl: await createCrl(other, [], { nextUpdate: new Date(Date.now() + 86_400_000) }) }), 'INVALID_ARGUMENT', /not signed by this CA/);
  }
  // both hold certificates of the new CA now: replication between them works
  await new Promise((r) => setTimeout(r, 500));
  await createVm(primary, 'enrolled', ['4M']);
  await primary.api.post('/v1/replications', { vm: 'enrolled', peer: `127.0.0.1:${replica.replicationPort}`, peerName: replica.name, copyFrequency: '1h' });
  await waitForPoint(primary, 'enrolled', null, 60_000);
  await waitFor('the replica of the enrolled agent', async () => (await replica.api.get<{ vm: string }[]>('/v1/replicas')).some((r) => r.vm === 'enrolled') || undefined);
});

test('a lab agent has no hypervisor: the host routes answer NOT_SUPPORTED', async () => {
  const a = pair!.primary.api;
  await assertRejectsCode(a.get('/v1/host/inventory'), 'NOT_SUPPORTED', /--host libvirt/);
  await assertRejectsCode(a.call('PUT', '/v1/host/networks/drill1'), 'NOT_SUPPORTED');
  await assertRejectsCode(a.call('PUT', '/v1/host/test-domains/t1', { replica: 'x', overlay: 'y', machine: { vcpus: 1, memoryMiB: 64, nics: [] }, network: null }), 'NOT_SUPPORTED');
  await assertRejectsCode(a.delete('/v1/host/test-domains/t1'), 'NOT_SUPPORTED');
});
