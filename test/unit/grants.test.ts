/**
 * Replication grants (src/pki/grant.ts) and what the replica registry does with one: a
 * grant verifies against the CA that signed it and no other, any change to it is refused,
 * its size and fields are bounded; a replica given to a source by a grant takes that source
 * only with a certificate of the grant's fabric, and an older grant cannot take it back.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ReplicaRegistry } from '../../src/agent/replica/replication-server.js';
import { GrantLedger } from '../../src/agent/sending/grant-ledger.js';
import { OsrError } from '../../src/domain/errors.js';
import { createCa, signGrant, verifyGrant, type CaMaterial, type ReplicationGrant } from '../../src/pki/index.js';
import { tempDir } from '../support/lab.js';

let ca: CaMaterial;
let other: CaMaterial;
const g = (o: Partial<ReplicationGrant> = {}): ReplicationGrant => ({ replicationId: 'vm-1', item: 'item-1', source: { fabricId: 'site-a', host: 'kvm1' }, target: { fabricId: 'site-b', host: 'kvm2' }, issuedAt: '2026-12-06T10:00:00.000Z', ...o });
const code = (c: string) => (e: unknown) => e instanceof OsrError && e.code === c;

before(async () => {
  ca = await createCa({ commonName: 'grant unit CA' });
  other = await createCa({ commonName: 'another CA' });
});

describe('replication grants', () => {
  test('a grant verifies against its CA and gives back what was signed', () => {
    assert.deepEqual(verifyGrant(signGrant(ca, g()), ca.certPem), g());
  });

  test('another CA, any altered part, a wrong form or an oversized token is AUTH_FAILED', () => {
    const t = signGrant(ca, g());
    assert.throws(() => verifyGrant(t, other.certPem), code('AUTH_FAILED'));
    const [head, payload, sig] = t.split('.') as [string, string, string];
    const flipped = `${sig.slice(0, 10)}${sig[10] === 'A' ? 'B' : 'A'}${sig.slice(11)}`;
    assert.throws(() => verifyGrant(`${head}.${payload}.${flipped}`, ca.certPem), code('AUTH_FAILED'));
    const swapped = Buffer.from(JSON.stringify({ ...g(), target: { fabricId: 'site-a', host: 'evil' } })).toString('base64url');
    assert.throws(() => verifyGrant(`${head}.${swapped}.${sig}`, ca.certPem), code('AUTH_FAILED'));
    for (const bad of [undefined, 42, '', 'a.b', `other-v1.${payload}.${sig}`, `${head}.${payload}.${sig}.x`, `${head}.${payload}!.${sig}`, 'x'.repeat(5000)]) {
      assert.throws(() => verifyGrant(bad, ca.certPem), code('AUTH_FAILED'), String(bad).slice(0, 40));
    }
  });

  test('a grant signed with unsafe names is refused at signing and at verifying', () => {
    assert.throws(() => signGrant(ca, g({ replicationId: '../etc' })), code('INVALID_ARGUMENT'));
    assert.throws(() => signGrant(ca, g({ source: { fabricId: 'Site A', host: 'kvm1' } })), code('INVALID_ARGUMENT'));
    assert.throws(() => signGrant(ca, g({ issuedAt: 'yesterday' })), code('INVALID_ARGUMENT'));
  });
});

describe('a replica given by a grant', () => {
  const dir = tempDir('osr-grant-reg-');
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('takes its source only with a certificate of the grant\'s fabric; an older grant cannot take it back', () => {
    const r = new ReplicaRegistry(path.join(dir, 'replicas'), () => Date.parse('2026-12-06T11:00:00Z'));
    const first = r.authorize('vm-1', 'kvm1', { claim: true, grant: g() });
    assert.equal(first.sourceFabric, 'site-a');
    r.checkOwner('vm-1', { name: 'kvm1', fabricId: 'site-a' });
    assert.throws(() => r.checkOwner('vm-1', { name: 'kvm1', fabricId: 'site-c' }), code('AUTH_FAILED'));
    assert.throws(() => r.checkOwner('vm-1', { name: 'kvm1' }), code('AUTH_FAILED'));
    assert.throws(() => r.checkOwner('vm-1', { name: 'kvm9', fabricId: 'site-a' }), code('AUTH_FAILED'));
    // delivered twice: the same record
    assert.deepEqual(r.authorize('vm-1', 'kvm1', { claim: true, grant: g() }), first);
    // a newer grant moves it (a failover's new primary); an older one is refused
    const moved = r.authorize('vm-1', 'kvm3', { grant: g({ source: { fabricId: 'site-c', host: 'kvm3' }, issuedAt: '2026-12-06T10:30:00.000Z' }) });
    assert.equal(moved.sourceFabric, 'site-c');
    assert.throws(() => r.authorize('vm-1', 'kvm1', { grant: g() }), code('AUTH_FAILED'));
    r.checkOwner('vm-1', { name: 'kvm3', fabricId: 'site-c' });
    // and it stays so on disk
    const again = new ReplicaRegistry(path.join(dir, 'replicas'), () => Date.now());
    assert.throws(() => again.checkOwner('vm-1', { name: 'kvm3', fabricId: 'site-a' }), code('AUTH_FAILED'));
  });
});

describe('the newest grant an agent took for a VM', () => {
  const dir = tempDir('osr-grant-ledger-');
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('is taken again, a newer one replaces it; an older one, or one of the same time naming other hosts, is refused; it survives a restart', () => {
    const ledger = new GrantLedger(path.join(dir, 'grants'));
    ledger.accept(g());
    ledger.accept(g());
    assert.throws(() => ledger.accept(g({ target: { fabricId: 'site-b', host: 'kvm9' } })), code('AUTH_FAILED'));
    assert.throws(() => ledger.accept(g({ issuedAt: '2026-12-06T09:59:59.000Z' })), code('AUTH_FAILED'));
    // a reprotect's grant, the other way, newer
    const back = g({ source: { fabricId: 'site-b', host: 'kvm2' }, target: { fabricId: 'site-a', host: 'kvm1' }, issuedAt: '2026-12-06T12:00:00.000Z' });
    ledger.accept(back);
    const again = new GrantLedger(path.join(dir, 'grants'));
    assert.throws(() => again.check(g()), code('AUTH_FAILED'), 'the first grant, replayed after the reprotect');
    again.check(back);
    fs.writeFileSync(path.join(dir, 'grants', 'vm-1.json'), '{not json');
    assert.throws(() => again.check(back), code('CONFIG_INVALID'));
  });
});

describe('a replica on an agent where only the vault names sources', () => {
  const dir = tempDir('osr-grant-vault-only-');
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('keeps its owner as a tombstone when deleted: the same grant does not give it back, a newer one does', async () => {
    const r = new ReplicaRegistry(path.join(dir, 'replicas'), () => Date.parse('2026-12-06T11:00:00Z'), () => true);
    r.authorize('vm-1', 'kvm1', { claim: true, grant: g() });
    const disks = [{ id: 'd0', name: 'disk0', size: 1 << 20 }];
    await r.open({ vmId: 'vm-1', vmName: 'web', disks, retention: { hours: 1, maxPoints: 2 }, epoch: 1 }, { name: 'kvm1', fabricId: 'site-a' });
    r.remove('vm-1');
    assert.ok(r.owner('vm-1')?.removedAt, 'a tombstone is kept');
    await assert.rejects(r.open({ vmId: 'vm-1', vmName: 'web', disks, retention: { hours: 1, maxPoints: 2 }, epoch: 1 }, { name: 'kvm1', fabricId: 'site-a' }), code('AUTH_FAILED'));
    assert.throws(() => r.authorize('vm-1', 'kvm1', { claim: true, grant: g() }), code('AUTH_FAILED'));
    r.authorize('vm-1', 'kvm1', { claim: true, grant: g({ issuedAt: '2026-12-06T10:45:00.000Z' }) });
    assert.equal(r.owner('vm-1')?.removedAt, undefined);
    // a VM the vault named no source for is not opened by a first connection
    await assert.rejects(r.open({ vmId: 'vm-2', vmName: 'db', disks, retention: { hours: 1, maxPoints: 2 }, epoch: 1 }, { name: 'kvm1', fabricId: 'site-a' }), code('AUTH_FAILED'));
  });
});
