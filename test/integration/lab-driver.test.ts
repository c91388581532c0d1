/**
 * The lab fabric driver against real agent processes, what is the lab's own: hosts enrol
 * with a CA and start with their replication ports, kept across a restart with the NICs'
 * pool addresses; a replication set up again is not made anew at the agent; a deleted
 * replica's store is gone from its agent; replica NICs' subnets; certificates renewed
 * without a restart. What every driver must do, each call run twice, is the fabric
 * contract (fabric-contract-lab.test.ts).
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { AgentClient } from '../../src/cli/agent-client.js';
import { validatePolicy } from '../../src/domain/policy.js';
import type { DriverContext } from '../../src/fabric/driver.js';
import { LabFabricDriver, type LabAgentInfo } from '../../src/lab/lab-driver.js';
import type { SiteConfig } from '../../src/lab/topology.js';
import { createCa, createCrl, generateKeyPairPem, issueCertificate, type CaMaterial } from '../../src/pki/index.js';
import { tempDir, waitFor } from '../support/lab.js';

const dir = tempDir('osr-labdriver-');
const site: SiteConfig = {
  name: 'VMM-Test',
  logicalNetworks: ['LN1'],
  vmNetworks: [
    { name: 'Net1', logicalNetwork: 'LN1', subnets: [{ name: 'S1', cidr: '10.9.0.0/24', pool: { start: '10.9.0.10', end: '10.9.0.12' } }] },
    {
      name: 'Net2',
      logicalNetwork: 'LN1',
      subnets: [
        { name: 'Front', cidr: '10.8.1.0/24', pool: { start: '10.8.1.10', end: '10.8.1.20' } },
        { name: 'Back', cidr: '10.8.2.0/24', pool: { start: '10.8.2.10', end: '10.8.2.20' } },
      ],
    },
  ],
  storage: { classifications: ['GOLD'], locations: [{ name: 'gold1', classification: 'GOLD', kind: 'share' }] },
  clouds: [
    { name: 'Primary', hostGroups: [{ name: 'P', hosts: [{ name: 'p-h1', logicalNetworks: ['LN1'], storageLocations: ['gold1'] }] }] },
    { name: 'Recovery', hostGroups: [{ name: 'R', hosts: [{ name: 'r-h1', logicalNetworks: ['LN1'], storageLocations: ['gold1'] }] }] },
  ],
  vms: [{ name: 'app', host: 'p-h1', disks: [{ name: 'system', size: '8M' }], nics: [{ network: 'Net1' }], workload: false }],
  lab: { dir: path.join(dir, 'site') },
};

let ca: CaMaterial;
let enrolments = 0;
let changes = 0;
const quiet = { info() {}, warn() {}, error() {} };
/** the provider's clock, moved forward by a test */
let offset = 0;
const ctx = (): DriverContext => ({
  vaultCa: ca.certPem,
  clock: { now: () => Date.now() + offset },
  inventoryChanged: () => void changes++,
  log: quiet,
  enrolAgent: async (name, publicKeyPem) => {
    enrolments++;
    const c = await issueCertificate(ca, { commonName: name, role: 'agent', publicKeyPem });
    return { certificate: c.certPem, caCertificate: ca.certPem, notAfter: c.notAfter.toISOString() };
  },
});
let driver: LabFabricDriver;
const agentApi = (host: string) => new AgentClient((JSON.parse(fs.readFileSync(path.join(site.lab.dir, 'agents.json'), 'utf8')) as LabAgentInfo[]).find((a) => a.host === host)!.api);

before(async () => {
  ca = await createCa({ commonName: 'test vault CA' });
  driver = new LabFabricDriver(site);
  await driver.management.start(ctx());
});
after(async () => {
  await driver.management.stop();
});

