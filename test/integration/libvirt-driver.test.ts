/**
 * The libvirt fabric's management part against real libvirt: two `osr agent --host
 * libvirt` processes (a KVM host with a tiny domain, a recovery host) under the libvirt
 * driver, reached through their local API as `osr provider --fabric libvirt` reaches them.
 *
 * - start enrols both agents with the vault's CA through their API;
 * - the inventory shows the domain mapped through the site file (disk formats and storage,
 *   its NIC's VM network, its machine);
 * - a replica VM is made once, replication brings a point, and a test failover boots that
 *   point as a test domain on an isolated network: the console shows the guest came up and
 *   the guest agent answers; cleanup removes the domain, the overlay and the network;
 * - every call made twice converges.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ensureIsolatedNetwork, removeNetwork } from '../../src/agent/libvirt/inventory.js';
import { AgentClient } from '../../src/cli/agent-client.js';
import { validatePolicy } from '../../src/domain/policy.js';
import type { InventoryDocument } from '../../src/domain/resources.js';
import { LIBVIRT_CAPABILITIES, LibvirtFabricDriver, testDomainName } from '../../src/drivers/libvirt/libvirt-driver.js';
import { loadLibvirtSite, type LibvirtSiteConfig } from '../../src/drivers/libvirt/site.js';
import type { DriverContext, ReplicaVm, ReplicaVmSpec } from '../../src/fabric/driver.js';
import { isAzureEndpoint } from '../../src/domain/replicas.js';
import { ensurePki, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { tinyGuest } from '../../src/lab/tiny-guest.js';
import { createCa, issueCertificate, type CaMaterial } from '../../src/pki/index.js';
import { tempDir, waitFor } from '../support/lab.js';
import { libvirtSkip, startTinyDomain, virsh, type TinyDomain } from '../support/libvirt.js';
import { assertRejectsCode } from '../support/unit.js';

const skip = libvirtSkip();
const dir = tempDir('osr-lvd-driver-');
const tag = `lvd-${process.pid}`;
const names = { domain: `${tag}-web`, network: `${tag}-prod`, pool: `${tag}-pool`, source: `${tag}-kvm1`, recovery: `${tag}-kvm2` };
const quiet = { info() {}, warn() {}, error() {} };

let dom: TinyDomain | undefined;
const agents: RunningAgent[] = [];
let site: LibvirtSiteConfig;
let driver: LibvirtFabricDriver;
let ca: CaMaterial;
let enrolments = 0;

const ctx = (): DriverContext => ({
  vaultCa: ca.certPem,
  clock: { now: () => Date.now() },
  inventoryChanged: () => undefined,
  log: quiet,
  enrolAgent: async (host, publicKeyPem) => {
    enrolments++;
    // as the vault does: the certificate names the provider's fabric
    const c = await issueCertificate(ca, { commonName: host, role: 'agent', publicKeyPem, fabricId: 'kvm-test' });
    return { certificate: c.certPem, caCertificate: ca.certPem, notAfter: c.notAfter.toISOString() };
  },
});

const names_ = (out: string) => out.split('\n').map((s) => s.trim()).filter(Boolean);
const domainExists = async (name: string) => names_(await virsh.run(['list', '--all', '--name'])).includes(name);
const networkExists = async (name: string) => names_(await virsh.run(['net-list', '--all', '--name'])).includes(name);

function vmNamed(doc: InventoryDocument, name: string): InventoryDocument['vms'][number] {
  const v = doc.vms.find((x) => x.name === name && !x.replicaOf && !x.testFailoverOf);
  assert.ok(v, `the inventory has no VM ${name}: ${doc.vms.map((x) => x.name).join(', ')}`);
  return v;
}

before(async () => {
  if (skip) return;
  ca = await createCa({ commonName: 'lvd vault CA' });
  await ensureIsolatedNetwork(virsh, names.network);
  const poolDir = path.join(dir, 'pool');
  fs.mkdirSync(poolDir, { recursive: true });
  await virsh.run(['pool-define-as', names.pool, 'dir', '--target', poolDir]);
  await virsh.run(['pool-start', names.pool]);
  dom = await startTinyDomain(names.domain, poolDir, { agent: true, network: names.network, idle: false });
  const guest = await tinyGuest({ agent: true });
  const bootDir = path.dirname(guest.initrd);
  for (const [name, args] of [
    [names.source, ['--libvirt-domains', `^${names.domain}$`]],
    [names.recovery, ['--libvirt-domains', '^$', '--libvirt-boot-dir', bootDir]],
  ] as const) {
    const pkiDir = path.join(dir, `pki-${name}`);
    await ensurePki(pkiDir, [name]);
    agents.push(await startAgentProcess({ name, dataDir: path.join(dir, name), pkiDir, listenPort: 0, extraArgs: ['--host', 'libvirt', '--tls-reload', '500ms', ...args], logFile: path.join(dir, `${name}.log`) }));
  }
  const siteFile = path.join(dir, 'site.yaml');
  fs.writeFileSync(
    siteFile,
    `name: ${tag}-site
dir: state
hosts:
${agents.map((a) => `  - { name: ${a.name}, agent: '${a.apiUrl}', addresses: [127.0.0.1], replicationPort: ${a.replicationPort} }`).join('\n')}
clouds:
  - name: Gold
    hostGroups: [{ name: Rack1, hosts: [${names.source}] }]
  - name: Recovery
    hostGroups: [{ name: Rack2, hosts: [${names.recovery}] }]
networks:
  - libvirt: ${names.network}
    vmNetwork: Prod
    logicalNetwork: LN1
    subnets: [{ name: S1, cidr: 10.77.0.0/24, pool: { start: 10.77.0.10, end: 10.77.0.20 } }]
storage:
  - { pool: ${names.pool}, classification: GOLD }
domains:
  include: ['${tag}-*']
`,
  );
  site = loadLibvirtSite(siteFile);
  driver = new LibvirtFabricDriver(site, { connect: (h) => new AgentClient(h.agent) });
  await driver.management.start(ctx());
});

after(async () => {
  if (skip) return;
  await driver?.management.stop().catch(() => undefined);
  for (const a of agents) await stopAgentProcess(a, 'SIGKILL');
  await dom?.destroy().catch(() => undefined);
  for (const d of names_(await virsh.run(['list', '--all', '--name']))) if (d.startsWith(`osr-test-${tag}`)) await virsh.run(['destroy', d]).catch(() => undefined).then(() => virsh.run(['undefine', d]).catch(() => undefined));
  for (const n of names_(await virsh.run(['net-list', '--all', '--name']))) if (n === names.network || n.startsWith(`osr-net-test-${tag}`)) await removeNetwork(virsh, n).catch(() => undefined);
  await virsh.run(['pool-destroy', names.pool]).catch(() => undefined);
  await virsh.run(['pool-undefine', names.pool]).catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('libvirt driver', { skip }, () => {
  let source: InventoryDocument['vms'][number];
  let spec: ReplicaVmSpec;
  let replica: ReplicaVm;
  let testVmId: string | undefined;

  test('capabilities: no raw disks; changed-block tracking, NBD export and test failover', () => {
    assert.equal(driver.kind, 'libvirt');
    assert.deepEqual(driver.capabilities, LIBVIRT_CAPABILITIES);
    assert.equal(LIBVIRT_CAPABILITIES.rawDisks, false);
    assert.ok(LIBVIRT_CAPABILITIES.changedBlockTracking && LIBVIRT_CAPABILITIES.nbdExport && LIBVIRT_CAPABILITIES.testFailover);
  });

  test('start enrolled both agents with the vault CA through their API; started again, nobody enrols', async () => {
    assert.equal(enrolments, 2);
    for (const a of agents) {
      const e = await a.api.get<{ caCertificate: string; certificate: { commonName: string } }>('/v1/enrolment');
      assert.equal(e.caCertificate.trim(), ca.certPem.trim());
      assert.equal(e.certificate.commonName, a.name);
    }
    await driver.management.stop();
    driver = new LibvirtFabricDriver(site, { connect: (h) => new AgentClient(h.agent) });
    await driver.management.start(ctx());
    assert.equal(enrolments, 2);
  });

  test('inventory: the domain mapped through the site file — disks with formats on the pool, its NIC on Prod, its machine', async () => {
    const doc = await driver.management.inventory();
    source = vmNamed(doc, names.domain);
    assert.equal(source.host, names.source);
    assert.equal(source.cloud, 'Gold');
    assert.equal(source.powerState, 'Running');
    assert.deepEqual(source.disks.map((d) => [d.id, d.format, d.storageLocation]), [
      ['vda', 'qcow2', `${names.source}-${names.pool}`],
      ['vdb', 'qcow2', `${names.source}-${names.pool}`],
    ]);
    assert.equal(source.disks[0]!.sizeBytes, 64 * 1024 * 1024);
    assert.deepEqual(source.nics.map((n) => [n.id, n.vmNetwork]), [['nic0', 'Prod']]);
    assert.match(source.replicationId ?? '', /^[0-9a-f-]{36}$/);
    assert.equal(source.id, source.replicationId);
    assert.equal(source.machine?.vcpus, 1);
    assert.equal(source.machine?.memoryMiB, 256);
    assert.equal(source.machine?.nics[0]?.network, names.network);
    assert.ok(source.machine?.kernelBoot?.kernel.startsWith('/'));
    assert.deepEqual(doc.vmNetworks.map((n) => n.id), ['Prod']);
    assert.deepEqual(doc.hosts.map((h) => [h.id, h.logicalNetworks, h.storageLocations]), [
      [names.source, ['LN1'], [`${names.source}-${names.pool}`]],
      [names.recovery, ['LN1'], [`${names.recovery}-${names.pool}`]],
    ]);
    assert.ok(doc.storageLocations.every((l) => l.classification === 'GOLD'));
    const again = await driver.management.inventory();
    assert.deepEqual(vmNamed(again, names.domain), source);
  });

  test('replica VM: made once on the recovery host, an address from the pool; asked again, the same answer', async () => {
    spec = {
      itemId: 'lvd.item',
      source: { name: source.name, disks: source.disks.map((d) => ({ id: d.id, name: d.name, sizeBytes: d.sizeBytes })), nics: [{ id: 'nic0', subnet: 'S1' }], replicationId: source.replicationId, agent: names.source, machine: source.machine },
      hostId: names.recovery,
      storage: {},
      networks: { nic0: 'Prod' },
    };
    replica = await driver.management.ensureReplicaVm(spec);
    assert.equal(replica.hostId, names.recovery);
    assert.deepEqual(replica.nics, [{ id: 'nic0', vmNetwork: 'Prod', ip: '10.77.0.10' }]);
    assert.equal(isAzureEndpoint(replica.agent) ? undefined : replica.agent.name, names.recovery);
    assert.deepEqual(await driver.management.ensureReplicaVm(spec), replica);
    const doc = await driver.management.inventory();
    assert.equal(doc.vms.find((v) => v.id === replica.replicaVmId)?.replicaOf, 'lvd.item');
    // the machine a promoted replica's domain gets: the source's, its NIC on the recovery host's network for Prod
    assert.equal(driver.management.agentSite.machineOf?.(replica.replicaVmId)?.nics[0]?.network, names.network);
    await driver.management.connectNic(replica.replicaVmId, 'nic0', null);
    assert.equal(driver.management.agentSite.machineOf?.(replica.replicaVmId)?.nics[0]?.network, null);
    assert.deepEqual(await driver.management.connectNic(replica.replicaVmId, 'nic0', 'Prod'), { ip: '10.77.0.10' });
    assert.deepEqual(await driver.management.connectNic(replica.replicaVmId, 'nic0', 'Prod'), { ip: '10.77.0.10' });
  });

  test('a test failover boots the point as a test domain on an isolated network; cleanup removes domain, overlay and network; each twice', async () => {
    const policy = validatePolicy({ copyFrequencySeconds: 30, retentionHours: 1 }, Date.now());
    await driver.replication.ensureReplication({ vmId: source.id, policy, peer: replica.agent });
    await driver.replication.ensureReplication({ vmId: source.id, policy, peer: replica.agent });
    const points = await waitFor('a recovery point at the replica', async () => {
      const p = await driver.replication.recoveryPoints(replica.replicaVmId);
      return p.length > 0 ? p : undefined;
    }, 300_000, 500);
    const point = points.at(-1)!;

    const t = await driver.management.startTestVm({ itemId: 'lvd.item', replicaVmId: replica.replicaVmId, pointId: point.id, network: { mode: 'temporary' } });
    testVmId = t.testVmId;
    const again = await driver.management.startTestVm({ itemId: 'lvd.item', replicaVmId: replica.replicaVmId, pointId: point.id, network: { mode: 'temporary' } });
    assert.equal(again.testVmId, t.testVmId);
    assert.ok(t.temporaryNetwork);
    const domain = testDomainName(t.testVmId);
    assert.ok(await domainExists(domain));
    const xml = await virsh.run(['dumpxml', domain]);
    assert.match(xml, /protocol=['"]nbd['"]/);
    const netName = /<source network=['"]([^'"]+)['"]/.exec(xml)?.[1];
    assert.ok(netName?.startsWith('osr-net-'), `the test domain's NIC is on a drill network, not ${netName}`);
    const netXml = await virsh.run(['net-dumpxml', netName!]);
    assert.doesNotMatch(netXml, /<forward|<ip /, 'the drill network forwards nothing and serves no addresses');

    let last: unknown;
    const booted = await waitFor('the test domain\'s guest to mount the point\'s file system', async () => {
      const e = await driver.management.testVmEvidence(t.testVmId);
      last = e;
      return e.console.includes('osr-guest: mounted') ? e : undefined;
    }, 300_000, 1000).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}; last evidence: ${JSON.stringify(last)}`);
    });
    assert.ok(booted.console.includes('osr-guest: mounted'));
    const evidence = await waitFor('the test domain\'s guest agent to answer', async () => {
      const e = await driver.management.testVmEvidence(t.testVmId);
      last = e;
      return e.guestAgentAnswered ? e : undefined;
    }, 120_000, 1000).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}; last evidence: ${JSON.stringify(last)}`);
    });
    assert.ok(evidence.console.length <= 4096);
    assert.equal(evidence.guestAgentAnswered, true);
    assert.equal(evidence.running, true);
    const inv = await driver.management.inventory();
    assert.equal(inv.vms.find((v) => v.id === t.testVmId)?.testFailoverOf, 'lvd.item');
    assert.ok(!inv.vms.some((v) => v.name === domain), 'the test domain is not a VM of the site');

    await driver.management.removeTestVm(t.testVmId);
    await driver.management.removeTestVm(t.testVmId);
    testVmId = undefined;
    assert.ok(!(await domainExists(domain)));
    assert.ok(!(await networkExists(netName!)));
    const overlays = await agents[1]!.api.get<unknown[]>(`/v1/replicas/${encodeURIComponent(source.name)}/overlays`);
    assert.deepEqual(overlays, []);
    assert.ok(!(await driver.management.inventory()).vms.some((v) => v.id === t.testVmId));
  });

  test('a drill network: made once, removed twice', async () => {
    const a = await driver.management.createTestNetwork('Plan 1');
    assert.deepEqual(await driver.management.createTestNetwork('Plan 1'), a);
    assert.ok((await driver.management.inventory()).vmNetworks.some((n) => n.id === a.vmNetwork));
    await driver.management.removeTestNetwork(a.vmNetwork);
    await driver.management.removeTestNetwork(a.vmNetwork);
    assert.ok(!(await driver.management.inventory()).vmNetworks.some((n) => n.id === a.vmNetwork));
  });

  test('the agent refuses what it must: an overlay it does not have, a kernel outside --libvirt-boot-dir, a machine out of bounds, a name that is not one', async () => {
    const recovery = agents[1]!.api;
    const machine = { ...source.machine!, kernelBoot: { kernel: '/etc/hostname' } };
    await assertRejectsCode(recovery.call('PUT', `/v1/host/test-domains/${tag}-x`, { replica: source.name, overlay: 'none', machine, network: null }), 'NOT_FOUND');
    const overlay = await recovery.post<{ id: string }>(`/v1/replicas/${encodeURIComponent(source.name)}/overlays`, {});
    try {
      await assertRejectsCode(recovery.call('PUT', `/v1/host/test-domains/${tag}-x`, { replica: source.name, overlay: overlay.id, machine, network: null }), 'NOT_SUPPORTED', /does not allow: start it with --libvirt-boot-dir/);
      await assertRejectsCode(recovery.call('PUT', `/v1/host/test-domains/${tag}-x`, { replica: source.name, overlay: overlay.id, machine: { ...machine, vcpus: 0 }, network: null }), 'INVALID_ARGUMENT', /vcpus/);
      await assertRejectsCode(agents[0]!.api.call('PUT', '/v1/host/networks/.hidden'), 'INVALID_ARGUMENT');
    } finally {
      await recovery.delete(`/v1/replicas/${encodeURIComponent(source.name)}/overlays/${overlay.id}`);
    }
    assert.ok(!(await domainExists(`osr-test-${tag}-x`)));
  });

  test('replication stopped and the replica removed with its data, each twice', async () => {
    // a test failover the test above left behind (it failed) goes first
    if (testVmId) await driver.management.removeTestVm(testVmId);
    await driver.replication.stopReplication(source.id);
    await driver.replication.stopReplication(source.id);
    await driver.management.removeReplicaVm(replica.replicaVmId, { deleteData: true });
    await driver.management.removeReplicaVm(replica.replicaVmId, { deleteData: true });
    const doc = await driver.management.inventory();
    assert.ok(!doc.vms.some((v) => v.id === replica.replicaVmId));
    await assertRejectsCode(agents[1]!.api.get(`/v1/replicas/${encodeURIComponent(source.name)}`), 'NOT_FOUND');
  });
});
