/**
 * Providers against a real vault over HTTPS: registration keys (wrong vault, revoked,
 * expired, reused — each refused with its code), the mTLS channel (no certificate, a
 * certificate of another CA), inventory sync and its events, enable protection through
 * initial replication to Protected with progress from the provider, health reports that
 * raise alerts delivered by webhook and by e-mail (a local SMTP server), a lost heartbeat,
 * disable protection keeping or deleting the replica, what a fabric cannot do refused
 * before any job starts (its capabilities, reported with the heartbeats), and commands a
 * provider refuses (a malformed body, an unknown kind).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { getEventListeners } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { SMTPServer } from 'smtp-server';
import { OsrError } from '../../src/domain/errors.js';
import { LAB_CAPABILITIES } from '../../src/lab/lab-driver.js';
import type { HostAdmission, ProtectedItem } from '../../src/domain/resources.js';
import { ProviderChannel } from '../../src/provider/channel.js';
import { createCa, issueCertificate, verifyGrant } from '../../src/pki/index.js';
import { registerWithVault } from '../../src/provider/registration.js';
import { CommandState } from '../../src/store/commands.js';
import { waitFor } from '../support/lab.js';
import { assertRejectsCode } from '../support/unit.js';
import { gate, initialProgress, siteInventory, startVault, TestProvider, type TestVault } from '../support/vault.js';

type Obj = Record<string, unknown>;
let v: TestVault;
const providers: TestProvider[] = [];
const newKey = async () => ((await v.api.request<Obj>('POST', '/api/v1/registration-keys')).key as string);

before(async () => {
  v = await startVault({ name: 'contoso', settings: { heartbeatIntervalMs: 200, heartbeatLostAfterMs: 1500 }, alertRetryDelayMs: 50 });
});
after(async () => {
  for (const p of providers) await p.stop().catch(() => undefined);
  await v.close();
});

describe('providers and protection', () => {
  test('registration keys: another vault\'s, a revoked, an expired and a reused key are refused with their codes', async () => {
    const inv = siteInventory('ny', ['KeyCloud'], 1);
    const key = await newKey();
    const p = await TestProvider.start(v.url, key, { fabric: 'VMM-Keys', inventory: inv });
    providers.push(p);
    await assertRejectsCode(registerWithVault({ vaultUrl: v.url, key, fabric: { name: 'VMM-Keys2', kind: 'test' }, serverName: 's2', version: '0.1.0' }), 'REGISTRATION_KEY_USED');

    const revoked = await v.api.request<Obj>('POST', '/api/v1/registration-keys');
    await v.api.request('POST', `/api/v1/registration-keys/${String(revoked.id)}/revoke`);
    await assertRejectsCode(registerWithVault({ vaultUrl: v.url, key: revoked.key as string, fabric: { name: 'X', kind: 'test' }, serverName: 's', version: '0.1.0' }), 'REGISTRATION_KEY_REVOKED');

    // a key of another vault (same CA pin, another name) is refused by name
    const parsed = JSON.parse(Buffer.from(await newKey(), 'base64url').toString()) as Obj;
    const foreign = Buffer.from(JSON.stringify({ ...parsed, vault: 'fabrikam' })).toString('base64url');
    await assertRejectsCode(registerWithVault({ vaultUrl: v.url, key: foreign, fabric: { name: 'X', kind: 'test' }, serverName: 's', version: '0.1.0' }), 'REGISTRATION_KEY_INVALID');
    // a key naming another CA: the provider does not trust this server and sends nothing
    const otherCa = Buffer.from(JSON.stringify({ ...parsed, ca: 'AA:'.repeat(31) + 'AA' })).toString('base64url');
    await assertRejectsCode(registerWithVault({ vaultUrl: v.url, key: otherCa, fabric: { name: 'X', kind: 'test' }, serverName: 's', version: '0.1.0' }), 'TLS_PEER_CERT_UNTRUSTED');

    // expired: five days and a minute later
    const old = await newKey();
    const real = v.vault.ctx.store.activity;
    const expired = new (real.constructor as new (db: unknown, now: () => number) => typeof real)(v.vault.store.database.db, () => Date.now() + 5 * 86_400_000 + 60_000);
    await assertRejectsCode(expired.useRegistrationKey(old, 'contoso', 'late'), 'REGISTRATION_KEY_EXPIRED');

    // another version joining the same fabric
    await assertRejectsCode(registerWithVault({ vaultUrl: v.url, key: await newKey(), fabric: { name: 'VMM-Keys', kind: 'test' }, serverName: 'node2', version: '9.9.9' }), 'PROVIDER_VERSION_MISMATCH');
    const fabric = await v.api.request<Obj>('GET', `/api/v1/fabrics/${p.fabricId}`);
    assert.equal((fabric.providers as Obj[]).length, 1);
  });

  test('the provider channel needs the provider\'s own certificate from the vault\'s CA', async () => {
    const call = (o: https.RequestOptions) =>
      new Promise<{ status: number; body: Obj }>((resolve, reject) => {
        const u = new URL('/api/v1/provider/heartbeat', v.url);
        const req = https.request(u, { method: 'POST', ca: v.vault.ctx.identity.ca.certPem, headers: { 'content-type': 'application/json' }, ...o }, (res) => {
          let t = '';
          res.on('data', (c: Buffer) => (t += c));
          res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(t) as Obj }));
        });
        req.on('error', reject);
        req.end('{}');
      });
    const none = await call({});
    assert.equal(none.status, 401);
    assert.equal(none.body.code, 'TLS_PEER_CERT_MISSING');
    const stranger = await createCa({ commonName: 'stranger' });
    const c = await issueCertificate(stranger, { commonName: 'prov-x', role: 'provider' });
    const untrusted = await call({ cert: c.certPem, key: c.keyPem });
    assert.equal(untrusted.status, 401);
    assert.equal(untrusted.body.code, 'TLS_PEER_CERT_UNTRUSTED');
    // from the right CA, but not a provider that registered
    const forged = await issueCertificate(v.vault.ctx.identity.ca, { commonName: 'prov-forged', role: 'provider' });
    assert.equal((await call({ cert: forged.certPem, key: forged.keyPem })).body.code, 'UNAUTHENTICATED');
    const agentCert = await issueCertificate(v.vault.ctx.identity.ca, { commonName: 'agent-1', role: 'agent' });
    assert.equal((await call({ cert: agentCert.certPem, key: agentCert.keyPem })).body.code, 'FORBIDDEN');
  });

  test('enable protection runs through initial replication to Protected; health reports raise alerts by webhook and e-mail; disable keeps or deletes the replica', async () => {
    // alert receivers: a webhook and an SMTP server
    const hooks: Obj[] = [];
    const hook = http.createServer((req, res) => {
      let t = '';
      req.on('data', (c: Buffer) => (t += c));
      req.on('end', () => {
        hooks.push(JSON.parse(t) as Obj);
        res.end('ok');
      });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
    const mails: string[] = [];
    const smtp = new SMTPServer({
      authOptional: true,
      disabledCommands: ['STARTTLS'],
      onData(stream, _session, cb) {
        let t = '';
        stream.on('data', (c: Buffer) => (t += c));
        stream.on('end', () => {
          mails.push(t);
          cb();
        });
      },
    });
    await new Promise<void>((r) => smtp.listen(0, '127.0.0.1', r));
    try {
      // the webhook receiver is on the loopback address: an Owner allows it
      await v.api.request('PUT', '/api/v1/webhook-settings', { allow: ['127.0.0.1'] });
      await v.api.request('PUT', '/api/v1/alert-settings', {
        webhooks: [`http://127.0.0.1:${(hook.address() as AddressInfo).port}/alerts`],
        emails: ['dr-team@example.com'],
        smtp: { host: '127.0.0.1', port: (smtp.server.address() as AddressInfo).port, secure: false, from: 'osr@example.com' },
      });

      const releaseInitial = gate();
      const ny = await TestProvider.start(v.url, await newKey(), {
        fabric: 'VMM-NewYork',
        inventory: siteInventory('ny', ['GoldCloud1', 'SilverCloud1'], 3),
        handlers: {
          'replication.initial': async (_cmd, progress) => {
            await progress(initialProgress(0.5, 1024));
            await releaseInitial.wait;
            await progress(initialProgress(1, 1024));
            return { recoveryPoint: { id: 'p1', at: new Date().toISOString(), consistency: 'crash' } };
          },
        },
      });
      const chi = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-Chicago', inventory: siteInventory('chi', ['GoldCloud2', 'SilverCloud2'], 0) });
      providers.push(ny, chi);

      const clouds = (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/clouds')).items.map((c) => c.id);
      assert.ok(clouds.includes('vmm-newyork.goldcloud1') && clouds.includes('vmm-chicago.goldcloud2'), String(clouds));
      const events = (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/events?target=vmm-newyork.goldcloud1-vm0')).items;
      assert.equal(events[0]!.kind, 'inventory.added');

      const policy = await v.api.request<Obj>('POST', '/api/v1/policies', { name: 'gold-30s', settings: { copyFrequencySeconds: 30, retentionHours: 4, appConsistentFrequencyHours: 1, hostOsVersion: 'lab-1' } });
      const pairing = await v.api.request<Obj>('POST', '/api/v1/cloud-pairings', { policyId: policy.id, sourceCloudId: 'vmm-newyork.goldcloud1', targetCloudId: 'vmm-chicago.goldcloud2' });
      await v.api.request('POST', '/api/v1/network-mappings', { sourceId: 'vmm-newyork.vmnet1', targetId: 'vmm-chicago.vmnet1' });
      await v.api.request('POST', '/api/v1/storage-mappings', { sourceId: 'vmm-newyork.gold', targetId: 'vmm-chicago.silver' });
      const protectable = (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/protectable-items?cloud=vmm-newyork.goldcloud1')).items;
      assert.equal(protectable.length, 3);

      const started = await v.api.request<Obj>('POST', '/api/v1/protected-items', { vmId: 'vmm-newyork.goldcloud1-vm0' });
      assert.match(started.url as string, /^\/api\/v1\/jobs\//);
      await assertRejectsCode(v.api.request('POST', '/api/v1/protected-items', { vmId: 'vmm-newyork.goldcloud1-vm0' }), 'ALREADY_EXISTS');
      // a VM of an unpaired cloud
      await assertRejectsCode(v.api.request('POST', '/api/v1/protected-items', { vmId: 'vmm-newyork.silvercloud1-vm0' }), 'INVALID_STATE');

      const midway = await waitFor('initial replication at half', async () => {
        const item = await v.api.request<ProtectedItem>('GET', '/api/v1/protected-items/vmm-newyork.goldcloud1-vm0');
        return item.state === 'InitialReplication' && item.progress === 0.5 ? item : undefined;
      }, 20_000);
      const placement = midway.replication.placement!;
      assert.equal(placement.hostId, 'vmm-chicago.goldcloud2-h1');
      assert.deepEqual(placement.storage, { d0: 'vmm-chicago.silver-csv' }, 'GOLD is mapped to SILVER');
      assert.deepEqual(placement.networks, { nic0: 'vmm-chicago.vmnet1' });
      const job = await v.api.request<Obj>('GET', started.url as string);
      assert.equal(job.currentStep, 'Initial replication');
      assert.equal((job.tasks as Obj[])[2]!.progress, 0.5);
      releaseInitial.open();

      const item = await waitFor('Protected', async () => {
        const i = await v.api.request<Obj>('GET', '/api/v1/protected-items/vmm-newyork.goldcloud1-vm0');
        return i.state === 'Protected' ? i : undefined;
      }, 20_000);
      assert.equal(item.health, 'Healthy');
      assert.ok(item.lastRecoveryPointAt);
      const kinds = ny.received.map((c) => c.kind);
      assert.deepEqual(kinds, ['replication.enable', 'replication.initial']);
      assert.deepEqual(chi.received.map((c) => c.kind), ['replica.prepare']);
      // both ends were handed the same grant, signed by the vault's CA: this VM, from the host it runs on to the placed host
      const granted = [chi.received[0]!, ny.received[0]!].map((c) => (c.body as { grant?: string }).grant);
      assert.equal(granted[0], granted[1]);
      const grant = verifyGrant(granted[0], v.vault.ctx.identity.ca.certPem);
      assert.deepEqual({ ...grant, issuedAt: undefined }, { replicationId: 'goldcloud1-vm0-rid', item: 'vmm-newyork.goldcloud1-vm0', source: { fabricId: ny.fabricId, host: 'ny-GoldCloud1-h1' }, target: { fabricId: chi.fabricId, host: 'chi-GoldCloud2-h1' }, issuedAt: undefined });
      assert.ok(Math.abs(Date.parse(grant.issuedAt) - Date.now()) < 60_000);
      const done = await v.api.request<Obj>('GET', started.url as string);
      assert.equal(done.state, 'Succeeded');
      assert.deepEqual((done.tasks as Obj[]).map((t) => t.name), ['Prerequisites check', 'Create replication', 'Initial replication', 'Finalize protection']);

      // the provider reports the item Critical: an alert, delivered twice over
      await ny.runtime.channel.itemStatus('vmm-newyork.goldcloud1-vm0', { health: 'Critical', healthReasons: [{ code: 'RESYNC_REQUIRED', message: 'the change log is corrupt' }], rpoSeconds: 900, churnBytesPerSec: 2_000_000, peakChurnBytesPerSec: 5_000_000, pendingLogBytes: 1_000_000 });
      // the points are the recovery site's to report: the primary site's are refused, as are a clock far ahead and a cut named twice
      const now = new Date().toISOString();
      await assertRejectsCode(ny.runtime.channel.itemStatus('vmm-newyork.goldcloud1-vm0', { recoveryPoints: [{ id: 'p9', at: now, consistency: 'crash' }] }), 'FORBIDDEN', /only its recovery site reports its points/);
      await assertRejectsCode(chi.runtime.channel.itemStatus('vmm-newyork.goldcloud1-vm0', { recoveryPoints: [{ id: 'p9', at: new Date(Date.now() + 3_600_000).toISOString(), consistency: 'crash' }] }), 'INVALID_ARGUMENT', /check the recovery site's clock/);
      await assertRejectsCode(chi.runtime.channel.itemStatus('vmm-newyork.goldcloud1-vm0', { recoveryPoints: [{ id: 'p8', at: now, consistency: 'crash', cut: 'cut-1' }, { id: 'p9', at: now, consistency: 'crash', cut: 'cut-1' }] }), 'INVALID_ARGUMENT', /a cut is named twice/);
      await chi.runtime.channel.itemStatus('vmm-newyork.goldcloud1-vm0', { recoveryPoints: [{ id: 'p2', at: now, consistency: 'app' }] });
      // change tracking not trusted at the source: the item needs a resync
      const resyncState = async () => (await v.api.request<Obj>('GET', '/api/v1/protected-items/vmm-newyork.goldcloud1-vm0')).state;
      assert.equal(await resyncState(), 'ResyncRequired');
      // the source's facts are kept over time, and the capacity planner reads them
      const samples = (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/protected-items/vmm-newyork.goldcloud1-vm0/samples')).items;
      assert.deepEqual(samples.map(({ at: _at, ...x }) => x), [{ rpoSeconds: 900, churnBytesPerSec: 2_000_000, peakChurnBytesPerSec: 5_000_000, pendingLogBytes: 1_000_000 }]);
      const plan = await v.api.request<{ items: { id: string; diskBytes: number; bandwidthForRpo: { rpoSeconds: number; bytesPerSec: number | null }[]; initialReplicationSeconds: number }[] }>('GET', '/api/v1/capacity?rpoSeconds=60,3600&bandwidthBytesPerSec=10000000');
      const vm0 = plan.items.find((x) => x.id === 'vmm-newyork.goldcloud1-vm0')!;
      assert.ok(vm0.diskBytes > 0, 'the disks from the inventory');
      assert.deepEqual(vm0.bandwidthForRpo, [{ rpoSeconds: 60, bytesPerSec: 5_000_000 }, { rpoSeconds: 3600, bytesPerSec: 2_000_000 }]);
      assert.equal(vm0.initialReplicationSeconds, Math.ceil(vm0.diskBytes / 8_000_000));
      await assertRejectsCode(v.api.request('GET', '/api/v1/capacity?rpoSeconds=5'), 'INVALID_ARGUMENT', /30 seconds to 7 days/);
      await ny.runtime.channel.itemStatus('vmm-newyork.goldcloud1-vm0', { health: 'Critical', healthReasons: [{ code: 'RESYNC_REQUIRED', message: 'the change log is corrupt' }] });
      await waitFor('webhook and mail', () => hooks.length >= 1 && mails.length >= 1, 10_000);
      assert.equal(((hooks[0]!.alert as Obj).kind as string), 'ItemCritical');
      assert.match(mails[0]!, /Subject: \[osr contoso\] Critical: protected item GoldCloud1-VM0 is Critical/);
      const alerts = (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/alerts?state=Active&target=vmm-newyork.goldcloud1-vm0')).items;
      assert.equal(alerts.length, 1, 'one alert for one condition');
      await waitFor('deliveries recorded', async () => (((await v.api.request<Obj>('GET', '/api/v1/alerts?target=vmm-newyork.goldcloud1-vm0')) as { items: Obj[] }).items[0]!.deliveries as Obj[]).length === 2);
      const points = (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/protected-items/vmm-newyork.goldcloud1-vm0/recovery-points')).items;
      assert.deepEqual(points.map((p) => p.consistency), ['app']);
      await ny.runtime.channel.itemStatus('vmm-newyork.goldcloud1-vm0', { health: 'Healthy', healthReasons: [] });
      assert.equal((await v.api.request<{ items: Obj[] }>('GET', '/api/v1/alerts?state=Active&target=vmm-newyork.goldcloud1-vm0')).items.length, 0, 'recovered: resolved');
      const history = (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/protected-items/vmm-newyork.goldcloud1-vm0/events')).items.map((e) => e.kind);
      assert.ok(history.includes('item.health') && history.includes('protection.enabled') && history.includes('alert.ItemCritical'), String(history));
      assert.equal(await resyncState(), 'Protected', 'the reason is gone: Protected again');
      assert.deepEqual(history.filter((k) => String(k).startsWith('item.resync')), ['item.resynchronized', 'item.resync-required'], 'one event each way, newest first');

      // disable, keeping the replica this time
      const dis = await v.api.request<Obj>('DELETE', '/api/v1/protected-items/vmm-newyork.goldcloud1-vm0?deleteReplica=false');
      await waitFor('disabled', async () => (await v.api.request<Obj>('GET', dis.url as string)).state === 'Succeeded', 20_000);
      await assertRejectsCode(v.api.request('GET', '/api/v1/protected-items/vmm-newyork.goldcloud1-vm0'), 'NOT_FOUND');
      const remove = chi.received.find((c) => c.kind === 'replica.remove')!;
      assert.deepEqual(remove.body, { item: 'vmm-newyork.goldcloud1-vm0', replicaVmId: 'replica-GoldCloud1-VM0', delete: false });
      assert.ok(ny.received.some((c) => c.kind === 'replication.disable'));
      void pairing;
    } finally {
      hook.close();
      await new Promise<void>((r) => smtp.close(() => r()));
    }
  });

  test('a job failed by its provider restarts from the failed task and sends that command anew; a provider cannot claim the vault\'s own codes', async () => {
    let failures = 0;
    const src = await TestProvider.start(v.url, await newKey(), {
      fabric: 'VMM-Flaky',
      inventory: siteInventory('f', ['FlakyCloud'], 1),
      handlers: {
        'replication.enable': async () => {
          if (failures++ === 0) throw new OsrError('LEASE_LOST', 'the host refused');
          return {};
        },
      },
    });
    const dst = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-FlakyTarget', inventory: siteInventory('ft', ['FlakyTarget'], 0) });
    providers.push(src, dst);
    const policy = await v.api.request<Obj>('POST', '/api/v1/policies', { name: 'flaky' });
    await v.api.request('POST', '/api/v1/cloud-pairings', { policyId: policy.id, sourceCloudId: 'vmm-flaky.flakycloud', targetCloudId: 'vmm-flakytarget.flakytarget' });
    const started = await v.api.request<Obj>('POST', '/api/v1/protected-items', { vmId: 'vmm-flaky.flakycloud-vm0' });
    const failed = await waitFor('failed', async () => {
      const j = await v.api.request<Obj>('GET', started.url as string);
      return j.state === 'Failed' ? j : undefined;
    }, 20_000);
    assert.equal((failed.error as Obj).code, 'JOB_FAILED', 'LEASE_LOST from a provider is not taken as the vault losing its lease');
    assert.equal((failed.error as Obj).task, 'Create replication');
    const item = await v.api.request<Obj>('GET', '/api/v1/protected-items/vmm-flaky.flakycloud-vm0');
    assert.equal(item.state, 'ProtectionFailed');
    assert.equal(item.health, 'Critical');
    await v.api.request('POST', `${String(started.url)}/restart`);
    const done = await waitFor('restarted job done', async () => {
      const j = await v.api.request<Obj>('GET', started.url as string);
      return j.state === 'Succeeded' ? j : undefined;
    }, 20_000);
    assert.equal(done.attempts, 2);
    assert.equal(src.received.filter((c) => c.kind === 'replication.enable').length, 2, 'the failed command was sent again');
    assert.equal(dst.received.filter((c) => c.kind === 'replica.prepare').length, 1, 'the command of that task which succeeded was not sent again');
    assert.equal((await v.api.request<Obj>('GET', '/api/v1/protected-items/vmm-flaky.flakycloud-vm0')).state, 'Protected');
    await assertRejectsCode(v.api.request('POST', `${String(started.url)}/restart`), 'INVALID_STATE');
  });

  test('enabling protection refuses at once what either fabric cannot do (NOT_SUPPORTED naming the fabric and the option): no item, no job, no command; fabrics show their capabilities', async () => {
    const kvm = { ...LAB_CAPABILITIES, initialReplication: ['now' as const], appConsistentPoints: false, rawDisks: false };
    const rawInventory = siteInventory('kvm', ['KvmCloud'], 1);
    rawInventory.vms[0]!.disks[0]!.format = 'raw';
    const lab = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-LabCaps', inventory: siteInventory('caps', ['CapsCloud'], 1), capabilities: LAB_CAPABILITIES });
    const recovery = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-LabCapsTarget', inventory: siteInventory('capt', ['CapsTarget'], 0), capabilities: LAB_CAPABILITIES });
    const libvirt = await TestProvider.start(v.url, await newKey(), { fabric: 'KVM-Caps', inventory: rawInventory, capabilities: kvm });
    providers.push(lab, recovery, libvirt);
    assert.deepEqual((await v.api.request<Obj>('GET', '/api/v1/fabrics/vmm-labcaps')).capabilities, LAB_CAPABILITIES);
    assert.deepEqual((await v.api.request<Obj>('GET', '/api/v1/fabrics/kvm-caps')).capabilities, kvm);
    const enableJobs = async () => (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/jobs?kind=enable-protection&limit=1000')).items.length;
    const jobs = await enableJobs();

    // the lab replicates over the network only: offline initial replication is refused by the API, not halfway through a job
    const offline = await v.api.request<Obj>('POST', '/api/v1/policies', { name: 'offline-seed', settings: { initialReplication: { method: 'offline', exportPath: '/export', importPath: '/import' } } });
    await v.api.request('POST', '/api/v1/cloud-pairings', { policyId: offline.id, sourceCloudId: 'vmm-labcaps.capscloud', targetCloudId: 'vmm-labcapstarget.capstarget' });
    const refused = await v.api.request('POST', '/api/v1/protected-items', { vmId: 'vmm-labcaps.capscloud-vm0' }).then(
      () => assert.fail('enabling protection with offline initial replication on the lab was accepted'),
      (e: unknown) => e as OsrError,
    );
    assert.equal(refused.code, 'NOT_SUPPORTED');
    assert.match(refused.message, /fabric VMM-LabCaps \(test\), the primary site of CapsCloud-VM0, cannot do offline initial replication/);
    assert.equal(refused.details?.fabric, 'vmm-labcaps');
    assert.equal(refused.details?.option, 'initialReplication.method');
    assert.equal(refused.details?.status, 422);
    await assertRejectsCode(v.api.request('GET', '/api/v1/protected-items/vmm-labcaps.capscloud-vm0'), 'NOT_FOUND');

    // a source whose hosts make no app-consistent points and cannot track raw disks: every gap is named
    const app = await v.api.request<Obj>('POST', '/api/v1/policies', { name: 'app-consistent', settings: { retentionHours: 4, appConsistentFrequencyHours: 1 } });
    await v.api.request('POST', '/api/v1/cloud-pairings', { policyId: app.id, sourceCloudId: 'kvm-caps.kvmcloud', targetCloudId: 'vmm-labcapstarget.capstarget' });
    const gaps = await v.api.request('POST', '/api/v1/protected-items', { vmId: 'kvm-caps.kvmcloud-vm0' }).then(
      () => assert.fail('enabling protection of a raw disk at a fabric without rawDisks was accepted'),
      (e: unknown) => e as OsrError,
    );
    assert.equal(gaps.code, 'NOT_SUPPORTED');
    assert.match(gaps.message, /fabric KVM-Caps .* cannot do app-consistent recovery points .*; raw disk system/);
    assert.deepEqual(gaps.details?.options, ['appConsistentFrequencyHours', 'disks.d0']);

    assert.equal(await enableJobs(), jobs, 'no job was started');
    for (const p of [lab, recovery, libvirt]) assert.deepEqual(p.received.map((c) => c.kind), [], `${p.fabricId} got no command`);
  });

  test('a provider refuses a command whose body is malformed (INVALID_ARGUMENT naming the field) before its handler runs, and a kind it does not know (NOT_SUPPORTED)', async () => {
    const fenced: string[] = [];
    const p = await TestProvider.start(v.url, await newKey(), {
      fabric: 'VMM-Strict',
      inventory: siteInventory('strict', ['StrictCloud'], 0),
      handlers: {
        'failover.fence': async ({ body }) => {
          fenced.push(`${body.vmId}@${body.epoch}`);
          return {};
        },
      },
    });
    providers.push(p);
    const commands = v.vault.ctx.store.commands;
    const send = async (kind: string, body: unknown) => {
      const id = randomUUID();
      await commands.enqueue({ id, fabricId: p.fabricId, kind, body });
      const row = await waitFor(`${kind} answered`, async () => {
        const r = await commands.get(id);
        return r && (r.state === CommandState.Succeeded || r.state === CommandState.Failed) ? r : undefined;
      }, 10_000, 50);
      return { state: row.state, error: row.error ? (JSON.parse(row.error) as { code: string; message: string; details?: Obj }) : null };
    };
    const noEpoch = await send('failover.fence', { item: 'vmm-strict.vm0', vmId: 'vmm-strict.vm0' });
    assert.equal(noEpoch.state, CommandState.Failed);
    assert.equal(noEpoch.error?.code, 'INVALID_ARGUMENT');
    assert.match(noEpoch.error!.message, /failover\.fence command is malformed: epoch must be a number, not undefined/);
    assert.deepEqual(noEpoch.error?.details, { command: 'failover.fence', field: 'epoch', expected: 'a number' });
    const badVm = await send('failover.fence', { item: 'vmm-strict.vm0', vmId: 42, epoch: 3 });
    assert.equal(badVm.error?.details?.field, 'vmId');
    assert.deepEqual(fenced, [], 'a malformed command reaches no handler');
    assert.deepEqual(await send('failover.fence', { item: 'vmm-strict.vm0', vmId: 'vmm-strict.vm0', epoch: 3 }), { state: CommandState.Succeeded, error: null });
    assert.deepEqual(fenced, ['vmm-strict.vm0@3']);
    assert.equal((await send('failover.teleport', { item: 'vmm-strict.vm0' })).error?.code, 'NOT_SUPPORTED');
    assert.equal((await send('failover.demote', { item: 'vmm-strict.vm0', vmId: 'vmm-strict.vm0', epoch: 3 })).error?.code, 'NOT_SUPPORTED', 'a kind without a handler here');
  });

  test('long-polls leave no listener on the vault behind, answered or cut off', async () => {
    // the other tests' providers poll too, and their polls come and go: only this test's provider is left running
    for (const other of providers.splice(0)) await other.stop();
    const p = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-Polls', inventory: siteInventory('polls', ['PollCloud'], 0) });
    providers.push(p);
    const before = getEventListeners(v.vault.ctx.closing, 'abort').length;
    for (let i = 0; i < 30; i++) await p.runtime.channel.commands(0);
    const cut = new AbortController();
    // a poll far longer than the wait below: only the vault noticing the cut ends it in time
    const pending = p.runtime.channel.commands(60, cut.signal).catch(() => undefined);
    await waitFor('the long-poll to wait on the vault', () => getEventListeners(v.vault.ctx.closing, 'abort').length > before, 5000, 10).catch(() => undefined);
    cut.abort();
    await pending;
    await waitFor('the cut-off long-poll to end', () => getEventListeners(v.vault.ctx.closing, 'abort').length <= before + 1, 10_000, 50);
    assert.ok(getEventListeners(v.vault.ctx.closing, 'abort').length <= before + 1, 'at most the provider runtime\'s own long-poll is waiting');
  });

  test('a provider that stops sending heartbeats raises one alert; its next heartbeat resolves it', async () => {
    const p = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-Quiet', inventory: siteInventory('q', ['C1', 'C2'], 2), scope: ['C1'] });
    // chosen clouds only: C2 and its VMs are not synced
    assert.deepEqual((await v.api.request<{ items: Obj[] }>('GET', '/api/v1/clouds?fabric=vmm-quiet')).items.map((c) => c.name), ['C1']);
    assert.equal((await v.api.request<{ items: Obj[] }>('GET', '/api/v1/vms?fabric=vmm-quiet')).items.length, 2);
    assert.deepEqual((await v.api.request<Obj>('GET', '/api/v1/fabrics/vmm-quiet')).inventoryScope, ['C1']);
    await p.stop();
    const alert = await waitFor('heartbeat alert', async () => (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/alerts?state=Active&target=vmm-quiet')).items[0], 10_000);
    assert.equal(alert.kind, 'ProviderHeartbeatLost');
    assert.equal((await v.api.request<Obj>('GET', '/api/v1/fabrics/vmm-quiet')).heartbeatLost, true);
    await new Promise((r) => setTimeout(r, 600));
    assert.equal((await v.api.request<{ items: Obj[] }>('GET', '/api/v1/alerts?target=vmm-quiet')).items.length, 1, 'still one alert');
    const { ProviderChannel } = await import('../../src/provider/channel.js');
    const ch = new ProviderChannel(p.registration);
    await ch.heartbeat();
    ch.close();
    assert.equal((await v.api.request<{ items: Obj[] }>('GET', '/api/v1/alerts?state=Active&target=vmm-quiet')).items.length, 0);
    const metrics = await new Promise<string>((resolve, reject) =>
      https.get(new URL('/metrics', v.url), { ca: v.vault.ctx.identity.ca.certPem }, (res) => {
        let t = '';
        res.on('data', (c: Buffer) => (t += c));
        res.on('end', () => resolve(t));
      }).on('error', reject),
    );
    assert.match(metrics, /osr_vault_fabric_heartbeat_age_seconds\{fabric="vmm-quiet"\}/);
    assert.match(metrics, /osr_vault_jobs\{state="Succeeded",kind="enable-protection"\} 2/);
  });

  test('a replica is placed only on a host the vault admitted: hosts a fabric reports after its first inventory wait for an Owner', async () => {
    const src = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-AdmSrc', inventory: siteInventory('as', ['AdmCloud1'], 1) });
    // the target fabric's first inventory has its cloud without hosts; they come later
    const targetInv = siteInventory('at', ['AdmCloud2'], 0);
    const { hosts } = targetInv;
    const groupHosts = targetInv.hostGroups[0]!.hosts;
    targetInv.hosts = [];
    targetInv.hostGroups[0]!.hosts = [];
    const dst = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-AdmDst', inventory: targetInv });
    providers.push(src, dst);
    await waitFor('the first inventory', async () => ((await v.api.request<Obj>('GET', '/api/v1/fabrics/vmm-admdst')).inventoryAt ? true : undefined), 20_000);
    targetInv.hosts = hosts;
    targetInv.hostGroups[0]!.hosts = groupHosts;
    await new ProviderChannel(dst.registration).putInventory(targetInv);
    const pending = (await v.api.request<{ items: HostAdmission[] }>('GET', '/api/v1/host-admissions?fabric=vmm-admdst&state=pending')).items;
    assert.deepEqual(pending.map((a) => a.host), ['at-AdmCloud2-h1', 'at-AdmCloud2-h2']);

    const policy = await v.api.request<Obj>('POST', '/api/v1/policies', { name: 'admission' });
    await v.api.request('POST', '/api/v1/cloud-pairings', { policyId: policy.id, sourceCloudId: 'vmm-admsrc.admcloud1', targetCloudId: 'vmm-admdst.admcloud2' });
    const started = await v.api.request<Obj>('POST', '/api/v1/protected-items', { vmId: 'vmm-admsrc.admcloud1-vm0' });
    const failed = await waitFor('failed', async () => {
      const j = await v.api.request<Obj>('GET', started.url as string);
      return j.state === 'Failed' ? j : undefined;
    }, 20_000);
    assert.match(String((failed.error as Obj).message), /no hosts to run the replica/);
    assert.equal(dst.received.length, 0, 'nothing was asked of the target fabric');

    await v.api.request('POST', '/api/v1/host-admissions/vmm-admdst/at-AdmCloud2-h2/approve');
    await v.api.request('POST', `${String(started.url)}/restart`);
    await waitFor('restarted job done', async () => ((await v.api.request<Obj>('GET', started.url as string)).state === 'Succeeded' ? true : undefined), 20_000);
    const item = await v.api.request<ProtectedItem>('GET', '/api/v1/protected-items/vmm-admsrc.admcloud1-vm0');
    assert.equal(item.replication.placement!.hostId, 'vmm-admdst.admcloud2-h2', 'the one host admitted');
  });

  test('a replication group: refused where the primary site\'s hosts cannot hold writes (NOT_SUPPORTED, option group), with a continuous policy, and from a second pair of sites (INVALID_STATE)', async () => {
    const { consistencyGroups: _g, ...noGroups } = LAB_CAPABILITIES;
    const a = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-GroupA', inventory: siteInventory('grpa', ['GroupA'], 2), capabilities: LAB_CAPABILITIES });
    const b = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-GroupB', inventory: siteInventory('grpb', ['GroupB'], 1), capabilities: LAB_CAPABILITIES });
    const old = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-GroupOld', inventory: siteInventory('grpo', ['GroupOld'], 1), capabilities: noGroups });
    const c = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-GroupC', inventory: siteInventory('grpc', ['GroupC'], 1), capabilities: LAB_CAPABILITIES });
    const t = await TestProvider.start(v.url, await newKey(), { fabric: 'VMM-GroupT', inventory: siteInventory('grpt', ['GroupT'], 0), capabilities: LAB_CAPABILITIES });
    providers.push(a, b, c, old, t);
    const cycles = await v.api.request<Obj>('POST', '/api/v1/policies', { name: 'group-cycles', settings: { copyFrequencySeconds: 30, retentionHours: 1 } });
    const continuous = await v.api.request<Obj>('POST', '/api/v1/policies', { name: 'group-continuous', settings: { copyMode: 'continuous', retentionHours: 1 } });
    await v.api.request('POST', '/api/v1/cloud-pairings', { policyId: cycles.id, sourceCloudId: 'vmm-groupa.groupa', targetCloudId: 'vmm-groupt.groupt' });
    await v.api.request('POST', '/api/v1/cloud-pairings', { policyId: cycles.id, sourceCloudId: 'vmm-groupold.groupold', targetCloudId: 'vmm-groupt.groupt' });
    await v.api.request('POST', '/api/v1/cloud-pairings', { policyId: continuous.id, sourceCloudId: 'vmm-groupb.groupb', targetCloudId: 'vmm-groupt.groupt' });
    await v.api.request('POST', '/api/v1/cloud-pairings', { policyId: cycles.id, sourceCloudId: 'vmm-groupc.groupc', targetCloudId: 'vmm-groupt.groupt' });
    const refusal = (vmId: string, group: string) =>
      v.api.request('POST', '/api/v1/protected-items', { vmId, replicationGroup: group }).then(
        () => assert.fail(`protecting ${vmId} in group ${group} was accepted`),
        (e: unknown) => e as OsrError,
      );
    // a name that could become a path is refused by the API's schema
    assert.equal((await refusal('vmm-groupa.groupa-vm0', '../x')).code, 'INVALID_ARGUMENT');
    const noHold = await refusal('vmm-groupold.groupold-vm0', 'app');
    assert.equal(noHold.code, 'NOT_SUPPORTED');
    assert.equal(noHold.details?.option, 'group');
    assert.match(noHold.message, /replication group app \(its hosts cannot hold a VM's writes/);
    const cont = await refusal('vmm-groupb.groupb-vm0', 'app');
    assert.equal(cont.details?.option, 'group');
    assert.match(cont.message, /under continuous replication/);
    // the group's first member fixes its pair of sites; the item shows its group from the start
    await v.api.request('POST', '/api/v1/protected-items', { vmId: 'vmm-groupa.groupa-vm0', replicationGroup: 'app' });
    assert.equal((await v.api.request<ProtectedItem>('GET', '/api/v1/protected-items/vmm-groupa.groupa-vm0')).replication.group, 'app');
    const elsewhere = await refusal('vmm-groupc.groupc-vm0', 'app');
    assert.equal(elsewhere.code, 'INVALID_STATE');
    assert.match(elsewhere.message, /replication group app replicates from fabric vmm-groupa .*member GroupA-VM0.*between one pair of sites/);
    assert.equal(elsewhere.details?.member, 'vmm-groupa.groupa-vm0');
    // another member from the same site is taken
    await v.api.request('POST', '/api/v1/protected-items', { vmId: 'vmm-groupa.groupa-vm1', replicationGroup: 'app' });
    assert.deepEqual((await v.vault.ctx.store.items.list({ group: 'app' })).map((i) => i.id).sort(), ['vmm-groupa.groupa-vm0', 'vmm-groupa.groupa-vm1']);

    // while a reprotect runs, the old primary's site holds the replica: it reports the points, the old recovery site no longer may
    const store = v.vault.ctx.store;
    const id = 'vmm-groupa.groupa-vm0';
    await waitFor('the enable job done with the item', async () => (await store.items.get(id)).activeJobId === null || undefined, 20_000, 50);
    const r = (await store.items.get(id)).replication;
    const failover = { kind: 'planned' as const, jobId: 'j', direction: 'primary-to-recovery' as const, fromFabricId: a.fabricId, toFabricId: t.fabricId, oldPrimaryVmId: id, newPrimaryVmId: 'vmm-groupt.groupa-vm0-replica', point: { id: '1', at: new Date().toISOString(), consistency: 'crash' as const }, epoch: 2, startedAt: '', failedOverAt: '', rtoSeconds: 1 };
    await store.items.update(id, { replication: { ...r, targetFabricId: t.fabricId, failover } });
    await store.database.db.updateTable('protected_items').set({ state: 'Reprotecting' }).where('id', '=', id).execute();
    const points = [{ id: 'r1', at: new Date().toISOString(), consistency: 'crash' as const }];
    await assertRejectsCode(t.runtime.channel.itemStatus(id, { recoveryPoints: points }), 'FORBIDDEN');
    await a.runtime.channel.itemStatus(id, { recoveryPoints: points });
    assert.deepEqual((await store.items.points(id)).map((p) => p.id), ['r1']);
  });
});