describe('lab fabric driver', () => {
  test('start: hosts enrol once, VMs run with pool addresses; a restart keeps ports and certificates', async () => {
    assert.equal(enrolments, 2);
    const inv = await driver.management.inventory();
    assert.deepEqual(inv.hosts.map((h) => h.name), ['p-h1', 'r-h1']);
    assert.ok(inv.hosts.every((h) => h.agent && h.agent.replicationPort > 0));
    assert.equal(inv.vms[0]!.powerState, 'Running');
    assert.deepEqual(inv.vms[0]!.nics, [{ id: 'nic0', vmNetwork: 'net1', subnet: 'S1', ip: '10.9.0.10' }]);
    await driver.management.stop();
    driver = new LabFabricDriver(site);
    await driver.management.start(ctx());
    assert.equal(enrolments, 2, 'certificates of the same CA are kept');
    const again = await driver.management.inventory();
    assert.deepEqual(again.hosts.map((h) => h.agent), inv.hosts.map((h) => h.agent), 'replication ports are kept');
    assert.deepEqual(again.vms[0]!.nics, inv.vms[0]!.nics, 'addresses are kept');
  });

  test('pool addresses; a replication set up again is not made anew at the agent; a deleted replica\'s store is gone from its agent', async () => {
    const spec = { itemId: 'fab.app', source: { name: 'app', disks: [{ id: 'disk0', name: 'system', sizeBytes: 8 << 20 }], nics: [{ id: 'nic0' }] }, hostId: 'r-h1', storage: { disk0: 'gold1' }, networks: { nic0: 'net1' } };
    const first = await driver.management.ensureReplicaVm(spec);
    assert.equal(first.nics[0]!.ip, '10.9.0.11', 'the lowest free address of the pool');
    assert.deepEqual(first.agent, { address: '127.0.0.1', port: (await driver.management.inventory()).hosts.find((h) => h.id === 'r-h1')!.agent!.replicationPort, name: 'r-h1' });
    const policy = validatePolicy({ copyFrequencySeconds: 30, retentionHours: 1 }, Date.now());
    await driver.replication.ensureReplication({ vmId: 'app', policy, peer: first.agent });
    const primary = agentApi('p-h1');
    const before = await primary.get<{ id: string }[]>('/v1/replications');
    await driver.replication.ensureReplication({ vmId: 'app', policy, peer: first.agent });
    assert.deepEqual(await primary.get<{ id: string }[]>('/v1/replications').then((r) => r.map((x) => x.id)), before.map((x) => x.id), 'the replication is not made anew');
    await waitFor('initial replication', async () => (await driver.replication.replicationStatus('app')).initial?.done, 60_000, 200);
    assert.ok((await agentApi('r-h1').get<unknown[]>('/v1/replicas')).length > 0);

    // NICs: disconnect frees the address, connecting again leases the lowest free one
    assert.deepEqual(await driver.management.connectNic(first.replicaVmId, 'nic0', null), { ip: null });
    assert.deepEqual(await driver.management.connectNic(first.replicaVmId, 'nic0', 'net1'), { ip: '10.9.0.11' });

    await driver.replication.stopReplication('app');
    assert.deepEqual(await primary.get('/v1/replications'), []);
    await driver.management.removeReplicaVm(first.replicaVmId, { deleteData: true });
    assert.deepEqual(await agentApi('r-h1').get('/v1/replicas'), []);
    assert.ok(!(await driver.management.inventory()).vms.some((v) => v.id === first.replicaVmId));
  });

  test('a replica NIC goes on the subnet named as its source NIC\'s, else the network\'s first, with an address from that subnet\'s pool', async () => {
    const spec = { itemId: 'fab.db', source: { name: 'db', disks: [{ id: 'disk0', name: 'system', sizeBytes: 8 << 20 }], nics: [{ id: 'nic0', subnet: 'Back' }, { id: 'nic1', subnet: 'Mgmt' }] }, hostId: 'r-h1', storage: { disk0: 'gold1' }, networks: { nic0: 'net2', nic1: 'net2' } };
    const r = await driver.management.ensureReplicaVm(spec);
    try {
      assert.deepEqual(r.nics, [
        { id: 'nic0', vmNetwork: 'net2', ip: '10.8.2.10' },
        { id: 'nic1', vmNetwork: 'net2', ip: '10.8.1.10' },
      ]);
      const inv = (await driver.management.inventory()).vms.find((v) => v.id === r.replicaVmId)!;
      assert.deepEqual(inv.nics.map((n) => n.subnet), ['Back', 'Front']);
      // a changed mapping: no subnet Back on Net1, so its first; back on Net2, Back again
      assert.deepEqual(await driver.management.connectNic(r.replicaVmId, 'nic0', 'net1'), { ip: '10.9.0.11' });
      assert.deepEqual(await driver.management.connectNic(r.replicaVmId, 'nic0', 'net2'), { ip: '10.8.2.10' });
    } finally {
      await driver.management.removeReplicaVm(r.replicaVmId, { deleteData: true });
    }
  });

  test('host certificates are renewed two thirds into their life (a clock moved forward); the agent serves the new one without a restart', async () => {
    const client = await issueCertificate(ca, { commonName: 'peer', role: 'agent', publicKeyPem: (await generateKeyPairPem()).publicKeyPem, dnsNames: ['localhost'] });
    const port = (await driver.management.inventory()).hosts.find((h) => h.name === 'r-h1')!.agent!.replicationPort;
    // the certificate the agent presents to a peer now
    const served = async (): Promise<string> => {
      const s = tls.connect({ host: '127.0.0.1', port, ca: ca.certPem, cert: client.certPem, key: client.keyPem, servername: 'localhost', rejectUnauthorized: false });
      await once(s, 'secureConnect');
      const serial = s.getPeerX509Certificate()!.serialNumber;
      s.destroy();
      return serial;
    };
    const before = await served();
    const crl = await createCrl(ca, [], { nextUpdate: new Date(Date.now() + 86_400_000) });
    const enrolled = enrolments;
    // a month on, nothing is due; two thirds into a year, both hosts enrol again
    offset = 30 * 86_400_000;
    await driver.management.revocationList(crl);
    assert.equal(enrolments, enrolled, 'renewed too early');
    offset = 250 * 86_400_000;
    await driver.management.revocationList(crl);
    assert.equal(enrolments, enrolled + 2);
    const file = new crypto.X509Certificate(fs.readFileSync(path.join(site.lab.dir, 'pki', 'r-h1.crt')));
    assert.notEqual(file.serialNumber, before);
    await waitFor('the agent serving its renewed certificate', async () => (await served()) === file.serialNumber || undefined, 20_000);
    // renewed once: a month after they were issued, the next list finds the new certificates young
    offset = 30 * 86_400_000;
    await driver.management.revocationList(crl);
    assert.equal(enrolments, enrolled + 2);
    offset = 0;
  });
});
