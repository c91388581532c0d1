/**
 * The libvirt fabric's inventory mapping, without libvirt: a host's libvirt inventory
 * through the site file — clouds and host groups, networks and pools, a selected domain's
 * disks (formats, storage locations), NICs on VM networks and its machine; osr's own test
 * domains and excluded domains are not VMs.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import YAML from 'yaml';
import type { AgentHostInventory } from '../../src/drivers/libvirt/host-api.js';
import { mapInventory, siteDomains } from '../../src/drivers/libvirt/inventory-map.js';
import { parseLibvirtSite } from '../../src/drivers/libvirt/site.js';
import type { LibvirtState } from '../../src/drivers/libvirt/state.js';

const site = parseLibvirtSite(
  YAML.stringify({
    name: 'KVM-A',
    dir: '/srv/osr',
    hosts: [{ name: 'kvm1', agent: 'unix:/run/a.sock', addresses: ['10.0.0.1'], replicationPort: 9000 }],
    clouds: [{ name: 'Gold', hostGroups: [{ name: 'Rack1', hosts: ['kvm1'] }] }],
    networks: [{ libvirt: 'prod-br', vmNetwork: 'Prod', logicalNetwork: 'LN1', subnets: [{ name: 'S1', cidr: '10.1.0.0/24', pool: { start: '10.1.0.10', end: '10.1.0.20' } }] }],
    storage: [{ pool: 'fast', classification: 'GOLD' }],
    domains: { exclude: ['template-*'] },
  }),
  '/',
);
const machine = { vcpus: 2, memoryMiB: 1024, firmware: 'bios' as const, nics: [{ network: 'prod-br', mac: '52:54:00:00:00:01' }, { network: 'lab-net' }] };
const domain = (name: string, uuid: string): AgentHostInventory['domains'][number] => ({
  name,
  uuid,
  state: 'running',
  running: true,
  disks: [
    { target: 'vda', device: 'disk', file: '/var/lib/fast/web.qcow2', format: 'qcow2', sizeBytes: 1 << 30 },
    { target: 'vdb', device: 'disk', file: '/elsewhere/data.img', format: 'raw', sizeBytes: 1 << 20 },
    { target: 'sda', device: 'cdrom', sizeBytes: null },
  ],
  nics: [{ network: 'prod-br' }, { network: 'lab-net' }],
  machine,
});
const inv: AgentHostInventory = {
  domains: [domain('web', '11111111-1111-1111-1111-111111111111'), domain('template-deb', '22222222-2222-2222-2222-222222222222'), domain('osr-test-web-test', '33333333-3333-3333-3333-333333333333')],
  networks: [{ name: 'prod-br', active: true, forward: 'bridge' }],
  pools: [{ name: 'fast', type: 'dir', path: '/var/lib/fast', capacityBytes: 100, availableBytes: 40, active: true }],
};
const state: LibvirtState = { replicas: {}, nics: {}, replications: {}, testVms: {}, drillNetworks: {}, promoted: {}, demoted: {}, fenced: {}, enrolled: {}, revoked: [] };

test('a host\'s libvirt inventory mapped through the site file', () => {
  const domains = siteDomains(site, 'kvm1', inv, state);
  assert.deepEqual(domains.map((d) => d.name), ['web'], 'excluded and osr\'s own test domains are not VMs');
  const doc = mapInventory(site, new Map([['kvm1', inv]]), { domains, state, agentVms: new Map() });
  assert.deepEqual(doc.clouds, [{ id: 'Gold', name: 'Gold', hostGroups: ['Gold-Rack1'] }]);
  assert.deepEqual(doc.hosts, [{ id: 'kvm1', name: 'kvm1', osVersion: 'libvirt', logicalNetworks: ['LN1'], storageLocations: ['kvm1-fast'], addresses: ['10.0.0.1'], agent: { address: '10.0.0.1', replicationPort: 9000 } }]);
  assert.deepEqual(doc.storageLocations, [{ id: 'kvm1-fast', name: 'fast on kvm1', classification: 'GOLD', kind: 'volume', path: '/var/lib/fast', freeBytes: 40 }]);
  assert.deepEqual(doc.ipPools.map((p) => [p.vmNetwork, p.start, p.end]), [['Prod', '10.1.0.10', '10.1.0.20']]);
  const [vm] = doc.vms;
  assert.equal(vm?.id, '11111111-1111-1111-1111-111111111111');
  assert.equal(vm?.replicationId, vm?.id);
  assert.deepEqual(vm?.disks, [
    { id: 'vda', name: 'vda', sizeBytes: 1 << 30, storageLocation: 'kvm1-fast', format: 'qcow2' },
    { id: 'vdb', name: 'vdb', sizeBytes: 1 << 20, format: 'raw' },
  ]);
  assert.deepEqual(vm?.nics, [{ id: 'nic0', vmNetwork: 'Prod' }, { id: 'nic1' }], 'a NIC on an unmapped network is on no VM network');
  assert.deepEqual(vm?.machine, machine);
  assert.equal(vm?.powerState, 'Running');

  // a domain whose machine osr cannot carry is a VM all the same, without a machine
  const odd = { ...domain('odd', '44444444-4444-4444-4444-444444444444'), machine: { ...machine, nics: [{ network: 'net with spaces' }] } };
  const withOdd = mapInventory(site, new Map([['kvm1', { ...inv, domains: [odd] }]]), { domains: siteDomains(site, 'kvm1', { ...inv, domains: [odd] }, state), state, agentVms: new Map() });
  assert.equal(withOdd.vms[0]?.name, 'odd');
  assert.equal(withOdd.vms[0]?.machine, undefined);
});

test('a backup\'s socket is in the VM\'s work directory, or, where that is too long for a Unix socket, in a short private one', async () => {
  const { backupSocketPath } = await import('../../src/agent/libvirt/backup.js');
  const fs = await import('node:fs');
  const path = await import('node:path');
  assert.equal(backupSocketPath('/var/lib/osr/agent/libvirt/vm1/backup'), '/var/lib/osr/agent/libvirt/vm1/backup/backup.sock');
  const deep = `/tmp/${'lab/'.repeat(12)}sites/kvm-chicago/hosts/chi-kvm01/libvirt/d0b4fc1c-e264-4ef3-96c1-d84ca082c520/backup`;
  const p = backupSocketPath(deep);
  try {
    assert.ok(Buffer.byteLength(p) <= 107, p);
    assert.equal(path.basename(p), 'backup.sock');
    assert.equal(fs.statSync(path.dirname(p)).mode & 0o777, 0o700);
  } finally {
    fs.rmSync(path.dirname(p), { recursive: true, force: true });
  }
});
