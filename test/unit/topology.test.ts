/**
 * Lab topologies: the built-in ones parse and hold what their descriptions promise; a
 * topology with a broken reference is refused with CONFIG_INVALID naming the place.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import YAML from 'yaml';
import { builtInTopologies, intToIp, ipToInt, loadTopology, parseTopology, slug, type TopologySpec } from '../../src/lab/topology.js';
import { assertThrowsCode } from '../support/unit.js';

const base = (): TopologySpec => ({
  name: 't',
  fabrics: [
    {
      name: 'VMM-A',
      logicalNetworks: ['LN1'],
      vmNetworks: [{ name: 'Net1', logicalNetwork: 'LN1', subnets: [{ name: 'S1', cidr: '10.0.0.0/24', pool: { start: '10.0.0.10', end: '10.0.0.20' } }] }],
      storage: { classifications: ['GOLD'], locations: [{ name: 'share1', classification: 'GOLD', kind: 'share' }] },
      clouds: [{ name: 'C1', hostGroups: [{ name: 'HG1', hosts: [{ name: 'h1', logicalNetworks: ['LN1'], storageLocations: ['share1'] }] }] }],
      vms: [{ name: 'vm1', host: 'h1', disks: [{ name: 'system', size: '64M', storage: 'share1' }], nics: [{ network: 'Net1' }] }],
    },
  ],
});

describe('lab topologies', () => {
  test('the built-in topologies parse: two-sites is New York protected by Chicago, single-server one fabric with two clouds, to-azure an on-premises site and an Azure site', () => {
    assert.deepEqual(builtInTopologies(), ['kvm', 'single-server', 'site-loss', 'to-azure', 'two-sites']);
    const drill = loadTopology('site-loss').spec;
    assert.deepEqual(drill.vault, { name: 'drill-vault', site: 'VMM-NewYork', standby: 'VMM-Chicago', database: 'sqlite' });
    const azure = loadTopology('to-azure').spec;
    assert.deepEqual(azure.fabrics.map((f) => f.name), ['VMM-OnPrem']);
    assert.deepEqual([azure.azure?.name, azure.azure?.location, azure.azure?.resourceGroup, azure.azure?.virtualNetworks.map((v) => v.name)], ['Azure-WestEurope', 'westeurope', 'osr-recovery', ['prod-vnet']]);
    const kvm = loadTopology('kvm').spec;
    assert.equal(kvm.hypervisor, 'libvirt');
    assert.deepEqual(kvm.fabrics.map((f) => f.name), ['KVM-NewYork', 'KVM-Chicago']);
    assert.deepEqual(kvm.fabrics[0]!.vms.map((v) => v.name), ['web01', 'db01']);
    assert.equal(loadTopology('two-sites').spec.hypervisor, undefined, 'the lab\'s own hosts unless a topology says libvirt');
    const two = loadTopology('two-sites').spec;
    assert.deepEqual(two.fabrics.map((f) => f.name), ['VMM-NewYork', 'VMM-Chicago']);
    assert.deepEqual(two.fabrics[0]!.clouds.map((c) => c.name), ['GoldCloud1', 'SilverCloud1']);
    assert.deepEqual(two.fabrics[1]!.clouds.map((c) => c.name), ['GoldCloud2', 'SilverCloud2']);
    for (const f of two.fabrics) {
      assert.equal(f.vmNetworks.length, 2);
      assert.equal(f.storage.classifications.length, 3);
      assert.ok(f.storage.locations.some((l) => l.kind === 'share') && f.storage.locations.some((l) => l.kind === 'volume'));
    }
    assert.ok(two.fabrics[0]!.vms.length >= 4);
    const single = loadTopology('single-server').spec;
    assert.equal(single.fabrics.length, 1);
    assert.equal(single.fabrics[0]!.clouds.length, 2);
  });

  test('the vault is placed at a site of the topology, its standby at another; anything else is refused', () => {
    const fabrics = [base().fabrics[0]!, { ...base().fabrics[0]!, name: 'F2', vms: [], clouds: [] }];
    const ok = parseTopology(YAML.stringify({ ...base(), fabrics, vault: { site: 'VMM-A', standby: 'F2', database: 'postgres' } }));
    assert.equal(ok.vault?.standby, 'F2');
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ site: 'Nowhere' }, /vault.site: names no fabric of the topology/],
      [{ site: 'VMM-A', standby: 'VMM-A' }, /vault.standby: must be another site/],
      [{ database: 'postgres' }, /postgres in the lab is for a standby vault/],
      [{ database: 'mysql', standby: 'F2' }, /vault.database: is sqlite or postgres/],
      [{ replicas: 2 }, /has no field replicas/],
    ];
    for (const [vault, re] of cases) assertThrowsCode(() => parseTopology(YAML.stringify({ ...base(), fabrics, vault })), 'CONFIG_INVALID', re);
  });

  test('a hypervisor other than lab or libvirt is refused', () => {
    assertThrowsCode(() => parseTopology(YAML.stringify({ ...base(), hypervisor: 'vmware' })), 'CONFIG_INVALID', /hypervisor: is lab or libvirt, not vmware/);
  });

  test('broken references and bad values are refused with CONFIG_INVALID naming the place', () => {
    const cases: [string, (t: ReturnType<typeof base>) => void, RegExp][] = [
      ['unknown host', (t) => (t.fabrics[0]!.vms[0]!.host = 'h9'), /VM vm1: host "h9" is not a host of this fabric/],
      ['unknown network', (t) => (t.fabrics[0]!.vms[0]!.nics[0]!.network = 'Net9'), /VM network "Net9" is not in vmNetworks/],
      ['unknown storage', (t) => (t.fabrics[0]!.vms[0]!.disks[0]!.storage = 'nas'), /storage location "nas" is not in storage.locations/],
      ['bad size', (t) => (t.fabrics[0]!.vms[0]!.disks[0]!.size = 'big'), /size "big" is not a size/],
      ['bad cidr', (t) => (t.fabrics[0]!.vmNetworks[0]!.subnets[0]!.cidr = '10.0.0.0'), /not an IPv4 CIDR/],
      ['pool backwards', (t) => (t.fabrics[0]!.vmNetworks[0]!.subnets[0]!.pool = { start: '10.0.0.30', end: '10.0.0.20' }), /start 10.0.0.30 comes after end 10.0.0.20/],
      ['unknown classification', (t) => (t.fabrics[0]!.storage.locations[0]!.classification = 'PLATINUM'), /classification "PLATINUM"/],
      ['host logical network', (t) => (t.fabrics[0]!.clouds[0]!.hostGroups[0]!.hosts[0]!.logicalNetworks = ['LN9']), /host h1: logical network "LN9"/],
      ['duplicate VM', (t) => t.fabrics[0]!.vms.push({ ...t.fabrics[0]!.vms[0]! }), /VM vm1: VM names are unique/],
      ['no disks', (t) => (t.fabrics[0]!.vms[0]!.disks = []), /needs 1 to 16 disks/],
      ['no fabrics', (t) => (t.fabrics = []), /needs at least one fabric/],
      ['duplicate fabric', (t) => t.fabrics.push(base().fabrics[0]!), /fabric VMM-A appears twice/],
      ['Azure site named as a fabric', (t) => (t.azure = { name: 'VMM-A', location: 'westeurope', resourceGroup: 'rg', virtualNetworks: [] }), /azure: fabric VMM-A appears twice/],
      ['Azure region', (t) => (t.azure = { name: 'Az', location: 'West Europe', resourceGroup: 'rg', virtualNetworks: [] }), /azure\.location: is a region's name/],
      ['Azure subnet', (t) => (t.azure = { name: 'Az', location: 'westeurope', resourceGroup: 'rg', virtualNetworks: [{ name: 'v', addressPrefix: '10.9.0.0/16', subnets: [{ name: 's', addressPrefix: '10.9.1.0' }] }] }), /azure: subnet s: addressPrefix "10.9.1.0" is not an IPv4 CIDR/],
      ['Azure network without subnet', (t) => (t.azure = { name: 'Az', location: 'westeurope', resourceGroup: 'rg', virtualNetworks: [{ name: 'v', addressPrefix: '10.9.0.0/16', subnets: [] }] }), /virtual network v: needs a subnet/],
    ];
    for (const [what, change, message] of cases) {
      const t = base();
      change(t);
      const e = assertThrowsCode(() => parseTopology(YAML.stringify(t), 'lab.yaml'), 'CONFIG_INVALID');
      assert.match(e.message, message, what);
      assert.match(e.message, /^lab\.yaml/, `${what}: the message names the file`);
    }
    assertThrowsCode(() => parseTopology('name: [unclosed', 'x.yaml'), 'CONFIG_INVALID');
    assertThrowsCode(() => loadTopology('no-such-topology'), 'NOT_FOUND');
    assert.doesNotThrow(() => parseTopology(YAML.stringify(base())));
  });

  test('ids come from names; addresses count in order', () => {
    assert.equal(slug('VMM-NewYork'), 'vmm-newyork');
    assert.equal(slug('\\\\fs-ny\\SourceShare1'), 'fs-ny-sourceshare1');
    assert.equal(slug('C:\\ClusterStorage\\Volume1'), 'c-clusterstorage-volume1');
    assertThrowsCode(() => slug('***'), 'CONFIG_INVALID');
    assert.equal(intToIp(ipToInt('10.1.1.255') + 1), '10.1.2.0');
    assert.equal(intToIp(ipToInt('255.255.255.255')), '255.255.255.255');
    assertThrowsCode(() => ipToInt('10.1.1.256'), 'CONFIG_INVALID');
  });
});
