/**
 * Certificates taken back and renewed while agents run: a revocation list written beside
 * the agents' certificates refuses the certificates it names (new connections, and open
 * ones from a revoked peer are closed), both ways; a renewed certificate is served without
 * a restart.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createCrl, issueCertificate, writeFileAtomic, type CaMaterial } from '../../src/pki/index.js';
import { ensurePki } from '../../src/lab/agent-process.js';
import { createVm, health, restartAgentProcess, startPair, stopAgentProcess, waitFor, waitForPoint, writePattern, type Pair } from '../support/lab.js';
import { RawPeer } from '../support/raw-peer.js';

let pair: Pair;
let ca: CaMaterial;
before(async () => {
  pair = await startPair(undefined, { primaryArgs: ['--tls-reload', '200ms'], replicaArgs: ['--tls-reload', '200ms'] });
  await ensurePki(pair.pkiDir, ['outsider']);
  ca = { certPem: fs.readFileSync(path.join(pair.pkiDir, 'ca.crt'), 'utf8'), keyPem: fs.readFileSync(path.join(pair.pkiDir, 'ca.key'), 'utf8') };
});
after(async () => {
  await pair?.stop();
});

const serialOf = (name: string) => new crypto.X509Certificate(fs.readFileSync(path.join(pair.pkiDir, `${name}.crt`))).serialNumber.toLowerCase();

async function revoke(...names: string[]): Promise<void> {
  const crl = await createCrl(ca, names.map((n) => ({ serialNumber: serialOf(n), revokedAt: new Date() })), { nextUpdate: new Date(Date.now() + 7 * 86_400_000) });
  await writeFileAtomic(path.join(pair.pkiDir, 'crl.pem'), crl, 0o644);
}

/** Whether `name` gets a welcome from the replica now. */
async function welcomed(name: string): Promise<boolean> {
  try {
    const p = await RawPeer.connect(pair.replica.replicationPort!, pair.pkiDir, name);
    const w = await p.hello();
    p.close();
    return w?.type === 'welcome';
  } catch {
    return false;
  }
}

test('a revoked agent certificate is refused by a running replica, and its open connection closed; others go on', async () => {
  const { primary } = pair;
  const disks = await createVm(primary, 'app', ['2M']);
  await primary.api.post('/v1/replications', { vm: 'app', peer: `127.0.0.1:${pair.replica.replicationPort}`, peerName: 'replica', copyFrequency: '1h' });
  const h1 = await waitForPoint(primary, 'app', null);

  assert.equal(await welcomed('outsider'), true);
  const open = await RawPeer.connect(pair.replica.replicationPort!, pair.pkiDir, 'outsider');
  assert.equal((await open.hello())?.type, 'welcome');

  await revoke('outsider');
  // the replica closes the revoked peer's open connection once it loaded the list
  await Promise.race([open.closed, new Promise((_resolve, reject) => setTimeout(() => reject(new Error('the revoked peer\'s connection stayed open')), 10_000))]);
  await waitFor('the outsider is refused', async () => ((await welcomed('outsider')) ? undefined : true), 10_000, 100);
  assert.match(fs.readFileSync(path.join(pair.dir, 'replica.log'), 'utf8'), /reloaded the TLS certificate, CA and revocation list/);

  // the real primary is not named: it goes on replicating
  await writePattern(disks[0].nbd.unix, { writes: 10 });
  await primary.api.post('/v1/replications/app/cycle');
  await waitForPoint(primary, 'app', h1.latestPoint!.seq + 1);
});

test('a renewed certificate is served without a restart; a primary refuses a replica whose certificate was revoked', async () => {
  const pid = pair.replica.child.pid;
  const before = serialOf('replica');
  const renewed = await issueCertificate(ca, { commonName: 'replica', role: 'agent' });
  // the key first, then the certificate: a reload between the two is refused and retried
  await writeFileAtomic(path.join(pair.pkiDir, 'replica.key'), renewed.keyPem, 0o600);
  await writeFileAtomic(path.join(pair.pkiDir, 'replica.crt'), renewed.certPem, 0o644);
  const served = await waitFor('the renewed certificate is served', async () => {
    const p = await RawPeer.connect(pair.replica.replicationPort!, pair.pkiDir, 'primary');
    const serial = p.socket.getPeerX509Certificate()?.serialNumber.toLowerCase();
    p.close();
    return serial !== before ? serial : undefined;
  }, 10_000, 100);
  assert.equal(served, renewed.serialNumber);
  assert.equal(pair.replica.child.pid, pid, 'the replica was restarted');

  // the renewed certificate taken back: the primary will not replicate to it
  await revoke('outsider', 'replica');
  await stopAgentProcess(pair.replica, 'SIGKILL');
  pair.replica = await restartAgentProcess(pair.replica);
  await pair.primary.api.post('/v1/replications/app/cycle').catch(() => undefined);
  const refused = await waitFor('the primary refuses the revoked replica', async () => {
    const h = await health(pair.primary, 'app');
    return h.lastError?.code === 'TLS_PEER_CERT_UNTRUSTED' ? h : undefined;
  }, 30_000, 100);
  assert.match(refused.lastError!.message, /revoked/);
});
