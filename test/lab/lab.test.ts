/**
 * The lab end to end, with real processes: `osr lab up --detach` starts a vault, two
 * providers and four host agents; the osr CLI creates a policy, pairs the clouds, maps
 * networks and storage and enables protection of five VMs; they reach Protected; data
 * written through NBD to a VM is on its replica at the next recovery point (read back
 * from an overlay of that point); disabling protection keeps or deletes the replica, and
 * protecting a VM whose replica was kept takes that replica up again.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import YAML from 'yaml';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { AgentClient } from '../../src/cli/agent-client.js';
import type { OsrError } from '../../src/domain/errors.js';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { LAB_CAPABILITIES } from '../../src/lab/lab-driver.js';
import { isAlive, labAgents, labDown, labStatus, readLabFile } from '../../src/lab/launcher.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import type { TopologySpec } from '../../src/lab/topology.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import { tempDir, waitFor } from '../support/lab.js';

const run = promisify(execFile);
type Obj = Record<string, unknown>;

const dir = tempDir('osr-lab-');
let api: VaultClient;
/** what the NBD test wrote to vm1's data disk, and the first point that holds it */
let written: { offset: number; data: Buffer; pointId: string } | undefined;

/** osr with the lab's connection file, as a user would run it */
async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 180_000 });
  return r.stdout;
}

const topology: TopologySpec = {
  name: 'test-two-sites',
  vault: { name: 'test-vault' },
  fabrics: [
    {
      name: 'VMM-NewYork',
      logicalNetworks: ['LN1-NY', 'LN2-NY'],
      vmNetworks: [
        { name: 'VMNetwork1-NY', logicalNetwork: 'LN1-NY', subnets: [{ name: 'Subnet1', cidr: '10.1.1.0/24', pool: { start: '10.1.1.10', end: '10.1.1.20' } }] },
        { name: 'VMNetwork2-NY', logicalNetwork: 'LN2-NY', subnets: [{ name: 'Subnet1', cidr: '10.1.2.0/24' }] },
      ],
      storage: { classifications: ['GOLD', 'SILVER'], locations: [{ name: 'ny-gold', classification: 'GOLD', kind: 'share' }, { name: 'ny-silver', classification: 'SILVER', kind: 'volume' }] },
      clouds: [
        { name: 'GoldCloud1', hostGroups: [{ name: 'NY-Gold', hosts: [{ name: 'ny-h1', logicalNetworks: ['LN1-NY', 'LN2-NY'], storageLocations: ['ny-gold'] }] }] },
        { name: 'SilverCloud1', hostGroups: [{ name: 'NY-Silver', hosts: [{ name: 'ny-h2', logicalNetworks: ['LN1-NY'], storageLocations: ['ny-silver'] }] }] },
      ],
      vms: [
        { name: 'vm1', host: 'ny-h1', disks: [{ name: 'system', size: '32M', storage: 'ny-gold' }, { name: 'data', size: '16M', storage: 'ny-gold' }], nics: [{ network: 'VMNetwork1-NY' }], workload: false },
        { name: 'vm2', host: 'ny-h1', disks: [{ name: 'system', size: '32M', storage: 'ny-gold' }], nics: [{ network: 'VMNetwork1-NY' }, { network: 'VMNetwork2-NY' }], workload: { bytesPerSecond: 64 * 1024 } },
        { name: 'vm3', host: 'ny-h2', disks: [{ name: 'system', size: '32M', storage: 'ny-silver' }], nics: [{ network: 'VMNetwork1-NY' }], workload: false },
        { name: 'vm4', host: 'ny-h2', disks: [{ name: 'system', size: '32M', storage: 'ny-silver' }], nics: [{ network: 'VMNetwork1-NY' }], workload: { bytesPerSecond: 64 * 1024 } },
        { name: 'vm5', host: 'ny-h2', disks: [{ name: 'system', size: '16M', storage: 'ny-silver' }], nics: [], workload: false },
      ],
    },
    {
      name: 'VMM-Chicago',
      logicalNetworks: ['LN1-CHI'],
      vmNetworks: [
        { name: 'VMNetwork1-CHI', logicalNetwork: 'LN1-CHI', subnets: [{ name: 'Subnet1', cidr: '10.2.1.0/24', pool: { start: '10.2.1.10', end: '10.2.1.20' } }] },
        { name: 'VMNetwork2-CHI', logicalNetwork: 'LN1-CHI', subnets: [{ name: 'Subnet1', cidr: '10.2.2.0/24', pool: { start: '10.2.2.10', end: '10.2.2.20' } }] },
      ],
      storage: { classifications: ['GOLD_TARGET', 'SILVER_TARGET'], locations: [{ name: 'chi-gold', classification: 'GOLD_TARGET', kind: 'share' }, { name: 'chi-silver', classification: 'SILVER_TARGET', kind: 'volume' }] },
      clouds: [
        { name: 'GoldCloud2', hostGroups: [{ name: 'CHI-Gold', hosts: [{ name: 'chi-h1', logicalNetworks: ['LN1-CHI'], storageLocations: ['chi-gold'] }] }] },
        { name: 'SilverCloud2', hostGroups: [{ name: 'CHI-Silver', hosts: [{ name: 'chi-h2', logicalNetworks: ['LN1-CHI'], storageLocations: ['chi-silver'] }] }] },
      ],
      vms: [],
    },
  ],
};

