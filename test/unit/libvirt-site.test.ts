/**
 * The libvirt fabric's site file: the example shipped in deploy/ parses to what it says;
 * a wrong field is refused with CONFIG_INVALID naming it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { domainSelected, globMatch, loadLibvirtSite, parseLibvirtSite } from '../../src/drivers/libvirt/site.js';
import { OsrError } from '../../src/domain/errors.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { tempDir } from '../support/lab.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const EXAMPLE = path.join(ROOT, 'deploy', 'libvirt', 'site.example.yaml');

const base = () => ({
  name: 'KVM-A',
  dir: 'state',
  hosts: [{ name: 'kvm1', agent: 'unix:/run/osr/api.sock', addresses: ['10.0.0.1'] }],
  clouds: [{ name: 'Gold', hostGroups: [{ name: 'Rack1', hosts: ['kvm1'] }] }],
  networks: [{ libvirt: 'prod-br', vmNetwork: 'Prod', logicalNetwork: 'LN1', subnets: [{ name: 'S1', cidr: '10.1.0.0/24', pool: { start: '10.1.0.10', end: '10.1.0.20' } }] }],
  storage: [{ pool: 'default', classification: 'GOLD' }],
});

function refused(change: (s: ReturnType<typeof base> & Record<string, unknown>) => void, field: string): void {
  const s: ReturnType<typeof base> & Record<string, unknown> = base();
  change(s);
  assert.throws(
    () => parseLibvirtSite(YAML.stringify(s), '/etc/osr'),
    (e: unknown) => e instanceof OsrError && e.code === 'CONFIG_INVALID' && e.details?.field === field && e.message.includes(field),
    `a site file with a wrong ${field} is refused naming it`,
  );
}

describe('libvirt site file', () => {
  test('the example in deploy/libvirt parses: hosts with their agents, a cloud, a network with its pool, storage, domain globs', () => {
    const s = loadLibvirtSite(EXAMPLE);
    assert.equal(s.name, 'KVM-NewYork');
    assert.equal(s.dir, '/var/lib/osr/provider');
    assert.deepEqual(s.hosts.map((h) => [h.name, h.agent, h.addresses[0], h.replicationPort]), [
      ['kvm-ny1', 'https://10.0.0.11:8085', '10.0.0.11', 8084],
      ['kvm-ny2', 'unix:/var/lib/osr/agent/run/api.sock', '10.0.0.12', 8084],
      ['kvm-ny3', 'http://127.0.0.1:8086', '10.0.0.13', 8084],
    ]);
    assert.equal(s.hosts[0]!.agentFingerprint, '5A:1C:93:0E:7B:44:D2:08:AF:61:3C:9E:25:B7:80:F4:19:6D:C2:5B:0A:E3:74:98:1F:C6:2D:57:B0:8A:E9:33');
    assert.equal(s.hosts[2]!.agentTokenFile, '/var/lib/osr/agent3/api-token');
    assert.deepEqual(s.clouds, [{ name: 'Gold', hostGroups: [{ name: 'Rack1', hosts: ['kvm-ny1', 'kvm-ny2', 'kvm-ny3'] }] }]);
    assert.deepEqual(s.networks[0], { libvirt: 'prod-br', vmNetwork: 'Prod', logicalNetwork: 'LN1', subnets: [{ name: 'S1', cidr: '10.1.0.0/24', pool: { start: '10.1.0.100', end: '10.1.0.199' } }] });
    assert.deepEqual(s.storage, [{ pool: 'fast-ssd', classification: 'GOLD' }]);
    assert.ok(domainSelected(s, 'web1'));
    assert.ok(!domainSelected(s, 'template-debian'));
  });

  test('the getting-started guide shows the example file as it is', () => {
    const doc = fs.readFileSync(path.join(ROOT, 'docs', 'getting-started-libvirt.md'), 'utf8');
    const example = fs.readFileSync(EXAMPLE, 'utf8');
    const body = example.split('\n').filter((l) => !l.startsWith('#')).join('\n').trim();
    assert.ok(doc.includes(body), 'docs/getting-started-libvirt.md holds deploy/libvirt/site.example.yaml (without its comment lines)');
  });

  test('relative paths are taken from the site file\'s directory; defaults fill in', () => {
    const s = parseLibvirtSite(YAML.stringify({ ...base(), hosts: [{ name: 'kvm1', agent: 'unix:run/api.sock', addresses: ['kvm1.example.org'] }] }), '/etc/osr');
    assert.equal(s.dir, '/etc/osr/state');
    assert.equal(s.hosts[0]!.agent, 'unix:/etc/osr/run/api.sock');
    assert.equal(s.hosts[0]!.replicationPort, 8084);
    assert.deepEqual(s.domains, { include: ['*'], exclude: [] });
  });

  test('a wrong field is refused with CONFIG_INVALID naming it', () => {
    refused((s) => delete (s as Record<string, unknown>).name, 'name');
    refused((s) => (s.hosts = []), 'hosts');
    refused((s) => (s.hosts[0]!.name = '../etc'), 'hosts[0].name');
    refused((s) => (s.hosts[0]!.agent = 'http://10.0.0.5:8085'), 'hosts[0].agent');
    refused((s) => (s.hosts[0]!.agent = 'https://kvm1:8443/v1'), 'hosts[0].agent');
    refused((s) => Object.assign(s.hosts[0]!, { agent: 'https://kvm1:8443', agentFingerprint: 'AB:CD' }), 'hosts[0].agentFingerprint');
    refused((s) => Object.assign(s.hosts[0]!, { agentFingerprint: 'AB'.repeat(32) }), 'hosts[0].agentFingerprint');
    refused((s) => Object.assign(s.hosts[0]!, { agent: 'https://kvm1:8443', agentTokenFile: 'token' }), 'hosts[0].agentTokenFile');
    refused((s) => (s.hosts[0]!.agent = 'http://127.0.0.1:8085'), 'hosts[0].agentTokenFile');
    refused((s) => (s.hosts[0]!.addresses = []), 'hosts[0].addresses');
    refused((s) => ((s.hosts[0] as Record<string, unknown>).replicationPort = 70000), 'hosts[0].replicationPort');
    refused((s) => (s.clouds[0]!.hostGroups[0]!.hosts = ['kvm9']), 'clouds[0].hostGroups[0].hosts[0]');
    refused((s) => (s.clouds[0]!.hostGroups = []), 'clouds');
    refused((s) => (s.networks[0]!.libvirt = "br'><x"), 'networks[0].libvirt');
    refused((s) => (s.networks[0]!.libvirt = 'osr-net-x'), 'networks');
    refused((s) => (s.networks[0]!.subnets[0]!.cidr = '10.1.0.0'), 'networks[0].subnets[0].cidr');
    refused((s) => (s.networks[0]!.subnets[0]!.pool = { start: '10.1.0.30', end: '10.1.0.20' }), 'networks[0].subnets[0].pool');
    refused((s) => (s.networks[0]!.subnets[0]!.pool = { start: '10.2.0.10', end: '10.2.0.20' }), 'networks[0].subnets[0].pool');
    refused((s) => (s.networks[0]!.subnets[0]!.pool = { start: '10.1.0.300', end: '10.1.0.20' }), 'networks[0].subnets[0].pool.start');
    refused((s) => (s.storage = [{ pool: 'a/b', classification: 'GOLD' }]), 'storage[0].pool');
    refused((s) => (s.domains = { include: ['web$(x)'] }), 'domains.include[0]');
    assert.throws(() => parseLibvirtSite('name: [', '/'), (e: unknown) => e instanceof OsrError && e.code === 'CONFIG_INVALID');
  });

  test('an agent on another machine: its provider channel, with the fingerprint of its bootstrap certificate in any case, with or without colons', () => {
    const fp = 'ab'.repeat(32);
    const s = parseLibvirtSite(YAML.stringify({ ...base(), hosts: [{ name: 'kvm1', agent: 'https://kvm1.example.org:8085/', agentFingerprint: fp, addresses: ['kvm1.example.org'] }] }), '/etc/osr');
    assert.equal(s.hosts[0]!.agent, 'https://kvm1.example.org:8085');
    assert.equal(s.hosts[0]!.agentFingerprint, Array(32).fill('AB').join(':'));
    const t = parseLibvirtSite(YAML.stringify({ ...base(), hosts: [{ name: 'kvm1', agent: 'https://[fd00::1]:8085', addresses: ['fd00::1'] }] }), '/etc/osr');
    assert.equal(t.hosts[0]!.agentFingerprint, undefined, 'an enrolled agent needs no fingerprint');
  });

  test('globs match whole names', () => {
    assert.ok(globMatch('web-*', 'web-1'));
    assert.ok(!globMatch('web-*', 'xweb-1'));
    assert.ok(globMatch('db?', 'db1'));
    assert.ok(!globMatch('db?', 'db12'));
    assert.ok(globMatch('a.b', 'a.b') && !globMatch('a.b', 'axb'));
  });

  test('osr provider --fabric libvirt refuses a wrong site file before anything starts, naming the field; an unknown fabric names those there are', () => {
    const dir = tempDir('osr-lvd-site-');
    try {
      const file = path.join(dir, 'site.yaml');
      fs.writeFileSync(file, YAML.stringify({ ...base(), hosts: [{ name: 'kvm1', agent: 'ftp://x', addresses: ['10.0.0.1'] }] }));
      const r = spawnSync(process.execPath, [OSR_BIN, 'provider', '--fabric', 'libvirt', '--config', file], { encoding: 'utf8', timeout: 60_000 });
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /CONFIG_INVALID: .*hosts\[0\]\.agent/);
      const x = spawnSync(process.execPath, [OSR_BIN, 'provider', '--fabric', 'xen', '--config', file], { encoding: 'utf8', timeout: 60_000 });
      assert.notEqual(x.status, 0);
      assert.match(x.stderr, /NOT_SUPPORTED: .*lab, libvirt/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