const items = async () => (await api.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=1000')).items;
const item = (id: string) => api.request<ProtectedItem>('GET', `/api/v1/protected-items/${id}`);

before(async () => {
  const file = path.join(dir, 'topology.in.yaml');
  fs.writeFileSync(file, YAML.stringify(topology));
  const out = await osr('lab', 'up', '--dir', dir, '--topology', file, '--port', '0', '--detach', '--status-interval', '1s');
  assert.match(out, /Owner token osr_/);
  const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { vault: string; token: string; ca: string };
  api = new VaultClient(cfg.vault, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
});

after(async () => {
  api?.close();
  await labDown(dir, () => undefined);
  for (const p of [readLabFile(dir)?.vault.pid].filter(Boolean)) assert.fail(`lab still recorded as running (vault ${p})`);
});

describe('the lab', () => {
  test('lab up: the vault, a provider per fabric and an agent per host run; inventory and enrolled agents are there', async () => {
    const s = await labStatus(dir);
    assert.equal(s.running, true, JSON.stringify(s.processes));
    assert.deepEqual(s.processes.map((p) => p.role).sort(), ['agent', 'agent', 'agent', 'agent', 'provider', 'provider', 'vault']);
    assert.deepEqual(s.fabrics.map((f) => f.id).sort(), ['vmm-chicago', 'vmm-newyork']);
    const vms = (await api.request<{ items: Obj[] }>('GET', '/api/v1/vms?limit=1000')).items;
    assert.deepEqual(vms.map((v) => v.name).sort(), ['vm1', 'vm2', 'vm3', 'vm4', 'vm5']);
    const vm2 = vms.find((v) => v.name === 'vm2')!;
    assert.equal((vm2.properties as Obj).powerState, 'Running');
    // NICs on networks with a pool have an address from it
    assert.equal(((vm2.properties as Obj).nics as Obj[])[0]!.ip, '10.1.1.11');
    const events = (await api.request<{ items: Obj[] }>('GET', '/api/v1/events?target=vmm-newyork&limit=100')).items;
    assert.ok(events.some((e) => e.kind === 'agent.enrolled'), 'host agents enrolled through the provider');
    // agents hold certificates of the vault's CA
    const ca = new crypto.X509Certificate(fs.readFileSync(path.join(dir, 'vault-ca.pem')));
    const cert = new crypto.X509Certificate(fs.readFileSync(path.join(dir, 'sites', 'vmm-chicago', 'pki', 'chi-h1.crt')));
    assert.ok(cert.checkIssued(ca) && cert.verify(ca.publicKey));
  });

  test('the providers report what the lab can do; protection asking for offline initial replication is refused at once, before any job', async () => {
    for (const f of ['vmm-newyork', 'vmm-chicago']) assert.deepEqual((await api.request<Obj>('GET', `/api/v1/fabrics/${f}`)).capabilities, LAB_CAPABILITIES, f);
    const policy = await api.request<Obj>('POST', '/api/v1/policies', { name: 'offline-seed', settings: { initialReplication: { method: 'offline', exportPath: '/seed/out', importPath: '/seed/in' } } });
    const pairing = await api.request<Obj>('POST', '/api/v1/cloud-pairings', { policyId: policy.id, sourceCloudId: 'vmm-newyork.goldcloud1', targetCloudId: 'vmm-chicago.goldcloud2' });
    const refused = await api.request('POST', '/api/v1/protected-items', { vmId: 'vmm-newyork.vm1' }).then(
      () => assert.fail('offline initial replication on the lab was accepted'),
      (e: unknown) => e as OsrError,
    );
    assert.equal(refused.code, 'NOT_SUPPORTED');
    assert.match(refused.message, /fabric VMM-NewYork \(lab\), the primary site of vm1, cannot do offline initial replication/);
    assert.deepEqual((await api.request<{ items: Obj[] }>('GET', '/api/v1/jobs?kind=enable-protection')).items, []);
    assert.deepEqual(await items(), []);
    await api.request('DELETE', `/api/v1/cloud-pairings/${String(pairing.id)}`);
    await api.request('DELETE', `/api/v1/policies/${String(policy.id)}`);
  });

  test('protect five VMs through the CLI: each reaches Protected with a recovery point, placed by the mappings', async () => {
    await osr('policy', 'create', 'gold', '--copy-frequency', '30s', '--retention-hours', '1', '--host-os-version', 'any');
    await osr('pairing', 'create', '--policy', 'gold', '--source-cloud', 'vmm-newyork.goldcloud1', '--target-cloud', 'vmm-chicago.goldcloud2');
    await osr('pairing', 'create', '--policy', 'gold', '--source-cloud', 'vmm-newyork.silvercloud1', '--target-cloud', 'vmm-chicago.silvercloud2');
    await osr('mapping', 'create', 'network', '--source', 'vmm-newyork.vmnetwork1-ny', '--target', 'vmm-chicago.vmnetwork1-chi');
    await osr('mapping', 'create', 'storage', '--source', 'vmm-newyork.gold', '--target', 'vmm-chicago.gold_target');
    await osr('mapping', 'create', 'storage', '--source', 'vmm-newyork.silver', '--target', 'vmm-chicago.silver_target');
    await osr('item', 'enable', 'vm1', 'vm2', 'vm3', 'vm4', 'vm5', '--wait');

    const list = JSON.parse(await osr('item', 'list', '--json')) as ProtectedItem[] | { items: ProtectedItem[] };
    const rows = Array.isArray(list) ? list : list.items;
    assert.equal(rows.length, 5);
    for (const i of rows) {
      assert.equal(i.state, 'Protected', `${i.name}: ${JSON.stringify(i.healthReasons)}`);
      assert.ok(i.lastRecoveryPointAt, `${i.name} has a recovery point`);
      assert.deepEqual(i.readiness, { ready: true, reason: null });
    }
    const vm2 = await item('vmm-newyork.vm2');
    const placement = vm2.replication.placement!;
    assert.equal(placement.hostId, 'vmm-chicago.chi-h1');
    assert.deepEqual(placement.networks, { nic0: 'vmm-chicago.vmnetwork1-chi', nic1: null });
    assert.deepEqual(placement.storage, { disk0: 'vmm-chicago.chi-gold' });
    // the replica VM is in the recovery site's inventory, its NIC connected with a pool address
    const replica = await api.request<Obj>('GET', `/api/v1/vms/${vm2.replication.replica!.replicaVmId}`);
    const nics = (replica.properties as Obj).nics as Obj[];
    assert.equal(nics[0]!.vmNetwork, 'vmm-chicago.vmnetwork1-chi');
    assert.match(String(nics[0]!.ip), /^10\.2\.1\.\d+$/);
    assert.equal(nics[1]!.vmNetwork, undefined, 'an unmapped network is not connected');
    assert.equal((replica.properties as Obj).replicaOf, 'vmm-newyork.vm2');
    await assert.rejects(osr('item', 'enable', String(replica.id)), /INVALID_STATE: .*VM vm2 .* is the replica of protected item vmm-newyork\.vm2/);
    // the vault named each replica's source before its first copy: the source host's agent, by the id its agent replicates under
    const source = await api.request<Obj>('GET', '/api/v1/vms/vmm-newyork.vm2');
    const replicationId = String((source.properties as Obj).replicationId);
    const chiAgent = new AgentClient(labAgents(dir).find((a) => a.hostId === 'chi-h1')!.api);
    const held = (await chiAgent.get<{ vmId: string; source: string | null }[]>('/v1/replicas')).find((r) => r.vmId === replicationId);
    const sourceHost = labAgents(dir).find((a) => `vmm-newyork.${a.hostId}` === (source.properties as Obj).host)!.host;
    assert.equal(held?.source, sourceHost);
    const owner = JSON.parse(fs.readFileSync(path.join(dir, 'sites', 'vmm-chicago', 'hosts', 'chi-h1', 'replicas', `${replicationId}.owner.json`), 'utf8')) as { source: string; by: string };
    assert.equal(owner.by, 'vault');
    // health and RPO reported by the primary site's provider
    await waitFor('RPO reports', async () => (await items()).every((i) => i.rpoSeconds !== null && i.health === 'Healthy'), 30_000, 500);
  });

  test('changing a network mapping reconnects the replicas it concerns', async () => {
    const nicOf = async () => {
      const v = await api.request<Obj>('GET', '/api/v1/vms/vmm-chicago.vm2-replica');
      return ((v.properties as Obj).nics as Obj[])[1]!;
    };
    assert.equal((await nicOf()).vmNetwork, undefined);
    const m = JSON.parse(await osr('--json', 'mapping', 'create', 'network', '--source', 'vmm-newyork.vmnetwork2-ny', '--target', 'vmm-chicago.vmnetwork2-chi')) as { id: string; reconnectJobId: string };
    await osr('job', 'watch', m.reconnectJobId);
    const connected = await waitFor('vm2\'s second NIC connected', async () => {
      const n = await nicOf();
      return n.vmNetwork === 'vmm-chicago.vmnetwork2-chi' ? n : undefined;
    }, 20_000, 200);
    assert.equal(connected.ip, '10.2.2.10');
    const placement = (await item('vmm-newyork.vm2')).replication.placement!;
    assert.deepEqual(placement.networks, { nic0: 'vmm-chicago.vmnetwork1-chi', nic1: 'vmm-chicago.vmnetwork2-chi' });

    await osr('mapping', 'delete', 'network', m.id);
    await waitFor('vm2\'s second NIC disconnected again', async () => (await nicOf()).vmNetwork === undefined, 30_000, 200);
    assert.equal((await item('vmm-newyork.vm2')).replication.placement!.networks.nic1, null);
  });

  test('plan validate: unprotected items are errors, unmapped networks warnings', async () => {
    const file = path.join(dir, 'plan.yaml');
    const plan = { name: 'web-tier', groups: [{ name: 'databases', items: ['vmm-newyork.vm1'] }, { name: 'apps', items: ['vmm-newyork.vm2', 'vmm-newyork.nope'] }] };
    fs.writeFileSync(file, YAML.stringify(plan));
    await osr('plan', 'apply', '-f', file);
    const failed = await osr('--json', 'plan', 'validate', 'web-tier').then(
      () => assert.fail('a plan with an unprotected item validates'),
      (e: { stdout: string; stderr: string }) => e,
    );
    assert.match(failed.stderr, /"code":"NOT_FOUND","message":"plan web-tier is not ready to run: 1 error/);
    const r = JSON.parse(failed.stdout) as { valid: boolean; problems: { severity: string; code: string; item: string; message: string }[] };
    assert.equal(r.valid, false);
    assert.deepEqual(r.problems.map((p) => [p.severity, p.code, p.item]), [
      ['warning', 'NOT_FOUND', 'vmm-newyork.vm2'],
      ['error', 'NOT_FOUND', 'vmm-newyork.nope'],
    ]);
    assert.match(r.problems[0]!.message, /NIC nic1 of vm2 is on vmm-newyork\.vmnetwork2-ny, which has no network mapping/);
    fs.writeFileSync(file, YAML.stringify({ ...plan, groups: [plan.groups[0], { name: 'apps', items: ['vmm-newyork.vm2'] }] }));
    await osr('plan', 'apply', '-f', file);
    assert.match(await osr('plan', 'validate', 'web-tier'), /plan web-tier can run \(warnings only\)/);
  });

  test('data written through NBD is on the replica at the next recovery point', async () => {
    const uri = (await osr('lab', 'nbd-uri', 'vm1', 'data', '--dir', dir)).trim();
    assert.match(uri, /^nbd\+unix:\/\/\/vm1\/disk1\?socket=/);
    const data = crypto.randomBytes(1 << 20);
    const offset = 3 << 20;
    const c = await NbdClient.connect(uri);
    await c.write(offset, data);
    await c.flush();
    await c.close();
    const writtenAt = Date.now();

    const point = await waitFor(
      'a recovery point after the write',
      async () => {
        const pts = (await api.request<{ items: { id: string; at: string }[] }>('GET', '/api/v1/protected-items/vmm-newyork.vm1/recovery-points')).items;
        return pts.find((p) => Date.parse(p.at) > writtenAt);
      },
      90_000,
      500,
    );
    written = { offset, data, pointId: point.id };
    const vm1 = await item('vmm-newyork.vm1');
    assert.ok(Date.parse(vm1.lastRecoveryPointAt!) >= Date.parse(point.at));
    const chi = labAgents(dir).find((a) => a.hostId === 'chi-h1')!;
    const agent = new AgentClient(chi.api);
    const overlay = await agent.post<{ id: string; point: number; disks: { name: string; nbd: { unix: string } }[] }>('/v1/replicas/vm1/overlays', { point: Number(point.id) });
    try {
      assert.equal(overlay.point, Number(point.id));
      const r = await NbdClient.connect(overlay.disks.find((d) => d.name === 'disk1')!.nbd.unix);
      const back = await r.read(offset, data.length);
      await r.close();
      assert.ok(back.equals(data), 'the replica holds the bytes written before the point');
    } finally {
      await agent.delete(`/v1/replicas/vm1/overlays/${overlay.id}`);
    }
  });

  test('test failover: the chosen point runs at the recovery site on a temporary network while replication goes on; cleanup records the drill', async () => {
    assert.ok(written, 'the NBD test ran first');
    await assert.rejects(osr('item', 'test-failover-cleanup', 'vmm-newyork.vm1'), /INVALID_STATE/);
    const started = Date.now();
    await osr('item', 'test-failover', 'vmm-newyork.vm1', '--point', written.pointId, '--network', 'temporary', '--wait');
    const during = await item('vmm-newyork.vm1');
    assert.equal(during.state, 'TestFailoverComplete');
    const tf = during.replication.testFailover!;
    assert.equal(tf.point.id, written.pointId);
    assert.ok(tf.rtoSeconds >= 0 && tf.rtoSeconds < 60, `RTO ${tf.rtoSeconds} s`);
    // the test VM's disks hold the point: the bytes written before it
    const c = await NbdClient.connect(tf.testVm.disks.find((d) => d.name === 'disk1')!.nbd);
    assert.ok((await c.read(written.offset, written.data.length)).equals(written.data));
    await c.write(0, Buffer.alloc(4096, 0x77)); // the drill writes; the replica does not see it
    await c.close();
    // in the recovery site's inventory: the test VM on an isolated network made for the drill
    const testVm = await api.request<Obj>('GET', `/api/v1/vms/${tf.testVm.testVmId}`);
    assert.equal((testVm.properties as Obj).testFailoverOf, 'vmm-newyork.vm1');
    assert.equal(tf.testVm.nics[0]!.vmNetwork, tf.testVm.temporaryNetwork);
    assert.match(String(tf.testVm.nics[0]!.ip), /^172\.31\.\d+\.\d+$/);
    const net = await api.request<Obj>('GET', `/api/v1/vm-networks/${tf.testVm.temporaryNetwork}`);
    assert.equal(net.kind, 'vm-network');
    // replication goes on during the drill
    await waitFor('a recovery point during the drill', async () => {
      const i = await item('vmm-newyork.vm1');
      return i.lastRecoveryPointAt !== null && Date.parse(i.lastRecoveryPointAt) > started;
    }, 90_000, 500);

    await osr('item', 'test-failover-cleanup', 'vmm-newyork.vm1', '--notes', 'app answered on 172.31.x', '--wait');
    const afterwards = await item('vmm-newyork.vm1');
    assert.equal(afterwards.state, 'Protected');
    const drills = afterwards.replication.drills!;
    assert.equal(drills[0]!.point.id, written.pointId);
    assert.equal(drills[0]!.notes, 'app answered on 172.31.x');
    assert.equal(drills[0]!.succeeded, true);
    assert.equal(afterwards.replication.testFailover, undefined);
    await waitFor('the test VM and its network gone from the inventory', async () => {
      const vms = (await api.request<{ items: Obj[] }>('GET', '/api/v1/vms?limit=1000')).items;
      const nets = (await api.request<{ items: Obj[] }>('GET', '/api/v1/vm-networks?limit=1000')).items;
      return !vms.some((v) => v.id === tf.testVm.testVmId) && !nets.some((n) => n.id === tf.testVm.temporaryNetwork);
    }, 20_000, 200);
    const chi = new AgentClient(labAgents(dir).find((a) => a.hostId === 'chi-h1')!.api);
    assert.deepEqual(await chi.get('/v1/replicas/vm1/overlays'), []);
    // the replica never saw the drill's write
    const latest = (await api.request<{ items: { id: string }[] }>('GET', '/api/v1/protected-items/vmm-newyork.vm1/recovery-points')).items[0]!;
    const overlay = await chi.post<{ id: string; disks: { name: string; nbd: { unix: string } }[] }>('/v1/replicas/vm1/overlays', { point: Number(latest.id) });
    try {
      const r = await NbdClient.connect(overlay.disks.find((d) => d.name === 'disk1')!.nbd.unix);
      assert.ok(!(await r.read(0, 4096)).equals(Buffer.alloc(4096, 0x77)));
      await r.close();
    } finally {
      await chi.delete(`/v1/replicas/vm1/overlays/${overlay.id}`);
    }
  });

  test('planned failover loses no acknowledged write; commit, reprotect and failback bring the VM home with what it wrote away', async () => {
    // a writer records every write the disk acknowledged, until the failover shuts the VM down
    const acked = new Map<number, Buffer>();
    const uriAt = async (vm: string) => (await osr('lab', 'nbd-uri', vm, 'system', '--dir', dir)).trim();
    const nyUri = await uriAt('vm1');
    assert.match(nyUri, /vmm-newyork\/hosts\/ny-h1/);
    const w = await NbdClient.connect(nyUri);
    let n = 0;
    const writer = (async () => {
      for (;;) {
        const off = (n++ % 2048) * 8192;
        const block = crypto.randomBytes(4096);
        try {
          await w.write(off, block);
        } catch {
          return; // the VM was shut down
        }
        acked.set(off, block);
        if (n % 16 === 0) await new Promise((r) => setTimeout(r, 5));
      }
    })();
    await new Promise((r) => setTimeout(r, 500));
    await osr('item', 'planned-failover', 'vmm-newyork.vm1', '--wait');
    await writer;
    await w.close().catch(() => undefined);
    assert.ok(acked.size > 50, `${acked.size} writes acknowledged before the shutdown`);

    const failedOver = await item('vmm-newyork.vm1');
    assert.equal(failedOver.state, 'FailedOver');
    assert.deepEqual(failedOver.readiness, { ready: false, reason: 'it is failed over; commit and reprotect first' });
    await assert.rejects(osr('item', 'test-failover', 'vmm-newyork.vm1'), /not ready for failover|is FailedOver/);
    const f = failedOver.replication.failover!;
    assert.equal(f.newPrimaryVmId, 'vmm-chicago.vm1-replica');
    await assert.rejects(osr('job', 'cancel', f.jobId), /INVALID_STATE: a planned-failover job cannot be cancelled: stopping a failover half way/);
    assert.ok(f.epoch >= 2);
    // it runs at Chicago now, and holds every acknowledged write
    const chiUri = await uriAt('vm1');
    assert.match(chiUri, /vmm-chicago\/hosts\/chi-h1/);
    const c = await NbdClient.connect(chiUri);
    for (const [off, block] of acked) assert.ok((await c.read(off, 4096)).equals(block), `the write at ${off} is on the failed-over disk`);
    // the old primary is off and fenced; the new one is running
    await waitFor('the inventory after the failover', async () => {
      const vms = (await api.request<{ items: Obj[] }>('GET', '/api/v1/vms?limit=1000')).items;
      const power = (id: string) => (vms.find((v) => v.id === id)?.properties as Obj | undefined)?.powerState;
      return power('vmm-newyork.vm1') === 'Off' && power('vmm-chicago.vm1-replica') === 'Running';
    }, 20_000, 200);
    await assert.rejects(osr('item', 'reprotect', 'vmm-newyork.vm1'), /INVALID_STATE/);

    await osr('item', 'commit', 'vmm-newyork.vm1', '--wait');
    assert.equal((await item('vmm-newyork.vm1')).state, 'Committed');
    await osr('item', 'reprotect', 'vmm-newyork.vm1', '--wait');
    const reversed = await item('vmm-newyork.vm1');
    assert.equal(reversed.state, 'Protected');
    assert.equal(reversed.replication.direction, 'recovery-to-primary');
    assert.equal(reversed.replication.sourceFabricId, 'vmm-chicago');
    assert.equal(reversed.replication.replica!.replicaVmId, 'vmm-newyork.vm1');

    // written at Chicago, then failed back
    const away = crypto.randomBytes(64 * 1024);
    await c.write(20 << 20, away);
    await c.flush();
    await c.close().catch(() => undefined);
    await osr('item', 'planned-failover', 'vmm-newyork.vm1', '--wait');
    const home = await NbdClient.connect(await uriAt('vm1'));
    try {
      assert.ok((await home.read(20 << 20, away.length)).equals(away), 'what the VM wrote at Chicago came home');
      for (const [off, block] of acked) assert.ok((await home.read(off, 4096)).equals(block));
    } finally {
      await home.close();
    }
    await osr('item', 'commit', 'vmm-newyork.vm1', '--wait');
    await osr('item', 'reprotect', 'vmm-newyork.vm1', '--wait');
    const back = await item('vmm-newyork.vm1');
    assert.equal(back.replication.direction, 'primary-to-recovery');
    assert.equal(back.replication.sourceFabricId, 'vmm-newyork');
    assert.equal(back.replication.failovers!.length, 2);
    await waitFor('health reports again', async () => {
      const i = await item('vmm-newyork.vm1');
      return i.rpoSeconds !== null && i.health === 'Healthy' && i.lastRecoveryPointAt !== null;
    }, 60_000, 500);
  });

  test('disable protection keeps or deletes the replica; protecting a VM whose replica was kept takes it up again', async () => {
    const before3 = await item('vmm-newyork.vm3');
    const replica3 = before3.replication.replica!.replicaVmId;
    await osr('item', 'disable', 'vmm-newyork.vm3', '--keep-replica', '--wait');
    await osr('item', 'disable', 'vmm-newyork.vm5', '--delete-replica', '--wait');
    assert.deepEqual((await items()).map((i) => i.id).sort(), ['vmm-newyork.vm1', 'vmm-newyork.vm2', 'vmm-newyork.vm4']);

    const chi2 = new AgentClient(labAgents(dir).find((a) => a.hostId === 'chi-h2')!.api);
    const held = (await chi2.get<{ vm: string }[]>('/v1/replicas')).map((r) => r.vm).sort();
    assert.deepEqual(held, ['vm3', 'vm4'], 'vm5\'s replica is deleted, vm3\'s kept');
    const kept = await waitFor('the kept replica as a VM of its own', async () => {
      const v = await api.request<Obj>('GET', `/api/v1/vms/${replica3}`);
      return (v.properties as Obj).replicaOf === undefined ? v : undefined;
    }, 20_000, 200);
    assert.equal(kept.name, 'vm3');
    await waitFor('vm5\'s replica VM gone from the inventory', async () => {
      const vms = (await api.request<{ items: Obj[] }>('GET', '/api/v1/vms?limit=1000')).items;
      return !vms.some((v) => v.id === 'vmm-chicago.vm5-replica');
    }, 20_000, 200);

    // protect vm3 again: its kept replica is reused (resynchronized, not copied anew)
    await osr('item', 'enable', 'vmm-newyork.vm3', '--wait');
    const again = await item('vmm-newyork.vm3');
    assert.equal(again.state, 'Protected');
    assert.equal(again.replication.replica!.replicaVmId, replica3);
    assert.equal(again.replication.replica!.reused, true);
  });

  test('the lab stops and starts again where it was: Ctrl-C in the foreground stops every process; items stay Protected', async () => {
    const pids = (await labStatus(dir)).processes.map((p) => p.pid);
    await labDown(dir, () => undefined);
    assert.deepEqual(pids.filter(isAlive), [], 'lab down stops every process');
    assert.equal(readLabFile(dir), undefined);

    const child = spawn(process.execPath, [OSR_BIN, 'lab', 'up', '--dir', dir, '--port', '0', '--status-interval', '1s'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    try {
      await waitFor('the lab in the foreground', () => out.includes('watching protected items'), 120_000, 200);
      const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { vault: string; token: string; ca: string };
      api.close();
      api = new VaultClient(cfg.vault, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
      const started = Date.now();
      // replication goes on: every item gets a recovery point newer than the restart
      await waitFor(
        'recovery points after the restart',
        async () => {
          const all = await items();
          return all.length === 4 && all.every((i) => i.state === 'Protected' && i.lastRecoveryPointAt !== null && Date.parse(i.lastRecoveryPointAt) > started - 1000);
        },
        90_000,
        500,
      );
      const running = (await labStatus(dir)).processes;
      assert.equal(running.length, 7);
      child.kill('SIGINT');
      const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      assert.equal(code, 0, out.slice(-2000));
      assert.match(out, /stopped; the lab's state stays in/);
      assert.deepEqual(running.map((p) => p.pid).filter(isAlive), [], 'Ctrl-C stops the vault, the providers and every agent');
      assert.equal(readLabFile(dir), undefined);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
